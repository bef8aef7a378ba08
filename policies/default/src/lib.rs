//! The `default` policy: per user, at most 1 task start in any second and 20 in any
//! minute (sliding windows). Over the limit, tasks queue; once a user's backlog would
//! start more than an hour out, new tasks are refused (429) so one user cannot fill Redis.

use limiter_wasm::{Decision, Host, HostError, Request, Window, export_policy};

/// The two windows every user is held to.
pub const WINDOWS: [Window; 2] = [Window::per_second(1), Window::per_minute(20)];
/// Furthest in the future a queued task may be scheduled: one hour.
pub const MAX_BACKLOG_MS: u64 = 3_600_000;

/// Reserve the user's next free start; admit, queue or refuse accordingly.
pub fn decide(_req: &Request<'_>, host: &mut impl Host) -> Result<Decision, HostError> {
    Ok(host.reserve(&WINDOWS, MAX_BACKLOG_MS)?.decision())
}

export_policy!(decide);

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_wasm::testing::MemoryHost;

    fn req(user: &str) -> Request<'_> {
        Request { user_id: user, plan: None, payload: "null" }
    }

    #[test]
    fn burst_of_25_starts_one_per_second_then_after_the_minute() {
        let mut host = MemoryHost::new(0);
        let decisions: Vec<_> = (0..25).map(|_| host.decide(decide, &req("alice"))).collect();
        assert_eq!(decisions[0], Ok(Decision::Admit));
        for (i, d) in decisions.iter().enumerate().skip(1).take(19) {
            assert_eq!(*d, Ok(Decision::Queue { run_at_ms: i as i64 * 1_000 }));
        }
        for (i, d) in decisions.iter().enumerate().skip(20) {
            assert_eq!(*d, Ok(Decision::Queue { run_at_ms: 60_000 + (i as i64 - 20) * 1_000 }));
        }
    }

    #[test]
    fn users_are_independent() {
        let mut host = MemoryHost::new(0);
        assert_eq!(host.decide(decide, &req("a")), Ok(Decision::Admit));
        assert_eq!(host.decide(decide, &req("b")), Ok(Decision::Admit));
    }

    #[test]
    fn backlog_past_an_hour_is_refused_without_consuming() {
        let mut host = MemoryHost::new(0);
        // 20 per minute: 3,600 s of backlog is 1,200 tasks; the rest are refused.
        let admitted =
            (0..1_300).filter(|_| !matches!(host.decide(decide, &req("a")), Ok(Decision::Reject { .. }))).count();
        assert_eq!(admitted, 1_201);
        host.advance(60_000);
        assert!(matches!(host.decide(decide, &req("a")), Ok(Decision::Queue { .. })));
    }
}
