//! Tests that cannot run on this host say so where the run's summary counts it, instead of
//! passing quietly: [`skip`] prints one line `pmcluster-test-skip: TEST: REASON`, which
//! `scripts/test.sh` counts as skipped. A host that should run them (CI names its needs in
//! `PMCLUSTER_TEST_REQUIRE`, comma-separated: `root`, `cgroup2`, `etcd`, `haproxy`, `docker`,
//! `python`, `node`, `tmux`) makes them fail instead, so a wrong "missing here" cannot pass for a run. The
//! agent's tests do the same for root and cgroup2 (agent/tests/it/skip.rs).

use std::io::Write;

/// The needs this host must meet, comma-separated.
pub const REQUIRE_ENV: &str = "PMCLUSTER_TEST_REQUIRE";
/// Starts the line that `scripts/test.sh` counts as one skipped test.
pub const SKIP_MARK: &str = "pmcluster-test-skip";

/// Whether `required` (the value of [`REQUIRE_ENV`]) names `need`.
pub fn requires(required: &str, need: &str) -> bool {
    required.split(',').any(|n| n.trim() == need)
}

/// Reports the running test as skipped for want of `need` (e.g. `etcd`); the caller then
/// returns. Panics instead when [`REQUIRE_ENV`] names `need`.
#[track_caller]
pub fn skip(need: &str, reason: &str) {
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("an unnamed test");
    let required = std::env::var(REQUIRE_ENV).unwrap_or_default();
    if requires(&required, need) {
        panic!(
            "{test} cannot run here ({reason}), yet {REQUIRE_ENV}={required} says this host \
             must run every test that needs {need}: fix the host, or the test's check"
        );
    }
    // To the process's stderr itself: libtest captures `eprint!` of a passing test, and this
    // line must reach the summary.
    let line = format!("{SKIP_MARK}: {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_needs() {
        let cases = [
            ("", "etcd", false),
            ("etcd", "etcd", true),
            ("root,cgroup2", "etcd", false),
            ("root, etcd ", "etcd", true),
            ("etcdctl", "etcd", false),
        ];
        for (required, need, want) in cases {
            assert_eq!(requires(required, need), want, "{required:?} {need:?}");
        }
    }
}
