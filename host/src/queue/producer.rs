//! Submitting a task: run the active policy, reconcile its verdict with what it reserved,
//! and leave the task stored (queued, or leased and run now) or not at all.

use limiter_wasm::abi::MAX_DELAY_MS;
use limiter_wasm::codec::encode_request;
use std::sync::Arc;

use super::Runner;
use super::consumer::Wake;
use crate::policy::engine::Failure;
use crate::policy::host_fns::CallContext;
use crate::policy::{PolicyError, Registry, Verdict};
use crate::store::{NewTask, Reserved, SlotRule};
use crate::task::{ClaimedTask, TaskId, UserId};

/// A task as a client submitted it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Its user.
    pub user_id: UserId,
    /// Its payload, JSON text.
    pub payload: String,
    /// The plan the request named, if any.
    pub plan: Option<String>,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Admitted and run before answering.
    Completed { task_id: String, started_at: i64, completed_at: i64 },
    /// Stored, to start at `run_at`.
    Queued { task_id: String, run_at: i64, now: i64 },
    /// Refused by the policy; nothing stored.
    Rejected { retry_after_ms: u64, reason: String },
}

/// Everything submitting needs.
#[derive(Debug, Clone)]
pub struct Producer {
    /// Loaded policies.
    pub registry: Arc<Registry>,
    /// Runs admitted tasks.
    pub runner: Runner,
    /// Wakes the local consumer for a task due sooner than it planned.
    pub wake: Arc<Wake>,
}

impl Producer {
    /// Decide on and store (or refuse) one task.
    pub async fn submit(&self, sub: Submission) -> Result<Submitted, PolicyError> {
        let name = self.registry.active_name();
        let policy = self.registry.get(name).ok_or_else(|| PolicyError::NotLoaded(name.clone()))?;
        let task = Arc::new(NewTask {
            task_id: TaskId::random().to_string(),
            user_id: sub.user_id.as_str().to_owned(),
            payload: sub.payload,
        });
        let request = encode_request(&task.user_id, sub.plan.as_deref(), &task.payload);
        let call = CallContext {
            store: self.runner.store.clone(),
            task: task.clone(),
            lease: self.runner.lease,
            clock: self.runner.clock.clone(),
        };
        match policy.decide(call, &request).await {
            Ok(outcome) => self.settle(&task, outcome.verdict, outcome.reserved).await,
            Err(Failure { error, reserved }) => {
                if let Some(reserved) = reserved {
                    self.cancel(&task, reserved).await;
                }
                Err(error)
            }
        }
    }

    /// Make the stored state match the verdict.
    async fn settle(
        &self,
        task: &NewTask,
        verdict: Verdict,
        reserved: Option<Reserved>,
    ) -> Result<Submitted, PolicyError> {
        let reserved = match (verdict, reserved) {
            (Verdict::Reject { retry_after_ms, reason }, reserved) => {
                if let Some(reserved) = reserved {
                    self.cancel(task, reserved).await;
                }
                return Ok(Submitted::Rejected { retry_after_ms, reason });
            }
            (_, Some(reserved)) => reserved,
            (Verdict::Admit, None) => self.store_at(task, 0).await?,
            (Verdict::Queue { run_at_ms }, None) => {
                // `reserve` bounds its delay; a start the policy names itself gets the same
                // bound, so a units slip or an overflow cannot park a task for ever.
                let ahead = run_at_ms.saturating_sub(self.runner.clock.now_ms());
                if ahead > MAX_DELAY_MS as i64 {
                    return Err(PolicyError::Failed(format!(
                        "queued the task to start {ahead} ms ahead; the most a policy may is {MAX_DELAY_MS} ms"
                    )));
                }
                self.store_at(task, run_at_ms).await?
            }
        };
        match reserved {
            Reserved::Admitted { slot_ms, .. } => Ok(self.run_now(task, slot_ms).await),
            Reserved::Queued { slot_ms, now_ms } => {
                self.wake.schedule(slot_ms);
                Ok(Submitted::Queued { task_id: task.task_id.clone(), run_at: slot_ms, now: now_ms })
            }
            // Not produced today (a too-far reserve is never recorded, store_at has no
            // maximum delay), but if it were, nothing was stored: refuse.
            Reserved::TooFar { slot_ms, now_ms } => Ok(Submitted::Rejected {
                retry_after_ms: (slot_ms - now_ms).max(1) as u64,
                reason: "no start within the allowed delay".into(),
            }),
        }
    }

    /// Store a task the policy admitted or queued without reserving.
    async fn store_at(&self, task: &NewTask, not_before_ms: i64) -> Result<Reserved, PolicyError> {
        let rule = SlotRule { not_before_ms, ..SlotRule::default() };
        let store = &self.runner.store;
        Ok(store.reserve(task, &rule, self.runner.lease).await?)
    }

    async fn run_now(&self, task: &NewTask, run_at: i64) -> Submitted {
        let claimed = ClaimedTask { task_id: task.task_id.clone(), user_id: task.user_id.clone(), run_at };
        match self.runner.run(&claimed).await {
            Ok(ran) => Submitted::Completed {
                task_id: task.task_id.clone(),
                started_at: ran.started_at,
                completed_at: ran.completed_at,
            },
            Err(e) => {
                // Stored and leased: it runs when the lease expires. Say so honestly.
                tracing::error!(task_id = %task.task_id, "admitted task not logged, it runs after its lease: {e}");
                let now = self.runner.clock.now_ms();
                Submitted::Queued {
                    task_id: task.task_id.clone(),
                    run_at: now + self.runner.lease.as_millis() as i64,
                    now,
                }
            }
        }
    }

    async fn cancel(&self, task: &NewTask, reserved: Reserved) {
        let task_id = &task.task_id;
        match self.runner.store.cancel(task_id, &task.user_id, reserved, self.runner.lease).await {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                %task_id,
                "the reservation of a failed decision was claimed before its cancel: the task runs though its caller was refused"
            ),
            Err(e) => tracing::error!(
                %task_id,
                "could not cancel the reservation of a failed decision; the task may still run: {e}"
            ),
        }
    }
}
