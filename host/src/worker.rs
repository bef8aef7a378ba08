//! One worker process: binds the shared port (`SO_REUSEPORT`), owns its Redis
//! connection, wasmtime engine, policy watcher, queue consumer and completion log, and
//! shuts down gracefully on SIGTERM/SIGINT or when its supervisor goes away.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completion_log::CompletionLog;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::policy::{Engine, Registry};
use crate::queue::Runner;
use crate::queue::consumer::{self, Wake};
use crate::queue::producer::Producer;
use crate::store::Store;

/// Longest graceful shutdown: in-flight requests and running tasks get this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything a worker runs, built but not yet serving (tests drive `state` directly).
#[derive(Debug)]
pub struct Worker {
    /// Shared state of the HTTP handlers.
    pub state: AppState,
    /// Runs queued tasks.
    pub runner: Runner,
    /// The consumer's wake-up.
    pub wake: Arc<Wake>,
    /// Cancelled to shut down.
    pub cancel: CancellationToken,
}

impl Worker {
    /// Connect, load policies, open the log. Fails only on what cannot heal by itself:
    /// no loadable active policy, an unopenable log. Redis may be down; it is retried.
    pub async fn build(config: &Config, worker_id: usize) -> anyhow::Result<Self> {
        let store = Store::new(&config.redis_url, config.redis_timeout)?;
        let clock = store.clock();
        match clock.sync(&store).await {
            Ok(()) => warn_if_unsafe(&store).await,
            Err(e) => tracing::warn!("Redis not reachable at start, serving 503 until it is: {e}"),
        }
        let registry = Arc::new(Registry::new(Engine::new()?, config.policy_dir.clone(), config.policy.clone()));
        registry.load_all().await;
        if registry.get(&config.policy).is_none() {
            anyhow::bail!(
                "policy {:?} could not be loaded from {} (run `just build-policies`; GET /policies would show why)",
                config.policy.as_str(),
                config.policy_dir.join(format!("{}.wasm", config.policy)).display()
            );
        }
        let log = CompletionLog::open(&config.task_log)
            .with_context(|| format!("opening TASK_LOG {}", config.task_log.display()))?;
        let tracker = TaskTracker::new();
        let runner = Runner {
            store: store.clone(),
            log: Arc::new(log),
            clock,
            lease: config.lease,
            task_ttl: config.task_ttl,
            tracker: tracker.clone(),
        };
        let wake = Arc::new(Wake::default());
        let producer = Producer { registry: registry.clone(), runner: runner.clone(), wake: wake.clone() };
        let state = AppState {
            producer,
            store,
            registry,
            tracker,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            worker: format!("{worker_id}:{}", std::process::id()).into(),
        };
        Ok(Self { state, runner, wake, cancel: CancellationToken::new() })
    }

    /// Start the policy watcher and the queue consumer in the background.
    pub fn start_background(&self) {
        let tracker = &self.state.tracker;
        tracker.spawn(self.state.registry.clone().watch(self.cancel.clone()));
        tracker.spawn(consumer::run(self.runner.clone(), self.wake.clone(), self.cancel.clone()));
    }
}

/// Run a worker until told to stop.
pub async fn run(config: Config, worker_id: usize, supervised: bool) -> anyhow::Result<()> {
    let worker = Worker::build(&config, worker_id).await?;
    let listener = bind_shared(SocketAddr::new(config.bind, config.port))?;
    tracing::info!(addr = %listener.local_addr()?, policy = %config.policy, "worker serving");
    worker.start_background();
    tokio::spawn(stop_on_signal(worker.cancel.clone(), supervised));
    let app = http::app(worker.state.clone());
    let serve = tokio::spawn(http::serve::serve(listener, app, worker.cancel.clone()));
    worker.cancel.cancelled().await;
    tracing::info!("shutting down: finishing in-flight requests and running tasks");
    let tracker = worker.state.tracker.clone();
    tracker.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = serve.await;
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown grace of {} s ran out; leases of unfinished tasks will expire",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Bind with `SO_REUSEPORT`, so every worker accepts on the same port without a proxy.
pub fn bind_shared(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(shared_socket(addr)?.listen(1024)?)
}

/// A socket bound to `addr` as the workers bind it, not listening: the supervisor's check
/// that they can (a listening one would take connections meant for another process
/// sharing the port).
pub fn shared_socket(addr: SocketAddr) -> anyhow::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(socket)
}

/// Cancel on SIGTERM, SIGINT, or (under a supervisor) end of stdin: the supervisor holds
/// the other end of that pipe, so it closes when the supervisor exits, even by SIGKILL.
async fn stop_on_signal(cancel: CancellationToken, supervised: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let parent_gone = async {
        if !supervised {
            return std::future::pending().await;
        }
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        () = parent_gone => tracing::info!("supervisor gone (stdin closed)"),
    }
    cancel.cancel();
}

/// Warn when Redis may lose what it acknowledged: an evicted task or counter is a lost
/// task or an over-admission, and without an AOF a Redis restart loses every queued task.
async fn warn_if_unsafe(store: &Store) {
    let read = async |name: &str| match store.config_get(name).await {
        Ok(value) => value,
        Err(e) => {
            tracing::debug!("cannot read {name}: {e}");
            None
        }
    };
    if let Some(policy) = read("maxmemory-policy").await.filter(|p| p != "noeviction") {
        tracing::warn!(
            %policy,
            "Redis maxmemory-policy is not noeviction: under memory pressure Redis may drop queued tasks and counters"
        );
    }
    if read("appendonly").await.is_some_and(|aof| aof == "no") {
        tracing::warn!("Redis appendonly is no: a Redis restart loses queued tasks and users' starts (see redis.conf)");
    }
}
