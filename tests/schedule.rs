//! The schedule: exact slots, FIFO per user, independent users, no over-admission under
//! concurrency, every acknowledged task logged exactly once and started on time.

use axum::http::StatusCode;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::time::Duration;

use crate::support::{Completion, RedisServer, Service, dist_dir, eventually, read_log, test_policy_dir};

/// Lateness allowed between `run_at` and the real start: the promise is 100 ms; tests
/// run in parallel on 2 cores, and this is what they hold to even then.
const ON_TIME_MS: i64 = 100;

/// Check that sorted starts keep both windows of the short-window policy.
fn assert_windows(starts: &[i64], (per1, w1): (usize, i64), (per2, w2): (usize, i64)) {
    for (i, s) in starts.iter().enumerate() {
        if i >= per1 {
            assert!(s - starts[i - per1] >= w1, "window {per1}/{w1} ms broken at {i}: {starts:?}");
        }
        if i >= per2 {
            assert!(s - starts[i - per2] >= w2, "window {per2}/{w2} ms broken at {i}: {starts:?}");
        }
    }
}

/// Wait until the log holds `n` lines, then return them by task id (each exactly once).
async fn logged(path: &std::path::Path, n: usize, within: Duration) -> HashMap<String, Completion> {
    eventually(within, "completions", || Some(read_log(path)).filter(|l| l.len() >= n)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = read_log(path);
    assert_eq!(lines.len(), n, "a task ran twice or an unacknowledged one ran");
    let by_id: HashMap<_, _> = lines.into_iter().map(|c| (c.task_id.clone(), c)).collect();
    assert_eq!(by_id.len(), n, "duplicate task ids in the log");
    by_id
}

#[tokio::test]
async fn burst_follows_the_exact_schedule_in_fifo_order_and_runs_on_time() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &test_policy_dir(), "short-window").await;
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(svc.post_task("alice").await);
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    let first = answers[0].1["started_at"].as_i64().expect("started_at");
    let slots: Vec<i64> = answers[1..]
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            body["run_at"].as_i64().expect("run_at")
        })
        .collect();
    let offsets: Vec<i64> = slots.iter().map(|s| s - slots[0] + 200).collect();
    // 1 per 200 ms and 5 per 2 s: five 200 ms apart, then the next five 2 s after those.
    assert_eq!(offsets, [200, 400, 600, 800, 2000, 2200, 2400, 2600, 2800, 4000, 4200]);
    assert!((slots[0] - first - 200).abs() <= 20, "second slot {} ms after the first start", slots[0] - first);

    let log = logged(&svc.log_path(), 12, Duration::from_secs(8)).await;
    let mut order: Vec<&Completion> = log.values().collect();
    order.sort_by_key(|c| c.started_at);
    for ((_, body), ran) in answers.iter().zip(&order) {
        assert_eq!(body["task_id"].as_str(), Some(ran.task_id.as_str()), "FIFO order broken");
    }
    for ((_, body), ran) in answers[1..].iter().zip(&order[1..]) {
        let late = ran.started_at - body["run_at"].as_i64().expect("run_at");
        assert!((0..ON_TIME_MS).contains(&late), "task started {late} ms after its run_at");
    }
}

#[tokio::test]
async fn one_users_backlog_never_delays_another() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &test_policy_dir(), "short-window").await;
    for _ in 0..8 {
        svc.post_task("busy").await;
    }
    let (status, body) = svc.post_task("idle").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = svc.post_task("other").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn many_connections_on_two_workers_never_over_admit() {
    let redis = RedisServer::start();
    let a = Service::start(&redis, &test_policy_dir(), "short-window").await;
    let b = a.peer(&redis, &test_policy_dir(), "short-window").await;
    let requests = (0..120).map(|i| if i % 2 == 0 { a.post_task("hot") } else { b.post_task("hot") });
    let answers = join_all(requests).await;
    let mut admitted = Vec::new();
    let mut slots = Vec::new();
    let mut ids = Vec::new();
    for (status, body) in &answers {
        match *status {
            StatusCode::OK => admitted.push(body["task_id"].as_str().expect("task_id").to_owned()),
            StatusCode::ACCEPTED => slots.push(body["run_at"].as_i64().expect("run_at")),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(body["error"].as_str().is_some() && body["retry_after_ms"].as_u64().is_some(), "{body}");
                continue;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        ids.push(body["task_id"].as_str().expect("task_id").to_owned());
    }
    assert_eq!(admitted.len(), 1, "exactly one immediate start");
    // Reserved starts are exact in Redis time: compare the admitted task's reserved start,
    // not when it ran (which a loaded machine may delay by a few ms).
    let (_, first) = a.get(&format!("/task/{}", admitted[0])).await;
    let first = first["run_at"].as_i64().expect("run_at of the admitted task");
    slots.sort_unstable();
    assert!(slots[0] - first >= 200, "second start {} ms after the first", slots[0] - first);
    assert_windows(&slots, (1, 200), (5, 2_000));
    // The policy refuses starts more than 10 s out: at most 26 fit (5 per 2 s, plus one at 10 s).
    assert!((19..=25).contains(&slots.len()), "{} queued", slots.len() + 1);

    let log = logged(&a.log_path(), ids.len(), Duration::from_secs(14)).await;
    for id in &ids {
        assert!(log.contains_key(id), "acknowledged task {id} never ran");
    }
    let mut starts: Vec<i64> = log.values().map(|c| c.started_at).collect();
    starts.sort_unstable();
    assert_windows(&starts, (1, 200 - ON_TIME_MS), (5, 2_000 - ON_TIME_MS));
}

#[tokio::test]
async fn default_policy_in_real_time_25_tasks() {
    let redis = RedisServer::start();
    let svc = Service::start(&redis, &dist_dir(), "default").await;
    let (mut run_at, mut ids) = (Vec::new(), Vec::new());
    for i in 0..25 {
        let (status, body) = svc.post_task("realtime").await;
        let at = if i == 0 { body["started_at"].as_i64() } else { body["run_at"].as_i64() };
        assert_eq!(status, if i == 0 { StatusCode::OK } else { StatusCode::ACCEPTED }, "{body}");
        run_at.push(at.expect("time"));
        ids.push(body["task_id"].as_str().expect("task_id").to_owned());
    }
    // The schedule is exact in Redis time: 1 s apart, the 21st a minute after the first.
    let offsets: Vec<i64> = run_at.iter().map(|t| t - run_at[0]).collect();
    let expected: Vec<i64> = (0..25).map(|i| if i < 20 { i * 1_000 } else { 60_000 + (i - 20) * 1_000 }).collect();
    assert!(offsets.iter().zip(&expected).all(|(got, want)| (got - want).abs() <= 20), "{offsets:?}");
    assert!((1..25).all(|i| run_at[i] - run_at[1] == expected[i] - 1_000), "queued slots are exact: {offsets:?}");
    // And every task really started on time.
    let log = logged(&svc.log_path(), 25, Duration::from_secs(70)).await;
    let late: Vec<i64> = ids.iter().zip(&run_at).map(|(id, at)| log[id].started_at - at).collect();
    assert!(late.iter().all(|l| (0..ON_TIME_MS).contains(l)), "lateness of each start, ms: {late:?}");
}
