//! Restart policy: how long an instance (or the link) waits before the next try.
//!
//! Pure functions of counters and durations; the caller measures uptime and sleeps. No clocks,
//! no randomness here (the link adds its jitter itself).

use std::time::Duration;

/// An instance that exits sooner than this after its start counts as crashing; one that stays up
/// this long resets the crash streak.
pub const QUICK_EXIT: Duration = Duration::from_secs(1);
/// Extra delay of the second quick crash in a row; it doubles with every further one.
pub const CRASH_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Ceiling of the extra crash delay.
pub const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// `base * 2^step`, capped at `cap` (and never overflowing).
pub fn doubling(base: Duration, step: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// After an exit (or a failed spawn, with `uptime` zero): the new crash streak and the delay before
/// the next start.
///
/// The first quick crash restarts after `restart_delay` alone, so a `kill -9` brings an instance
/// back at once; each further quick crash in a row adds 100 ms, 200 ms, ... up to 10 s on top.
/// An instance that stayed up for [`QUICK_EXIT`] starts over with a clean streak.
pub fn after_exit(streak: u32, uptime: Duration, restart_delay: Duration) -> (u32, Duration) {
    let streak = if uptime >= QUICK_EXIT {
        0
    } else {
        streak.saturating_add(1)
    };
    (streak, crash_delay(streak, restart_delay))
}

/// Delay before the next start given the number of quick crashes in a row.
pub fn crash_delay(streak: u32, restart_delay: Duration) -> Duration {
    if streak <= 1 {
        restart_delay
    } else {
        restart_delay.saturating_add(doubling(CRASH_BACKOFF_BASE, streak - 2, CRASH_BACKOFF_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubling_caps() {
        let cases = [
            (0, ms(100)),
            (1, ms(200)),
            (5, ms(3200)),
            (6, ms(5000)),
            (40, ms(5000)),
            (u32::MAX, ms(5000)),
        ];
        for (step, want) in cases {
            assert_eq!(doubling(ms(100), step, ms(5000)), want, "step {step}");
        }
    }

    #[test]
    fn backoff_table() {
        // (streak before, uptime, restart_delay) -> (streak after, delay)
        let cases = [
            // A long-running instance that dies restarts after restart_delay alone.
            (0, ms(5000), ms(0), (0, ms(0))),
            (7, ms(1000), ms(250), (0, ms(250))),
            // The first quick crash: restart_delay only (kill -9 comes back at once).
            (0, ms(10), ms(0), (1, ms(0))),
            (0, ms(999), ms(300), (1, ms(300))),
            // Crashing again and again: 100 ms doubling on top of restart_delay.
            (1, ms(10), ms(0), (2, ms(100))),
            (2, ms(10), ms(0), (3, ms(200))),
            (3, ms(10), ms(50), (4, ms(450))),
            (8, ms(0), ms(0), (9, ms(10_000))),
            (30, ms(0), ms(1000), (31, ms(11_000))),
            (u32::MAX, ms(0), ms(0), (u32::MAX, ms(10_000))),
        ];
        for (streak, uptime, delay, want) in cases {
            assert_eq!(
                after_exit(streak, uptime, delay),
                want,
                "streak {streak} uptime {uptime:?} restart_delay {delay:?}"
            );
        }
    }
}
