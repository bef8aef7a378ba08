//! Every Redis key Sluice uses, built here and nowhere else. One user's keys carry the
//! user id as a hash tag (`{user}`). The due index and the lease set are one key each:
//! the scripts need a single Redis anyway (they touch a user's keys and the queue
//! together), and one index lets a claim take a whole batch with a few commands.

/// Prefix of every key.
pub const PREFIX: &str = "sluice";
/// Prefix of task keys; the task key is this, then `{task id}` (see `claim.lua`).
pub const TASK_PREFIX: &str = "sluice:task:";
/// The due index (zset: queued task id -> run-at ms).
pub const DUE: &str = "sluice:due";
/// The lease set (zset: running task id -> lease expiry ms).
pub const LEASE: &str = "sluice:lease";
/// Versions before commit 6a22c37 split the due index and the lease set into this many
/// shards, `sluice:due:{n}` and `sluice:lease:{n}`; [`crate::store::Store::adopt_shards`]
/// folds them into [`DUE`] and [`LEASE`].
pub const OLD_SHARDS: u32 = 16;

/// A user's reserved starts (list of `start ms:task id`, oldest first; see `reserve.lua`).
pub fn starts(user: &str) -> String {
    format!("{PREFIX}:{{{user}}}:starts")
}

/// A user's token-bucket theoretical arrival time (string, ms).
pub fn bucket(user: &str) -> String {
    format!("{PREFIX}:{{{user}}}:tat")
}

/// A task's record (hash).
pub fn task(task_id: &str) -> String {
    format!("{TASK_PREFIX}{{{task_id}}}")
}

/// Shard `n` of the due index and of the lease set of earlier versions.
pub fn old_shard(n: u32) -> (String, String) {
    (format!("{DUE}:{{{n}}}"), format!("{LEASE}:{{{n}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_share_a_hash_tag() {
        assert_eq!(starts("alice"), "sluice:{alice}:starts");
        assert_eq!(bucket("alice"), "sluice:{alice}:tat");
        assert_eq!(task("t1"), "sluice:task:{t1}");
        assert_eq!(old_shard(3), ("sluice:due:{3}".into(), "sluice:lease:{3}".into()));
    }
}
