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
        let ran: Vec<Ran> = tasks
            .iter()
            .map(|task| {
                let started_at = self.clock.now_ms().max(task.run_at);
                Ran { started_at, completed_at: self.clock.now_ms().max(started_at) }
            })
            .collect();
        let done = completions(tasks, &ran);
        self.log.append(&done)?;
        match self.store.ack(&done, self.task_ttl).await {
            Ok(kept) => {
                for (run, _) in done.iter().zip(kept).filter(|(_, kept)| !kept) {
                    tracing::warn!(task_id = %run.task_id, "lease lost before ack: the task may have run twice");
                }
            }
            Err(e) => {
                self.tracker.spawn(self.clone().ack_later(tasks.to_vec(), ran.clone(), e));
            }
        }
        Ok(ran)
    }

    /// Retry an acknowledgement that failed with `error` (repeating one changes nothing)
    /// for up to a lease: given up, the tasks run again once their lease runs out.
    async fn ack_later(self, tasks: Vec<ClaimedTask>, ran: Vec<Ran>, mut error: StoreError) {
        let done = completions(&tasks, &ran);
        let give_up = tokio::time::Instant::now() + self.lease;
        let mut backoff = Backoff::default();
        loop {
            let pause = backoff.pause();
            if tokio::time::Instant::now() + pause >= give_up {
                break;
            }
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
        }
        tracing::error!("{} run tasks not acknowledged, they run again after their lease: {error}", done.len());
    }
}

/// The completion lines of `tasks`, which ran as `ran` says.
fn completions<'a>(tasks: &'a [ClaimedTask], ran: &[Ran]) -> Vec<Completion<'a>> {
    tasks
        .iter()
        .zip(ran)
        .map(|(task, ran)| Completion {
            user_id: &task.user_id,
            task_id: &task.task_id,
            started_at: ran.started_at,
            completed_at: ran.completed_at,
        })
        .collect()
}

/// Pauses between attempts of something Redis failed (a claim, an acknowledgement):
/// 25 ms, doubling with each failure in a row up to 500 ms, so a brief failure delays
/// the work briefly and a long one is not hammered.
#[derive(Debug, Clone, Copy)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(25))
    }
}

impl Backoff {
    /// The pause before the next attempt.
    fn pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(Duration::from_millis(500));
        pause
    }
}
