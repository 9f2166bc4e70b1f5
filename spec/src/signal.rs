//! The signals a user may send to instances (`pmcluster signal`), by Linux name and number, and
//! the one-line messages `pmcluster send` hands them. Shared so the CLI refuses what the
//! coordinator would refuse, with the same words.

use crate::echo;

/// Linux signals 1..=31 by number, without `SIG`. Numbers are the x86/arm ones the agent's
/// hosts use; the wire carries the name, so an agent resolves it for its own kernel.
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Longest message `send` hands an instance, in bytes.
pub const MESSAGE_MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("signal: {0} is not a signal; give a name (SIGUSR2, USR2) or a number 1-31")]
    Unknown(String),
    #[error("message: is empty")]
    EmptyMessage,
    #[error("message: must be one line (it holds a newline or NUL)")]
    MultiLine,
    #[error("message: {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
}

/// The canonical name (`SIGUSR2`) of `SIGUSR2`, `usr2`, `USR2` or `12`.
pub fn parse(s: &str) -> Result<String, SignalError> {
    let t = s.trim();
    let found = if let Ok(n) = t.parse::<i32>() {
        SIGNALS.iter().find(|(_, num)| *num == n)
    } else {
        let upper = t.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS.iter().find(|(name, _)| *name == bare)
    };
    found
        .map(|(name, _)| format!("SIG{name}"))
        .ok_or_else(|| SignalError::Unknown(echo(s)))
}

/// Checks a message for `send`: one line, not empty, within [`MESSAGE_MAX_BYTES`].
pub fn check_message(m: &str) -> Result<(), SignalError> {
    if m.is_empty() {
        return Err(SignalError::EmptyMessage);
    }
    if m.contains(['\n', '\r', '\0']) {
        return Err(SignalError::MultiLine);
    }
    if m.len() > MESSAGE_MAX_BYTES {
        return Err(SignalError::TooLong {
            len: m.len(),
            max: MESSAGE_MAX_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let ok = |input: &str, want: &str| assert_eq!(parse(input).as_deref(), Ok(want), "{input}");
        ok("SIGUSR2", "SIGUSR2");
        ok("USR2", "SIGUSR2");
        ok("usr2", "SIGUSR2");
        ok("sigusr2", "SIGUSR2");
        ok("12", "SIGUSR2");
        ok("1", "SIGHUP");
        ok(" HUP ", "SIGHUP");
        ok("31", "SIGSYS");
        for bad in ["", "0", "32", "-1", "SIG", "USR3", "SIGFOO", "12x"] {
            let e = parse(bad).map_err(|e| e.to_string());
            assert!(
                e.as_ref().is_err_and(|m| m.starts_with("signal: ")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn messages() {
        assert_eq!(check_message("hello world"), Ok(()));
        assert_eq!(check_message(""), Err(SignalError::EmptyMessage));
        assert_eq!(check_message("a\nb"), Err(SignalError::MultiLine));
        assert_eq!(check_message("a\0b"), Err(SignalError::MultiLine));
        let long = "x".repeat(MESSAGE_MAX_BYTES + 1);
        assert!(matches!(
            check_message(&long),
            Err(SignalError::TooLong { .. })
        ));
        assert_eq!(check_message(&"x".repeat(MESSAGE_MAX_BYTES)), Ok(()));
    }
}
