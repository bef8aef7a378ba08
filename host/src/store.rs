//! Redis: the one connection a worker shares, the atomic scripts, and typed calls for
//! the decisions and the queue. Every call is bounded by a timeout, so a dead or slow
//! Redis becomes [`StoreError::Unavailable`] quickly instead of a hang.

pub mod clock;
pub mod keys;
mod reserver;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

use self::clock::Clock;
use crate::completion_log::Completion;
use crate::task::{ClaimedTask, TaskState, TaskView};

/// What went wrong talking to Redis.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time, refused the connection, or failed the command.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis is at its `maxmemory` and refuses writes that would grow it.
    #[error("redis is full: {0}")]
    Full(String),
    /// Redis answered something the scripts never return.
    #[error("unexpected redis reply: {0}")]
    BadReply(String),
}

impl StoreError {
    fn no_answer(timeout: Duration) -> Self {
        Self::Unavailable(format!("no answer within {} ms", timeout.as_millis()))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // At maxmemory Redis answers `OOM` to a command or script that would grow it; an
        // aborted transaction carries one such answer per refused command; Redis 6 wraps a
        // script's refusal in `ERR Error running script ... -OOM ...`.
        let message = e.to_string();
        let refused = e.into_server_errors();
        let full = refused.is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == "OOM"))
            || message.contains("-OOM command not allowed");
        if full { Self::Full(message) } else { Self::Unavailable(message) }
    }
}

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/reserve.lua")));
static CANCEL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/cancel.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/claim.lua")));
static ADOPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/adopt.lua")));
static TASK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/task.lua")));
static ACK_WHEN_FULL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store/lua/ack.lua")));

/// A task to reserve a start for.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its id.
    pub task_id: String,
    /// Its user.
    pub user_id: String,
    /// Its payload, JSON text.
    pub payload: String,
}

/// How to pick the start in [`Store::reserve`].
#[derive(Debug, Clone, Default)]
pub struct SlotRule {
    /// (limit, window ms) pairs to respect.
    pub windows: Vec<(u64, u64)>,
    /// Refuse a start further out than this (ms); `None`: unbounded.
    pub max_delay_ms: Option<u64>,
    /// Do not start before this unix ms.
    pub not_before_ms: i64,
    /// A token bucket: (interval ms, burst), checked with GCRA.
    pub bucket: Option<(u64, u64)>,
    /// Decide as if Redis's clock read this (tests of the scripts); `None` in service.
    pub now_ms: Option<i64>,
}

/// The answer of [`Store::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Start now: the task is stored and leased to the caller, which must run it.
    Admitted { slot_ms: i64, now_ms: i64 },
    /// Stored, to start at `slot_ms`.
    Queued { slot_ms: i64, now_ms: i64 },
    /// The earliest start is beyond the maximum delay; nothing was written.
    TooFar { slot_ms: i64, now_ms: i64 },
}

impl Reserved {
    /// The start written for the task, or `None` when nothing was written.
    pub fn stored_slot(self) -> Option<i64> {
        match self {
            Self::Admitted { slot_ms, .. } | Self::Queued { slot_ms, .. } => Some(slot_ms),
            Self::TooFar { .. } => None,
        }
    }
}

/// What one [`Store::claim`] round found.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Redis time of the claim.
    pub now_ms: i64,
    /// Earliest remaining due time or lease expiry, if any.
    pub next_wake_ms: Option<i64>,
    /// The tasks now leased to the caller.
    pub tasks: Vec<ClaimedTask>,
}

/// A worker's handle on Redis; cheap to clone (one multiplexed connection underneath).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    timeout: Duration,
    /// Redis's time scale, kept aligned by whoever calls [`Clock::sync`] (the worker).
    clock: Arc<Clock>,
    /// Where reservations wait for their batch; the batching task starts on first use.
    reserver: Arc<OnceLock<mpsc::UnboundedSender<reserver::Pending>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Store {
    /// Connect lazily: the first command connects, and a lost connection is re-established
    /// by later commands, so a Redis outage heals without a restart.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        // Every call bounds its own wait by `timeout`; the connection keeps waiting longer,
        // so the late answer of a reservation batch can still be read and undone.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout.max(reserver::LATE_ANSWER_WAIT)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { conn, timeout, clock: Arc::default(), reserver: Arc::default() })
    }

    /// The clock on this Redis's time scale.
    pub fn clock(&self) -> Arc<Clock> {
        self.clock.clone()
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        run_on(&self.conn, self.timeout, cmd).await
    }

    /// Reserve a start for `task` and store it, in one atomic step (`reserve.lua`, together
    /// with whatever other reservations of this worker are waiting: see [`reserver`]).
    /// `Unavailable` means nothing was stored (see [`reserver`] for how a late answer is
    /// kept from storing the task), once the clock has been aligned with Redis.
    pub async fn reserve(&self, task: &NewTask, rule: &SlotRule, lease: Duration) -> Result<Reserved, StoreError> {
        let give_up_ms =
            self.clock.is_aligned().then(|| self.clock.now_ms() + (self.timeout * 3 / 4).as_millis() as i64);
        let (pending, mut answer) = reserver::Pending::new(task, rule, lease, give_up_ms);
        let stopped = || StoreError::Unavailable("the reservation task has stopped".into());
        let queue = self.reserver.get_or_init(|| reserver::spawn(self.conn.clone(), self.timeout, self.clock.clone()));
        queue.send(pending).map_err(|_| stopped())?;
        match tokio::time::timeout(self.timeout, &mut answer).await {
            Ok(Ok(reserved)) => reserved,
            Ok(Err(_)) => Err(stopped()),
            // Closed first, so the answer either came in time (and counts) or finds nobody
            // and is cancelled: never stored behind a 503.
            Err(_) => {
                answer.close();
                answer.try_recv().unwrap_or_else(|_| Err(StoreError::no_answer(self.timeout)))
            }
        }
    }

    /// Undo what `reserved`, made with `lease`, stored for the task (`cancel.lua`); whether
    /// it is undone. A task a consumer claimed first (queued, or admitted and its lease run
    /// out) runs, and is left as it is: `false`.
    pub async fn cancel(
        &self,
        task_id: &str,
        user_id: &str,
        reserved: Reserved,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let undo = Undo::Answered(reserved);
        let cancelled = cancel(&self.conn, self.timeout, task_id, user_id, undo, lease.as_millis() as i64).await?;
        Ok(cancelled != Cancelled::Claimed)
    }

    /// Claim up to `max` due tasks and lease them for `lease` (`claim.lua`). Waited for up
    /// to half the lease (at least `REDIS_TIMEOUT_MS`, at most [`reserver::LATE_ANSWER_WAIT`],
    /// as long as the connection waits), not `REDIS_TIMEOUT_MS`: nobody is answered 503 on a
    /// claim, and one that Redis runs after its caller stopped listening (a Redis stalled
    /// past the timeout) leaves its tasks leased to nobody until the lease runs out.
    pub async fn claim(&self, max: usize, lease: Duration) -> Result<Claim, StoreError> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(keys::DUE).key(keys::LEASE).arg(max).arg(lease.as_millis() as u64).arg(keys::TASK_PREFIX);
        let wait = self.timeout.max(lease / 2).min(reserver::LATE_ANSWER_WAIT);
        let reply: Vec<redis::Value> = run_on(&self.conn, wait, async |c| inv.invoke_async(c).await).await?;
        parse_claim(reply)
    }

    /// Mark tasks completed as their completion lines say and end their leases, atomically,
    /// in one round trip. The answer says, per task, whether its lease entry was still there
    /// (`false`: it expired; the task is taken out of the queue it went back to, but if
    /// another worker claimed it meanwhile it runs twice).
    pub async fn ack(&self, done: &[Completion<'_>], keep: Duration) -> Result<Vec<bool>, StoreError> {
        // A plain MULTI/EXEC, not a script: half the Redis CPU of an EVALSHA, and the
        // lease entry removed tells whether the lease was still there.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for run in done {
            let key = keys::task(run.task_id);
            pipe.cmd("ZREM").arg(keys::LEASE).arg(run.task_id);
            pipe.cmd("HSET").arg(&key).arg("started_at").arg(run.started_at);
            pipe.arg("completed_at").arg(run.completed_at).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(keep.as_millis() as u64).ignore();
        }
        let removed: Vec<i64> = match self.run(async |c| pipe.query_async(c).await).await {
            Err(StoreError::Full(_)) => self.ack_when_full(done, keep).await?,
            answer => answer?,
        };
        if removed.len() != done.len() {
            return Err(StoreError::BadReply(format!("ack: {} answers for {} tasks", removed.len(), done.len())));
        }
        let kept: Vec<bool> = removed.into_iter().map(|n| n == 1).collect();
        // A lease that ran out put its task back in the queue: it has run now, so take it
        // out again, or it runs a second time. (Rare: one more round trip, then.)
        let requeued: Vec<&str> =
            done.iter().zip(&kept).filter(|(_, kept)| !**kept).map(|(run, _)| run.task_id).collect();
        if !requeued.is_empty() {
            let unqueue = redis::cmd("ZREM").arg(keys::DUE).arg(&requeued).to_owned();
            if let Err(e) = self.run(async |c| unqueue.query_async::<i64>(c).await).await {
                tracing::warn!("{} run tasks whose lease ran out may run again: {e}", requeued.len());
            }
        }
        Ok(kept)
    }

    /// The same acknowledgement by `ack.lua`, which Redis lets finish at `maxmemory`: else a
    /// full Redis would leave every running task leased, to run again at each expiry.
    async fn ack_when_full(&self, done: &[Completion<'_>], keep: Duration) -> Result<Vec<i64>, StoreError> {
        let mut inv = ACK_WHEN_FULL.prepare_invoke();
        inv.key(keys::LEASE).arg(keys::TASK_PREFIX).arg(keep.as_millis() as u64);
        for run in done {
            inv.arg(run.task_id).arg(run.started_at).arg(run.completed_at);
        }
        self.run(async |c| inv.invoke_async(c).await).await
    }

    /// A task as it is now, if it exists: running while it holds a lease, queued while it
    /// is in the due index (a task whose lease ran out before its ack is queued again even
    /// though its record has the times of that run), else completed once acknowledged.
    /// The three are read in one atomic step.
    pub async fn task(&self, task_id: &str) -> Result<Option<TaskView>, StoreError> {
        let mut inv = TASK.prepare_invoke();
        inv.key(keys::LEASE).key(keys::DUE).key(keys::task(task_id)).arg(task_id);
        let (leased, due, fields): (bool, bool, HashMap<String, String>) =
            self.run(async |c| inv.invoke_async(c).await).await?;
        let status = match (leased, due, fields.contains_key("completed_at")) {
            (true, _, _) => TaskState::Running,
            (false, false, true) => TaskState::Completed,
            _ => TaskState::Queued,
        };
        Ok(task_view(task_id, &fields, status))
    }

    /// Move queued and running tasks that an earlier version left in its shards into the
    /// one due index and lease set (`adopt.lua`); how many entries moved.
    pub async fn adopt_shards(&self) -> Result<u64, StoreError> {
        let mut inv = ADOPT.prepare_invoke();
        inv.key(keys::DUE).key(keys::LEASE).arg(keys::OLD_SHARDS);
        let (dues, leases): (Vec<String>, Vec<String>) = (0..keys::OLD_SHARDS).map(keys::old_shard).unzip();
        for key in dues.iter().chain(&leases) {
            inv.key(key);
        }
        self.run(async |c| inv.invoke_async(c).await).await
    }

    /// Redis's clock, unix ms.
    pub async fn time_ms(&self) -> Result<i64, StoreError> {
        time_ms(&self.conn, self.timeout).await
    }

    /// The value of a Redis `CONFIG GET` parameter, if Redis allows reading it.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let pairs: Vec<String> =
            self.run(async |c| redis::cmd("CONFIG").arg("GET").arg(name).query_async(c).await).await?;
        Ok(pairs.into_iter().nth(1))
    }
}

/// One command on `conn`, bounded by `timeout`. (The reservation task holds a bare
/// connection, not a [`Store`]: the functions below serve both.)
async fn run_on<T: redis::FromRedisValue>(
    conn: &ConnectionManager,
    timeout: Duration,
    cmd: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
) -> Result<T, StoreError> {
    let mut conn = conn.clone();
    match tokio::time::timeout(timeout, cmd(&mut conn)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::no_answer(timeout)),
    }
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancelled {
    /// What the reservation stored is gone.
    Undone,
    /// A consumer has claimed it: it runs, and is left as it is.
    Claimed,
    /// It had stored nothing.
    NothingStored,
}

/// What a cancel is to undo.
#[derive(Debug, Clone, Copy)]
enum Undo {
    /// What a reservation's answer says it stored.
    Answered(Reserved),
    /// Whatever a reservation whose answer was lost stored: the task's record tells.
    Lost,
}

/// Undo what a reservation of the task, made with a lease of `lease_ms`, stored
/// (`cancel.lua`).
async fn cancel(
    conn: &ConnectionManager,
    timeout: Duration,
    task_id: &str,
    user_id: &str,
    undo: Undo,
    lease_ms: i64,
) -> Result<Cancelled, StoreError> {
    let (slot_ms, how) = match undo {
        Undo::Lost => (0, "?"),
        Undo::Answered(reserved) => match reserved.stored_slot() {
            None => return Ok(Cancelled::NothingStored),
            Some(slot) => (slot, if matches!(reserved, Reserved::Queued { .. }) { "1" } else { "0" }),
        },
    };
    let mut inv = CANCEL.prepare_invoke();
    inv.key(keys::starts(user_id)).key(keys::task(task_id)).key(keys::DUE).key(keys::LEASE);
    inv.arg(task_id).arg(slot_ms).arg(how).arg(lease_ms);
    let found: i64 = run_on(conn, timeout, async |c| inv.invoke_async(c).await).await?;
    match found {
        0 => Ok(Cancelled::Claimed),
        1 => Ok(Cancelled::Undone),
        2 => Ok(Cancelled::NothingStored),
        other => Err(StoreError::BadReply(format!("cancel: {other}"))),
    }
}

/// [`Store::time_ms`].
async fn time_ms(conn: &ConnectionManager, timeout: Duration) -> Result<i64, StoreError> {
    let (secs, micros): (i64, i64) = run_on(conn, timeout, async |c| redis::cmd("TIME").query_async(c).await).await?;
    Ok(secs * 1000 + micros / 1000)
}

fn parse_claim(reply: Vec<redis::Value>) -> Result<Claim, StoreError> {
    use redis::FromRedisValue as _;
    let bad = |what: &str| StoreError::BadReply(format!("claim: {what}"));
    let int = |v: &redis::Value| i64::from_redis_value(v.clone()).map_err(|_| bad("integer expected"));
    let (head, rest) = reply.split_at_checked(2).ok_or_else(|| bad("short reply"))?;
    if !rest.len().is_multiple_of(3) {
        return Err(bad("ragged task list"));
    }
    let tasks = rest
        .chunks_exact(3)
        .map(|c| {
            Ok(ClaimedTask {
                task_id: String::from_redis_value(c[0].clone()).map_err(|_| bad("task id"))?,
                user_id: String::from_redis_value(c[1].clone()).map_err(|_| bad("user id"))?,
                run_at: int(&c[2])?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let next = int(&head[1])?;
    Ok(Claim { now_ms: int(&head[0])?, next_wake_ms: (next >= 0).then_some(next), tasks })
}

fn task_view(task_id: &str, f: &HashMap<String, String>, status: TaskState) -> Option<TaskView> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
    let ran = |k: &str| num(k).filter(|_| status == TaskState::Completed);
    Some(TaskView {
        task_id: task_id.to_owned(),
        user_id: f.get("user_id")?.clone(),
        status,
        created_at: num("created_at")?,
        run_at: num("run_at")?,
        started_at: ran("started_at"),
        completed_at: ran("completed_at"),
    })
}
