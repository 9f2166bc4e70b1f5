//! Time and fresh ids, as inputs of the control shell: the real ones in the binary, manual and
//! seeded ones in tests and the simulation, so that a run is a function of its inputs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// Where the shell reads the time and mints ids.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds; never goes backwards.
    fn now_ms(&self) -> i64;
    /// A new instance or cluster id.
    fn new_id(&self) -> Uuid;
}

/// The real clock: wall time when it was made, advanced by a monotonic clock, so that a wall
/// clock step (NTP, an operator) cannot make heartbeats look late or deadlines pass at once.
#[derive(Debug)]
pub struct SystemClock {
    origin_ms: i64,
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        SystemClock {
            origin_ms,
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }

    fn new_id(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// A clock that moves only when told, with ids from a seeded counter: for tests and the
/// simulation.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
    ids: Mutex<u64>,
    seed: u64,
}

impl ManualClock {
    /// Starts at `now_ms`; ids are derived from `seed`.
    pub fn new(now_ms: i64, seed: u64) -> ManualClock {
        ManualClock {
            now_ms: AtomicI64::new(now_ms),
            ids: Mutex::new(0),
            seed,
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, ms: i64) {
        self.now_ms.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn new_id(&self) -> Uuid {
        let mut n = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        Uuid::from_u64_pair(self.seed, *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_when_told_and_mints_distinct_ids() {
        let c = ManualClock::new(1_000, 7);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1_250);
        c.set_ms(100);
        assert_eq!(c.now_ms(), 1_250, "never backwards");
        let (a, b) = (c.new_id(), c.new_id());
        assert_ne!(a, b);
        assert_eq!(ManualClock::new(0, 7).new_id(), a, "same seed, same ids");
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::default();
        let a = c.now_ms();
        assert!(c.now_ms() >= a);
        assert!(a > 1_600_000_000_000);
    }
}
