//! Waiting on conditions with deadlines: the harness's only way to wait for anything.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(75);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, or fails with the last `Err` it
/// returned (the observed state) once `timeout` has passed.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> Result<T, String>,
) -> Result<T, Error> {
    poll_every(POLL_INTERVAL, timeout, what, check)
}

pub(crate) fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(interval);
    }
}

/// [`poll_until`] for tests: panics on timeout with what was awaited and the last observed state.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    match poll_until(timeout, what, check) {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// [`wait_until`] for a plain condition.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_until(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
}

/// Unix time in milliseconds, to compare with the coordinator's timestamps (same host).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
