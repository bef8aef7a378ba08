//! The values a policy sees and returns. Plain data: no ABI details here.

use core::fmt;

/// The request a policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The user the task is for: 1-128 bytes of UTF-8, no control characters.
    pub user_id: &'a str,
    /// The `plan` attribute of the request (`"free"`, `"pro"`, ...), if it named one.
    pub plan: Option<&'a str>,
    /// The task's payload as JSON text (`null` when absent).
    pub payload: &'a str,
}

/// One sliding window: at most `limit` task starts in any `window_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Starts allowed per window.
    pub limit: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

impl Window {
    /// At most `limit` starts in any `window_ms` milliseconds.
    pub const fn new(limit: u64, window_ms: u64) -> Self {
        Self { limit, window_ms }
    }
    /// At most `limit` starts in any second.
    pub const fn per_second(limit: u64) -> Self {
        Self::new(limit, 1_000)
    }
    /// At most `limit` starts in any minute.
    pub const fn per_minute(limit: u64) -> Self {
        Self::new(limit, 60_000)
    }
}

/// A token bucket: up to `burst` starts at once, refilled one per `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Milliseconds to refill one start.
    pub interval_ms: u64,
    /// Starts allowed at once.
    pub burst: u64,
}

impl Bucket {
    /// A bucket of `burst` refilled one start per `interval_ms`.
    pub const fn new(interval_ms: u64, burst: u64) -> Self {
        Self { interval_ms, burst }
    }
}

/// The answer of [`crate::Host::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The task is stored and will start at `slot_ms` (now, if `slot_ms <= now_ms`).
    Reserved { slot_ms: i64, now_ms: i64 },
    /// The earliest start, `slot_ms`, was more than `max_delay_ms` away; nothing consumed.
    TooFar { slot_ms: i64, now_ms: i64, max_delay_ms: u64 },
}

impl Reservation {
    /// The obvious decision: admit or queue a reserved task, reject one too far out
    /// (retry once its start would fall within the allowed delay).
    pub fn decision(self) -> Decision {
        match self {
            Reservation::Reserved { slot_ms, now_ms } if slot_ms <= now_ms => Decision::Admit,
            Reservation::Reserved { slot_ms, .. } => Decision::Queue { run_at_ms: slot_ms },
            Reservation::TooFar { slot_ms, now_ms, max_delay_ms } => {
                let wait = u64::try_from(slot_ms - now_ms).unwrap_or(0);
                Decision::Reject {
                    retry_after_ms: wait.saturating_sub(max_delay_ms).max(1),
                    reason: "backlog full: the next start is too far out".into(),
                }
            }
        }
    }
}

/// What a policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the task now.
    Admit,
    /// Start the task at `run_at_ms` (unix ms).
    Queue { run_at_ms: i64 },
    /// Refuse the task; the client may retry after `retry_after_ms`.
    Reject { retry_after_ms: u64, reason: String },
}

/// An error a host function returned to the policy: the policy asked something invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// A pointer or length outside guest memory, or too many windows.
    BadPointer,
    /// A window's limit or length, or the maximum delay, is out of range.
    BadWindow,
    /// This decision already reserved.
    AlreadyReserved,
    /// A code this SDK does not know.
    Unknown(i32),
}

impl HostError {
    /// The error for an ABI return code.
    pub fn from_code(code: i32) -> Self {
        match code {
            crate::abi::ERR_BAD_POINTER => Self::BadPointer,
            crate::abi::ERR_BAD_WINDOW => Self::BadWindow,
            crate::abi::ERR_ALREADY_RESERVED => Self::AlreadyReserved,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPointer => f.write_str("bad pointer or too many windows"),
            Self::BadWindow => f.write_str("window or delay out of range"),
            Self::AlreadyReserved => f.write_str("this decision already reserved"),
            Self::Unknown(code) => write!(f, "host error code {code}"),
        }
    }
}

/// Log level of [`crate::Host::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Worth knowing.
    Info,
    /// Detail for debugging.
    Debug,
}
