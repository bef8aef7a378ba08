//! The consumer: claims due tasks with a lease, runs them, and sleeps
//! until the next due time or lease expiry (capped, so tasks stored by other workers are
//! found promptly). The local producer wakes it early for a task due sooner.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Runner};

/// Most tasks claimed in one round.
const BATCH: usize = 256;
/// Longest sleep between claims: bounds how late a task stored by another worker starts.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Shortest time between the starts of two claims, unless the last one filled its batch.
/// Under a steady stream of due tasks, claiming as soon as the previous round ends takes
/// one or two tasks a round and pays a round's fixed cost (a script call, four reads) for
/// each: this caps a worker at 100 rounds a second and a task's extra wait at 10 ms.
const MIN_CLAIM_INTERVAL: Duration = Duration::from_millis(10);
/// How long a claim out when the worker is told to stop is still waited for: its tasks,
/// leased by then, would otherwise wait a lease for another worker.
const CLAIM_AFTER_STOP: Duration = Duration::from_secs(2);
/// How often the periodic chores run: realigning the clock with Redis and adopting an
/// earlier version's shards (an old worker may still be running).
const CHORES: Duration = Duration::from_secs(10);

/// The consumer's planned wake-up, shared with the producer.
#[derive(Debug)]
pub struct Wake {
    next_ms: AtomicI64,
    notify: Notify,
}

impl Default for Wake {
    fn default() -> Self {
        Self { next_ms: AtomicI64::new(i64::MAX), notify: Notify::new() }
    }
}

impl Wake {
    /// A task is due at `at_ms`: wake the consumer if it planned to sleep past that.
    pub fn schedule(&self, at_ms: i64) {
        if at_ms < self.next_ms.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// Claim and run due tasks until cancelled; the running batch finishes first.
pub async fn run(runner: Runner, wake: std::sync::Arc<Wake>, cancel: CancellationToken) {
    let mut last_chores: Option<tokio::time::Instant> = None;
    // Pauses after failed claims (Redis unavailable).
    let mut backoff = Backoff::default();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let round = tokio::time::Instant::now();
        // Before the first claim, then every CHORES; retried each round until Redis answers.
        if last_chores.is_none_or(|at| at.elapsed() > CHORES) && chores(&runner).await {
            last_chores = Some(round);
        }
        // A claim may wait up to half the lease for a stalled Redis: not long past a stop.
        let stopped = async {
            cancel.cancelled().await;
            tokio::time::sleep(CLAIM_AFTER_STOP).await;
        };
        let claimed = tokio::select! {
            () = stopped => return,
            claimed = runner.store.claim(BATCH, runner.lease) => claimed,
        };
        let pause = match claimed {
            Ok(claim) => {
                backoff = Backoff::default();
                let full = claim.tasks.len() == BATCH;
                if let Err(e) = runner.run_all(&claim.tasks).await {
                    let n = claim.tasks.len();
                    tracing::error!("{n} claimed tasks not logged, they run after their lease: {e}");
                }
                if full {
                    continue;
                }
                let until_due = claim.next_wake_ms.map_or(IDLE_POLL.as_millis() as i64, |at| at - claim.now_ms);
                Duration::from_millis(until_due.clamp(0, IDLE_POLL.as_millis() as i64) as u64)
            }
            Err(e) => {
                let pause = backoff.pause();
                tracing::warn!("claiming due tasks failed, retrying in {} ms: {e}", pause.as_millis());
                pause
            }
        };
        wake.next_ms.store(runner.clock.now_ms() + pause.as_millis() as i64, Ordering::Relaxed);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
            () = wake.notify.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(round + MIN_CLAIM_INTERVAL) => {}
        }
    }
}

/// Realign the clock with Redis and move what an earlier version left in its shards into
/// the one due index and lease set; whether both succeeded.
async fn chores(runner: &Runner) -> bool {
    if let Err(e) = runner.clock.sync(&runner.store).await {
        tracing::debug!("cannot realign the clock with Redis: {e}");
        return false;
    }
    match runner.store.adopt_shards().await {
        Ok(0) => true,
        Ok(n) => {
            tracing::warn!("moved {n} queued and running tasks out of an earlier version's shards");
            true
        }
        Err(e) => {
            tracing::debug!("cannot check for an earlier version's shards: {e}");
            false
        }
    }
}
