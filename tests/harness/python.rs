//! The Python the Python tests run: the virtualenv `scripts/deps.sh` makes in `target/pyenv`
//! (grpcio-tools, grpcio, prometheus-client), found next to the binaries' profile dir.

use std::path::PathBuf;

use crate::bins::bin_dir;
use crate::skip::skip;

/// The virtualenv's `python`, or `None` after reporting the running test as skipped for want of
/// `python` (no virtualenv: no python3 or no PyPI when `scripts/deps.sh` ran).
pub fn venv_python() -> Option<PathBuf> {
    // target/debug (or target/release) -> target
    let found = bin_dir().ok().and_then(|dir| {
        let python = dir.parent()?.join("pyenv/bin/python");
        python.is_file().then_some(python)
    });
    if found.is_none() {
        skip(
            "python",
            "no Python virtualenv in target/pyenv (scripts/deps.sh makes it with python3 and PyPI)",
        );
    }
    found
}
