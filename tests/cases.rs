//! The shared reservation cases (`limiter-wasm/cases/reserve.json`) against the real
//! `reserve.lua` on a real Redis, with the script's clock set per call. The same table
//! runs against the in-memory double in `limiter-wasm`, so the two cannot drift.

use std::future::Future;
use std::time::Duration;

use sluice::store::{NewTask, Reserved, SlotRule, Store, StoreError};

use crate::support::RedisServer;

/// Cases use small times; the script sees them shifted to a realistic unix time.
const BASE_MS: i64 = 1_800_000_000_000;

#[tokio::test]
async fn shared_cases_hold_for_the_redis_scripts() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../limiter-wasm/cases/reserve.json");
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("cases")).expect("JSON");
    for (n, case) in table["cases"].as_array().expect("cases").iter().enumerate() {
        let windows: Vec<(u64, u64)> = case["windows"]
            .as_array()
            .map(|ws| ws.iter().map(|w| (w[0].as_u64().expect("limit"), w[1].as_u64().expect("ms"))).collect())
            .unwrap_or_default();
        let bucket = case["bucket"].as_array().map(|b| (b[0].as_u64().expect("ms"), b[1].as_u64().expect("burst")));
        for (i, call) in case["calls"].as_array().expect("calls").iter().enumerate() {
            let task = NewTask {
                task_id: uuid::Uuid::new_v4().to_string(),
                user_id: format!("case{n}-{}", call[1].as_str().expect("user")),
                payload: "null".into(),
            };
            let rule = SlotRule {
                windows: windows.clone(),
                bucket,
                max_delay_ms: case["max_delay_ms"].as_u64(),
                not_before_ms: 0,
                now_ms: Some(BASE_MS + call[0].as_i64().expect("at")),
            };
            let got = match store.reserve(&task, &rule, Duration::from_secs(60), "cases").await.expect("reserve") {
                Reserved::Admitted { slot_ms, .. } | Reserved::Queued { slot_ms, .. } => {
                    ("reserved", slot_ms - BASE_MS)
                }
                Reserved::TooFar { slot_ms, .. } => ("too_far", slot_ms - BASE_MS),
            };
            let want = (call[2][0].as_str().expect("kind"), call[2][1].as_i64().expect("slot"));
            assert_eq!(got, want, "case {:?}, call {i}", case["name"]);
        }
    }
}

/// Reservations made at once by one worker go to Redis in shared script calls, and each
/// gets exactly the slot it would have had alone: 200 tasks of one user at 1 per 100 ms
/// and 5 per second start 0, 100, .., 400, then 1000, 1100, .., in submission order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_share_script_calls_and_keep_the_schedule() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(5)).expect("store");
    let evalsha_calls = || {
        let stats = redis.cli(&["INFO", "commandstats"]);
        let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")).unwrap_or("calls=0,");
        line.split(['=', ',']).nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    let rule = SlotRule { windows: vec![(1, 100), (5, 1000)], now_ms: Some(BASE_MS), ..SlotRule::default() };
    let tasks: Vec<NewTask> = (0..200)
        .map(|i| NewTask { task_id: format!("t{i:03}"), user_id: "batched".into(), payload: "null".into() })
        .collect();
    let before = evalsha_calls();
    // Submitted in order (each future polled once before the next is created), answered
    // together. (On a loaded machine this thread can be descheduled long enough for the
    // first batch to come back before the first poll ends: keep such an answer as it is.)
    type Answer<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Reserved, StoreError>> + Send + 'a>>;
    let mut pending: Vec<Answer<'_>> = Vec::new();
    for task in &tasks {
        let mut fut = Box::pin(store.reserve(task, &rule, Duration::from_secs(60), "cases"));
        match std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await {
            std::task::Poll::Ready(answered) => pending.push(Box::pin(std::future::ready(answered))),
            std::task::Poll::Pending => pending.push(fut),
        }
    }
    let results = futures_util::future::join_all(pending).await;
    let calls = evalsha_calls() - before;
    for (i, result) in results.into_iter().enumerate() {
        let slot = match result.expect("reserve") {
            Reserved::Admitted { slot_ms, .. } | Reserved::Queued { slot_ms, .. } => slot_ms - BASE_MS,
            Reserved::TooFar { .. } => panic!("task {i} too far without a maximum delay"),
        };
        let want = (i as i64 / 5) * 1000 + (i as i64 % 5) * 100;
        assert_eq!(slot, want, "task {i}");
    }
    assert!(calls <= 20, "200 concurrent reservations took {calls} script calls; they should share them");
}

/// The user's start set is trimmed once per longest-window period, not on every call, and
/// so stays within about two periods' worth of starts however many tasks the user runs.
#[tokio::test]
async fn a_busy_users_starts_stay_few() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let key = sluice::store::keys::starts("busy");
    let (mut now, mut largest) = (BASE_MS, 0);
    for i in 0..300 {
        let task = NewTask { task_id: format!("b{i}"), user_id: "busy".into(), payload: "null".into() };
        let rule = SlotRule { windows: vec![(1, 100), (5, 1000)], now_ms: Some(now), ..SlotRule::default() };
        now = match store.reserve(&task, &rule, Duration::from_secs(60), "cases").await.expect("reserve") {
            Reserved::Admitted { slot_ms, .. } | Reserved::Queued { slot_ms, .. } => slot_ms,
            Reserved::TooFar { .. } => panic!("too far without a maximum delay"),
        };
        largest = largest.max(redis.cli(&["ZCARD", &key]).trim().parse::<usize>().expect("count"));
    }
    assert!(largest <= 11, "the start set grew to {largest} entries");
    assert!(largest >= 6, "the start set never held two periods: {largest}");
}
