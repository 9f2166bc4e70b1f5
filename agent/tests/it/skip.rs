//! Tests that cannot run on this host say so where the run's summary counts it, instead of
//! passing quietly: [`skip`] prints one line `pmcluster-test-skip: TEST: REASON`, which
//! `scripts/test.sh` counts as skipped (and takes off the passed).
//!
//! And a host that should run them makes them fail instead: CI, as root with a writable cgroup2
//! hierarchy, names those needs in `PMCLUSTER_TEST_REQUIRE`, so a check that wrongly finds them
//! missing cannot turn the tests it guards into silent passes.

use std::io::Write;

/// The needs this host must meet, comma-separated (`root`, `cgroup2`): a test that would skip
/// for want of one of them fails instead.
pub const REQUIRE_ENV: &str = "PMCLUSTER_TEST_REQUIRE";
/// Starts the line that `scripts/test.sh` counts as one skipped test.
pub const SKIP_MARK: &str = "pmcluster-test-skip";

/// What a test may need that a host may not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Root, and an unprivileged user (`nobody`) to switch instances to.
    Root,
    /// A cgroup2 hierarchy this process may make cgroups in.
    Cgroup2,
}

impl Need {
    pub fn name(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Cgroup2 => "cgroup2",
        }
    }
}

/// Whether `required` (the value of [`REQUIRE_ENV`]) names `need`.
fn requires(required: &str, need: Need) -> bool {
    required.split(',').any(|n| n.trim() == need.name())
}

/// Reports the running test as skipped for want of `need`; the caller then returns. Panics
/// instead when [`REQUIRE_ENV`] names `need`.
#[track_caller]
pub fn skip(need: Need, reason: &str) {
    // libtest names each test's thread after the test, and `#[tokio::test]` runs its body there.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("an unnamed test");
    let required = std::env::var(REQUIRE_ENV).unwrap_or_default();
    if requires(&required, need) {
        panic!(
            "{test} cannot run here ({reason}), yet {REQUIRE_ENV}={required} says this host \
             must run every test that needs {}: fix the host, or the test's check",
            need.name()
        );
    }
    // To the process's stderr itself: libtest captures `print!` and `eprint!` of a passing
    // test, and this line must reach the summary.
    let line = format!("{SKIP_MARK}: {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[test]
fn required_needs() {
    let cases = [
        ("", Need::Root, false),
        ("root", Need::Root, true),
        ("root", Need::Cgroup2, false),
        ("root,cgroup2", Need::Cgroup2, true),
        (" root , cgroup2 ", Need::Root, true),
        ("rootless", Need::Root, false),
    ];
    for (required, need, want) in cases {
        assert_eq!(requires(required, need), want, "{required:?} {need:?}");
    }
}
