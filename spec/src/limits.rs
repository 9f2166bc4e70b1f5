//! Bounds of the fields whose type allows far more than any program could use: durations, and
//! strings that end up in an argv, an environment, a label or a path. Validation checks them on
//! every path in (config files, CLI flags, the wire), so a value that would only fail later, on
//! an agent and over and over, is refused up front with the field and the bound.

use std::time::Duration;

use crate::{SpecError, echo};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A duration field's maximum, and what to do instead of a longer one.
pub struct DurationMax {
    /// As written in config files (`update.shutdown_delay`).
    pub field: &'static str,
    pub max: Duration,
    pub instead: &'static str,
}

const fn max(field: &'static str, max: Duration, instead: &'static str) -> DurationMax {
    DurationMax {
        field,
        max,
        instead,
    }
}

/// Every duration field of a spec with its maximum. An hour for what delays a single process
/// (a restart, a stop, a health probe): waiting longer is a stop in all but name and hides a
/// broken app. A day for windows and deadlines over many instances, which real rollouts and
/// autoscalers stay well inside, and which the coordinator keeps history for.
pub const DURATION_MAX: &[DurationMax] = &[
    max(
        "restart_delay",
        HOUR,
        "to restart on a schedule, use cron_restart",
    ),
    max(
        "kill_timeout",
        HOUR,
        "a process that needs longer to stop should be sent its stop signal earlier",
    ),
    max(
        "reschedule_after",
        DAY,
        "write \"never\" to wait for the node however long it is down",
    ),
    max("min_uptime", HOUR, ""),
    max("restart_window", DAY, ""),
    max("restart_backoff_max", HOUR, ""),
    max("listen_timeout", HOUR, ""),
    max("health_check.interval", HOUR, ""),
    max("health_check.timeout", HOUR, ""),
    max("autoscale.cooldown", DAY, ""),
    max("autoscale.up_stabilization", DAY, ""),
    max("autoscale.down_stabilization", DAY, ""),
    max("update.min_healthy_time", DAY, ""),
    max("update.healthy_deadline", DAY, ""),
    max("update.progress_deadline", DAY, ""),
    max(
        "update.shutdown_delay",
        HOUR,
        "load balancers drop a draining instance within seconds",
    ),
];

/// The maximum of a duration field, `None` for a field that is not a duration.
pub fn duration_max(field: &str) -> Option<Duration> {
    DURATION_MAX
        .iter()
        .find(|m| m.field == field)
        .map(|m| m.max)
}

/// Refuses a duration above its field's maximum, naming the field and the maximum, and one finer
/// than a millisecond: the wire and the config form carry milliseconds, so `"4us"` would become
/// another duration (0) on its way to the coordinator.
pub fn check_duration(field: &str, d: Duration) -> Result<Duration, SpecError> {
    let Some(m) = DURATION_MAX.iter().find(|m| m.field == field) else {
        return Ok(d);
    };
    if d <= m.max {
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(SpecError::new(
                field,
                format!(
                    "{} is not a whole number of milliseconds, the finest a duration can be",
                    humantime::format_duration(d)
                ),
            ));
        }
        return Ok(d);
    }
    let mut message = format!(
        "{} is more than the maximum of {}",
        humantime::format_duration(d),
        humantime::format_duration(m.max)
    );
    if !m.instead.is_empty() {
        message.push_str("; ");
        message.push_str(m.instead);
    }
    Err(SpecError::new(field, message))
}

/// Longest argument or `KEY=VALUE` environment string, in bytes: Linux refuses an exec with a
/// longer one (`MAX_ARG_STRLEN`, 32 pages, counting the closing NUL), so such a spec could never
/// start.
pub const MAX_ARG_BYTES: usize = 32 * 4096 - 1;
/// Longest path (`cwd`): Linux's `PATH_MAX`, counting the closing NUL.
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest name of an environment variable, a label key or value, a user or a group. Far above
/// what systems use (32 for a user name, 63 for a label), low enough that an error naming it
/// stays readable.
pub const MAX_NAME_BYTES: usize = 256;

/// Most memory one instance may reserve (`resources.memory`): 1 PiB, beyond any machine. The
/// coordinator adds reservations up per node, and a request near 2^64 (a unit typed twice) would
/// otherwise read as a negative amount and pass every capacity check.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Most millicores one instance may reserve (`resources.cpu`): 1,000 cores.
pub const MAX_CPU_MILLIS: u32 = 1_000_000;
/// Highest CPU `cpu_affinity` may name: the agent's CPU set holds 1,024 (glibc's
/// `CPU_SETSIZE`), so a higher one could only fail at every start.
pub const MAX_CPU_INDEX: u32 = 1023;

/// Longest app or node name. Short enough that a log file name (`APP-INDEX-out.log.N`) and a
/// cgroup (`pmcluster-NODE-KEY`) stay under a file name's 255 bytes.
pub const MAX_APP_NAME_BYTES: usize = 64;

/// Whether `name` is one plain path component: 1 to `max_bytes` of `[A-Za-z0-9._-]`, starting
/// with a letter or digit (so never `.` or `..`, never hidden), and without `..` anywhere, so no
/// joining or later splitting of it can climb a directory.
pub fn is_plain_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..")
}

/// Refuses a NUL byte (no program can receive one: argv, environment and paths are C strings)
/// and a value longer than `max_bytes`.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), SpecError> {
    if let Some(at) = value.find('\0') {
        return Err(SpecError::new(
            field,
            format!(
                "{} contains a NUL byte (at byte {at}), which no program can receive; remove it",
                echo(value)
            ),
        ));
    }
    if value.len() > max_bytes {
        return Err(SpecError::new(
            field,
            format!(
                "{} is {} bytes, more than the limit of {max_bytes}",
                echo(value),
                value.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Duration, Result<(), &str>)] = &[
            ("restart_delay", HOUR, Ok(())),
            (
                "restart_delay",
                HOUR + Duration::from_millis(1),
                Err("1h 1ms is more than the maximum of 1h; to restart on a schedule"),
            ),
            (
                "restart_delay",
                Duration::from_millis(u64::MAX),
                Err("is more than the maximum of 1h"),
            ),
            (
                "kill_timeout",
                Duration::from_secs(7200),
                Err("maximum of 1h"),
            ),
            ("reschedule_after", DAY, Ok(())),
            (
                "reschedule_after",
                DAY * 2,
                Err("maximum of 1day; write \"never\""),
            ),
            ("update.progress_deadline", DAY * 7, Err("maximum of 1day")),
            ("update.shutdown_delay", HOUR * 2, Err("maximum of 1h")),
            ("autoscale.cooldown", DAY, Ok(())),
            ("not_a_duration", Duration::MAX, Ok(())),
            // Found by the config_json fuzz target: "4us" was kept, and sent as 0.
            (
                "reschedule_after",
                Duration::from_micros(4),
                Err("4us is not a whole number of milliseconds"),
            ),
            (
                "health_check.timeout",
                Duration::from_micros(1500),
                Err("1ms 500us is not a whole number"),
            ),
            ("health_check.timeout", Duration::from_micros(1000), Ok(())),
        ];
        for (field, d, want) in cases {
            let got = check_duration(field, *d);
            match (want, &got) {
                (Ok(()), Ok(g)) => assert_eq!(g, d, "{field}"),
                (Err(w), Err(e)) => {
                    assert_eq!(e.field, *field);
                    assert!(e.message.contains(w), "{field}: {}", e.message);
                }
                _ => panic!("{field} {d:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn texts() {
        let cases: &[(&str, usize, Result<(), &str>)] = &[
            ("node", 10, Ok(())),
            ("", 10, Ok(())),
            ("a\0b", 10, Err("\"a\\0b\" contains a NUL byte (at byte 1)")),
            (
                "abcdefghijk",
                10,
                Err("is 11 bytes, more than the limit of 10"),
            ),
        ];
        for (value, limit, want) in cases {
            let got = check_text("args[2]", value, *limit);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(e)) => {
                    assert_eq!(e.field, "args[2]");
                    assert!(e.message.contains(w), "{value:?}: {}", e.message);
                }
                _ => panic!("{value:?}: {got:?}"),
            }
        }
    }
}
