//! The Redis-backed queue: `producer` turns a request into a stored task (through the
//! policy), `consumer` claims due tasks with a lease and runs them. Running a task is
//! the same for both: write its completion line, then acknowledge it in Redis.

pub mod consumer;
pub mod producer;

use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use crate::completion_log::{Completion, CompletionLog};
use crate::store::clock::Clock;
use crate::store::{Store, StoreError};
use crate::task::ClaimedTask;

/// First pause before retrying a failed acknowledgement; each retry doubles it.
const ACK_RETRY_FIRST: Duration = Duration::from_millis(25);
/// Longest pause between two attempts of an acknowledgement.
const ACK_RETRY_MAX: Duration = Duration::from_millis(500);

/// When a task ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// Start, unix ms (Redis time scale).
    pub started_at: i64,
    /// End, unix ms.
    pub completed_at: i64,
}

/// Runs claimed tasks: what a worker needs to execute and acknowledge one.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Redis.
    pub store: Store,
    /// The shared completion log.
    pub log: Arc<CompletionLog>,
    /// The Redis-aligned clock.
    pub clock: Arc<Clock>,
    /// Lease taken on claimed tasks.
    pub lease: Duration,
    /// How long a completed task stays readable.
    pub task_ttl: Duration,
    /// The worker's tasks, which a graceful stop waits for: retried acknowledgements too.
    pub tracker: TaskTracker,
}

impl Runner {
    /// Run one task leased to this worker: log it, then acknowledge it. A crash between
    /// the two is the one place a task can run twice (its lease expires, it runs again).
    pub async fn run(&self, task: &ClaimedTask) -> std::io::Result<Ran> {
        let ran = self.run_all(std::slice::from_ref(task)).await?;
        Ok(ran[0])
    }

    /// Run tasks leased to this worker together: one write of all their completion lines,
    /// then one acknowledgement of them all. Only a failed write fails the run: then none
    /// is acknowledged, and each runs again after its lease. The lines once written, the
    /// tasks have run: an acknowledgement that fails is retried in the background.
    pub async fn run_all(&self, tasks: &[ClaimedTask]) -> std::io::Result<Vec<Ran>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // Redis had reached `run_at` before a task could be claimed or admitted, so the
        // start is at least that; the clamp removes the local clock's estimate error.
        let done: Vec<Completion<'_>> = tasks
            .iter()
            .map(|task| {
                let started_at = self.clock.now_ms().max(task.run_at);
                let completed_at = self.clock.now_ms().max(started_at);
                Completion { user_id: &task.user_id, task_id: &task.task_id, started_at, completed_at }
            })
            .collect();
        self.log.append(&done)?;
        match self.store.ack(&done, self.task_ttl).await {
            Ok(kept) => {
                for (run, _) in done.iter().zip(kept).filter(|(_, kept)| !kept) {
                    tracing::warn!(task_id = %run.task_id, "lease lost before ack: the task may have run twice");
                }
            }
            Err(e) => {
                let owned = done
                    .iter()
                    .map(|run| (run.user_id.to_owned(), run.task_id.to_owned(), run.started_at, run.completed_at))
                    .collect();
                self.tracker.spawn(self.clone().ack_later(owned, e));
            }
        }
        let ran = done.iter().map(|run| Ran { started_at: run.started_at, completed_at: run.completed_at }).collect();
        Ok(ran)
    }

    /// Retry an acknowledgement that failed with `error` (repeating one changes nothing)
    /// for up to a lease: given up, the tasks run again once their lease runs out.
    async fn ack_later(self, runs: Vec<(String, String, i64, i64)>, mut error: StoreError) {
        let done: Vec<Completion<'_>> = runs
            .iter()
            .map(|(user_id, task_id, started_at, completed_at)| Completion {
                user_id,
                task_id,
                started_at: *started_at,
                completed_at: *completed_at,
            })
            .collect();
        let give_up = tokio::time::Instant::now() + self.lease;
        let mut pause = ACK_RETRY_FIRST;
        while tokio::time::Instant::now() + pause < give_up {
            tracing::warn!(
                "acknowledging {} run tasks failed, retrying in {} ms: {error}",
                done.len(),
                pause.as_millis()
            );
            tokio::time::sleep(pause).await;
            match self.store.ack(&done, self.task_ttl).await {
                Ok(kept) => {
                    // A lease entry gone now may be one an earlier attempt removed: one line.
                    let gone = kept.iter().filter(|kept| !**kept).count();
                    return tracing::info!(
                        "{} run tasks acknowledged by a retry; {gone} had no lease left: an earlier attempt landed, or their lease ran out and they may have run twice",
                        done.len()
                    );
                }
                Err(e) => error = e,
            }
            pause = (pause * 2).min(ACK_RETRY_MAX);
        }
        tracing::error!("{} run tasks not acknowledged, they run again after their lease: {error}", done.len());
    }
}
