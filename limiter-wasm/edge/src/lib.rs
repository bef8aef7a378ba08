//! The example policies for JS edge runtimes (Workers-style isolates), through
//! wasm-bindgen. The decision logic is the policies' own; the counters live on the JS
//! side, in an object implementing [`JsHost`]. The Sluice host does not load this build:
//! it loads the plain ABI modules from `just build-policies`.
//!
//! Each `decide_*` returns `[kind, value]`: kind 0 admit, 1 queue (value = run-at ms),
//! 2 reject (value = retry-after ms), 3 error.

use limiter_wasm::{Bucket, Decision, Host, HostError, Level, Request, Reservation, Window};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// The JS side's counters. `reserve(windows, maxDelayMs)` takes `[limit, windowMs, ...]`;
    /// `reserveBucket(intervalMs, burst, maxDelayMs)`; both return `[code, slotMs, nowMs]`
    /// with the codes of the ABI (0 reserved, 1 too far, negative errors).
    pub type JsHost;
    #[wasm_bindgen(method)]
    fn reserve(this: &JsHost, windows: Vec<f64>, max_delay_ms: f64) -> Vec<f64>;
    #[wasm_bindgen(method, js_name = reserveBucket)]
    fn reserve_bucket(this: &JsHost, interval_ms: f64, burst: f64, max_delay_ms: f64) -> Vec<f64>;
    #[wasm_bindgen(method, js_name = nowMs)]
    fn now_ms(this: &JsHost) -> f64;
    #[wasm_bindgen(method)]
    fn log(this: &JsHost, level: u32, message: &str);
}

/// [`Host`] over the JS object.
struct EdgeHost<'a>(&'a JsHost);

fn reservation(answer: &[f64], max_delay_ms: u64) -> Result<Reservation, HostError> {
    let (code, slot_ms, now_ms) = match answer {
        [code, slot, now] => (*code as i32, *slot as i64, *now as i64),
        _ => return Err(HostError::BadPointer),
    };
    match code {
        limiter_wasm::abi::RESERVE_RESERVED => Ok(Reservation::Reserved { slot_ms, now_ms }),
        limiter_wasm::abi::RESERVE_TOO_FAR => Ok(Reservation::TooFar { slot_ms, now_ms, max_delay_ms }),
        err => Err(HostError::from_code(err)),
    }
}

impl Host for EdgeHost<'_> {
    fn reserve(&mut self, windows: &[Window], max_delay_ms: u64) -> Result<Reservation, HostError> {
        let flat = windows.iter().flat_map(|w| [w.limit as f64, w.window_ms as f64]).collect();
        reservation(&self.0.reserve(flat, max_delay_ms as f64), max_delay_ms)
    }

    fn reserve_bucket(&mut self, bucket: Bucket, max_delay_ms: u64) -> Result<Reservation, HostError> {
        let answer = self.0.reserve_bucket(bucket.interval_ms as f64, bucket.burst as f64, max_delay_ms as f64);
        reservation(&answer, max_delay_ms)
    }

    fn now_ms(&self) -> i64 {
        self.0.now_ms() as i64
    }

    fn log(&self, level: Level, message: &str) {
        self.0.log(level as u32, message);
    }
}

/// `[kind, value]` of a decision, as documented at the top.
pub fn encode(decision: Result<Decision, HostError>) -> Vec<f64> {
    match decision {
        Ok(Decision::Admit) => vec![0.0, 0.0],
        Ok(Decision::Queue { run_at_ms }) => vec![1.0, run_at_ms as f64],
        Ok(Decision::Reject { retry_after_ms, .. }) => vec![2.0, retry_after_ms as f64],
        Err(_) => vec![3.0, 0.0],
    }
}

fn request<'a>(user_id: &'a str, plan: &'a str, payload: &'a str) -> Request<'a> {
    Request { user_id, plan: (!plan.is_empty()).then_some(plan), payload }
}

/// The `default` policy (1/s, 20/min).
#[wasm_bindgen]
pub fn decide_default(user_id: &str, plan: &str, payload: &str, host: &JsHost) -> Vec<f64> {
    encode(policy_default::decide(&request(user_id, plan, payload), &mut EdgeHost(host)))
}

/// The `tiered` policy (limits by plan).
#[wasm_bindgen]
pub fn decide_tiered(user_id: &str, plan: &str, payload: &str, host: &JsHost) -> Vec<f64> {
    encode(policy_tiered::decide(&request(user_id, plan, payload), &mut EdgeHost(host)))
}

/// The `burst` policy (token bucket of 10, one per second).
#[wasm_bindgen]
pub fn decide_burst(user_id: &str, plan: &str, payload: &str, host: &JsHost) -> Vec<f64> {
    encode(policy_burst::decide(&request(user_id, plan, payload), &mut EdgeHost(host)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_wasm::testing::MemoryHost;
    use std::collections::HashMap;

    type Policy = fn(&Request<'_>, &mut MemoryHost) -> Result<Decision, HostError>;

    /// Run the edge script through the native double and write the decisions for the Node
    /// test (`tests/edge/edge.test.mjs`) to compare against.
    #[test]
    fn native_double_decisions_for_the_edge_script() {
        let script: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/edge/script.json")).expect("json");
        let policies: HashMap<&str, Policy> = HashMap::from([
            ("default", policy_default::decide as Policy),
            ("tiered", policy_tiered::decide),
            ("burst", policy_burst::decide),
        ]);
        let mut hosts: HashMap<String, MemoryHost> = HashMap::new();
        let mut decisions = Vec::new();
        for call in script["calls"].as_array().expect("calls") {
            let name = call[1].as_str().expect("policy");
            let host = hosts.entry(name.to_owned()).or_default();
            host.set_now(call[0].as_i64().expect("at"));
            let req = request(call[2].as_str().expect("user"), call[3].as_str().expect("plan"), "null");
            decisions.push(encode(host.decide(policies[name], &req)));
        }
        // Spot checks, so the file cannot be garbage: default admits then queues 1 s on.
        assert_eq!((decisions[0].clone(), decisions[1].clone()), (vec![0.0, 0.0], vec![1.0, 1000.0]));
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/edge");
        std::fs::create_dir_all(&out).expect("target/edge");
        std::fs::write(out.join("expected.json"), serde_json::to_string(&decisions).expect("json")).expect("write");
    }
}
