//! An in-memory double of the Sluice host, with a clock the test controls, so policies
//! are tested natively without Redis or wasm. It implements the same reservation rule
//! as the host's Redis script (`host/src/store/lua/reserve.lua`); a shared case table
//! runs against both so they cannot drift.

use crate::{Bucket, Decision, Host, HostError, Level, Request, Reservation, Window};
use std::cell::RefCell;
use std::collections::HashMap;

/// The earliest start `>= now_ms` that keeps every window and FIFO order, given a
/// user's reserved starts in ascending order.
pub fn next_slot(starts: &[i64], windows: &[Window], now_ms: i64) -> i64 {
    let mut slot = now_ms.max(starts.last().copied().unwrap_or(i64::MIN));
    for w in windows {
        // The limit-th most recent start must have left the window.
        if let Some(idx) = starts.len().checked_sub(w.limit as usize) {
            slot = slot.max(starts[idx] + w.window_ms as i64);
        }
    }
    slot
}

/// The earliest start `>= slot_ms` a token bucket allows, given its theoretical arrival
/// time `tat_ms` (GCRA: up to `burst` starts before the TAT).
pub fn bucket_slot(tat_ms: i64, bucket: Bucket, slot_ms: i64) -> i64 {
    slot_ms.max(tat_ms - (bucket.burst as i64 - 1) * bucket.interval_ms as i64)
}

/// One user's state in the double.
#[derive(Debug, Default)]
struct UserState {
    /// Reserved starts, ascending.
    starts: Vec<i64>,
    /// The bucket's theoretical arrival time.
    tat_ms: i64,
}

/// The in-memory host: per-user start logs and buckets, and a settable clock.
#[derive(Debug, Default)]
pub struct MemoryHost {
    now_ms: i64,
    users: HashMap<String, UserState>,
    user: String,
    reserved: bool,
    logs: RefCell<Vec<(Level, String)>>,
}

impl MemoryHost {
    /// A host whose clock reads `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self { now_ms, ..Self::default() }
    }

    /// Set the clock.
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Move the clock forward.
    pub fn advance(&mut self, ms: i64) {
        self.now_ms += ms;
    }

    /// Log lines the policy wrote.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    /// Run `policy` for one request, as the real host does: a reservation followed by a
    /// reject is cancelled.
    pub fn decide<F>(&mut self, policy: F, req: &Request<'_>) -> Result<Decision, HostError>
    where
        F: Fn(&Request<'_>, &mut Self) -> Result<Decision, HostError>,
    {
        self.user = req.user_id.to_string();
        self.reserved = false;
        let decision = policy(req, self);
        if self.reserved && !matches!(decision, Ok(Decision::Admit | Decision::Queue { .. })) {
            // As the host's cancel: forget the start; a bucket's TAT stays advanced.
            self.users.get_mut(&self.user).and_then(|u| u.starts.pop());
        }
        decision
    }
}

impl MemoryHost {
    /// The shared path of both reservations, as `reserve.lua` does it.
    fn take(
        &mut self,
        windows: &[Window],
        bucket: Option<Bucket>,
        max_delay_ms: u64,
    ) -> Result<Reservation, HostError> {
        if self.reserved {
            return Err(HostError::AlreadyReserved);
        }
        let now_ms = self.now_ms;
        let user = self.users.entry(self.user.clone()).or_default();
        let mut slot_ms = next_slot(&user.starts, windows, now_ms);
        let tat_ms = user.tat_ms.max(now_ms);
        if let Some(b) = bucket {
            slot_ms = bucket_slot(tat_ms, b, slot_ms);
        }
        if slot_ms - now_ms > max_delay_ms as i64 {
            return Ok(Reservation::TooFar { slot_ms, now_ms, max_delay_ms });
        }
        if !windows.is_empty() {
            user.starts.push(slot_ms);
        }
        if let Some(b) = bucket {
            user.tat_ms = tat_ms.max(slot_ms) + b.interval_ms as i64;
        }
        self.reserved = true;
        Ok(Reservation::Reserved { slot_ms, now_ms })
    }
}

impl Host for MemoryHost {
    fn reserve(&mut self, windows: &[Window], max_delay_ms: u64) -> Result<Reservation, HostError> {
        let max_delay = i64::try_from(max_delay_ms).unwrap_or(-1);
        crate::codec::decode_windows(&crate::codec::encode_windows(windows), max_delay)
            .map_err(HostError::from_code)?;
        self.take(windows, None, max_delay_ms)
    }

    fn reserve_bucket(&mut self, bucket: Bucket, max_delay_ms: u64) -> Result<Reservation, HostError> {
        let max_delay = i64::try_from(max_delay_ms).unwrap_or(-1);
        crate::codec::validate_bucket(bucket.interval_ms as i64, bucket.burst as i64, max_delay)
            .map_err(HostError::from_code)?;
        self.take(&[], Some(bucket), max_delay_ms)
    }

    fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_respects_every_window_and_fifo() {
        let w = [Window::per_second(1), Window::per_minute(20)];
        assert_eq!(next_slot(&[], &w, 5), 5);
        assert_eq!(next_slot(&[0], &w, 10), 1_000);
        let twenty: Vec<i64> = (0..20).map(|i| i * 1_000).collect();
        assert_eq!(next_slot(&twenty, &w, 19_500), 60_000);
        // FIFO: never before the latest reservation, even with no window in the way.
        assert_eq!(next_slot(&[500], &[Window::new(10, 1)], 100), 500);
    }

    /// Run the shared case table (`cases/reserve.json`) against the double.
    #[test]
    fn shared_cases_hold_for_the_double() {
        let table: serde_json::Value = serde_json::from_str(include_str!("../cases/reserve.json")).expect("valid JSON");
        for case in table["cases"].as_array().expect("cases") {
            let windows: Vec<Window> = case["windows"]
                .as_array()
                .map(|ws| {
                    ws.iter().map(|w| Window::new(w[0].as_u64().expect("limit"), w[1].as_u64().expect("ms"))).collect()
                })
                .unwrap_or_default();
            let bucket = case["bucket"]
                .as_array()
                .map(|b| Bucket::new(b[0].as_u64().expect("ms"), b[1].as_u64().expect("burst")));
            let max_delay = case["max_delay_ms"].as_u64().expect("max_delay_ms");
            let mut host = MemoryHost::new(0);
            for (i, call) in case["calls"].as_array().expect("calls").iter().enumerate() {
                host.set_now(call[0].as_i64().expect("at"));
                let got = std::cell::Cell::new(None);
                let req = Request { user_id: call[1].as_str().expect("user"), plan: None, payload: "null" };
                let _ = host.decide(
                    |_, h| {
                        let r = match bucket {
                            Some(b) => h.reserve_bucket(b, max_delay),
                            None => h.reserve(&windows, max_delay),
                        }?;
                        got.set(Some(r));
                        Ok(r.decision())
                    },
                    &req,
                );
                let got = match got.get().expect("reserved or too far") {
                    Reservation::Reserved { slot_ms, .. } => ("reserved", slot_ms),
                    Reservation::TooFar { slot_ms, .. } => ("too_far", slot_ms),
                };
                let want = (call[2][0].as_str().expect("kind"), call[2][1].as_i64().expect("slot"));
                assert_eq!(got, want, "case {:?}, call {i}", case["name"]);
            }
        }
    }
}
