//! An in-memory double of the Sluice host, with a clock the test controls, so policies
//! are tested natively without Redis or wasm. It implements the same reservation rule
//! as the host's Redis script (`host/src/store/lua/reserve.lua`); a shared case table
//! runs against both so they cannot drift.

use crate::{Decision, Host, HostError, Level, Request, Reservation, Window};
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

/// The in-memory host: per-user start logs and a settable clock.
#[derive(Debug, Default)]
pub struct MemoryHost {
    now_ms: i64,
    starts: HashMap<String, Vec<i64>>,
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
            self.starts.get_mut(&self.user).and_then(Vec::pop);
        }
        decision
    }
}

impl Host for MemoryHost {
    fn reserve(&mut self, windows: &[Window], max_delay_ms: u64) -> Result<Reservation, HostError> {
        let max_delay = i64::try_from(max_delay_ms).unwrap_or(-1);
        crate::codec::decode_windows(&crate::codec::encode_windows(windows), max_delay)
            .map_err(HostError::from_code)?;
        if self.reserved {
            return Err(HostError::AlreadyReserved);
        }
        let starts = self.starts.entry(self.user.clone()).or_default();
        let slot_ms = next_slot(starts, windows, self.now_ms);
        if slot_ms - self.now_ms > max_delay {
            return Ok(Reservation::TooFar { slot_ms, now_ms: self.now_ms, max_delay_ms });
        }
        starts.push(slot_ms);
        self.reserved = true;
        Ok(Reservation::Reserved { slot_ms, now_ms: self.now_ms })
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
}
