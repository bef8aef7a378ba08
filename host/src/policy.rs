//! Policies: WebAssembly modules that decide admit, queue or reject. `engine` owns
//! wasmtime (configuration, validation, the instance pool, one decision); `host_fns`
//! the functions a policy may import; `registry` the loaded set and the folder watcher.

pub mod engine;
pub mod host_fns;
pub mod registry;

pub use engine::{Engine, Policy};
pub use registry::Registry;

use crate::store::StoreError;

/// A policy's name: the file stem of `<name>.wasm`, `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName(String);

impl PolicyName {
    /// Validate a name.
    pub fn new(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        ok.then(|| Self(raw.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a policy decided, as the host reads it from the decision record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Start now.
    Admit,
    /// Start at this unix ms.
    Queue { run_at_ms: i64 },
    /// Refuse; retry after this many ms.
    Reject { retry_after_ms: u64, reason: String },
}

/// Why a decision could not be made. A reject is a [`Verdict`], not an error.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy used up its fuel (an endless loop, or far too much work).
    #[error("policy ran out of fuel")]
    OutOfFuel,
    /// The policy trapped (a panic, out-of-bounds access, memory exhausted).
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The policy returned an error decision or a malformed record.
    #[error("policy failed: {0}")]
    Failed(String),
    /// Redis failed while the policy was asking the host.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every instance of the policy was busy for longer than a decision may wait for one.
    #[error("no instance of the policy came free within {0} ms")]
    Busy(u64),
    /// No policy of that name is loaded.
    #[error("policy {0} is not loaded")]
    NotLoaded(PolicyName),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(PolicyName::new("default").is_some());
        assert!(PolicyName::new("tier-2_b").is_some());
        for bad in ["", "Default", "../x", "a.wasm", &"x".repeat(65)] {
            assert!(PolicyName::new(bad).is_none(), "{bad}");
        }
    }
}
