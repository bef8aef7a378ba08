//! When Redis was rewriting its AOF during a phase. A rewrite forks Redis, and the child
//! writes the whole dataset again on a core of its own (measured at a paced 9,000 req/s: it
//! lived 0.4 s and used 0.25 s of CPU; the parent's copy-on-write faults cost it about
//! 10 ms): on this 2-core machine, with Sluice, Redis and the load generator already keeping
//! it about 60% busy, the answers of that moment are among the slowest of a round. A 10 s
//! round of Sluice's on a fresh Redis usually reaches the 64 MB the first rewrite waits for,
//! so its p99 depends on whether the rewrite fell in its window; the answers given during
//! one and outside are reported apart, beside the whole round's.

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::procs::info_field;

const POLL: Duration = Duration::from_millis(20);

/// The running watcher; [`Watch::finish`] stops it.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(Instant, Instant)>>>,
}

impl Watch {
    /// Poll `INFO persistence` of the Redis on `socket` every 20 ms on a thread of its own,
    /// the first time before returning: a rewrite already running is a span from now.
    pub fn start(socket: &Path) -> anyhow::Result<Self> {
        let client = redis::Client::open(format!("unix://{}", socket.display()))?;
        let mut conn = connect(&client)?;
        let first = rewrite_state(&mut conn).context("INFO persistence unanswered")?;
        let (mut polled, mut state) = (Instant::now(), first);
        let mut windows = Vec::new();
        if state.0 {
            windows.push((polled, polled));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                // A failed poll keeps the last answer and when it came, and reconnects: a
                // late reply must not be read as the next one.
                let Some((is, count)) = rewrite_state(&mut conn) else {
                    conn = connect(&client).unwrap_or(conn);
                    continue;
                };
                let (was, old_count) = state;
                // A rewrite began after the previous answer (its fork is in the span too) and
                // ends at the first answer that sees it over; one that began and ended
                // between two answers still moved the count.
                if !was && (is || count > old_count) {
                    windows.push((polled, Instant::now()));
                }
                if was && let Some(last) = windows.last_mut() {
                    last.1 = Instant::now();
                }
                (polled, state) = (Instant::now(), (is, count));
            }
            windows
        });
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stop; the spans during which a rewrite ran, fork included.
    pub fn finish(mut self) -> Vec<(Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// A round that failed midway stops its watcher too.
impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Latencies of the answers whose request overlapped one of the rewrites' spans, and of the
/// others, from a phase's `(sent, latency in µs)` timeline.
pub fn split(timeline: &[(Instant, u32)], rewrites: &[(Instant, Instant)]) -> (Vec<u32>, Vec<u32>) {
    let (mut during, mut outside) = (Vec::new(), Vec::new());
    for &(sent, latency) in timeline {
        let answered = sent + Duration::from_micros(u64::from(latency));
        let overlaps = rewrites.iter().any(|&(from, to)| sent <= to && answered >= from);
        if overlaps { &mut during } else { &mut outside }.push(latency);
    }
    (during, outside)
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Whether a rewrite is running, and how many began since Redis started; `None` if Redis
/// did not answer.
fn rewrite_state(conn: &mut redis::Connection) -> Option<(bool, u64)> {
    let text: String = redis::cmd("INFO").arg("persistence").query(conn).ok()?;
    Some((info_field(&text, "aof_rewrite_in_progress")? == 1, info_field(&text, "aof_rewrites")?))
}
