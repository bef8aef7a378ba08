//! The shared reservation cases (`limiter-wasm/cases/reserve.json`) against the real
//! `reserve.lua` on a real Redis, with the script's clock set per call. The same table
//! runs against the in-memory double in `limiter-wasm`, so the two cannot drift.

use std::time::Duration;

use sluice::store::{NewTask, Reserved, SlotRule, Store};

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
