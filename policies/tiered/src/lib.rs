//! The `tiered` policy: limits by the plan the request names in its `plan` field.
//!
//! | plan         | per second | per minute | longest backlog |
//! |--------------|-----------:|-----------:|----------------:|
//! | `free`       | 1          | 20         | 1 hour          |
//! | `pro`        | 5          | 200        | 1 hour          |
//! | `enterprise` | 50         | 2,000      | 10 minutes      |
//!
//! A missing or unknown plan is `free`. Counters are per user whatever the plan, so a
//! user who changes plan keeps their history.

use limiter_wasm::{Decision, Host, HostError, Request, Window, export_policy};

/// Limits of one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The windows a user of the plan is held to.
    pub windows: [Window; 2],
    /// Furthest ahead a task of the plan may be queued.
    pub max_backlog_ms: u64,
}

/// Limits of the `free` plan (and of unknown plans).
pub const FREE: Plan = Plan { windows: [Window::per_second(1), Window::per_minute(20)], max_backlog_ms: 3_600_000 };
/// Limits of the `pro` plan.
pub const PRO: Plan = Plan { windows: [Window::per_second(5), Window::per_minute(200)], max_backlog_ms: 3_600_000 };
/// Limits of the `enterprise` plan.
pub const ENTERPRISE: Plan =
    Plan { windows: [Window::per_second(50), Window::per_minute(2_000)], max_backlog_ms: 600_000 };

/// The plan a request names; unknown or missing plans are `free`.
pub fn plan_of(req: &Request<'_>) -> Plan {
    match req.plan {
        Some("pro") => PRO,
        Some("enterprise") => ENTERPRISE,
        _ => FREE,
    }
}

/// Reserve the user's next free start under their plan's limits.
pub fn decide(req: &Request<'_>, host: &mut impl Host) -> Result<Decision, HostError> {
    let plan = plan_of(req);
    Ok(host.reserve(&plan.windows, plan.max_backlog_ms)?.decision())
}

export_policy!(decide);

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_wasm::testing::MemoryHost;

    fn req<'a>(user: &'a str, plan: Option<&'a str>) -> Request<'a> {
        Request { user_id: user, plan, payload: "null" }
    }

    /// Of 60 tasks sent at once, how many start within the first second.
    fn started_in_first_second(host: &mut MemoryHost, user: &str, plan: Option<&str>) -> usize {
        (0..60)
            .filter(|_| match host.decide(decide, &req(user, plan)) {
                Ok(Decision::Admit) => true,
                Ok(Decision::Queue { run_at_ms }) => run_at_ms < 1_000,
                _ => false,
            })
            .count()
    }

    #[test]
    fn each_plan_gets_its_rate() {
        let mut host = MemoryHost::new(0);
        assert_eq!(started_in_first_second(&mut host, "f", Some("free")), 1);
        assert_eq!(started_in_first_second(&mut host, "p", Some("pro")), 5);
        assert_eq!(started_in_first_second(&mut host, "e", Some("enterprise")), 50);
    }

    #[test]
    fn unknown_or_missing_plan_is_free() {
        assert_eq!(plan_of(&req("u", None)), FREE);
        assert_eq!(plan_of(&req("u", Some("platinum"))), FREE);
        assert_eq!(plan_of(&req("u", Some("PRO"))), FREE);
    }
}
