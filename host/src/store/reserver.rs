//! Reservations, coalesced: the reservations a worker has waiting at one moment go to
//! Redis together, as one `reserve.lua` call. A reservation that finds nothing in flight
//! goes at once; under load, the ones that arrive while a call is out wait for the next
//! call, and go to Redis in the order they were made. Redis's fixed cost per script call
//! (argument tables, the reply, the AOF's MULTI/EXEC framing) and the worker's round trips
//! are then paid once per batch, and the decisions inside a batch are the same as if each
//! had been its own call.
//!
//! A caller that gave up (its timeout, which starts when it asks, passed: it answered 503)
//! must not find its task stored behind its back:
//! - a reservation whose caller is gone before its batch goes out is not sent;
//! - a batch carries the earliest give-up time of its callers, three quarters into their
//!   timeout by Redis's clock, and Redis refuses the whole batch past it. A Redis that
//!   stalls with a batch in its socket runs it when it wakes, after the batch has timed
//!   out here and nobody is left to read the answer;
//! - a reservation stored in time whose answer still finds its caller gone (the answer
//!   was slow to come back) is cancelled, after the batch's other callers are answered.
//!   A batch that timed out here is still listened for, up to [`LATE_ANSWER_WAIT`], and
//!   what its late answer says was stored is cancelled too. (A queued task whose start
//!   came within that delay may have been claimed and run by then: the log says so.)
//! - a batch whose connection broke while it was out (Redis died or restarted after
//!   running it, say) has lost its answer: once Redis answers again, each of its tasks'
//!   records tells what was stored, and that is cancelled.
//!
//! One waiting caller past its give-up time would make Redis refuse its whole batch, so
//! it is answered 503 here instead, without being sent. The give-up time is on the
//! worker's clock, aligned with Redis's: a refused batch realigns it (at most once a
//! second), so a clock stepped on either machine costs a batch, not the 10 s until the
//! consumer's next alignment.

use redis::aio::ConnectionManager;
use redis::{RedisFuture, RedisWrite, ToRedisArgs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::clock::Clock;
use super::{Cancelled, NewTask, RESERVE, Reserved, SlotRule, StoreError, Undo, keys};

/// Most reservations in one script call.
const MAX_BATCH: usize = 64;
/// The error code `reserve.lua` refuses a batch past its give-up time with.
const GIVEN_UP: &str = "TIMEDOUT";
/// Least time between two realignments after refusals.
const REALIGN_EVERY: Duration = Duration::from_secs(1);
/// How long the answer of a batch that timed out is still waited for, to undo what it
/// stored. The connection waits as long (see `Store::new`); every call bounds its own wait.
pub(super) const LATE_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How often Redis is asked again about a batch whose answer was lost, while it does not answer.
const RETRY_LOST: Duration = Duration::from_millis(250);

/// One reservation waiting for its batch: its own keys and arguments as `reserve.lua`
/// takes them (the due index and lease set go once per batch), and where its answer goes.
pub(super) struct Pending {
    keys: [String; 3],
    /// The task id first, then its user (see [`ids`]).
    args: Vec<Vec<u8>>,
    /// When its caller gives up, unix ms on Redis's clock, if the clock is aligned.
    give_up_ms: Option<i64>,
    reply: oneshot::Sender<Result<Reserved, StoreError>>,
}

impl Pending {
    /// Encode a reservation; its answer will arrive on the returned receiver.
    pub(super) fn new(
        task: &NewTask,
        rule: &SlotRule,
        lease: Duration,
        give_up_ms: Option<i64>,
    ) -> (Self, oneshot::Receiver<Result<Reserved, StoreError>>) {
        let keys = [keys::starts(&task.user_id), keys::task(&task.task_id), keys::bucket(&task.user_id)];
        let mut args = Vec::with_capacity(10 + 2 * rule.windows.len());
        let (interval, burst) = rule.bucket.unwrap_or((0, 1));
        // reserve.lua takes '-1' for no maximum and reads a limit of '1' without a lookup:
        // a delay must not wrap negative, and a limit is at least 1 (policies' are checked).
        let max_delay = rule.max_delay_ms.map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX));
        debug_assert!(rule.windows.iter().all(|&(limit, _)| limit >= 1), "window limits start at 1");
        task.task_id.write_redis_args(&mut args);
        task.user_id.write_redis_args(&mut args);
        task.payload.write_redis_args(&mut args);
        let now = rule.now_ms.unwrap_or(0);
        let windows = rule.windows.len() as i64;
        for n in [max_delay, rule.not_before_ms, lease.as_millis() as i64, now, interval as i64, burst as i64, windows]
        {
            args.write_arg_fmt(n);
        }
        for (limit, window_ms) in &rule.windows {
            args.write_arg_fmt(limit);
            args.write_arg_fmt(window_ms);
        }
        let (reply, answer) = oneshot::channel();
        (Self { keys, args, give_up_ms, reply }, answer)
    }
}

/// Whether `e` says the connection broke with a call out: Redis may have run it. (Not a
/// refused connection, when nothing was sent, nor a connect that timed out.)
fn answer_lost(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_connection_refusal()
}

/// A reservation's task id and user, read back from its first two arguments: wanted only
/// when what it stored must be undone, so not copied for every reservation.
fn ids(args: &[Vec<u8>]) -> (String, String) {
    let text = |arg: &[u8]| String::from_utf8_lossy(arg).into_owned();
    (text(&args[0]), text(&args[1]))
}

/// A reservation's lease, read back from its arguments. (A worker makes every reservation
/// with the one lease it runs tasks with.)
fn lease_ms(args: &[Vec<u8>]) -> i64 {
    std::str::from_utf8(&args[5]).ok().and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// Start the task that batches and sends reservations; it ends when every sender is gone.
pub(super) fn spawn(conn: ConnectionManager, timeout: Duration, clock: Arc<Clock>) -> mpsc::UnboundedSender<Pending> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(conn, timeout, clock, rx));
    tx
}

async fn run(conn: ConnectionManager, timeout: Duration, clock: Arc<Clock>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut realigned: Option<Instant> = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batch.retain(|p| !p.reply.is_closed());
        let now = clock.now_ms();
        let late: Vec<Pending> = batch.extract_if(.., |p| p.give_up_ms.is_some_and(|at| at <= now)).collect();
        answer_all(late, &StoreError::Unavailable("no answer from Redis in time".into()));
        if batch.is_empty() {
            continue;
        }
        let Err(refused) = send(&conn, timeout, &mut batch).await else { continue };
        // Realigned before its callers hear of it, as they may retry at once.
        if realigned.is_none_or(|at| at.elapsed() >= REALIGN_EVERY) {
            realigned = Some(Instant::now());
            if let Err(e) = clock.sync_by(super::time_ms(&conn, timeout)).await {
                tracing::debug!("cannot realign the clock with Redis: {e}");
            }
        }
        answer_all(std::mem::take(&mut batch), &refused);
    }
}

/// Send one batch and answer each of its reservations, leaving `batch` empty; or, if Redis
/// refused the batch as past its give-up time, leave it unanswered and return the error.
async fn send(conn: &ConnectionManager, timeout: Duration, batch: &mut Vec<Pending>) -> Result<(), StoreError> {
    let mut inv = RESERVE.prepare_invoke();
    inv.key(keys::DUE).key(keys::LEASE);
    for pending in batch.iter() {
        for key in &pending.keys {
            inv.key(key);
        }
        for arg in &pending.args {
            inv.arg(arg);
        }
    }
    // After every task's arguments: the batch's give-up time, 0 for none.
    inv.arg(batch.iter().filter_map(|p| p.give_up_ms).min().unwrap_or(0));
    let mut call: RedisFuture<'static, Vec<i64>> = Box::pin({
        let mut conn = conn.clone();
        async move { inv.invoke_async(&mut conn).await }
    });
    let reply: Result<Vec<i64>, StoreError> = match tokio::time::timeout(timeout, &mut call).await {
        Ok(Err(e)) if e.code() == Some(GIVEN_UP) => return Err(e.into()),
        Ok(Err(e)) if answer_lost(&e) => {
            tokio::spawn(undo_lost_answer(conn.clone(), timeout, Unresolved::of(batch)));
            Err(e.into())
        }
        Ok(reply) => reply.map_err(StoreError::from),
        Err(_) => {
            tokio::spawn(undo_late_answer(conn.clone(), timeout, call, Unresolved::of(batch)));
            Err(StoreError::no_answer(timeout))
        }
    };
    match reply {
        Ok(values) if values.len() == 3 * batch.len() => {
            let mut orphans = Vec::new();
            for (pending, v) in batch.drain(..).zip(values.chunks_exact(3)) {
                // Stored, but its caller has given up: undo it once the others are answered.
                if let Err(Ok(reserved)) = pending.reply.send(decode(v[0], v[1], v[2])) {
                    orphans.extend(Orphan::of(ids(&pending.args), reserved, lease_ms(&pending.args)));
                }
            }
            if !orphans.is_empty() {
                tokio::spawn(cancel_orphans(conn.clone(), timeout, orphans));
            }
        }
        Ok(values) => {
            let error = StoreError::BadReply(format!("reserve: {} values for {} tasks", values.len(), batch.len()));
            answer_all(std::mem::take(batch), &error);
        }
        Err(error) => answer_all(std::mem::take(batch), &error),
    }
    Ok(())
}

/// A reservation stored for a caller that had given up.
struct Orphan {
    task_id: String,
    user_id: String,
    reserved: Reserved,
    lease_ms: i64,
}

impl Orphan {
    /// What `reserved`, made with a lease of `lease_ms`, stored for the task `(id, user)`,
    /// if anything.
    fn of((task_id, user_id): (String, String), reserved: Reserved, lease_ms: i64) -> Option<Self> {
        reserved.stored_slot()?;
        Some(Self { task_id, user_id, reserved, lease_ms })
    }
}

/// The tasks (id, user) of a batch that timed out or lost its answer, whose callers were
/// answered 503 while Redis may have stored them: logged if dropped before that is settled
/// (the worker stopping first).
struct Unresolved {
    tasks: Vec<(String, String)>,
    /// The lease the batch's reservations were made with (a worker's one lease).
    lease_ms: i64,
}

impl Unresolved {
    fn of(batch: &[Pending]) -> Self {
        Self { tasks: batch.iter().map(|p| ids(&p.args)).collect(), lease_ms: lease_ms(&batch[0].args) }
    }
}

impl Drop for Unresolved {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            log_unresolved(&self.tasks, "was still unsettled when the worker stopped");
        }
    }
}

fn log_unresolved(tasks: &[(String, String)], what: &str) {
    let ids: Vec<&str> = tasks.iter().map(|(id, _)| id.as_str()).collect();
    tracing::error!(
        task_ids = ?ids,
        "a reservation batch {what}: these tasks may be stored and run though their callers were answered 503"
    );
}

/// Wait for the answer of a batch that timed out (its callers were answered 503), and
/// cancel what it stored.
async fn undo_late_answer(
    conn: ConnectionManager,
    timeout: Duration,
    call: RedisFuture<'static, Vec<i64>>,
    mut pending: Unresolved,
) {
    let answer = tokio::time::timeout(LATE_ANSWER_WAIT, call).await;
    if let Ok(Err(e)) = &answer
        && answer_lost(e)
    {
        return undo_lost_answer(conn, timeout, pending).await;
    }
    let tasks = std::mem::take(&mut pending.tasks);
    let what = match answer {
        Ok(Ok(values)) if values.len() == 3 * tasks.len() => {
            let stored = tasks
                .into_iter()
                .zip(values.chunks_exact(3))
                .filter_map(|(ids, v)| Orphan::of(ids, decode(v[0], v[1], v[2]).ok()?, pending.lease_ms));
            return cancel_orphans(conn, timeout, stored.collect()).await;
        }
        // Refused by Redis (past the give-up time, full): nothing stored.
        Ok(Err(e)) if e.code().is_some() => return,
        Ok(Ok(values)) => format!("that timed out got {} values for {} tasks", values.len(), tasks.len()),
        Ok(Err(e)) => format!("that timed out got the error {e}"),
        Err(_) => format!("that timed out got no answer within {} s", LATE_ANSWER_WAIT.as_secs()),
    };
    log_unresolved(&tasks, &what);
}

/// Once Redis answers again, undo what a batch whose answer was lost stored (its callers
/// were answered 503): each task's record tells whether it was stored, and how. Tried
/// every [`RETRY_LOST`] for up to [`LATE_ANSWER_WAIT`], then logged.
async fn undo_lost_answer(conn: ConnectionManager, timeout: Duration, mut pending: Unresolved) {
    let give_up = Instant::now() + LATE_ANSWER_WAIT;
    // Each task leaves the list once settled, so the drop guard logs the rest.
    while let Some((task_id, user_id)) = pending.tasks.last().cloned() {
        match super::cancel(&conn, timeout, &task_id, &user_id, Undo::Lost, pending.lease_ms).await {
            Ok(found) => {
                log_cancelled(&task_id, found, "before its answer was lost");
                pending.tasks.pop();
            }
            Err(e) if Instant::now() >= give_up => {
                let tasks = std::mem::take(&mut pending.tasks);
                let what = format!(
                    "lost its answer, and Redis could not be asked within {} s: {e}",
                    LATE_ANSWER_WAIT.as_secs()
                );
                return log_unresolved(&tasks, &what);
            }
            Err(_) => tokio::time::sleep(RETRY_LOST).await,
        }
    }
}

/// Cancel reservations stored for callers that had given up.
async fn cancel_orphans(conn: ConnectionManager, timeout: Duration, orphans: Vec<Orphan>) {
    for Orphan { task_id, user_id, reserved, lease_ms } in orphans {
        match super::cancel(&conn, timeout, &task_id, &user_id, Undo::Answered(reserved), lease_ms).await {
            Ok(found) => log_cancelled(&task_id, found, "after its caller gave up"),
            Err(e) => {
                tracing::error!(%task_id, "a task stored after its caller gave up could not be cancelled; it will run: {e}")
            }
        }
    }
}

/// Log what cancelling a task stored `when` (its caller answered 503) found.
fn log_cancelled(task_id: &str, found: Cancelled, when: &str) {
    match found {
        Cancelled::Undone => tracing::warn!(%task_id, "a task stored {when} was cancelled"),
        Cancelled::Claimed => {
            tracing::error!(%task_id, "a task stored {when} was claimed before its cancel: it runs")
        }
        Cancelled::NothingStored => {}
    }
}

fn answer_all(batch: Vec<Pending>, error: &StoreError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}

fn decode(status: i64, slot_ms: i64, now_ms: i64) -> Result<Reserved, StoreError> {
    match status {
        0 => Ok(Reserved::TooFar { slot_ms, now_ms }),
        1 => Ok(Reserved::Admitted { slot_ms, now_ms }),
        2 => Ok(Reserved::Queued { slot_ms, now_ms }),
        3 => Err(StoreError::BadReply(
            "reserve.lua failed on data it did not write under this task's keys (Redis's log names it)".into(),
        )),
        other => Err(StoreError::BadReply(format!("reserve status {other}"))),
    }
}
