//! The supervisor: starts `WORKERS` copies of its own binary as workers, replaces any
//! that die (backing off from crash loops), and on SIGTERM/SIGINT asks them to drain
//! and waits. Each worker's stdin is a pipe from here; closing it is the stop request,
//! and it closes by itself if the supervisor dies, so workers never outlive it.

use anyhow::Context;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{ChildStdin, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::worker::SHUTDOWN_GRACE;

/// Environment variable that makes the binary a worker, carrying its id.
pub const WORKER_ID_ENV: &str = "SLUICE_WORKER_ID";
/// mimalloc (the host's allocator) commits its arenas eagerly by default and then keeps
/// what it touched: a worker peaked at 52-58 MiB instead of 19 under `just bench`. Off,
/// it peaks at 20-23 MiB and keeps mimalloc's CPU gain. Set it yourself to override.
const MIMALLOC_EAGER_COMMIT_ENV: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
/// Delay before replacing a dead worker.
const RESTART_DELAY: Duration = Duration::from_millis(100);
/// More than this many deaths of one worker within [`CRASH_WINDOW`] is a crash loop.
const CRASH_LIMIT: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// Delay before replacing a worker that is crash-looping.
const CRASH_BACKOFF: Duration = Duration::from_secs(5);

/// A worker that exited: its id and how.
type Exited = (usize, std::io::Result<ExitStatus>);

struct Slot {
    stdin: Option<ChildStdin>,
    kill: CancellationToken,
    deaths: VecDeque<Instant>,
}

/// Run the workers until SIGTERM or SIGINT; exit after they drained.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Without its active policy no worker can serve: say so once and stop, rather than
    // restart workers that each fail the same way. (A module that is there but does not
    // load is each worker's to report: it may be replaced while they retry.)
    let module = config.policy_dir.join(format!("{}.wasm", config.policy.as_str()));
    anyhow::ensure!(
        module.is_file(),
        "POLICY {:?}: no module at {} (build the policies with `just build-policies`, or set POLICY_DIR)",
        config.policy.as_str(),
        module.display()
    );
    // What every worker needs at start and no restart could fix: stop with the variable
    // named instead of restarting workers that each fail the same way.
    crate::completion_log::CompletionLog::open(&config.task_log)
        .with_context(|| format!("TASK_LOG {}: cannot open it for appending", config.task_log.display()))?;
    let addr = std::net::SocketAddr::new(config.bind, config.port);
    drop(crate::worker::shared_socket(addr).with_context(|| format!("BIND and PORT: cannot listen on {addr}"))?);
    // An admitted task's reservation answer and its acknowledgement each take up to the
    // timeout: a shorter lease can run out first, and the task run twice.
    if config.lease < config.redis_timeout * 2 {
        tracing::warn!(
            lease_ms = config.lease.as_millis(),
            redis_timeout_ms = config.redis_timeout.as_millis(),
            "LEASE_MS is under twice REDIS_TIMEOUT_MS: a task may run twice when Redis is slow"
        );
    }
    let exe = std::env::current_exe()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut events = JoinSet::new();
    // Pending replacements, apart: a stop drops them (aborting their waits) at once.
    let mut restarts: JoinSet<usize> = JoinSet::new();
    let mut slots: Vec<Slot> = Vec::new();
    for id in 0..config.workers.get() {
        slots.push(Slot { stdin: None, kill: CancellationToken::new(), deaths: VecDeque::new() });
        spawn(&exe, id, &mut slots[id], &mut events)?;
    }
    tracing::info!(workers = config.workers.get(), port = config.port, "supervisor started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(Ok((id, status))) = events.join_next() => {
                let delay = record_death(&mut slots[id], id, status);
                restarts.spawn(async move { tokio::time::sleep(delay).await; id });
            }
            Some(Ok(id)) = restarts.join_next() => {
                if let Err(e) = spawn(&exe, id, &mut slots[id], &mut events) {
                    tracing::error!(worker = id, "cannot start worker, retrying: {e}");
                    restarts.spawn(async move { tokio::time::sleep(CRASH_BACKOFF).await; id });
                }
            }
        }
    }
    drop(restarts);
    shutdown(slots, events).await;
    Ok(())
}

fn spawn(exe: &std::path::Path, id: usize, slot: &mut Slot, events: &mut JoinSet<Exited>) -> std::io::Result<()> {
    let mut worker = Command::new(exe);
    worker.env(WORKER_ID_ENV, id.to_string()).stdin(Stdio::piped());
    if std::env::var_os(MIMALLOC_EAGER_COMMIT_ENV).is_none() {
        worker.env(MIMALLOC_EAGER_COMMIT_ENV, "0");
    }
    let mut child = worker.spawn()?;
    tracing::info!(worker = id, pid = child.id(), "worker started");
    slot.stdin = child.stdin.take();
    slot.kill = CancellationToken::new();
    let kill = slot.kill.clone();
    events.spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            () = kill.cancelled() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        (id, status)
    });
    Ok(())
}

/// Log a death and choose the delay before the replacement.
fn record_death(slot: &mut Slot, id: usize, status: std::io::Result<ExitStatus>) -> Duration {
    slot.stdin = None;
    let now = Instant::now();
    slot.deaths.push_back(now);
    while slot.deaths.front().is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW) {
        slot.deaths.pop_front();
    }
    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
    if slot.deaths.len() > CRASH_LIMIT {
        tracing::error!(worker = id, %status, "worker is crash-looping ({} deaths in {} s); next restart in {} s", slot.deaths.len(), CRASH_WINDOW.as_secs(), CRASH_BACKOFF.as_secs());
        CRASH_BACKOFF
    } else {
        tracing::warn!(worker = id, %status, "worker died; replacing it");
        RESTART_DELAY
    }
}

/// Close every worker's stdin (the stop request), wait for them to drain, kill stragglers.
async fn shutdown(slots: Vec<Slot>, mut events: JoinSet<Exited>) {
    tracing::info!("supervisor stopping: draining workers");
    let kills: Vec<CancellationToken> = slots.iter().map(|s| s.kill.clone()).collect();
    drop(slots);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, events.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok((id, status)))) => tracing::info!(worker = id, status = ?status.ok(), "worker exited"),
            Ok(Some(Err(_))) => {}
            Err(_) => {
                tracing::warn!("workers did not stop in time; killing them");
                kills.iter().for_each(CancellationToken::cancel);
                while events.join_next().await.is_some() {}
                break;
            }
        }
    }
    tracing::info!("supervisor stopped");
}
