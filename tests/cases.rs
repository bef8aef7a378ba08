//! The shared reservation cases (`limiter-wasm/cases/reserve.json`) against the real
//! `reserve.lua` on a real Redis, with the script's clock set per call. The same table
//! runs against the in-memory double in `limiter-wasm`, so the two cannot drift. And a
//! task's status as the scripts leave it.

use std::time::Duration;

use sluice::completion_log::Completion;
use sluice::store::{NewTask, Reserved, SlotRule, Store, StoreError};
use sluice::task::TaskState;

use crate::support::{LossyProxy, RedisServer, TempDir, eventually, read_log};

/// Cases use small times; the script sees them shifted to a realistic unix time.
const BASE_MS: i64 = 1_800_000_000_000;

/// A task of `user` without a payload.
fn new_task(id: impl Into<String>, user: &str) -> NewTask {
    NewTask { task_id: id.into(), user_id: user.into(), payload: "null".into() }
}

/// The slot and the script's now of a reservation that was stored (there is no maximum delay).
fn stored(reserved: Reserved) -> (i64, i64) {
    match reserved {
        Reserved::Admitted { slot_ms, now_ms } | Reserved::Queued { slot_ms, now_ms } => (slot_ms, now_ms),
        Reserved::TooFar { .. } => panic!("too far without a maximum delay"),
    }
}

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
            let task =
                new_task(uuid::Uuid::new_v4().to_string(), &format!("case{n}-{}", call[1].as_str().expect("user")));
            let rule = SlotRule {
                windows: windows.clone(),
                bucket,
                max_delay_ms: case["max_delay_ms"].as_u64(),
                not_before_ms: 0,
                now_ms: Some(BASE_MS + call[0].as_i64().expect("at")),
            };
            let got = match store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve") {
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
/// Made in one poll of a single-threaded runtime, before the reservation task first runs,
/// they go as four calls of at most 64. (On two threads the count hung on scheduling: 5-7
/// calls alone, and up to 86 beside the other tests, when this thread lost its core between
/// submissions.)
#[tokio::test]
async fn concurrent_reservations_share_script_calls_and_keep_the_schedule() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(5)).expect("store");
    let evalsha_calls = || {
        let stats = redis.cli(&["INFO", "commandstats"]);
        let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")).unwrap_or("calls=0,");
        line.split(['=', ',']).nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    let rule = SlotRule { windows: vec![(1, 100), (5, 1000)], now_ms: Some(BASE_MS), ..SlotRule::default() };
    let tasks: Vec<NewTask> = (0..200).map(|i| new_task(format!("t{i:03}"), "batched")).collect();
    // The script loaded first (a fresh Redis answers the first EVALSHA with NOSCRIPT).
    store.reserve(&new_task("warm", "warm"), &rule, Duration::from_secs(60)).await.expect("warm-up");
    let before = evalsha_calls();
    // Each polled once, in order, before the next is made: none yields to the runtime.
    let mut answers = Vec::new();
    for task in &tasks {
        let mut answer = Box::pin(store.reserve(task, &rule, Duration::from_secs(60)));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "answered before the reservation task ran");
        answers.push(answer);
    }
    let results = futures_util::future::join_all(answers).await;
    let calls = evalsha_calls() - before;
    for (i, result) in results.into_iter().enumerate() {
        let slot = match result.expect("reserve") {
            Reserved::Admitted { slot_ms, .. } | Reserved::Queued { slot_ms, .. } => slot_ms - BASE_MS,
            Reserved::TooFar { .. } => panic!("task {i} too far without a maximum delay"),
        };
        let want = (i as i64 / 5) * 1000 + (i as i64 % 5) * 100;
        assert_eq!(slot, want, "task {i}");
    }
    assert_eq!(calls, 4, "200 reservations made at once took {calls} script calls, not 4 of at most 64");
}

/// The user's start list is trimmed once per longest-window period, not on every call, and
/// so stays within about two periods' worth of starts however many tasks the user runs.
#[tokio::test]
async fn a_busy_users_starts_stay_few() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let key = sluice::store::keys::starts("busy");
    let (mut now, mut largest) = (BASE_MS, 0);
    for i in 0..300 {
        let task = new_task(format!("b{i}"), "busy");
        let rule = SlotRule { windows: vec![(1, 100), (5, 1000)], now_ms: Some(now), ..SlotRule::default() };
        (now, _) = stored(store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve"));
        largest = largest.max(redis.cli(&["LLEN", &key]).trim().parse::<usize>().expect("count"));
    }
    assert!(largest <= 11, "the start list grew to {largest} entries");
    assert!(largest >= 6, "the start list never held two periods: {largest}");
}

/// Nothing writes "running" down: leased is running, in the due index is queued, and
/// acknowledged is completed. A lease that runs out puts the task back in the queue, and
/// a late acknowledgement of its run, there before a claim, takes it out again.
#[tokio::test]
async fn a_tasks_status_is_where_the_scripts_put_it() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let status = async |id: &str| store.task(id).await.expect("read").map(|v| v.status);
    let task = |id: &str| new_task(id, "ann");
    let rule = SlotRule { windows: vec![(1, 300)], ..SlotRule::default() };
    let lease = Duration::from_millis(400);
    assert!(matches!(store.reserve(&task("a"), &rule, lease).await, Ok(Reserved::Admitted { .. })));
    assert!(matches!(store.reserve(&task("b"), &rule, lease).await, Ok(Reserved::Queued { .. })));
    assert_eq!(status("a").await, Some(TaskState::Running));
    assert_eq!(status("b").await, Some(TaskState::Queued));
    assert_eq!(status("c").await, None);

    // b is due after 300 ms; a's lease runs out after 400. A claim of nothing still
    // returns expired leases to the queue.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(store.claim(0, lease).await.expect("claim").tasks.is_empty());
    assert_eq!((status("a").await, status("b").await), (Some(TaskState::Queued), Some(TaskState::Queued)));
    // a's run acknowledges too late: its lease is gone, but it ran, so the acknowledgement
    // takes it back out of the queue instead of leaving it for a second run.
    let late = Completion { user_id: "ann", task_id: "a", started_at: 1, completed_at: 2 };
    assert_eq!(store.ack(&[late], Duration::from_secs(60)).await.expect("ack"), [false]);
    let view = store.task("a").await.expect("read").expect("kept");
    assert_eq!((view.status, view.started_at, view.completed_at), (TaskState::Completed, Some(1), Some(2)));
    let claimed = store.claim(10, Duration::from_secs(5)).await.expect("claim").tasks;
    let ids: Vec<(&str, &str)> = claimed.iter().map(|t| (t.task_id.as_str(), t.user_id.as_str())).collect();
    assert_eq!(ids, [("b", "ann")]);
    assert_eq!(status("b").await, Some(TaskState::Running));

    let done = Completion { user_id: "ann", task_id: "b", started_at: 3, completed_at: 4 };
    assert_eq!(store.ack(&[done], Duration::from_secs(60)).await.expect("ack"), [true]);
    let view = store.task("b").await.expect("read").expect("kept");
    assert_eq!((view.status, view.started_at, view.completed_at), (TaskState::Completed, Some(3), Some(4)));
}

/// An acknowledgement lost on its way to Redis (the connection broke) is retried in the
/// background: the task ran once, and is not left leased to run again after its lease.
#[tokio::test]
async fn a_lost_acknowledgement_is_retried() {
    use sluice::completion_log::CompletionLog;
    use sluice::queue::Runner;
    use sluice::store::keys;
    use sluice::task::ClaimedTask;
    let redis = RedisServer::start();
    let proxy = LossyProxy::start(&redis);
    let store = Store::new(&proxy.url(), Duration::from_secs(1)).expect("store");
    let dir = TempDir::new("ack");
    let log_path = dir.path().join("log.jsonl");
    let runner = Runner {
        store: store.clone(),
        log: std::sync::Arc::new(CompletionLog::open(&log_path).expect("log")),
        clock: store.clock(),
        lease: Duration::from_secs(60),
        task_ttl: Duration::from_secs(60),
        tracker: tokio_util::task::TaskTracker::new(),
    };
    let reserved = store.reserve(&new_task("k1", "kate"), &SlotRule::default(), runner.lease).await;
    let Ok(Reserved::Admitted { slot_ms, .. }) = reserved else { panic!("{reserved:?}") };
    proxy.lose_next_request();
    let task = ClaimedTask { task_id: "k1".into(), user_id: "kate".into(), run_at: slot_ms };
    runner.run(&task).await.expect("run");
    eventually(Duration::from_secs(5), "k1's acknowledgement to be retried", || {
        redis.cli(&["ZSCORE", keys::LEASE, "k1"]).is_empty().then_some(())
    })
    .await;
    assert_eq!(read_log(&log_path).len(), 1);
    assert_eq!(store.task("k1").await.expect("read").map(|v| v.status), Some(TaskState::Completed));
}

/// A task record of another type (data the scripts did not write) is dropped by the
/// claim, with a line in Redis's log; the due and expired tasks beside it are leased and
/// returned, not lost with it (nothing rolls back a script's writes before an error).
#[tokio::test]
async fn a_claim_drops_a_foreign_record_and_keeps_the_rest() {
    use sluice::store::keys;
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    for id in ["f1", "f2", "f3"] {
        redis.cli(&["HSET", &keys::task(id), "user_id", "fay", "payload", "null", "run_at", "1000"]);
        redis.cli(&["ZADD", keys::DUE, "1000", id]);
    }
    // f4 was running, and its lease ran out long ago.
    redis.cli(&["ZADD", keys::LEASE, "1000", "f4"]);
    for id in ["f2", "f4"] {
        redis.cli(&["DEL", &keys::task(id)]);
        redis.cli(&["SET", &keys::task(id), "not a record"]);
    }
    let claimed = store.claim(10, Duration::from_secs(60)).await.expect("claim").tasks;
    let ids: Vec<&str> = claimed.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["f1", "f3"]);
    let leased = redis.cli(&["ZRANGE", keys::LEASE, "0", "-1"]);
    assert_eq!(leased.lines().collect::<Vec<_>>(), ["f1", "f3"]);
    assert_eq!(redis.cli(&["ZCARD", keys::DUE]), "0");
}

/// Tasks an earlier version left in its 16 shards move into the one due index and lease
/// set with their scores, and are then claimed like any other (an expired lease first
/// goes back to the queue).
#[tokio::test]
async fn an_earlier_versions_shards_are_adopted() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let record = |id: &str, user: &str, run_at: &str| {
        redis.cli(&["HSET", &format!("sluice:task:{{{id}}}"), "user_id", user, "payload", "null", "run_at", run_at]);
        redis.cli(&["HSET", &format!("sluice:task:{{{id}}}"), "created_at", "1000", "state", "queued"]);
    };
    record("old1", "ann", "1000");
    redis.cli(&["ZADD", "sluice:due:{5}", "1000", "old1"]);
    record("old2", "bob", "2000");
    redis.cli(&["ZADD", "sluice:lease:{12}", "3000", "old2"]);
    assert_eq!(store.adopt_shards().await.expect("adopt"), 2);
    assert_eq!(store.adopt_shards().await.expect("adopt again"), 0);
    assert_eq!(redis.cli(&["EXISTS", "sluice:due:{5}", "sluice:lease:{12}"]).trim(), "0");
    assert_eq!(store.task("old2").await.expect("read").map(|v| v.status), Some(TaskState::Running));

    let claimed = store.claim(10, Duration::from_secs(5)).await.expect("claim").tasks;
    let got: Vec<(&str, &str, i64)> =
        claimed.iter().map(|t| (t.task_id.as_str(), t.user_id.as_str(), t.run_at)).collect();
    assert_eq!(got, [("old1", "ann", 1000), ("old2", "bob", 2000)]);
}

/// A user's start list outlives its newest start's longest window, on every reservation:
/// also right after a policy change makes the longest window longer (the history the new
/// window needs must not expire on the old window's schedule). It is renewed with one
/// longest window to spare, so an idle user's list goes at most that much later. A policy
/// that shortens its windows again leaves the expiry as it was.
#[tokio::test]
async fn a_users_starts_outlive_a_longer_window_after_a_policy_change() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let key = sluice::store::keys::starts("grows");
    let short = vec![(1, 100), (5, 1000)];
    let long = vec![(1, 100), (5, 1000), (50, 600_000)];
    for (i, windows) in [&short, &short, &short, &long, &long].into_iter().enumerate() {
        let task = new_task(format!("g{i}"), "grows");
        let rule = SlotRule { windows: windows.clone(), ..SlotRule::default() };
        let (slot, now) = stored(store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve"));
        let longest = windows.iter().map(|w| w.1 as i64).max().expect("windows");
        let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().expect("ttl");
        assert!(ttl >= slot + longest - now - 250, "task {i}: ttl {ttl} ms, needs {} ms", slot + longest - now);
        assert!(ttl <= slot + 2 * longest - now, "task {i}: ttl {ttl} ms, at most {} ms", slot + 2 * longest - now);
    }
    let task = new_task("g5", "grows");
    let rule = SlotRule { windows: short, ..SlotRule::default() };
    stored(store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve"));
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().expect("ttl");
    assert!(ttl > 600_000, "back to the short windows: ttl {ttl} ms, the long window's history cut");
}

/// A start entry that `reserve.lua` did not write (`start ms:task id`) fails the reservation:
/// the user's history is unknown, which must not read as a user without history. The
/// failure is that task's alone: the others in its batch are stored and answered.
#[tokio::test]
async fn a_malformed_start_entry_fails_the_reservation() {
    use sluice::store::keys;
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    redis.cli(&["RPUSH", &keys::starts("bad"), "garbage"]);
    let rule = SlotRule { windows: vec![(1, 1000)], ..SlotRule::default() };
    let lease = Duration::from_secs(60);
    let reserve = |id: &str, user: &str| {
        let (store, task, rule) = (store.clone(), new_task(id, user), rule.clone());
        async move { store.reserve(&task, &rule, lease).await }
    };
    // Made in one poll of a single-threaded runtime, the three go to Redis as one batch.
    let (before, bad, after) = tokio::join!(reserve("g1", "good"), reserve("b1", "bad"), reserve("g2", "good"));
    assert!(matches!(&bad, Err(StoreError::BadReply(e)) if e.contains("did not write")), "{bad:?}");
    assert_eq!(redis.cli(&["EXISTS", &keys::task("b1")]), "0", "stored over a malformed history");
    for (id, got) in [("g1", before), ("g2", after)] {
        assert!(matches!(got, Ok(Reserved::Admitted { .. } | Reserved::Queued { .. })), "{id}: {got:?}");
        assert_eq!(redis.cli(&["EXISTS", &keys::task(id)]), "1", "{id} not stored");
    }
    // The same for the entry a window's limit reads (here the 20th newest, behind 19 starts
    // of the last minute): it must not read as fewer than 20 starts.
    let now = 1_000_000_000;
    let mut entries = vec!["RPUSH".to_owned(), keys::starts("bad20"), "garbage".to_owned()];
    entries.extend((0..19).map(|i| format!("{}:old{i}", now - 50_000 + i * 1000)));
    redis.cli(&entries.iter().map(String::as_str).collect::<Vec<_>>());
    let rule = SlotRule { windows: vec![(1, 1000), (20, 60_000)], now_ms: Some(now), ..SlotRule::default() };
    let got = store.reserve(&new_task("b20", "bad20"), &rule, lease).await;
    assert!(matches!(&got, Err(StoreError::BadReply(_))), "reserved over a malformed 20th start: {got:?}");
    assert_eq!(redis.cli(&["EXISTS", &keys::task("b20")]), "0", "stored over a malformed history");
    // A task key of another type fails the task's first write: nothing of it is kept.
    redis.cli(&["SET", &keys::task("w1"), "foreign"]);
    let rule = SlotRule { windows: vec![(1, 1000)], ..SlotRule::default() };
    let got = store.reserve(&new_task("w1", "wrongtype"), &rule, lease).await;
    assert!(matches!(&got, Err(StoreError::BadReply(_))), "{got:?}");
    assert_eq!(redis.cli(&["EXISTS", &keys::starts("wrongtype")]), "0", "a start kept for a failed task");
    assert_eq!(redis.cli(&["ZSCORE", keys::LEASE, "w1"]), "", "a failed task leased");
    // One that no window reads any more goes with the old starts when they are forgotten.
    redis.cli(&["RPUSH", &keys::starts("oldbad"), "garbage", &format!("{}:t0", now - 5000)]);
    let rule = SlotRule { windows: vec![(1, 1000)], now_ms: Some(now), ..SlotRule::default() };
    stored(store.reserve(&new_task("t1", "oldbad"), &rule, lease).await.expect("reserve past an old malformed start"));
    assert_eq!(redis.cli(&["LRANGE", &keys::starts("oldbad"), "0", "-1"]), format!("{now}:t1"));
}

/// Versions before the starts list kept a user's starts in a zset under the same key: the
/// first reservation with windows that meets one rewrites it as a list, oldest first, keeps
/// its expiry, and decides with the history it held, even when it then stores nothing.
#[tokio::test]
async fn an_earlier_versions_start_set_is_read_and_rewritten() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let key = sluice::store::keys::starts("old");
    // Three starts in the last second, out of insertion order: a limit of 3 per 1000 ms
    // holds the next start until the oldest of them leaves the window.
    for (start, id) in [(BASE_MS - 500, "o2"), (BASE_MS - 900, "o1"), (BASE_MS - 100, "o3")] {
        redis.cli(&["ZADD", &key, &start.to_string(), id]);
    }
    let task = new_task("n1", "old");
    let rule = SlotRule { windows: vec![(3, 1000)], now_ms: Some(BASE_MS), ..SlotRule::default() };
    let (slot, _) = stored(store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve"));
    assert_eq!(slot, BASE_MS + 100, "the oldest old start leaves the window at +100 ms");
    assert_eq!(redis.cli(&["TYPE", &key]), "list");
    let want: Vec<String> = [(-900, "o1"), (-500, "o2"), (-100, "o3"), (100, "n1")]
        .iter()
        .map(|(at, id)| format!("{}:{id}", BASE_MS + at))
        .collect();
    assert_eq!(redis.cli(&["LRANGE", &key, "0", "-1"]), want.join("\n"));

    // A reservation too far out stores nothing, but the rewritten list keeps the zset's expiry.
    let key = sluice::store::keys::starts("old-idle");
    redis.cli(&["ZADD", &key, &(BASE_MS - 100).to_string(), "i1"]);
    redis.cli(&["PEXPIRE", &key, "50000"]);
    let task = new_task("n2", "old-idle");
    let rule = SlotRule { windows: vec![(1, 1000)], max_delay_ms: Some(0), now_ms: Some(BASE_MS), ..rule };
    let got = store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve");
    assert_eq!(got, Reserved::TooFar { slot_ms: BASE_MS + 900, now_ms: BASE_MS });
    assert_eq!(redis.cli(&["LRANGE", &key, "0", "-1"]), format!("{}:i1", BASE_MS - 100));
    let ttl: i64 = redis.cli(&["PTTL", &key]).parse().expect("ttl");
    assert!((40_000..=50_000).contains(&ttl), "the rewritten list's ttl is {ttl} ms");
}

/// A cancelled reservation gives back its own start and no other, even one at the same
/// time; cancelling it again changes nothing.
#[tokio::test]
async fn a_cancel_frees_its_own_start_only() {
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    let key = sluice::store::keys::starts("ca");
    let rule = SlotRule { windows: vec![(2, 1000)], now_ms: Some(BASE_MS), ..SlotRule::default() };
    let mut slots = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let task = new_task(id, "ca");
        slots.push(stored(store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve")).0);
    }
    assert_eq!(slots, [BASE_MS, BASE_MS, BASE_MS + 1000], "two share the first start");
    let c2 = Reserved::Admitted { slot_ms: BASE_MS, now_ms: BASE_MS };
    for _ in 0..2 {
        assert!(
            store.cancel("c2", "ca", c2, Duration::from_secs(60)).await.expect("cancel"),
            "an admitted task holding its own lease is undone"
        );
        let want = [format!("{BASE_MS}:c1"), format!("{}:c3", BASE_MS + 1000)];
        assert_eq!(redis.cli(&["LRANGE", &key, "0", "-1"]), want.join("\n"));
        assert_eq!(redis.cli(&["EXISTS", &sluice::store::keys::task("c2")]), "0");
        assert_eq!(redis.cli(&["ZSCORE", sluice::store::keys::LEASE, "c2"]), "", "c2 was admitted: leased");
    }
    assert_eq!(redis.cli(&["ZCARD", sluice::store::keys::LEASE]), "1", "c1 is still leased");

    // A reservation without windows writes no start, so it leaves an earlier version's zset
    // of starts as it was; cancelling it still forgets the task.
    let key = sluice::store::keys::starts("cz");
    redis.cli(&["ZADD", &key, &(BASE_MS - 500).to_string(), "z-old"]);
    let task = new_task("z1", "cz");
    let rule = SlotRule { bucket: Some((1000, 1)), now_ms: Some(BASE_MS), ..SlotRule::default() };
    let reserved = store.reserve(&task, &rule, Duration::from_secs(60)).await.expect("reserve");
    assert!(store.cancel("z1", "cz", reserved, Duration::from_secs(60)).await.expect("cancel beside an old zset"));
    assert_eq!(redis.cli(&["ZRANGE", &key, "0", "-1"]), "z-old");
    assert_eq!(redis.cli(&["EXISTS", &sluice::store::keys::task("z1")]), "0");
}

/// A task a consumer claimed before its cancel came (queued, or admitted and its lease run
/// out) is running: the cancel leaves it, and its start, as they are (forgetting a start
/// that happened would let the user start again too soon), and says so.
#[tokio::test]
async fn a_cancel_leaves_a_claimed_task_and_its_start() {
    use sluice::store::keys;
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(2)).expect("store");
    // Starts in 2001 by the test's clock: long due by Redis's.
    let past = 1_000_000_000_000;
    let rule = SlotRule { windows: vec![(1, 1000)], now_ms: Some(past), ..SlotRule::default() };
    let lease = Duration::from_secs(60);
    stored(store.reserve(&new_task("k1", "ck"), &rule, lease).await.expect("reserve"));
    let queued = store.reserve(&new_task("k2", "ck"), &rule, lease).await.expect("reserve");
    assert!(matches!(queued, Reserved::Queued { slot_ms, .. } if slot_ms == past + 1000), "{queued:?}");
    // (k1's lease, 60 s from 2001, has run out too: it is claimed again beside k2.)
    let claim = store.claim(16, lease).await.expect("claim");
    assert!(claim.tasks.iter().any(|t| t.task_id == "k2"), "{:?}", claim.tasks);
    assert!(!store.cancel("k2", "ck", queued, lease).await.expect("cancel"), "a claimed task was undone");
    let k1 = Reserved::Admitted { slot_ms: past, now_ms: past };
    assert!(!store.cancel("k1", "ck", k1, lease).await.expect("cancel"), "a task claimed again was undone");
    let starts = redis.cli(&["LRANGE", &keys::starts("ck"), "0", "-1"]);
    assert_eq!(starts, format!("{past}:k1\n{}:k2", past + 1000));
    assert_eq!(redis.cli(&["EXISTS", &keys::task("k2")]), "1");
    assert_ne!(redis.cli(&["ZSCORE", keys::LEASE, "k2"]), "", "its lease is gone");
    // Still queued (not claimed yet), a task is undone.
    let queued = store.reserve(&new_task("k3", "ck"), &rule, lease).await.expect("reserve");
    assert!(matches!(queued, Reserved::Queued { .. }), "{queued:?}");
    assert!(store.cancel("k3", "ck", queued, lease).await.expect("cancel"));
    assert_eq!(redis.cli(&["EXISTS", &keys::task("k3")]), "0");
    assert_eq!(redis.cli(&["ZSCORE", keys::DUE, "k3"]), "");
}

/// Keep Redis busy for 2 s with a script while two reservations, one window each, come in
/// 200 ms apart on `store` (timeout 1 s), from the start of the stall: the first one's
/// batch goes out at once and times out at 1 s; the second waits behind it, goes out then,
/// and is answered when Redis wakes at 2 s, after its own caller gave up at 1.2 s. Both
/// callers get `Unavailable`.
async fn stall_two(redis: &RedisServer, store: &Store, first: &NewTask, second: &NewTask) {
    // Connected, and the script loaded, before Redis stalls.
    let warm = new_task(format!("{}-warm", first.task_id), "warm");
    store.reserve(&warm, &SlotRule::default(), Duration::from_secs(60)).await.expect("warm-up");
    redis.cli(&["DEL", &sluice::store::keys::task(&warm.task_id)]);
    let blocker = redis.stall(2_000);
    let lease = Duration::from_secs(60);
    let rule = SlotRule { windows: vec![(1, 1000)], ..SlotRule::default() };
    let first = tokio::spawn({
        let (store, first, rule) = (store.clone(), first.clone(), rule.clone());
        async move { store.reserve(&first, &rule, lease).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = store.reserve(second, &rule, lease).await;
    assert!(matches!(second, Err(StoreError::Unavailable(_))), "{second:?}");
    let first = first.await.expect("task");
    assert!(matches!(first, Err(StoreError::Unavailable(_))), "{first:?}");
    assert!(blocker.join().expect("thread"), "the busy script did not run");
    // The stalled batches run, or are refused, as Redis wakes; give a cancel a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// A caller that gave up on its reservation (and answered 503) finds nothing of it stored,
/// though Redis ran both stalled batches when it woke.
#[tokio::test]
async fn a_reservation_whose_caller_gave_up_leaves_nothing_stored() {
    use sluice::store::keys;
    let redis = RedisServer::start();
    let stored_ids = || redis.cli(&["KEYS", &format!("{}*", keys::TASK_PREFIX)]);
    // With the clock aligned, each batch carries its give-up time and Redis refuses both.
    let store = Store::new(&redis.url(), Duration::from_secs(1)).expect("store");
    store.clock().sync(&store).await.expect("clock");
    stall_two(&redis, &store, &new_task("a1", "stalled-a"), &new_task("a2", "stalled-a")).await;
    assert_eq!(stored_ids(), "", "stored after their callers gave up");
    assert_eq!(redis.cli(&["EXISTS", &keys::starts("stalled-a")]), "0");
    // Before the clock is aligned there is no give-up time, and Redis runs both batches
    // when it wakes: the first answers after its batch timed out here, the second after
    // its caller gave up. Both are cancelled.
    let store = Store::new(&redis.url(), Duration::from_secs(1)).expect("store");
    stall_two(&redis, &store, &new_task("b1", "stalled-b"), &new_task("b2", "stalled-b")).await;
    for id in ["b1", "b2"] {
        assert_eq!(redis.cli(&["EXISTS", &keys::task(id)]), "0", "{id} was not cancelled");
        assert_eq!(redis.cli(&["ZSCORE", keys::DUE, id]), "", "{id} is still queued");
        assert_eq!(redis.cli(&["ZSCORE", keys::LEASE, id]), "", "{id} is still leased");
    }
    let starts = redis.cli(&["LRANGE", &keys::starts("stalled-b"), "0", "-1"]);
    assert!(!starts.contains(":b1") && !starts.contains(":b2"), "a start is kept: {starts}");
}

/// The give-up time is on the worker's clock: with that clock stepped 10 s behind Redis's,
/// Redis refuses the first batch as late, and the refusal realigns the clock, so the next
/// reservation goes through instead of 10 s of refusals until the periodic alignment.
#[tokio::test]
async fn a_stepped_clock_costs_one_refused_batch() {
    use sluice::store::clock::local_ms;
    let redis = RedisServer::start();
    let store = Store::new(&redis.url(), Duration::from_secs(1)).expect("store");
    let clock = store.clock();
    clock.sync(&store).await.expect("clock");
    let now = local_ms();
    clock.align(now - 1, now - 10_000, now + 1);
    let lease = Duration::from_secs(60);
    let refused = store.reserve(&new_task("s1", "stepped"), &SlotRule::default(), lease).await;
    assert!(matches!(&refused, Err(StoreError::Unavailable(e)) if e.contains("TIMEDOUT")), "{refused:?}");
    assert_eq!(redis.cli(&["EXISTS", &sluice::store::keys::task("s1")]), "0");
    stored(store.reserve(&new_task("s2", "stepped"), &SlotRule::default(), lease).await.expect("realigned"));
}

/// A reservation whose answer was lost (the connection broke after Redis ran it: Redis
/// dying just then, say) is answered 503, and what it stored is cancelled once Redis
/// answers again, so a client's retry cannot run the task twice.
#[tokio::test]
async fn a_reservation_whose_answer_was_lost_leaves_nothing_stored() {
    use sluice::store::keys;
    let redis = RedisServer::start();
    let proxy = LossyProxy::start(&redis);
    let store = Store::new(&proxy.url(), Duration::from_secs(1)).expect("store");
    let lease = Duration::from_secs(60);
    let rule = SlotRule { windows: vec![(1, 1000)], ..SlotRule::default() };
    stored(store.reserve(&new_task("l0", "lost"), &rule, lease).await.expect("warm-up"));
    proxy.lose_next_reply();
    // Queued a second after l0, by a script Redis runs and whose answer never arrives.
    let lost = store.reserve(&new_task("l1", "lost"), &rule, lease).await;
    assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
    eventually(Duration::from_secs(5), "the task whose answer was lost to be cancelled", || {
        (redis.cli(&["EXISTS", &keys::task("l1")]) == "0").then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["ZSCORE", keys::DUE, "l1"]), "", "l1 is still queued");
    let starts = redis.cli(&["LRANGE", &keys::starts("lost"), "0", "-1"]);
    assert!(starts.ends_with(":l0"), "a start of l1 is kept: {starts}");
    // The store serves on, over a new connection; an admitted task whose answer is lost
    // is cancelled too.
    stored(store.reserve(&new_task("l2", "lost"), &rule, lease).await.expect("after the lost answer"));
    proxy.lose_next_reply();
    assert!(store.reserve(&new_task("l3", "lost-3"), &rule, lease).await.is_err());
    eventually(Duration::from_secs(5), "the admitted task whose answer was lost to be cancelled", || {
        (redis.cli(&["EXISTS", &keys::task("l3")]) == "0").then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["ZSCORE", keys::LEASE, "l3"]), "", "l3 is still leased");
    // Admitted, then claimed by a consumer after its lease ran out (Redis was away longer):
    // it runs, so the question about its lost answer leaves it as it is.
    stored(store.reserve(&new_task("l4", "lost-4"), &rule, Duration::from_millis(1)).await.expect("reserve"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claim = store.claim(16, lease).await.expect("claim");
    assert!(claim.tasks.iter().any(|t| t.task_id == "l4"), "{:?}", claim.tasks);
    let cancel = include_str!("../host/src/store/lua/cancel.lua");
    let (starts, task) = (keys::starts("lost-4"), keys::task("l4"));
    let ask = || redis.cli(&["EVAL", cancel, "4", &starts, &task, keys::DUE, keys::LEASE, "l4", "0", "?", "1"]);
    assert_eq!(ask(), "0", "a task a consumer runs was undone");
    assert_eq!(redis.cli(&["EXISTS", &task]), "1");
    // ... or has run already, and acknowledged it.
    let done = Completion { user_id: "lost-4", task_id: "l4", started_at: 1, completed_at: 2 };
    assert_eq!(store.ack(&[done], lease).await.expect("ack"), [true]);
    assert_eq!(ask(), "0", "a task that ran was undone");
    assert!(redis.cli(&["LRANGE", &starts, "0", "-1"]).ends_with(":l4"), "its start is forgotten");
}
