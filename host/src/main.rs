//! The `sluice` binary: the supervisor by default, a worker when started by one.

use std::process::ExitCode;

use sluice::config::Config;
use sluice::supervisor::{self, WORKER_ID_ENV};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let worker_id = std::env::var(WORKER_ID_ENV).ok().and_then(|v| v.parse::<usize>().ok());
    let result = match worker_id {
        Some(id) => run_worker(config, id),
        None => run_supervisor(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fatal: {e:#}");
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_worker(config: Config, id: usize) -> anyhow::Result<()> {
    sluice::logging::init(&format!("worker={id}"));
    // A panic is a bug: die whole so the supervisor starts a clean replacement.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = (cores / config.workers.get()).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    let result = runtime.block_on(sluice::worker::run(config, id, true));
    // Not waiting long for blocking threads: the one reading stdin (the supervisor's pipe,
    // still open when this worker alone got SIGTERM) cannot be cancelled, and waiting for
    // it kept a drained worker alive and unreplaced. A moment is left for the tasks still
    // there to be dropped (a late-answer waiter logs what it leaves unsettled).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

fn run_supervisor(config: &Config) -> anyhow::Result<()> {
    sluice::logging::init("supervisor");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(supervisor::run(config))
}

/// mimalloc instead of the system allocator: a worker spends about 15% less CPU per
/// request under `just bench` (0.022 -> 0.019 s per 1,000), most of glibc malloc's cost
/// gone. See `supervisor` for the one option it needs to keep memory as low as before.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
