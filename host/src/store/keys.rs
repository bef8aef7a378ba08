//! Every Redis key Sluice uses, built here and nowhere else. One user's keys carry the
//! user id as a hash tag (`{user}`) so they share a Redis Cluster slot; the due index
//! shared by all users is split into [`SHARDS`] keys so no single key is hot.

/// Prefix of every key.
pub const PREFIX: &str = "sluice";
/// Number of due-index and lease shards.
pub const SHARDS: u32 = 16;
/// Prefix of task keys; the task key is this, then `{task id}` (see `claim.lua`).
pub const TASK_PREFIX: &str = "sluice:task:";

/// A user's reserved start times (zset: task id -> start ms).
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

/// Due index of one shard (zset: task id -> run-at ms).
pub fn due(shard: u32) -> String {
    format!("{PREFIX}:due:{{{shard}}}")
}

/// Lease set of one shard (zset: task id -> lease expiry ms).
pub fn lease(shard: u32) -> String {
    format!("{PREFIX}:lease:{{{shard}}}")
}

/// The shard of a user: FNV-1a of the id, so it is stable across processes and versions.
pub fn shard_of(user: &str) -> u32 {
    let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % u64::from(SHARDS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_share_a_hash_tag() {
        assert_eq!(starts("alice"), "sluice:{alice}:starts");
        assert_eq!(task("t1"), "sluice:task:{t1}");
        assert!(shard_of("alice") < SHARDS);
        assert_eq!(shard_of("alice"), shard_of("alice"));
    }
}
