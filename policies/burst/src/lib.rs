//! The `burst` policy: a token bucket per user, checked with GCRA. A user may start up to
//! 10 tasks at once, then settles to one per second as the bucket refills; over that,
//! tasks queue, and once the backlog would start more than an hour out they are refused.

use limiter_wasm::{Bucket, Decision, Host, HostError, Request, export_policy};

/// Ten at once, refilled one per second.
pub const BUCKET: Bucket = Bucket::new(1_000, 10);
/// Furthest ahead a task may be queued.
pub const MAX_BACKLOG_MS: u64 = 3_600_000;

/// Reserve the start the bucket allows.
pub fn decide(_req: &Request<'_>, host: &mut impl Host) -> Result<Decision, HostError> {
    Ok(host.reserve_bucket(BUCKET, MAX_BACKLOG_MS)?.decision())
}

export_policy!(decide);

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_wasm::testing::MemoryHost;

    const REQ: Request<'static> = Request { user_id: "u", plan: None, payload: "null" };

    #[test]
    fn bursts_ten_then_settles_to_one_per_second() {
        let mut host = MemoryHost::new(0);
        let decisions: Vec<_> = (0..13).map(|_| host.decide(decide, &REQ)).collect();
        assert!(decisions[..10].iter().all(|d| *d == Ok(Decision::Admit)));
        assert_eq!(decisions[10], Ok(Decision::Queue { run_at_ms: 1_000 }));
        assert_eq!(decisions[12], Ok(Decision::Queue { run_at_ms: 3_000 }));
    }

    #[test]
    fn an_idle_bucket_refills() {
        let mut host = MemoryHost::new(0);
        (0..10).for_each(|_| drop(host.decide(decide, &REQ)));
        host.advance(5_000);
        let admitted = (0..10).take_while(|_| host.decide(decide, &REQ) == Ok(Decision::Admit)).count();
        assert_eq!(admitted, 5);
    }
}
