//! The validated app spec: what one app is, once every field has been checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscale::AutoscalePolicy;
use crate::limits::{
    MAX_APP_NAME_BYTES, MAX_ARG_BYTES, MAX_CPU_MILLIS, MAX_MEMORY_BYTES, MAX_NAME_BYTES,
    MAX_PATH_BYTES, check_duration, check_text,
};
use crate::placement::{Affinity, Constraint, Strategy};
use crate::supervise::Supervision;
use crate::update::UpdatePolicy;
use crate::{SpecError, echo};

/// What outputs show in place of a secret env value. Sent back in an apply for a key that is
/// secret in the stored app, it stands for the stored value (so an edit of a fetched spec does
/// not overwrite a secret with this text).
pub const SECRET_SHOWN: &str = "<secret>";
/// What the API shows in place of a plain env value to a caller that may not read env values
/// (the read role).
pub const ENV_HIDDEN: &str = "<hidden>";

/// Default grace between the stop signal and SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest instance count one app may ask for.
pub const MAX_INSTANCES: u32 = 100_000;

/// A validated app: build it with [`AppSpec::validate`] or the config/wire parsers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    pub script: String,
    pub args: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Keys of `env` whose values are secret: shown as [`SECRET_SHOWN`], never as themselves.
    #[serde(default)]
    pub secret_env: BTreeSet<String>,
    pub instances: u32,
    pub port: PortSpec,
    pub instance_var: Option<String>,
    /// Run `script` + `args` through `/bin/sh -c`.
    pub shell: bool,
    pub autorestart: bool,
    #[serde(with = "millis")]
    pub restart_delay: Duration,
    #[serde(with = "millis")]
    pub kill_timeout: Duration,
    pub exec_mode: ExecMode,
    pub merge_logs: bool,
    /// `instances: "max"`: one per CPU core of the eligible matching nodes; `instances` is then
    /// computed by the coordinator.
    #[serde(default)]
    pub instances_max: bool,
    #[serde(default)]
    pub placement: PlacementSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub reschedule: Reschedule,
    #[serde(default)]
    pub supervision: Supervision,
    #[serde(default)]
    pub autoscale: Option<AutoscalePolicy>,
    #[serde(default)]
    pub update: UpdatePolicy,
}

/// Where an app's instances may go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlacementSpec {
    pub strategy: Strategy,
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    /// At most this many instances per node (`distinct_hosts` is 1).
    pub max_per_node: Option<u32>,
}

impl PlacementSpec {
    /// Bounds the label keys and values that constraints and affinities name.
    fn validate(&self) -> Result<(), SpecError> {
        let constraints = self
            .constraints
            .iter()
            .map(|c| ("placement.constraints", c))
            .chain(
                self.affinities
                    .iter()
                    .map(|a| ("placement.affinities", &a.constraint)),
            );
        for (field, c) in constraints {
            let (key, values): (&String, &[String]) = match c {
                Constraint::Eq(k, v) | Constraint::Ne(k, v) => (k, std::slice::from_ref(v)),
                Constraint::In(k, vs) | Constraint::NotIn(k, vs) => (k, vs),
                Constraint::Exists(k) | Constraint::Missing(k) => (k, &[]),
            };
            for text in std::iter::once(key).chain(values) {
                check_text(field, text, MAX_NAME_BYTES)?;
            }
        }
        Ok(())
    }
}

/// What one instance reserves on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub overcommit: bool,
}

impl Resources {
    fn validate(&self) -> Result<(), SpecError> {
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(SpecError::new(
                "resources.memory",
                format!(
                    "{} bytes is more than the limit of 1 PiB per instance (memory is given \
                     as e.g. \"512M\" or \"2G\")",
                    self.memory_bytes
                ),
            ));
        }
        if self.cpu_millis > MAX_CPU_MILLIS {
            return Err(SpecError::new(
                "resources.cpu",
                format!(
                    "{}m is more than the limit of {MAX_CPU_MILLIS}m (1,000 cores) per \
                     instance (CPU is given as millicores, e.g. \"500m\", or cores, e.g. \"2\")",
                    self.cpu_millis
                ),
            ));
        }
        Ok(())
    }
}

/// What happens to instances of a node that went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reschedule {
    /// Start them on other nodes once the node has been down this long.
    #[serde(with = "millis")]
    After(Duration),
    /// Wait for the node to come back.
    Never,
}

/// Default delay before instances of a down node are started elsewhere.
pub const DEFAULT_RESCHEDULE_AFTER: Duration = Duration::from_secs(30);

impl Default for Reschedule {
    fn default() -> Reschedule {
        Reschedule::After(DEFAULT_RESCHEDULE_AFTER)
    }
}

/// PM2's `exec_mode`. Every instance is its own OS process either way; "cluster" is accepted so
/// PM2 configs load unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    #[default]
    Fork,
    Cluster,
}

impl ExecMode {
    pub fn parse(s: &str) -> Result<ExecMode, SpecError> {
        match s {
            "" | "fork" | "fork_mode" => Ok(ExecMode::Fork),
            "cluster" | "cluster_mode" => Ok(ExecMode::Cluster),
            other => Err(SpecError::new(
                "exec_mode",
                format!("unknown mode {}; use \"fork\" or \"cluster\"", echo(other)),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecMode::Fork => "fork",
            ExecMode::Cluster => "cluster",
        }
    }
}

/// How instances get their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PortSpec {
    #[default]
    None,
    /// One fixed port: only valid with one instance.
    Single(u16),
    /// Index i gets `start + i`; inclusive range.
    Range(u16, u16),
    /// The agent picks a port of the inclusive range that is free on its host.
    Auto(u16, u16),
}

impl PortSpec {
    /// Parses `""`, `"3000"`, `"3000-3011"` or `"auto:3000-3100"`.
    pub fn parse(s: &str) -> Result<PortSpec, SpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(PortSpec::None);
        }
        if let Some(rest) = s.strip_prefix("auto:") {
            let (a, b) = parse_range(rest)?;
            return Ok(PortSpec::Auto(a, b));
        }
        if s.contains('-') {
            let (a, b) = parse_range(s)?;
            return Ok(PortSpec::Range(a, b));
        }
        Ok(PortSpec::Single(parse_port(s)?))
    }

    /// Ports the spec can hand out, or `None` when it has no limit (no port at all).
    pub fn capacity(self) -> Option<u32> {
        match self {
            PortSpec::None => None,
            PortSpec::Single(_) => Some(1),
            PortSpec::Range(a, b) | PortSpec::Auto(a, b) => Some(u32::from(b) - u32::from(a) + 1),
        }
    }

    /// Port of instance `index` when the spec fixes it; `None` for no port or auto.
    pub fn port_for(self, index: u32) -> Option<u16> {
        match self {
            PortSpec::Single(p) if index == 0 => Some(p),
            PortSpec::Range(a, b) => {
                let p = u32::from(a) + index;
                if p <= u32::from(b) {
                    u16::try_from(p).ok()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Checks that `instances` fit in the spec's ports.
    pub fn check_count(self, instances: u32) -> Result<(), SpecError> {
        match self.capacity() {
            Some(cap) if instances > cap => Err(SpecError::new(
                "port",
                format!(
                    "{self} holds {cap} port{} but {instances} instances were asked for; \
                     widen the range (e.g. {})",
                    if cap == 1 { "" } else { "s" },
                    self.widened(instances)
                ),
            )),
            _ => Ok(()),
        }
    }

    fn widened(self, instances: u32) -> String {
        let start = match self {
            PortSpec::Single(a) | PortSpec::Range(a, _) | PortSpec::Auto(a, _) => u32::from(a),
            PortSpec::None => 3000,
        };
        let end = (start + instances.saturating_sub(1)).min(65535);
        match self {
            PortSpec::Auto(..) => format!("auto:{start}-{end}"),
            _ => format!("{start}-{end}"),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::None => Ok(()),
            PortSpec::Single(p) => write!(f, "{p}"),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}"),
            PortSpec::Auto(a, b) => write!(f, "auto:{a}-{b}"),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, SpecError> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(SpecError::new(
            "port",
            format!("{} is not a port number (1-65535)", echo(s)),
        )),
        Ok(p) => Ok(p),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), SpecError> {
    let Some((a, b)) = s.split_once('-') else {
        return Err(SpecError::new(
            "port",
            format!(
                "{} is not a port range; write it as START-END, e.g. 3000-3003",
                echo(s)
            ),
        ));
    };
    let (a, b) = (parse_port(a)?, parse_port(b)?);
    if a > b {
        return Err(SpecError::new(
            "port",
            format!("range {} ends before it starts", echo(s)),
        ));
    }
    Ok((a, b))
}

/// Checks an app name: 1-64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit,
/// without `..`. Agents name files and directories after it (logs, the etcd store's keys), so
/// the pattern keeps it one plain path component.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    if crate::limits::is_plain_name(name, MAX_APP_NAME_BYTES) {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!(
                "{} is not a valid app name: use 1-{MAX_APP_NAME_BYTES} letters, digits, '.', \
                 '_' or '-', starting with a letter or digit, without \"..\"",
                echo(name)
            ),
        ))
    }
}

/// Checks a node name: the same pattern as an app name. Agents name a cgroup after it and the
/// coordinator refuses any other at registration, so an agent checks its own name up front.
pub fn validate_node_name(name: &str) -> Result<(), SpecError> {
    if crate::limits::is_plain_name(name, MAX_APP_NAME_BYTES) {
        Ok(())
    } else {
        Err(SpecError::new(
            "node_name",
            format!(
                "{} is not a valid node name: use 1-{MAX_APP_NAME_BYTES} letters, digits, '.', \
                 '_' or '-', starting with a letter or digit, without \"..\"",
                echo(name)
            ),
        ))
    }
}

fn validate_env_key(field: &str, key: &str) -> Result<(), SpecError> {
    let why = if key.is_empty() {
        "is empty"
    } else if key.contains('=') {
        "contains '=', which ends a name in the environment"
    } else if key.contains('\0') {
        "contains a NUL byte, which no program can receive"
    } else if key.starts_with(|c: char| c.is_ascii_digit()) {
        "starts with a digit"
    } else if key.len() > MAX_NAME_BYTES {
        "is too long"
    } else {
        return Ok(());
    };
    Err(SpecError::new(
        field,
        format!(
            "{} is not a valid environment variable name: it {why} (use at most \
             {MAX_NAME_BYTES} bytes, not starting with a digit, no '=' or NUL)",
            echo(key)
        ),
    ))
}

impl AppSpec {
    /// Checks every field; the error names the first field at fault.
    pub fn validate(self) -> Result<AppSpec, SpecError> {
        validate_name(&self.name)?;
        if self.script.trim().is_empty() {
            return Err(SpecError::new(
                "script",
                "is empty: give the program to run, e.g. \"node\" with args [\"server.js\"]",
            ));
        }
        check_text("script", &self.script, MAX_ARG_BYTES)?;
        for (i, arg) in self.args.iter().enumerate() {
            check_text(&format!("args[{i}]"), arg, MAX_ARG_BYTES)?;
        }
        if self.shell {
            // `/bin/sh -c` gets the whole line as one argument.
            let line = self.script.len() + self.args.iter().map(|a| a.len() + 1).sum::<usize>();
            if line > MAX_ARG_BYTES {
                return Err(SpecError::new(
                    "args",
                    format!(
                        "the shell command line is {line} bytes, more than the limit of \
                         {MAX_ARG_BYTES} for one argument"
                    ),
                ));
            }
        }
        if self.instances > MAX_INSTANCES {
            return Err(SpecError::new(
                "instances",
                format!(
                    "{} is more than the limit of {MAX_INSTANCES}",
                    self.instances
                ),
            ));
        }
        self.port.check_count(self.instances)?;
        self.resources.validate()?;
        for key in self.env.keys() {
            validate_env_key("env", key)?;
        }
        for (key, value) in &self.env {
            // The program gets `KEY=VALUE` as one string.
            check_text(&format!("env.{key}"), value, MAX_ARG_BYTES - key.len() - 1)?;
        }
        if let Some(key) = self.secret_env.iter().find(|k| !self.env.contains_key(*k)) {
            return Err(SpecError::new(
                "secret_env",
                format!(
                    "{} is not a key of env: a secret names an env value to hide",
                    echo(key)
                ),
            ));
        }
        if let Some(var) = &self.instance_var {
            validate_env_key("instance_var", var)?;
        }
        if let Some(cwd) = &self.cwd {
            check_text("cwd", cwd, MAX_PATH_BYTES)?;
        }
        check_duration("restart_delay", self.restart_delay)?;
        check_duration("kill_timeout", self.kill_timeout)?;
        if let Reschedule::After(d) = self.reschedule {
            check_duration("reschedule_after", d)?;
        }
        self.placement.validate()?;
        if let Some(a) = self
            .placement
            .affinities
            .iter()
            .find(|a| !(-100..=100).contains(&a.weight))
        {
            return Err(SpecError::new(
                "placement.affinities",
                format!(
                    "weight {} of {} is outside -100..100",
                    a.weight, a.constraint
                ),
            ));
        }
        if self.placement.max_per_node == Some(0) {
            return Err(SpecError::new(
                "placement.max_per_node",
                "must be 1 or more (leave it out for no limit)",
            ));
        }
        if self.instances_max && matches!(self.port, PortSpec::Single(_)) {
            return Err(SpecError::new(
                "port",
                "instances \"max\" needs a port range or auto: ports, not a single port",
            ));
        }
        self.supervision.validate()?;
        self.update.validate()?;
        if let Some(policy) = &self.autoscale {
            policy.validate()?;
            self.port.check_count(policy.max).map_err(|e| SpecError {
                field: "autoscale.max".into(),
                ..e
            })?;
            let limit = self
                .supervision
                .max_memory_restart
                .unwrap_or(self.resources.memory_bytes);
            if let Some(crate::autoscale::MemoryThreshold::Percent(p)) = policy.memory_threshold
                && limit == 0
            {
                return Err(SpecError::new(
                    "autoscale.memory_threshold",
                    format!(
                        "{p}% of what? the app has no memory limit: set max_memory_restart or \
                         resources.memory, or give a size such as \"512M\""
                    ),
                ));
            }
        }
        Ok(self)
    }

    /// The same spec with another instance count, checked against the port range.
    pub fn with_instances(&self, instances: u32) -> Result<AppSpec, SpecError> {
        if instances > MAX_INSTANCES {
            return Err(SpecError::new(
                "instances",
                format!("{instances} is more than the limit of {MAX_INSTANCES}"),
            ));
        }
        self.port.check_count(instances)?;
        Ok(AppSpec {
            instances,
            ..self.clone()
        })
    }

    /// Whether two specs run the same process: equal but for the instance count, placement,
    /// resources, rescheduling, autoscaling and update policy, which change where and how
    /// instances run, not what they run.
    pub fn same_process(&self, other: &AppSpec) -> bool {
        let shape = |s: &AppSpec| AppSpec {
            instances: 0,
            instances_max: false,
            placement: PlacementSpec::default(),
            resources: Resources::default(),
            reschedule: Reschedule::default(),
            autoscale: None,
            update: UpdatePolicy::default(),
            ..s.clone()
        };
        shape(self) == shape(other)
    }

    /// A minimal spec, mostly for tests and `pmcluster start`.
    pub fn new(name: &str, script: &str, args: &[&str]) -> AppSpec {
        AppSpec {
            name: name.to_string(),
            script: script.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            secret_env: BTreeSet::new(),
            instances: 1,
            port: PortSpec::None,
            instance_var: None,
            shell: false,
            autorestart: true,
            restart_delay: Duration::ZERO,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            exec_mode: ExecMode::Fork,
            merge_logs: false,
            instances_max: false,
            placement: PlacementSpec::default(),
            resources: Resources::default(),
            reschedule: Reschedule::default(),
            supervision: Supervision::default(),
            autoscale: None,
            update: UpdatePolicy::default(),
        }
    }
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests;
