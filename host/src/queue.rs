//! The Redis-backed queue: `producer` turns a request into a stored task (through the
//! policy), `consumer` claims due tasks with a lease and runs them. Running a task is
//! the same for both: write its completion line, then acknowledge it in Redis.

pub mod consumer;
pub mod producer;

use std::sync::Arc;
use std::time::Duration;

use crate::completion_log::{Completion, CompletionLog};
use crate::store::clock::Clock;
use crate::store::{Store, StoreError};
use crate::task::ClaimedTask;

/// First pause before retrying a failed acknowledgement; each retry doubles it.
const ACK_RETRY_FIRST: Duration = Duration::from_millis(25);
/// Longest pause between two attempts of an acknowledgement.
const ACK_RETRY_MAX: Duration = Duration::from_millis(500);

/// Why a task could not be run and acknowledged. It stays leased and runs again once
/// the lease expires.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The completion line could not be written.
    #[error("completion log write failed: {0}")]
    Log(#[from] std::io::Error),
    /// The acknowledgement could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
}

impl Runner {
    /// Run one task leased to this worker: log it, then acknowledge it. A crash between
    /// the two is the one place a task can run twice (its lease expires, it runs again).
    pub async fn run(&self, task: &ClaimedTask) -> Result<Ran, RunError> {
        let ran = self.run_all(std::slice::from_ref(task)).await?;
        Ok(ran[0])
    }

    /// Run tasks leased to this worker together: one write of all their completion lines,
    /// then one acknowledgement of them all. On an error none is acknowledged, and each
    /// runs again after its lease.
    pub async fn run_all(&self, tasks: &[ClaimedTask]) -> Result<Vec<Ran>, RunError> {
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
        let (kept, retried) = self.ack(&done).await?;
        for (run, _) in done.iter().zip(kept).filter(|(_, kept)| !kept) {
            if retried {
                tracing::info!(task_id = %run.task_id, "lease gone at the retried ack: an earlier attempt landed, or the lease ran out and the task may have run twice");
            } else {
                tracing::warn!(task_id = %run.task_id, "lease lost before ack: the task may have run twice");
            }
        }
        let ran = done.iter().map(|run| Ran { started_at: run.started_at, completed_at: run.completed_at }).collect();
        Ok(ran)
    }

    /// Acknowledge run tasks, retrying a failed acknowledgement (repeating one changes
    /// nothing) for up to a lease: their lines are written, and an acknowledgement given up
    /// runs them all again once the lease runs out. Also says whether it was retried.
    async fn ack(&self, done: &[Completion<'_>]) -> Result<(Vec<bool>, bool), StoreError> {
        let give_up = tokio::time::Instant::now() + self.lease;
        let mut pause = ACK_RETRY_FIRST;
        let mut retried = false;
        loop {
            match self.store.ack(done, self.task_ttl).await {
                Ok(kept) => return Ok((kept, retried)),
                Err(e) if tokio::time::Instant::now() + pause < give_up => {
                    let n = done.len();
                    tracing::warn!("acknowledging {n} run tasks failed, retrying in {} ms: {e}", pause.as_millis());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACK_RETRY_MAX);
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
