//! The floor `just bench` compares Sluice's latency with: a server shaped like a Sluice
//! worker (Sluice's own shared-port bind and accept loop, one tokio worker thread per
//! process, one multiplexed Redis connection) that answers `POST /task` after parsing the
//! body and making one call of a trivial script. Everything Sluice cannot do without —
//! HTTP in, one Redis round trip, HTTP out — and nothing else: run at the same rate on the
//! same machine in the same minute, its latency is what the machine itself allows.
//! It allocates with mimalloc, as Sluice does. `FLOOR_PORT` and `FLOOR_REDIS` (a unix
//! socket path) configure it; it runs until its stdin closes (the bench holds the other end).

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use redis::aio::ConnectionManager;
use std::net::SocketAddr;
use std::sync::LazyLock;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

static COUNT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new("return redis.call('INCR', KEYS[1])"));

async fn post_task(State(mut redis): State<ConnectionManager>, body: Bytes) -> (StatusCode, String) {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid JSON"}"#.into());
    };
    let user = request["user_id"].as_str().unwrap_or_default();
    match COUNT.key(format!("floor:{{{user}}}")).invoke_async::<i64>(&mut redis).await {
        Ok(n) => (StatusCode::ACCEPTED, serde_json::json!({"status": "queued", "user_id": user, "n": n}).to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string()}).to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("FLOOR_PORT").context("FLOOR_PORT")?.parse()?;
    let socket = std::env::var("FLOOR_REDIS").context("FLOOR_REDIS")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        let redis = ConnectionManager::new(redis::Client::open(format!("unix://{socket}"))?).await?;
        let listener = sluice::worker::bind_shared(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let app = Router::new().route("/task", post(post_task)).with_state(redis);
        let stop = CancellationToken::new();
        tokio::spawn(sluice::http::serve::serve(listener, app, stop.clone()));
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut [0u8; 64]).await, Ok(n) if n > 0) {}
        stop.cancel();
        Ok(())
    })
}
