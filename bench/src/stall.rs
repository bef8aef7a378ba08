//! A watchdog on the machine itself. A shared VM can be paused by its host (a snapshot froze
//! this one for about 14 s during a round on 2026-12-03: the round's rate halved and every
//! lease taken before the pause had expired by Redis's clock after it) or starved of CPU.
//! A thread sleeps 5 ms at a time and keeps the longest overshoot it saw, by the monotonic
//! clock and by the wall clock, which jumps over a pause that the monotonic clock may not
//! count. A round with a stall of seconds measured the host, not Sluice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

const TICK: Duration = Duration::from_millis(5);

/// The running watchdog; [`Watchdog::finish`] stops it.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    longest_us: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let longest_us = Arc::new(AtomicU64::new(0));
        let (done, longest) = (stop.clone(), longest_us.clone());
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let (mono, wall) = (Instant::now(), SystemTime::now());
                std::thread::sleep(TICK);
                let wall_gap = SystemTime::now().duration_since(wall).unwrap_or_default();
                let gap = mono.elapsed().max(wall_gap).saturating_sub(TICK);
                longest.fetch_max(gap.as_micros() as u64, Ordering::Relaxed);
            }
        });
        Self { stop, longest_us, thread: Some(thread) }
    }

    /// Stop; the longest stall seen, in ms.
    pub fn finish(mut self) -> f64 {
        self.stop();
        (self.longest_us.load(Ordering::Relaxed) as f64 / 1000.0).round()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A round that failed midway stops its watchdog too.
impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}
