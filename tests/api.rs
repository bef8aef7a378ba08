//! The HTTP contract: answers, status codes and JSON errors, in-process.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::time::Duration;

use crate::support::{RedisServer, Service, dist_dir, json_of, read_log, task_request, test_policy_dir};

#[tokio::test]
async fn admitted_task_runs_before_the_answer_and_is_logged() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    let (status, body) = svc.post_json(r#"{"user_id":"alice","payload":{"job":[1,2,3]}}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["user_id"], "alice");
    let task_id = body["task_id"].as_str().expect("task_id");
    assert!(body["started_at"].as_i64().expect("started_at") <= body["completed_at"].as_i64().expect("completed_at"));
    let log = read_log(&svc.log_path());
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].task_id.as_str(), log[0].user_id.as_str()), (task_id, "alice"));
    assert_eq!(log[0].started_at, body["started_at"].as_i64().expect("int"));

    let (status, view) = svc.get(&format!("/task/{task_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "completed");
    assert_eq!(view["started_at"], body["started_at"]);
}

#[tokio::test]
async fn over_the_limit_is_queued_with_an_honest_run_at_and_retry_after() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    let (first, _) = svc.post_task("bob").await;
    assert_eq!(first, StatusCode::OK);
    let response = svc.respond(task_request(r#"{"user_id":"bob"}"#)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "queued");
    let task_id = body["task_id"].as_str().expect("task_id").to_owned();
    let run_at = body["run_at"].as_i64().expect("integer run_at");

    let (_, view) = svc.get(&format!("/task/{task_id}")).await;
    assert_eq!(view["status"], "queued");
    assert_eq!(view["run_at"], run_at);
    // It runs on time, by the consumer.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (_, view) = svc.get(&format!("/task/{task_id}")).await;
    assert_eq!(view["status"], "completed", "{view}");
    let started = view["started_at"].as_i64().expect("started_at");
    assert!((0..100).contains(&(started - run_at)), "started {} ms after run_at", started - run_at);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_json_error() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    let long_user = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
    let huge = format!(r#"{{"user_id":"a","payload":"{}"}}"#, "x".repeat(70_000));
    let json_cases: &[(&str, StatusCode)] = &[
        ("", StatusCode::BAD_REQUEST),
        ("{", StatusCode::BAD_REQUEST),
        (r#"{"user_id":7}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"payload":1}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"user_id":""}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"user_id":"a\tb"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (&long_user, StatusCode::UNPROCESSABLE_ENTITY),
        (&huge, StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (body, expected) in json_cases {
        let (status, json) = svc.post_json(body).await;
        assert_eq!(status, *expected, "body {:.60}", body);
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
    }
    let wrong_type = Request::post("/task").header("content-type", "text/plain").body(Body::from(r#"{"user_id":"a"}"#));
    assert_eq!(svc.send(wrong_type.expect("req")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_type = Request::post("/task").body(Body::from(r#"{"user_id":"a"}"#));
    assert_eq!(svc.send(no_type.expect("req")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bad_utf8 = Request::post("/task")
        .header("content-type", "application/json")
        .body(Body::from(&b"{\"user_id\":\"\xff\"}"[..]));
    assert_eq!(svc.send(bad_utf8.expect("req")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        svc.send(Request::get("/task").body(Body::empty()).expect("req")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(svc.get("/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(svc.get("/task/not-a-task").await.0, StatusCode::NOT_FOUND);
    // An id whose escapes are not UTF-8 is refused in JSON too (json_of fails on anything else).
    assert_eq!(svc.get("/task/%FF").await.0, StatusCode::NOT_FOUND);
    assert_eq!(svc.get(&format!("/task/{}", uuid::Uuid::new_v4())).await.0, StatusCode::NOT_FOUND);
    assert!(read_log(&svc.log_path()).is_empty(), "no bad request may run a task");
}

/// A valid body near the 64 KiB limit whose payload is multi-byte text is decided like
/// any other: the policy's fuel grows with the request it reads (its UTF-8 check alone
/// took more than a decision's million units for 60 KB of Cyrillic).
#[tokio::test]
async fn a_large_multibyte_payload_is_decided_like_any_other() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    let body = format!(r#"{{"user_id":"yuri","payload":"{}"}}"#, "ж".repeat(32_000));
    assert!(body.len() < 64 * 1024);
    let (status, json) = svc.post_json(&body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, json) = svc.post_json(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
}

#[tokio::test]
async fn health_readiness_and_policies() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &test_policy_dir(), "short-window").await;
    let (status, health) = svc.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    assert_eq!(svc.get("/readyz").await.0, StatusCode::OK);
    let (status, policies) = svc.get("/policies").await;
    assert_eq!(status, StatusCode::OK);
    let bytes = std::fs::read(svc.policy_dir().join("short-window.wasm")).expect("policy file");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(policies[0]["name"], "short-window");
    assert_eq!(policies[0]["sha256"], sha);
    assert_eq!(policies[0]["active"], true);
    assert!(policies[0]["loaded_at"].as_i64().is_some());
}

#[tokio::test]
async fn redis_down_answers_503_quickly_and_recovers() {
    let mut redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    assert_eq!(svc.post_task("carol").await.0, StatusCode::OK);
    redis.kill();
    let started = std::time::Instant::now();
    let (status, body) = svc.post_task("dave").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().is_some());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(svc.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(svc.get("/healthz").await.0, StatusCode::OK);
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = svc.post_task("dave").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not recover, last status {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
