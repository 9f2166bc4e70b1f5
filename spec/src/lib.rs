//! The app spec shared by the CLI, the coordinator and the agent: parsing PMDaemon/PM2-style
//! config files, validation with errors that name the field, per-instance environment and
//! argument expansion, and conversion to and from the wire types.
//!
//! Pure: no I/O, no clocks, no environment reads (`proc` reads only a file its caller opened).

// Pure: no wall clock, random ids, environment or hash order (see clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod address;
pub mod app;
pub mod autoscale;
pub mod config;
pub mod instance;
pub mod interpreter;
pub mod limits;
pub mod link;
pub mod placement;
pub mod proc;
pub mod secret;
pub mod signal;
pub mod supervise;
pub mod update;
pub mod wire;

pub use app::{AppSpec, ExecMode, PortSpec};

/// Characters of a value that an error message repeats (see [`echo`]).
pub const ECHO_CHARS: usize = 64;

/// Bytes of a whole error message, after which it is cut (see [`cut`]). A gRPC status message
/// travels in a header, and a header of megabytes fails the call with `RESOURCE_EXHAUSTED`
/// instead of the error; percent-encoding may triple it, so this leaves room under every
/// client's header limit.
pub const MESSAGE_MAX_BYTES: usize = 1024;

/// `value` as an error message shows it: quoted (with escapes, so a NUL is visible), and cut to
/// its first [`ECHO_CHARS`] characters plus its full size when longer. Every message that
/// repeats what a user gave goes through here, so a 1 MB value makes a short message.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

/// `text` cut to at most `max_bytes` bytes on a character boundary, with the full size when cut:
/// the last guard for messages that embed text from elsewhere (a parser's error, a peer's).
pub fn cut(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let suffix = format!("… ({} bytes)", text.len());
    let mut end = max_bytes.saturating_sub(suffix.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &text[..end])
}

/// A spec that cannot be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {message}", app.as_ref().map(|a| format!("app {}: ", echo(a))).unwrap_or_default())]
pub struct SpecError {
    /// App the error is about, when the input held several.
    pub app: Option<String>,
    /// Field at fault, as written in config files (`port`, `instances`, ...).
    pub field: String,
    pub message: String,
}

impl SpecError {
    /// An error about `field`. Values in `message` should go through [`echo`]; whatever a
    /// message embeds, it is cut to [`MESSAGE_MAX_BYTES`].
    pub fn new(field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            app: None,
            field: cut(field, ECHO_CHARS * 2),
            message: cut(&message.into(), MESSAGE_MAX_BYTES),
        }
    }

    /// The same error, attributed to an app.
    pub fn in_app(self, app: &str) -> SpecError {
        SpecError {
            app: Some(app.to_string()),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_and_cut() {
        let cases: &[(&str, &str)] = &[
            ("web", "\"web\""),
            ("a\0b", "\"a\\0b\""),
            (&"x".repeat(64), &format!("{:?}", "x".repeat(64))),
        ];
        for (value, want) in cases {
            assert_eq!(echo(value), *want, "{value:?}");
        }
        // Cut on a character boundary, with the full size.
        let long = "é".repeat(100);
        assert_eq!(echo(&long), format!("{:?}… (200 bytes)", "é".repeat(64)));
        let big = "y".repeat(1 << 20);
        assert!(echo(&big).ends_with("… (1048576 bytes)"));
        assert!(echo(&big).len() < 100);

        assert_eq!(cut("short", 10), "short");
        let cut_text = cut(&"é".repeat(1000), 100);
        assert!(cut_text.len() <= 100, "{cut_text}");
        assert!(cut_text.ends_with("… (2000 bytes)"), "{cut_text}");
        let e = SpecError::new("env", "z".repeat(1 << 20));
        assert!(
            e.to_string().len() <= MESSAGE_MAX_BYTES + 10,
            "{}",
            e.to_string().len()
        );
    }
}
