//! Scalars of a config file that many fields share: durations and instance counts.

use std::time::Duration;

use super::Scalar;
use crate::app::MAX_INSTANCES;
use crate::limits::check_duration;
use crate::{SpecError, echo};

/// Parses a duration written as milliseconds (`2000`) or with a unit (`"2s"`, `"500ms"`), and
/// checks it against the field's maximum ([`crate::limits::DURATION_MAX`]).
pub fn parse_duration(field: &str, value: &Scalar) -> Result<Duration, SpecError> {
    let d = match value {
        Scalar::Int(ms) if *ms >= 0 => Duration::from_millis(*ms as u64),
        Scalar::Str(s) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => humantime::parse_duration(s).map_err(|e| {
                    // The parser's "expected number at 0" says nothing a user can act on.
                    let flag = s.starts_with("--")
                        || (s.starts_with('-') && s[1..].starts_with(char::is_alphabetic));
                    if flag {
                        return SpecError::new(
                            field,
                            format!(
                                "{} looks like a flag, not a duration: give this one a value, \
                                 e.g. \"2s\"",
                                echo(s)
                            ),
                        );
                    }
                    let why = match e {
                        _ if s.starts_with('-') => " (it cannot be negative)".to_string(),
                        humantime::DurationError::NumberExpected(_) => String::new(),
                        e => format!(" ({e})"),
                    };
                    SpecError::new(
                        field,
                        format!(
                            "{} is not a duration{why}; write e.g. \"2s\" or 2000",
                            echo(s)
                        ),
                    )
                })?,
            }
        }
        other => {
            return Err(SpecError::new(
                field,
                format!(
                    "{} is not a duration; write e.g. \"2s\" or 2000",
                    echo(&other.to_text())
                ),
            ));
        }
    };
    check_duration(field, d)
}

/// A duration as a config file and a flag write it, in the largest unit that holds it exactly:
/// `15s`, `5m`, `1500ms`, `2h`, `1d` ([`parse_duration`] reads each back to the same value). A
/// user trial found `"healthy_deadline": "300000ms"` in an export, and `--cooldown 15000ms` in
/// a command printed to type. What is finer than a millisecond is dropped, as the spec keeps
/// milliseconds.
pub fn duration_text(d: Duration) -> String {
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    UNITS
        .iter()
        .find(|(unit, _)| ms.is_multiple_of(*unit))
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        )
}

/// A size as a config file writes it, in the largest unit of 1024 that holds it exactly: `200M`,
/// `10M`, `1536K`, else plain bytes (`"1000"`); what [`crate::placement::parse_memory`] reads
/// back to the same number. (A trial found `max_memory_restart: "209715200"` in an export of
/// an app given `200M`.)
pub fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    if bytes == 0 {
        return "0".to_string();
    }
    UNITS
        .iter()
        .find(|(unit, _)| bytes.is_multiple_of(*unit))
        .map_or_else(
            || bytes.to_string(),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

/// Names both forms `instances` takes, so a near miss like `"max5"` points at the keyword too.
const NOT_A_COUNT: &str =
    "is neither a whole number of instances (0 or more) nor \"max\" (one per core)";

/// Parses an instance count: a whole number 0 or more, up to u32 (`"max"` is handled by the caller).
pub fn parse_instances(value: &Scalar) -> Result<u32, SpecError> {
    let too_large = |n: &dyn std::fmt::Display| {
        SpecError::new(
            "instances",
            format!("{n} is too large: the limit is {MAX_INSTANCES}"),
        )
    };
    match value {
        // Counts past MAX_INSTANCES that fit are refused by `AppSpec::validate`.
        Scalar::Int(n) if *n >= 0 => u32::try_from(*n).map_err(|_| too_large(n)),
        Scalar::Str(s) => {
            let digits = s.trim().strip_prefix('+').unwrap_or(s.trim());
            match digits.parse::<u32>() {
                Ok(n) => Ok(n),
                // Digits that do not fit a u32 are a number all the same, only too large.
                _ if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Err(too_large(&echo(s)))
                }
                _ => Err(SpecError::new(
                    "instances",
                    format!("{} {NOT_A_COUNT}", echo(s)),
                )),
            }
        }
        Scalar::Float(f) => Err(SpecError::new("instances", float_count(*f))),
        other => Err(SpecError::new(
            "instances",
            format!("{} {NOT_A_COUNT}", other.to_text()),
        )),
    }
}

/// The message for a count written as a float (`1e3`, `2.0`, `2.5`). Its plain form may read as
/// a whole number ("1000"), so it says what was wrong and, when there is one, the count meant.
fn float_count(f: f64) -> String {
    // `{:?}` keeps a float looking like one: 1000.0, not 1000.
    let whole = f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= f64::from(MAX_INSTANCES);
    let instead = if whole {
        format!("the whole number {}", f as u32)
    } else {
        "a whole number of instances (0 or more)".to_string()
    };
    format!("{f:?} is a float; write {instead}, or \"max\" (one per core)")
}
