//! The Redis-aligned clock. Decisions take their time from Redis `TIME` inside the
//! scripts; this clock gives the same time scale to what the host stamps itself
//! (`started_at`, `completed_at`, the consumer's sleeps) without a round trip each time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Local time plus the offset last measured against Redis.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    /// Round trip of the measurement behind `offset_ms` (0: never measured).
    rtt_ms: AtomicI64,
}

/// A measurement whose round trip took longer than this is too uncertain to replace a
/// good one (the offset error is up to half the round trip).
const MAX_TRUSTED_RTT_MS: i64 = 4;

impl Clock {
    /// Unix ms on Redis's time scale.
    pub fn now_ms(&self) -> i64 {
        local_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Align with a Redis time read between local times `before` and `after`, unless the
    /// round trip was slow and an earlier, tighter measurement exists that this one does
    /// not prove wrong (a clock stepped by more than this measurement's own uncertainty).
    pub fn align(&self, before_ms: i64, redis_ms: i64, after_ms: i64) {
        let rtt = (after_ms - before_ms).max(1);
        let offset = redis_ms - (before_ms + (after_ms - before_ms) / 2);
        let previous = self.rtt_ms.load(Ordering::Relaxed);
        // Both offsets are uncertain by half their round trip, and rounded to the ms.
        let consistent = (offset - self.offset_ms.load(Ordering::Relaxed)).abs() <= rtt / 2 + previous / 2 + 2;
        if previous != 0 && rtt > MAX_TRUSTED_RTT_MS && rtt > previous && consistent {
            return;
        }
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.rtt_ms.store(rtt, Ordering::Relaxed);
    }

    /// Whether the offset has been measured at least once.
    pub fn is_aligned(&self) -> bool {
        self.rtt_ms.load(Ordering::Relaxed) != 0
    }

    /// Measure the offset against Redis now.
    pub async fn sync(&self, store: &super::Store) -> Result<(), super::StoreError> {
        self.sync_by(store.time_ms()).await
    }

    /// Measure the offset with `redis_time`, a read of Redis's clock not yet started.
    pub(super) async fn sync_by(
        &self,
        redis_time: impl Future<Output = Result<i64, super::StoreError>>,
    ) -> Result<(), super::StoreError> {
        let before = local_ms();
        let redis = redis_time.await?;
        self.align(before, redis, local_ms());
        Ok(())
    }
}

/// The local wall clock, unix ms.
pub fn local_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_uses_the_round_trip_midpoint() {
        let clock = Clock::default();
        let now = local_ms();
        clock.align(now - 1, now + 5_000, now + 1);
        assert!((clock.now_ms() - (now + 5_000)).abs() < 50);
        // A slow, uncertain measurement does not replace a tight one...
        clock.align(now - 300, now + 5_100, now + 300);
        assert!((clock.now_ms() - (now + 5_000)).abs() < 50);
        // ...unless it proves it wrong: a clock was stepped.
        clock.align(now - 300, now + 9_000, now + 300);
        assert!((clock.now_ms() - (now + 9_000)).abs() < 50);
    }
}
