//! Test-only policy: per user, 1 start per 200 ms and 5 per 2 s; queues over the limit
//! and refuses a task that would start more than 10 s out. Same code shape as
//! `default`, with windows short enough for schedule tests to run in seconds.

use limiter_wasm::{Decision, Host, HostError, Request, Window, export_policy};

/// The test windows.
pub const WINDOWS: [Window; 2] = [Window::new(1, 200), Window::new(5, 2_000)];
/// Furthest a task may be queued ahead.
pub const MAX_BACKLOG_MS: u64 = 10_000;

/// Reserve the user's next free start.
pub fn decide(_req: &Request<'_>, host: &mut impl Host) -> Result<Decision, HostError> {
    Ok(host.reserve(&WINDOWS, MAX_BACKLOG_MS)?.decision())
}

export_policy!(decide);
