//! The harness's one error type: what it could not do, with what a reader needs to act on it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::bins::BIN_DIR_ENV;

/// Why the harness could not do what it was asked.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("{binary} not found in {}: run cargo build --workspace --bins first", dir.display())]
    MissingBinary { binary: String, dir: PathBuf },
    #[error("cannot find the cargo target dir from {}: set {BIN_DIR_ENV}", exe.display())]
    NoBinDir { exe: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{what} exited early ({status}); stderr ends with:\n{tail}")]
    EarlyExit {
        what: String,
        status: String,
        tail: String,
    },
    #[error("timed out after {after:?} waiting for {what}; last observed: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("{what}: {message}")]
    Unexpected { what: String, message: String },
    #[error("{source}\n{tails}")]
    Start {
        #[source]
        source: Box<Error>,
        tails: String,
    },
}

/// As `Display`, so that `expect` in tests prints the readable message (with its newlines).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Lets `?` turn a harness error into the "last observed state" of a [`crate::wait_until`]
/// closure.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub(crate) fn unexpected(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Unexpected {
        what: what.into(),
        message: message.into(),
    }
}
