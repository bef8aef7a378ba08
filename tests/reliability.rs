//! Nothing acknowledged is lost: a crash of every process, a Redis restart from its AOF,
//! a frozen Redis; and overload is shed, not queued in memory.

use axum::http::StatusCode;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{
    RedisServer, Service, Spawned, TempDir, eventually, json_of, read_log, signal, task_request, test_policy_dir,
};

/// Post `n` tasks round-robin over `users`; return the ids answered 200 or 202.
async fn submit(url: &str, users: &[&str], n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let body = serde_json::json!({ "user_id": users[i % users.len()] });
        let response = client.post(url).json(&body).send().await.expect("request");
        let status = response.status().as_u16();
        let v: serde_json::Value = response.json().await.expect("json");
        assert!(status == 200 || status == 202, "{status}: {v}");
        ids.push(v["task_id"].as_str().expect("task_id").to_owned());
    }
    ids
}

/// Wait until every id in `ids` is in the log; return the number of duplicate runs.
async fn all_ran(log: &std::path::Path, ids: &[String], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let lines = read_log(log);
        let ran: HashSet<&str> = lines.iter().map(|c| c.task_id.as_str()).collect();
        let missing = ids.iter().filter(|id| !ran.contains(id.as_str())).count();
        if missing == 0 {
            return lines.len() - ran.len();
        }
        assert!(Instant::now() < deadline, "{missing} of {} acknowledged tasks never ran", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigkill_of_every_process_loses_no_acknowledged_task() {
    let redis = RedisServer::start();
    let shared = TempDir::new("crash");
    let log = shared.path().join("task_log.jsonl");
    let log_env = log.display().to_string();
    let extra = [("TASK_LOG", log_env.as_str()), ("LEASE_MS", "500")];
    let mut first = Spawned::start_with(&redis, &test_policy_dir(), "short-window", 2, &extra);
    first.wait_for_workers(2).await;
    // 4 users x 10 tasks: the queue reaches about 4 s ahead.
    let ids = submit(&first.url("/task"), &["a", "b", "c", "d"], 40).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.kill_everything();
    let ran_before = read_log(&log).len();
    assert!(ran_before < ids.len(), "the crash came too late to test anything");

    let second = Spawned::start_with(&redis, &test_policy_dir(), "short-window", 2, &extra);
    let dupes = all_ran(&log, &ids, Duration::from_secs(15)).await;
    assert!(dupes <= 2, "{dupes} tasks ran twice (only those logged but not acknowledged at the crash may)");
    drop(second);
}

#[tokio::test]
async fn queued_tasks_survive_a_redis_restart_from_its_aof() {
    let mut redis = RedisServer::start();
    let svc = Service::start(&redis, &test_policy_dir(), "short-window").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let (status, body) = svc.post_task("persist").await;
        assert!(status == StatusCode::OK || status == StatusCode::ACCEPTED, "{body}");
        ids.push(body["task_id"].as_str().expect("id").to_owned());
    }
    redis.kill();
    let (status, body) = svc.post_task("persist").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    all_ran(&svc.log_path(), &ids, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_full_redis_refuses_new_tasks_and_runs_each_queued_one_once() {
    let redis = RedisServer::start();
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &[("LEASE_MS", "300")]).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let (status, body) = svc.post_task(if i % 2 == 0 { "full-a" } else { "full-b" }).await;
        assert!(status == StatusCode::OK || status == StatusCode::ACCEPTED, "{body}");
        ids.push(body["task_id"].as_str().expect("id").to_owned());
    }
    // From here Redis refuses every write that would grow its memory, as at maxmemory.
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    let response = svc.respond(task_request(r#"{"user_id":"full-a"}"#)).await;
    // Room comes back when an operator acts or records expire: not within a second.
    assert_eq!(response.headers()["retry-after"], "30");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("storage full")), "{body}");

    // The queued tasks still run (they reach 2 s ahead), and each once: a task whose
    // acknowledgement Redis refused would keep its lease and run again at every expiry.
    all_ran(&svc.log_path(), &ids, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let runs = read_log(&svc.log_path()).len();
    assert_eq!(runs, ids.len(), "{} runs of {} tasks", runs, ids.len());
    let (status, body) = svc.get(&format!("/task/{}", ids[11])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert!(body["completed_at"].is_i64(), "{body}");
}

#[tokio::test]
async fn a_frozen_redis_gets_503_within_two_seconds_and_then_recovers() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &test_policy_dir(), "short-window").await;
    assert_eq!(svc.post_task("frozen").await.0, StatusCode::OK);
    signal(redis.pid(), "STOP");
    let started = Instant::now();
    let answers =
        futures_util::future::join_all((0..50).map(|i| svc.post_task(if i % 2 == 0 { "x" } else { "y" }))).await;
    let elapsed = started.elapsed();
    signal(redis.pid(), "CONT");
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    assert!(elapsed < Duration::from_secs(2), "50 requests took {elapsed:?} against a frozen Redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.post_task("thawed").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A 503 stored nothing: the batch that was in Redis's socket when it froze was refused
    // when Redis woke, past its give-up time, so a client that retries gets its task run
    // once, not twice.
    use sluice::store::keys;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for user in ["x", "y"] {
        assert_eq!(redis.cli(&["EXISTS", &keys::starts(user)]), "0", "{user}: a start was kept");
    }
    let stored = redis.cli(&["KEYS", &format!("{}*", keys::TASK_PREFIX)]);
    assert_eq!(stored.lines().count(), 2, "only frozen's and thawed's tasks: {stored}");
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_with_503() {
    let redis = RedisServer::start();
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &[("MAX_IN_FLIGHT", "4")]).await;
    signal(redis.pid(), "STOP");
    let answers =
        futures_util::future::join_all((0..40).map(|i| svc.post_task(if i % 2 == 0 { "p" } else { "q" }))).await;
    signal(redis.pid(), "CONT");
    let shed = answers.iter().filter(|(_, b)| b["error"].as_str().is_some_and(|e| e.contains("overloaded"))).count();
    assert!(shed >= 30, "only {shed} of 40 shed with 4 slots");
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE));
}

/// A client that hangs up does not take its submission's slot with it: the submission
/// still runs (it may store the task), so it still counts until it is done.
#[tokio::test]
async fn submissions_whose_clients_hung_up_still_count_against_max_in_flight() {
    let redis = RedisServer::start();
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &[("MAX_IN_FLIGHT", "2")]).await;
    assert_eq!(svc.post_task("warm").await.0, StatusCode::OK);
    signal(redis.pid(), "STOP");
    for user in ["gone-1", "gone-2"] {
        // Each waits on the frozen Redis; the client gives up after 100 ms.
        assert!(tokio::time::timeout(Duration::from_millis(100), svc.post_task(user)).await.is_err());
    }
    let (status, body) = svc.post_task("third").await;
    signal(redis.pid(), "CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("overloaded")), "not shed: {body}");
}

/// A body still on its way is not a submission: a client that sends its headers and then
/// trickles (or withholds) its body costs its own connection a 408, not a `MAX_IN_FLIGHT`
/// slot that others are then shed for.
#[tokio::test]
async fn a_body_still_on_its_way_takes_no_in_flight_slot() {
    use axum::body::{Body, Bytes};
    use futures_util::StreamExt;
    let redis = RedisServer::start();
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &[("MAX_IN_FLIGHT", "1")]).await;
    let trickle = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{")) })
        .chain(futures_util::stream::pending());
    let slow = axum::http::Request::post("/task")
        .header("content-type", "application/json")
        .body(Body::from_stream(trickle))
        .expect("request");
    let slow = svc.respond(slow);
    tokio::pin!(slow);
    // The slow request is polled first, so it reads its first byte before the other comes.
    let (status, body) = tokio::select! {
        biased;
        _ = &mut slow => panic!("a body that never ends was answered within the test"),
        answer = svc.post_task("prompt") => answer,
    };
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A claim that Redis answers only after `REDIS_TIMEOUT_MS` (it stalled) is still taken:
/// its tasks run when Redis wakes, not a lease later, leased to a worker that had stopped
/// listening.
#[tokio::test]
async fn tasks_due_during_a_stall_run_when_redis_wakes() {
    let redis = RedisServer::start();
    let env = [("REDIS_TIMEOUT_MS", "500"), ("LEASE_MS", "5000")];
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &env).await;
    assert_eq!(svc.post_task("stalled").await.0, StatusCode::OK);
    // short-window allows 1 per 200 ms: this one is due 200 ms from now, within the stall.
    let (status, body) = svc.post_task("stalled").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["task_id"].as_str().expect("task_id").to_owned();
    let run_at = body["run_at"].as_i64().expect("run_at");
    let blocker = redis.stall(1_500);
    let ran = tokio::task::spawn_blocking(move || blocker.join().expect("thread")).await.expect("join");
    assert!(ran, "the busy script did not run");
    let view = eventually(Duration::from_secs(10), "the queued task to run", || {
        let log = read_log(&svc.log_path());
        log.into_iter().find(|c| c.task_id == task_id)
    })
    .await;
    let late = view.started_at - run_at;
    assert!(late < 2_500, "ran {late} ms after its start: its claim was lost in the stall");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_do_not_hold_the_worker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let sluice = Spawned::start(&redis, &test_policy_dir(), "short-window", 1);
    sluice.wait_for_workers(1).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", sluice.port));
    // Headers that never finish: the connection is closed after the header deadline.
    let mut headers = connect().await.expect("connect");
    headers.write_all(b"POST /task HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // A body that trickles: 408 with a JSON error after the body deadline.
    let mut body = connect().await.expect("connect");
    body.write_all(b"POST /task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .expect("write");
    let started = Instant::now();
    // Meanwhile the worker serves others.
    let client = reqwest::Client::new();
    let ok =
        client.post(sluice.url("/task")).json(&serde_json::json!({"user_id": "prompt"})).send().await.expect("send");
    assert_eq!(ok.status().as_u16(), 200);
    let mut answer = Vec::new();
    let read_answer = async {
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"}") {
            match body.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_answer).await.expect("body deadline");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"#), "{answer}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), headers.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a connection with unfinished headers was kept open");
    assert!(started.elapsed() >= Duration::from_secs(9), "cut off too early: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_redis_that_may_evict_is_warned_about_at_start() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let sluice = Spawned::start(&redis, &test_policy_dir(), "short-window", 1);
    sluice.wait_for_workers(1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sluice.output().contains("maxmemory-policy is not noeviction") {
        assert!(Instant::now() < deadline, "no eviction warning:\n{}", sluice.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While Redis stalls, decisions hold their policy instances waiting on it; at most 64 of
/// a policy are alive in a worker, and a submission that finds none free within 250 ms is
/// answered 503 overloaded, with nothing stored, instead of waiting behind them.
#[tokio::test]
async fn submissions_beyond_the_policys_instances_are_shed_while_redis_stalls() {
    let redis = RedisServer::start();
    let env = [("REDIS_TIMEOUT_MS", "1000")];
    let svc = Service::start_with(&redis, &test_policy_dir(), "short-window", &env).await;
    assert_eq!(svc.post_task("warm").await.0, StatusCode::OK);
    // Long enough that the 64 holding instances are all answered 503 before it ends.
    let blocker = redis.stall(3_000);
    let users: Vec<String> = (0..80).map(|i| format!("shed-{i}")).collect();
    let answers = futures_util::future::join_all(users.iter().map(|user| svc.post_task(user))).await;
    let ran = tokio::task::spawn_blocking(move || blocker.join().expect("thread")).await.expect("join");
    assert!(ran, "the busy script did not run");
    let overloaded = answers.iter().filter(|(_, body)| body["error"] == "overloaded, retry shortly").count();
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE), "{answers:?}");
    assert!(overloaded >= 16, "{overloaded} of 80 answered overloaded: {answers:?}");
    // The reservations Redis got during the stall it ran after it, past their give-up
    // time: refused, so only the warm-up task is stored.
    let pattern = format!("{}*", sluice::store::keys::TASK_PREFIX);
    eventually(Duration::from_secs(5), "only the warm-up task stored", || {
        (redis.cli(&["KEYS", &pattern]).lines().count() == 1).then_some(())
    })
    .await;
}
