//! How an agent supervises each instance: restart policy, stop signal, readiness, health check,
//! resource rules and logs. Plain validated data; the agent acts on it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_ARG_BYTES, MAX_CPU_INDEX, MAX_NAME_BYTES, MAX_PATH_BYTES, check_duration, check_text,
};
use crate::{SpecError, echo};

/// Supervision settings of an app. `Default` is what an app gets when it says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Supervision {
    /// An exit sooner than this after start is unstable.
    #[serde(with = "crate::app::millis")]
    pub min_uptime: Duration,
    /// Unstable restarts allowed within `restart_window` before the instance is errored
    /// (0: never give up). The window's clock stands still while the agent waits to restart
    /// (restart delay, backoff): the backoff must not keep a crash loop under the limit.
    pub max_restarts: u32,
    #[serde(with = "crate::app::millis")]
    pub restart_window: Duration,
    /// Cap of the crash-loop backoff added to `restart_delay`.
    #[serde(with = "crate::app::millis")]
    pub restart_backoff_max: Duration,
    pub stop_signal: StopSignal,
    /// Time to accept connections (or pass the health check) before a restart.
    #[serde(with = "crate::app::millis")]
    pub listen_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// Resident memory of the process tree that triggers a restart.
    pub max_memory_restart: Option<u64>,
    pub cpu_affinity: Vec<u32>,
    /// setrlimit values by name (soft = hard).
    pub limits: BTreeMap<String, u64>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Five-field cron expression.
    pub cron_restart: Option<String>,
    pub log_timestamps: bool,
    /// Rotate at this size (None: never).
    pub log_max_bytes: Option<u64>,
    pub log_keep: u32,
}

pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_RESTARTS: u32 = 15;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(15);
pub const DEFAULT_LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
pub const DEFAULT_LOG_KEEP: u32 = 5;
/// The most rotated files a stream keeps (`log_retain`). Each rotation shifts every kept file
/// by one, so the bound is also the most renames a rotation does; a billion made the pump
/// allocate hundreds of GB and die, and a million took seconds per rotation.
pub const MAX_LOG_KEEP: u32 = 1000;
/// How an agent's status message says that it will try a failed start again (`port 4300 is
/// already in use on this host; retrying in 1.6s`). The coordinator and the CLI read it to tell
/// a start that is still being retried (the program may be installed, the port freed, the
/// instance moved to another node) from one that failed for good.
pub const RETRYING: &str = "; retrying in";
/// Where an agent's status message for an instance it stopped restarting (`crashed 16 times
/// within 60s (last: exited with code 3); restart it with: pmcluster restart web --instance 0`)
/// turns from what happened to what to do: a rollout's failure quotes only the first part, as
/// "instance 0" could be either copy of that index there.
pub const RESTART_ADVICE: &str = "; restart it with";

impl Default for Supervision {
    fn default() -> Supervision {
        Supervision {
            min_uptime: DEFAULT_MIN_UPTIME,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window: DEFAULT_RESTART_WINDOW,
            restart_backoff_max: DEFAULT_RESTART_BACKOFF_MAX,
            stop_signal: StopSignal::Term,
            listen_timeout: DEFAULT_LISTEN_TIMEOUT,
            health_check: None,
            max_memory_restart: None,
            cpu_affinity: Vec::new(),
            limits: BTreeMap::new(),
            user: None,
            group: None,
            cron_restart: None,
            log_timestamps: false,
            log_max_bytes: Some(DEFAULT_LOG_MAX_BYTES),
            log_keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// Signals an instance may be stopped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StopSignal {
    #[default]
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
}

impl StopSignal {
    pub fn parse(s: &str) -> Result<StopSignal, SpecError> {
        let upper = s.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        match name {
            "" | "TERM" => Ok(StopSignal::Term),
            "INT" => Ok(StopSignal::Int),
            "QUIT" => Ok(StopSignal::Quit),
            "HUP" => Ok(StopSignal::Hup),
            "USR1" => Ok(StopSignal::Usr1),
            "USR2" => Ok(StopSignal::Usr2),
            _ => Err(SpecError::new(
                "stop_signal",
                format!(
                    "{} is not one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2",
                    echo(s)
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// GET this URL (`${PORT}` and `${HOST}` expanded); healthy on `expected_status`, or any 2xx
    /// when `None`.
    Http {
        url: String,
        expected_status: Option<u16>,
    },
    /// Connect to the instance's port.
    Tcp,
    /// Run through `/bin/sh -c` with the instance's env; exit 0 is healthy.
    Exec { command: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(with = "crate::app::millis")]
    pub interval: Duration,
    #[serde(with = "crate::app::millis")]
    pub timeout: Duration,
    /// Consecutive failures before the instance is unhealthy.
    pub retries: u32,
    pub restart_unhealthy: bool,
}

pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:${PORT}/health";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// Limits the agent knows how to set.
pub const LIMIT_NAMES: [&str; 8] = [
    "nofile", "nproc", "core", "memlock", "stack", "as", "fsize", "cpu",
];

impl Supervision {
    /// The bounds a new value is held to, beyond [`Supervision::validate`]. The coordinator
    /// checks them where a value changes: a spec stored before a bound existed still loads and
    /// goes back and forth as it is (`reload --set`, `export` then `apply -f`), and the agent
    /// clamps what it acts on (see [`Supervision::log_keep_bounded`]).
    pub fn validate_new(&self) -> Result<(), SpecError> {
        if self.log_keep > MAX_LOG_KEEP {
            return Err(SpecError::new(
                "log_retain",
                format!(
                    "{} rotated files is over the limit of {MAX_LOG_KEEP}; raise log_max_size \
                     to keep more output",
                    self.log_keep
                ),
            ));
        }
        Ok(())
    }

    /// `log_keep`, at most [`MAX_LOG_KEEP`]: what an agent keeps, also for a spec stored
    /// before the bound.
    pub fn log_keep_bounded(&self) -> u32 {
        self.log_keep.min(MAX_LOG_KEEP)
    }

    /// Checks the fields that need more than their type.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = self
            .limits
            .keys()
            .find(|k| !LIMIT_NAMES.contains(&k.as_str()))
        {
            return Err(SpecError::new(
                "limits",
                format!(
                    "unknown limit {}; known: {}",
                    echo(name),
                    LIMIT_NAMES.join(", ")
                ),
            ));
        }
        if let Some(cpu) = self.cpu_affinity.iter().find(|&&c| c > MAX_CPU_INDEX) {
            return Err(SpecError::new(
                "cpu_affinity",
                format!("no CPU {cpu}: CPUs are numbered 0 to {MAX_CPU_INDEX} at most"),
            ));
        }
        check_duration("min_uptime", self.min_uptime)?;
        check_duration("restart_window", self.restart_window)?;
        check_duration("restart_backoff_max", self.restart_backoff_max)?;
        check_duration("listen_timeout", self.listen_timeout)?;
        if let Some(cron) = &self.cron_restart {
            check_text("cron_restart", cron, MAX_NAME_BYTES)?;
            validate_cron(cron)?;
        }
        if let Some(hc) = &self.health_check {
            check_duration("health_check.interval", hc.interval)?;
            check_duration("health_check.timeout", hc.timeout)?;
            match &hc.probe {
                Probe::Http { url, .. } => check_text("health_check.url", url, MAX_PATH_BYTES)?,
                // Run as `/bin/sh -c COMMAND`: one argument.
                Probe::Exec { command } => {
                    check_text("health_check.command", command, MAX_ARG_BYTES)?
                }
                Probe::Tcp => {}
            }
            if hc.interval.is_zero() {
                return Err(SpecError::new(
                    "health_check.interval",
                    "must be more than zero",
                ));
            }
            // The wire reads a zero timeout as the default; a check allowed no time would
            // fail anyway.
            if hc.timeout.is_zero() {
                return Err(SpecError::new(
                    "health_check.timeout",
                    "must be more than zero",
                ));
            }
            if let Probe::Http {
                expected_status: Some(status),
                ..
            } = &hc.probe
                && !(100..=599).contains(status)
            {
                return Err(SpecError::new(
                    "health_check.expected_status",
                    format!(
                        "{status} is not an HTTP status (100-599); leave it out to accept any 2xx"
                    ),
                ));
            }
            if let Probe::Http { url, .. } = &hc.probe
                && !(url.starts_with("http://"))
            {
                return Err(SpecError::new(
                    "health_check.url",
                    format!(
                        "{} must start with http:// (e.g. {DEFAULT_HEALTH_URL})",
                        echo(url)
                    ),
                ));
            }
            if let Probe::Exec { command } = &hc.probe
                && command.trim().is_empty()
            {
                return Err(SpecError::new("health_check.command", "is empty"));
            }
        }
        let names = [("user", &self.user), ("group", &self.group)];
        for (field, name) in names
            .into_iter()
            .filter_map(|(f, n)| Some((f, n.as_ref()?)))
        {
            check_text(field, name, MAX_NAME_BYTES)?;
            if name.is_empty() || name.contains(['/', ':']) {
                return Err(SpecError::new(
                    field,
                    format!("{} is not a user or group name", echo(name)),
                ));
            }
        }
        Ok(())
    }
}

/// The cron parser every part of pmcluster uses: five fields (minute hour day-of-month month
/// day-of-week), no seconds or years, POSIX weekdays (0 and 7 are Sunday), names (`MON`, `JAN`),
/// steps, ranges, lists and the `@daily`-style aliases. The agent schedules `cron_restart` with
/// the same parser, so whatever validates here also runs there.
pub fn cron_parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
}

/// Checks a five-field cron expression (see [`cron_parser`]).
pub fn validate_cron(expr: &str) -> Result<(), SpecError> {
    let fields = expr.split_whitespace().count();
    // croner's own message for a wrong field count names seconds; say what pmcluster expects.
    if fields != 5 && !expr.trim_start().starts_with('@') {
        return Err(SpecError::new(
            "cron_restart",
            format!(
                "{}: has {fields} fields; write minute hour day-of-month month day-of-week, \
                 e.g. \"0 3 * * *\"",
                echo(expr)
            ),
        ));
    }
    cron_parser()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| SpecError::new("cron_restart", format!("{}: {e}", echo(expr))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_retain_has_a_bound() {
        let mut sup = Supervision {
            log_keep: MAX_LOG_KEEP,
            ..Supervision::default()
        };
        assert!(sup.validate_new().is_ok());
        sup.log_keep = u32::MAX;
        let e = sup.validate_new().expect_err("over the bound");
        assert_eq!(e.field, "log_retain");
        assert!(
            e.to_string()
                .contains("4294967295 rotated files is over the limit of 1000"),
            "{e}"
        );
        // Valid as stored data: the agent keeps the bound's worth.
        assert!(sup.validate().is_ok());
        assert_eq!(sup.log_keep_bounded(), MAX_LOG_KEEP);
    }

    #[test]
    fn cron() {
        for ok in [
            "0 3 * * *",
            "*/5 * * * *",
            "0 0-6/2 1,15 * 1-5",
            "30 4 * 12 0",
            "0 3 * * 7",
            "0 9 * * MON-FRI",
            "@daily",
        ] {
            assert!(validate_cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
            "0 0 0 * *",
            "0 0 * * * *",
            "0 0 32 * *",
        ] {
            assert!(validate_cron(bad).is_err(), "{bad}");
        }
    }

    /// Found by the config fuzz targets: these were accepted, and the wire (0: the default) then
    /// turned them into a 5 s timeout and any 2xx.
    #[test]
    fn health_checks_without_time_or_with_no_status_are_refused() {
        let check = |timeout_ms: u64, expected_status: Option<u16>| {
            let sup = Supervision {
                health_check: Some(HealthCheck {
                    probe: Probe::Http {
                        url: DEFAULT_HEALTH_URL.to_string(),
                        expected_status,
                    },
                    interval: DEFAULT_HEALTH_INTERVAL,
                    timeout: Duration::from_millis(timeout_ms),
                    retries: DEFAULT_HEALTH_RETRIES,
                    restart_unhealthy: true,
                }),
                ..Supervision::default()
            };
            sup.validate().map_err(|e| e.field)
        };
        assert_eq!(check(1, Some(204)), Ok(()));
        assert_eq!(check(0, None), Err("health_check.timeout".to_string()));
        for status in [0, 99, 600] {
            assert_eq!(
                check(1000, Some(status)),
                Err("health_check.expected_status".to_string()),
                "{status}"
            );
        }
    }

    #[test]
    fn signals() {
        assert_eq!(StopSignal::parse("SIGINT").ok(), Some(StopSignal::Int));
        assert_eq!(StopSignal::parse("usr2").ok(), Some(StopSignal::Usr2));
        assert!(StopSignal::parse("SIGKILL").is_err());
    }
}
