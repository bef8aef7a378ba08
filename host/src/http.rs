//! The HTTP API: `fn app()` builds the router; `handlers` answers; `error` is the one
//! error type. Every answer carries the worker's id and pid in `x-sluice-worker`.

pub mod error;
pub mod handlers;
pub mod serve;

use axum::Router;
use axum::http::HeaderValue;
use axum::routing::{get, post};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::policy::Registry;
use crate::queue::producer::Producer;
use crate::store::Store;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share, behind one `Arc`: axum clones the state for every request.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Submits tasks.
    pub producer: Producer,
    /// Redis, for reads.
    pub store: Store,
    /// Loaded policies.
    pub registry: Arc<Registry>,
    /// Submissions run in here, so a client hanging up cannot cut one in half and
    /// shutdown waits for them.
    pub tracker: TaskTracker,
    /// Bounds the submissions in flight; beyond it, requests are shed with 503.
    pub in_flight: Arc<Semaphore>,
    /// `<worker id>:<pid>`, sent in `x-sluice-worker`.
    pub worker: Arc<str>,
}

/// The router.
pub fn app(state: AppState) -> Router {
    let worker = HeaderValue::from_str(&state.worker).expect("worker tag is ascii");
    Router::new()
        .route("/task", post(handlers::post_task))
        .route("/task/{task_id}", get(handlers::get_task))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/policies", get(handlers::policies))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::map_response(move |mut r: axum::response::Response| {
            let worker = worker.clone();
            async move {
                r.headers_mut().insert("x-sluice-worker", worker);
                r
            }
        }))
        .with_state(Arc::new(state))
}
