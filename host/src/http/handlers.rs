//! Request handlers. Input is validated here, into the types the rest of the host uses.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, value::RawValue};
use std::sync::Arc;
use std::time::Duration;

use super::error::AppError;
use super::{AppState, MAX_BODY};
use crate::queue::producer::{Submission, Submitted};
use crate::task::{TaskId, UserId};

/// Longest time a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest<'a> {
    user_id: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    plan: Option<String>,
}

/// `POST /task`: decide, then run, queue or refuse.
pub async fn post_task(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    require_json(&headers)?;
    let bytes = read_body(body).await?;
    let submission = parse_submission(&bytes)?;
    // Taken once the body is in: a client still sending it (or never) holds its own
    // connection, up to BODY_TIMEOUT, and no slot another submission is shed for.
    let permit = state.in_flight.clone().try_acquire_owned().map_err(|_| AppError::Overloaded)?;
    let user_id = submission.user_id.as_str().to_owned();
    let submitter = state.clone();
    // The permit goes with the submission, which finishes even if the client hangs up: a
    // submission counts against MAX_IN_FLIGHT until it is done, answered or not.
    let submission = async move {
        let _permit = permit;
        submitter.producer.submit(submission).await
    };
    let submitted =
        state.tracker.spawn(submission).await.map_err(|e| {
            AppError::Policy(crate::policy::PolicyError::Failed(format!("submission task failed: {e}")))
        })??;
    Ok(match submitted {
        Submitted::Completed { task_id, started_at, completed_at } => (
            StatusCode::OK,
            Json(json!({"status": "completed", "task_id": task_id, "user_id": user_id, "started_at": started_at, "completed_at": completed_at})),
        )
            .into_response(),
        Submitted::Queued { task_id, run_at, now } => {
            let body = json!({"status": "queued", "task_id": task_id, "user_id": user_id, "run_at": run_at});
            let retry_after = ((run_at - now).max(0) as u64).div_ceil(1000);
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Submitted::Rejected { retry_after_ms, reason } => return Err(AppError::Rejected { reason, retry_after_ms }),
    })
}

fn require_json(headers: &HeaderMap) -> Result<(), AppError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") { Ok(()) } else { Err(AppError::UnsupportedMediaType) }
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, AppError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(AppError::Timeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(AppError::TooLarge(MAX_BODY)),
        Ok(Err(e)) => Err(AppError::BadRequest(format!("could not read the request body: {e}"))),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Parse and validate a `POST /task` body.
pub fn parse_submission(bytes: &[u8]) -> Result<Submission, AppError> {
    let request: TaskRequest<'_> = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AppError::Unprocessable(format!("invalid task: {e}")),
        _ => AppError::BadRequest(format!("invalid JSON: {e}")),
    })?;
    let user_id = UserId::new(&request.user_id).map_err(|e| AppError::Unprocessable(e.to_string()))?;
    if let Some(plan) = &request.plan
        && (plan.is_empty() || plan.len() > 64 || plan.chars().any(char::is_control))
    {
        return Err(AppError::Unprocessable("plan must be 1-64 bytes without control characters".into()));
    }
    let payload = request.payload.map_or_else(|| "null".to_owned(), |p| p.get().to_owned());
    if nesting_depth(&payload) > MAX_PAYLOAD_DEPTH {
        return Err(AppError::Unprocessable(format!("payload nested deeper than {MAX_PAYLOAD_DEPTH} levels")));
    }
    Ok(Submission { user_id, payload, plan: request.plan })
}

/// Deepest payload nesting accepted: policies parse payloads, and deep nesting is a
/// classic way to exhaust a parser's stack.
const MAX_PAYLOAD_DEPTH: usize = 64;

/// Deepest bracket nesting of valid JSON text (brackets inside strings do not count).
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `GET /task/{task_id}`: a task's state and times. A path axum cannot decode (percent-escapes
/// that are not UTF-8) names no task either: 404 in JSON, not axum's plain-text 400.
pub async fn get_task(
    State(state): State<Arc<AppState>>,
    task_id: Result<Path<String>, PathRejection>,
) -> Result<Response, AppError> {
    let Ok(Path(task_id)) = task_id else {
        return Err(AppError::NotFound("no such task: the id is not UTF-8".into()));
    };
    let unknown = || AppError::NotFound(format!("no task {task_id:?}"));
    let id = TaskId::parse(&task_id).ok_or_else(unknown)?;
    let task = state.store.task(&id.to_string()).await?.ok_or_else(unknown)?;
    Ok(Json(task).into_response())
}

/// `GET /healthz`: the process is serving.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "worker": &*state.worker, "pid": std::process::id()}))
}

/// `GET /readyz`: Redis answers and the active policy is loaded.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, AppError> {
    state.store.time_ms().await?;
    let active = state.registry.active_name();
    state
        .registry
        .get(active)
        .ok_or_else(|| AppError::Policy(crate::policy::PolicyError::NotLoaded(active.clone())))?;
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /policies`: this worker's view of the loaded policies.
pub async fn policies(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!(state.registry.list()))
}

/// Any other path.
pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_are_validated() {
        let ok = parse_submission(br#"{"user_id":"alice","payload":{"x":[1,2]}}"#).expect("valid");
        assert_eq!((ok.user_id.as_str(), ok.payload.as_str()), ("alice", r#"{"x":[1,2]}"#));
        assert_eq!(parse_submission(br#"{"user_id":"a"}"#).expect("valid").payload, "null");
        let cases: &[(&[u8], u16)] = &[
            (b"{", 400),
            (b"not json", 400),
            (b"\xff\xfe", 400),
            (br#"{"user_id":"a"} trailing"#, 400),
            (br#"{"user_id":5}"#, 422),
            (br#"{}"#, 422),
            (br#"[]"#, 422),
            (br#"{"user_id":""}"#, 422),
            (br#"{"user_id":"a\u0000b"}"#, 422),
            (br#"{"user_id":"a","extra":1}"#, 422),
            (br#"{"user_id":"a","plan":""}"#, 422),
        ];
        for (body, status) in cases {
            let err = parse_submission(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(err.into_response().status().as_u16(), *status, "{}", String::from_utf8_lossy(body));
        }
        let deep = format!(r#"{{"user_id":"a","payload":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse_submission(deep.as_bytes()), Err(AppError::Unprocessable(_))));
        let ok = format!(r#"{{"user_id":"a","payload":{}"[[\\"{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(parse_submission(ok.as_bytes()).is_ok(), "brackets in strings do not count");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_to_a_submission_or_a_4xx(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Err(e) = parse_submission(&body) {
                proptest::prop_assert!(e.into_response().status().is_client_error());
            }
        }

        #[test]
        fn any_user_id_is_accepted_or_refused_with_422(user in "\\PC{0,140}|[\\x00-\\x1f]{1,3}") {
            let body = serde_json::json!({ "user_id": user }).to_string();
            match parse_submission(body.as_bytes()) {
                Ok(sub) => proptest::prop_assert_eq!(sub.user_id.as_str(), user.as_str()),
                Err(e) => proptest::prop_assert_eq!(e.into_response().status().as_u16(), 422),
            }
        }
    }
}
