//! Config files in the PMDaemon/PM2 shapes: one app object, or `{"apps": [...]}`, as JSON, YAML
//! or TOML. Unknown fields are errors, so a typo never silently drops a setting.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::app::{
    AppSpec, DEFAULT_KILL_TIMEOUT, ExecMode, PlacementSpec, PortSpec, Reschedule, Resources,
};
use crate::autoscale::{
    AutoscalePolicy, DEFAULT_COOLDOWN, DEFAULT_DOWN_STABILIZATION, DEFAULT_SCALE_DOWN_FRACTION,
    DEFAULT_TOLERANCE, DEFAULT_UP_STABILIZATION, MemoryThreshold, Mode as AutoscaleMode,
};
use crate::limits::check_duration;
use crate::placement::{Affinity, Constraint, Strategy, parse_cpu, parse_memory};
use crate::supervise::{
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTH_URL,
    HealthCheck, Probe, StopSignal, Supervision,
};
use crate::update::UpdatePolicy;
use crate::{SpecError, echo};

mod position;
mod render;
mod scalars;
mod text;
use position::locate;
pub use render::to_config;
pub use scalars::{duration_text, parse_duration, parse_instances, size_text};
use text::{at_value, field_error, parse_tree, strict, syntax_error};
pub use text::{json_tree, without_bom};

/// Format of a config file, usually from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// Guesses from a file name; JSON when the extension says nothing.
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else if lower.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Json
        }
    }
}

/// The shape of a file of several apps. Parsed whole only to find what is wrong with the file
/// itself (and where): each app is taken from the tree apart (see `raw_apps`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApps {
    #[allow(dead_code)]
    apps: Vec<RawApp>,
}

/// One app as written in a file, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Option<String>,
    pub script: Option<String>,
    pub args: Option<RawArgs>,
    pub cwd: Option<String>,
    /// Values are plain, or `{"secret": VALUE}` (see [`crate::secret`]).
    pub env: Option<BTreeMap<String, crate::secret::RawEnvValue>>,
    pub instances: Option<Scalar>,
    pub port: Option<Scalar>,
    pub instance_var: Option<String>,
    pub shell: Option<bool>,
    pub autorestart: Option<bool>,
    pub restart_delay: Option<Scalar>,
    pub kill_timeout: Option<Scalar>,
    pub exec_mode: Option<String>,
    pub merge_logs: Option<bool>,
    pub placement: Option<RawPlacement>,
    pub resources: Option<RawResources>,
    /// `"30s"`, or `"never"` to wait for a down node instead of moving its instances.
    pub reschedule_after: Option<Scalar>,
    pub min_uptime: Option<Scalar>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<Scalar>,
    pub restart_backoff_max: Option<Scalar>,
    #[serde(alias = "kill_signal")]
    pub stop_signal: Option<String>,
    pub listen_timeout: Option<Scalar>,
    pub health_check: Option<RawHealthCheck>,
    /// `"600M"`: restart when the process tree's resident memory exceeds it.
    #[serde(alias = "max_memory")]
    pub max_memory_restart: Option<Scalar>,
    /// `"0,1"` or `[0, 1]`.
    pub cpu_affinity: Option<RawAffinityList>,
    #[serde(alias = "rlimits")]
    pub limits: Option<BTreeMap<String, u64>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub cron_restart: Option<String>,
    /// PM2's `time`.
    #[serde(alias = "time")]
    pub log_timestamps: Option<bool>,
    /// `"10M"`, or 0 to never rotate.
    pub log_max_size: Option<Scalar>,
    #[serde(alias = "log_keep")]
    pub log_retain: Option<u32>,
    pub autoscale: Option<RawAutoscale>,
    pub update: Option<RawUpdate>,
}

/// The `update` block: how a new version rolls out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpdate {
    pub max_surge: Option<u32>,
    pub max_unavailable: Option<u32>,
    pub min_healthy_time: Option<Scalar>,
    pub healthy_deadline: Option<Scalar>,
    pub progress_deadline: Option<Scalar>,
    pub auto_rollback: Option<bool>,
    pub canary: Option<u32>,
    pub shutdown_delay: Option<Scalar>,
}

impl RawUpdate {
    pub fn into_spec(self) -> Result<UpdatePolicy, SpecError> {
        let base = UpdatePolicy::default();
        let d = |field: &str, v: &Option<Scalar>, default: Duration| match v {
            None => Ok(default),
            Some(v) => parse_duration(field, v),
        };
        let policy = UpdatePolicy {
            max_surge: self.max_surge.unwrap_or(base.max_surge),
            max_unavailable: self.max_unavailable.unwrap_or(base.max_unavailable),
            min_healthy_time: d(
                "update.min_healthy_time",
                &self.min_healthy_time,
                base.min_healthy_time,
            )?,
            healthy_deadline: d(
                "update.healthy_deadline",
                &self.healthy_deadline,
                base.healthy_deadline,
            )?,
            progress_deadline: d(
                "update.progress_deadline",
                &self.progress_deadline,
                base.progress_deadline,
            )?,
            auto_rollback: self.auto_rollback.unwrap_or(base.auto_rollback),
            canary: self.canary.unwrap_or(base.canary),
            shutdown_delay: d(
                "update.shutdown_delay",
                &self.shutdown_delay,
                base.shutdown_delay,
            )?,
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// `cpu_affinity` as a list or a comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a list of core numbers or a string like \"0,1\""
)]
pub enum RawAffinityList {
    List(Vec<u32>),
    Text(String),
}

/// The seeds' `health_check` block. Plain numbers for `interval` and `timeout` are seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub check_type: Option<String>,
    pub url: Option<String>,
    pub expected_status: Option<u16>,
    pub command: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub retries: Option<u32>,
    pub restart_unhealthy: Option<bool>,
}

/// The `autoscale` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub mode: Option<String>,
    pub cpu_threshold: Option<f64>,
    /// A percent (`80`) or a size (`"512M"`).
    pub memory_threshold: Option<Scalar>,
    pub scale_down_fraction: Option<f64>,
    pub tolerance: Option<f64>,
    pub cooldown: Option<Scalar>,
    pub up_stabilization: Option<Scalar>,
    pub down_stabilization: Option<Scalar>,
}

/// Seconds when a plain number (the seeds' `health_check` shape), else a duration string.
fn seconds_or_duration(field: &str, v: &Scalar) -> Result<Duration, SpecError> {
    match v {
        Scalar::Int(n) if *n >= 0 => check_duration(field, Duration::from_secs(*n as u64)),
        // `try_`: a float too large for a Duration would panic.
        Scalar::Float(f) if f.is_finite() && *f >= 0.0 => match Duration::try_from_secs_f64(*f) {
            Ok(d) => check_duration(field, d),
            Err(_) => check_duration(field, Duration::MAX),
        },
        other => parse_duration(field, other),
    }
}

impl RawHealthCheck {
    pub fn into_spec(self) -> Result<HealthCheck, SpecError> {
        let kind = self
            .check_type
            .as_deref()
            .unwrap_or("http")
            .trim()
            .to_ascii_lowercase();
        let probe = match kind.as_str() {
            "http" => Probe::Http {
                url: self.url.unwrap_or_else(|| DEFAULT_HEALTH_URL.to_string()),
                expected_status: self.expected_status,
            },
            "tcp" => Probe::Tcp,
            "exec" | "script" | "command" => Probe::Exec {
                command: self.command.ok_or_else(|| {
                    SpecError::new("health_check.command", "is missing for an exec check")
                })?,
            },
            other => {
                return Err(SpecError::new(
                    "health_check.check_type",
                    format!(
                        "unknown check type {}; use \"http\", \"tcp\" or \"exec\"",
                        echo(other)
                    ),
                ));
            }
        };
        let interval = match &self.interval {
            None => DEFAULT_HEALTH_INTERVAL,
            Some(v) => seconds_or_duration("health_check.interval", v)?,
        };
        let timeout = match &self.timeout {
            None => DEFAULT_HEALTH_TIMEOUT,
            Some(v) => seconds_or_duration("health_check.timeout", v)?,
        };
        Ok(HealthCheck {
            probe,
            interval,
            timeout,
            retries: self.retries.unwrap_or(DEFAULT_HEALTH_RETRIES).max(1),
            restart_unhealthy: self.restart_unhealthy.unwrap_or(true),
        })
    }
}

impl RawAutoscale {
    pub fn into_spec(self) -> Result<AutoscalePolicy, SpecError> {
        let d = |field: &str, v: &Option<Scalar>, default: Duration| match v {
            None => Ok(default),
            Some(v) => parse_duration(field, v),
        };
        let memory_threshold = match &self.memory_threshold {
            None => None,
            Some(Scalar::Int(n)) => Some(MemoryThreshold::Percent(*n as f64)),
            Some(Scalar::Float(f)) => Some(MemoryThreshold::Percent(*f)),
            Some(Scalar::Str(s)) if s.trim().ends_with('%') => {
                let p = s
                    .trim()
                    .trim_end_matches('%')
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| {
                        SpecError::new(
                            "autoscale.memory_threshold",
                            format!("{} is not a percent", echo(s)),
                        )
                    })?;
                Some(MemoryThreshold::Percent(p))
            }
            Some(Scalar::Str(s)) => Some(MemoryThreshold::Bytes(parse_memory(
                "autoscale.memory_threshold",
                s,
            )?)),
            Some(Scalar::Bool(_)) => {
                return Err(SpecError::new(
                    "autoscale.memory_threshold",
                    "is not a percent or a size",
                ));
            }
        };
        let policy = AutoscalePolicy {
            min: self.min.unwrap_or(1),
            max: self
                .max
                .ok_or_else(|| SpecError::new("autoscale.max", "is missing"))?,
            mode: AutoscaleMode::parse(self.mode.as_deref().unwrap_or(""))?,
            cpu_threshold: self.cpu_threshold,
            memory_threshold,
            scale_down_fraction: self
                .scale_down_fraction
                .unwrap_or(DEFAULT_SCALE_DOWN_FRACTION),
            tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            cooldown: d("autoscale.cooldown", &self.cooldown, DEFAULT_COOLDOWN)?,
            up_stabilization: d(
                "autoscale.up_stabilization",
                &self.up_stabilization,
                DEFAULT_UP_STABILIZATION,
            )?,
            down_stabilization: d(
                "autoscale.down_stabilization",
                &self.down_stabilization,
                DEFAULT_DOWN_STABILIZATION,
            )?,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl RawApp {
    fn supervision(&mut self) -> Result<Supervision, SpecError> {
        let base = Supervision::default();
        let d = |field: &str, v: &Option<Scalar>, default: Duration| match v {
            None => Ok(default),
            Some(v) => parse_duration(field, v),
        };
        let cpu_affinity = match self.cpu_affinity.take() {
            None => Vec::new(),
            Some(RawAffinityList::List(v)) => v,
            Some(RawAffinityList::Text(t)) => t
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<u32>().map_err(|_| {
                        SpecError::new("cpu_affinity", format!("{} is not a core number", echo(x)))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let log_max_bytes = match &self.log_max_size {
            None => base.log_max_bytes,
            Some(Scalar::Int(0)) => None,
            Some(v) => match parse_memory("log_max_size", &v.to_text())? {
                0 => None,
                n => Some(n),
            },
        };
        let max_memory_restart = match &self.max_memory_restart {
            None => None,
            Some(v) => Some(parse_memory("max_memory_restart", &v.to_text())?).filter(|n| *n > 0),
        };
        Ok(Supervision {
            min_uptime: d("min_uptime", &self.min_uptime, base.min_uptime)?,
            max_restarts: self.max_restarts.unwrap_or(base.max_restarts),
            restart_window: d("restart_window", &self.restart_window, base.restart_window)?,
            restart_backoff_max: d(
                "restart_backoff_max",
                &self.restart_backoff_max,
                base.restart_backoff_max,
            )?,
            stop_signal: StopSignal::parse(self.stop_signal.as_deref().unwrap_or(""))?,
            listen_timeout: d("listen_timeout", &self.listen_timeout, base.listen_timeout)?,
            health_check: self
                .health_check
                .take()
                .map(RawHealthCheck::into_spec)
                .transpose()?,
            max_memory_restart,
            cpu_affinity,
            limits: self.limits.take().unwrap_or_default(),
            user: self.user.take().filter(|u| !u.is_empty()),
            group: self.group.take().filter(|g| !g.is_empty()),
            cron_restart: self.cron_restart.take().filter(|c| !c.trim().is_empty()),
            log_timestamps: self.log_timestamps.unwrap_or(false),
            log_max_bytes,
            log_keep: self.log_retain.unwrap_or(base.log_keep),
        })
    }
}

/// The `placement` block of an app.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    pub strategy: Option<String>,
    pub constraints: Option<Vec<String>>,
    pub affinities: Option<Vec<RawAffinity>>,
    pub distinct_hosts: Option<bool>,
    pub max_per_node: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    pub expr: String,
    pub weight: Option<i32>,
}

/// The `resources` block of an app: what one instance reserves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    /// Cores (`0.5`) or millicores (`"500m"`).
    pub cpu: Option<Scalar>,
    /// `"512M"`, `"1G"` or bytes.
    pub memory: Option<Scalar>,
    pub overcommit: Option<bool>,
}

impl RawPlacement {
    pub fn into_spec(self) -> Result<PlacementSpec, SpecError> {
        let constraints = self
            .constraints
            .unwrap_or_default()
            .iter()
            .map(|c| Constraint::parse("placement.constraints", c))
            .collect::<Result<Vec<_>, _>>()?;
        let affinities = self
            .affinities
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                Ok(Affinity {
                    constraint: Constraint::parse("placement.affinities", &a.expr)?,
                    weight: a.weight.unwrap_or(50),
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        let max_per_node = match (self.distinct_hosts, self.max_per_node) {
            (Some(true), Some(m)) if m != 1 => {
                return Err(SpecError::new(
                    "placement.max_per_node",
                    format!("{m} contradicts distinct_hosts (at most 1 per node)"),
                ));
            }
            (Some(true), _) => Some(1),
            (_, m) => m,
        };
        Ok(PlacementSpec {
            strategy: Strategy::parse(self.strategy.as_deref().unwrap_or(""))?,
            constraints,
            affinities,
            max_per_node,
        })
    }
}

impl RawResources {
    pub fn into_spec(self) -> Result<Resources, SpecError> {
        let cpu_millis = match &self.cpu {
            None => 0,
            Some(v) => parse_cpu("resources.cpu", &v.to_text())?,
        };
        let memory_bytes = match &self.memory {
            None => 0,
            Some(v) => parse_memory("resources.memory", &v.to_text())?,
        };
        Ok(Resources {
            cpu_millis,
            memory_bytes,
            overcommit: self.overcommit.unwrap_or(false),
        })
    }
}

/// Parses `reschedule_after`: a duration, or `"never"`/`"off"` to wait for the node.
pub fn parse_reschedule(value: &Scalar) -> Result<Reschedule, SpecError> {
    match value {
        Scalar::Str(s) if matches!(s.trim(), "never" | "off") => Ok(Reschedule::Never),
        Scalar::Bool(false) => Ok(Reschedule::Never),
        other => Ok(Reschedule::After(parse_duration(
            "reschedule_after",
            other,
        )?)),
    }
}

/// `args` as a list, or as one string split like a shell would (PM2 accepts both).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum RawArgs {
    List(Vec<String>),
    Line(String),
}

/// A string, number or boolean, for fields that the seeds write either way (`"port": 3000` or
/// `"port": "3000-3003"`, env values).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string, a number or a boolean")]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    pub(crate) fn to_text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// Parses a config file's text into validated specs. The error names the app and field at fault.
pub fn parse_apps(text: &str, format: Format) -> Result<Vec<AppSpec>, SpecError> {
    let text = without_bom(text);
    // Read into a generic tree first, so the shape (one app or `apps`) is decided before the
    // strict, unknown-field-rejecting parse, which then reports the real cause of an error.
    apps_of(read_tree(text, format)?, Some((text, format)))
}

/// The tree of a config file's text, refusing a nan or infinite number by its field; a field no
/// app has is said first (`typo = nan` is a typo before it is a bad number).
fn read_tree(text: &str, format: Format) -> Result<serde_json::Value, SpecError> {
    let (tree, non_finite) = parse_tree(text, format)?;
    match non_finite {
        None => Ok(tree),
        Some(e) => match raw_apps(&tree, Some((text, format))) {
            Err(unknown) if unknown.message.contains("unknown field") => Err(unknown),
            _ => Err(e),
        },
    }
}

/// [`parse_apps`] of a config already read into a tree, e.g. one made or edited by a program
/// (`reload --set`, `import pm2`). Errors have no line and column: no one wrote that text.
pub fn parse_config(tree: serde_json::Value) -> Result<Vec<AppSpec>, SpecError> {
    apps_of(tree, None)
}

fn apps_of(
    tree: serde_json::Value,
    source: Option<(&str, Format)>,
) -> Result<Vec<AppSpec>, SpecError> {
    let (many, raws) = raw_apps(&tree, source)?;
    let mut specs = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let spec = spec_of(i, raw?, many, source)?;
        no_twice(specs.iter(), &spec)?;
        specs.push(spec);
    }
    Ok(specs)
}

/// As [`parse_apps`], with each app's own error apart: `Err` only for a file that cannot be read
/// as apps at all (its syntax, its shape, a field of the wrong type, a name given twice), so a
/// bad value in one app need not keep the others from being applied. Each app comes with what
/// names it: its name, else its place (`apps[2]`).
#[allow(clippy::type_complexity)]
pub fn parse_apps_each(
    text: &str,
    format: Format,
) -> Result<Vec<(String, Result<AppSpec, SpecError>)>, SpecError> {
    let text = without_bom(text);
    let tree = read_tree(text, format)?;
    let source = Some((text, format));
    let (many, raws) = raw_apps(&tree, source)?;
    let mut out: Vec<(String, Result<AppSpec, SpecError>)> = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let label = tree["apps"][i]["name"].as_str().map(str::to_string);
                out.push((label.unwrap_or_else(|| format!("apps[{i}]")), Err(e)));
                continue;
            }
        };
        let label = raw.name.clone().unwrap_or_else(|| format!("apps[{i}]"));
        let spec = spec_of(i, raw, many, source);
        if let Ok(spec) = &spec {
            no_twice(out.iter().filter_map(|(_, s)| s.as_ref().ok()), spec)?;
        }
        out.push((label, spec));
    }
    Ok(out)
}

/// The apps of a config tree before validation, and whether it held a list (`apps`). In a list,
/// an app with a value of the wrong type is that app's error alone, as a bad value is: a trial's
/// `autorestart: "false"` in one app kept the other apps of the file from being applied. What
/// is wrong with the file as a whole (its shape, a field no app has, which may make it a PM2
/// file) stays the file's error.
#[allow(clippy::type_complexity)]
fn raw_apps(
    tree: &serde_json::Value,
    source: Option<(&str, Format)>,
) -> Result<(bool, Vec<Result<RawApp, SpecError>>), SpecError> {
    let many = tree.get("apps").is_some();
    let whole = || {
        strict::<RawApps>(tree)
            .map(|_| ())
            .map_err(|e| field_error(tree, e, || locate::<RawApps>(source?)))
    };
    let raws = if many {
        let Some(items) = tree["apps"].as_array() else {
            whole()?;
            return Err(syntax_error("\"apps\" must be a list of apps"));
        };
        let mut raws = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if !item.is_object() {
                // serde's words for it ("expected struct RawApp") name our type, not the file's.
                let what = match item {
                    serde_json::Value::Null => "empty",
                    serde_json::Value::Array(_) => "a list",
                    _ => "a single value",
                };
                raws.push(Err(SpecError::new(
                    &format!("apps[{i}]"),
                    format!("is {what}, not an app; each item of apps is a map with at least a name and a script"),
                )));
                continue;
            }
            match strict::<RawApp>(item) {
                Ok(raw) => raws.push(Ok(raw)),
                // Said of the file as before: the whole parse finds it (and its position);
                // one entry an item, so an app is never left out without its error.
                Err(e) if e.inner().to_string().starts_with("unknown field") => {
                    return Err(whole()
                        .err()
                        .unwrap_or_else(|| field_error(tree, e, || None)));
                }
                Err(e) => {
                    // Placed as a value's error is: by the field's path under `apps[i]`.
                    let e = field_error(&serde_json::Value::Null, e, || None);
                    raws.push(Err(named(e, item["name"].as_str(), i, true, source)));
                }
            }
        }
        // What only the whole file can have wrong: a key beside `apps`.
        if raws.iter().all(Result::is_ok) {
            whole()?;
        }
        raws
    } else if tree.is_object() {
        vec![Ok(strict::<RawApp>(tree).map_err(|e| {
            field_error(tree, e, || locate::<RawApp>(source?))
        })?)]
    } else {
        return Err(syntax_error("expected one app object or {\"apps\": [...]}"));
    };
    if raws.is_empty() {
        return Err(SpecError::new("apps", "is empty: the file defines no app"));
    }
    Ok((many, raws))
}

/// App `i` of the file validated, its error naming the app (or its place, without a name).
fn spec_of(
    i: usize,
    raw: RawApp,
    many: bool,
    source: Option<(&str, Format)>,
) -> Result<AppSpec, SpecError> {
    let name = raw.name.clone();
    raw.into_spec()
        .map_err(|e| named(e, name.as_deref(), i, many, source))
}

/// The error `e` of app `i` (`many`: of a list), placed in the file and naming the app, or its
/// place when it has no name.
fn named(
    e: SpecError,
    name: Option<&str>,
    i: usize,
    many: bool,
    source: Option<(&str, Format)>,
) -> SpecError {
    match name {
        Some(name) => at_value(e, source, many.then_some(i)).in_app(name),
        // An app without a name is known by its place in the file.
        None if many => {
            let e = at_value(e, source, Some(i));
            SpecError::new(&format!("apps[{i}].{}", e.field), e.message)
        }
        None => at_value(e, source, None),
    }
}

fn no_twice<'a>(
    mut before: impl Iterator<Item = &'a AppSpec>,
    spec: &AppSpec,
) -> Result<(), SpecError> {
    if before.any(|s| s.name == spec.name) {
        return Err(SpecError::new(
            "name",
            format!("app {} is defined twice", echo(&spec.name)),
        ));
    }
    Ok(())
}

impl RawApp {
    /// Fills defaults and validates.
    pub fn into_spec(mut self) -> Result<AppSpec, SpecError> {
        let supervision = self.supervision()?;
        let autoscale = self
            .autoscale
            .take()
            .map(RawAutoscale::into_spec)
            .transpose()?;
        let update = self
            .update
            .take()
            .map(RawUpdate::into_spec)
            .transpose()?
            .unwrap_or_default();
        let name = self
            .name
            .ok_or_else(|| SpecError::new("name", "is missing"))?;
        let script = self
            .script
            .ok_or_else(|| SpecError::new("script", "is missing: give the program to run"))?;
        let args = match self.args {
            None => Vec::new(),
            Some(RawArgs::List(v)) => v,
            Some(RawArgs::Line(line)) => shell_words::split(&line).map_err(|e| {
                SpecError::new("args", format!("cannot split {}: {e}", echo(&line)))
            })?,
        };
        let (env, secret_env) = crate::secret::split_env(self.env.unwrap_or_default());
        let instances_max = matches!(&self.instances, Some(Scalar::Str(s)) if s.trim() == "max");
        let instances = match &self.instances {
            None => 1,
            Some(_) if instances_max => 0,
            Some(v) => parse_instances(v)?,
        };
        let port = match &self.port {
            None => PortSpec::None,
            Some(Scalar::Int(p)) => PortSpec::parse(&p.to_string())?,
            Some(Scalar::Str(s)) => PortSpec::parse(s)?,
            Some(other) => {
                return Err(SpecError::new(
                    "port",
                    format!("{} is not a port or range", echo(&other.to_text())),
                ));
            }
        };
        let restart_delay = match &self.restart_delay {
            None => Duration::ZERO,
            Some(v) => parse_duration("restart_delay", v)?,
        };
        let kill_timeout = match &self.kill_timeout {
            None => DEFAULT_KILL_TIMEOUT,
            Some(v) => parse_duration("kill_timeout", v)?,
        };
        let exec_mode = ExecMode::parse(self.exec_mode.as_deref().unwrap_or(""))?;
        AppSpec {
            name,
            script,
            args,
            cwd: self.cwd.filter(|c| !c.is_empty()),
            env,
            secret_env,
            instances,
            port,
            instance_var: self.instance_var.filter(|v| !v.is_empty()),
            shell: self.shell.unwrap_or(false),
            autorestart: self.autorestart.unwrap_or(true),
            restart_delay,
            kill_timeout,
            exec_mode,
            merge_logs: self.merge_logs.unwrap_or(false),
            instances_max,
            placement: self
                .placement
                .map(RawPlacement::into_spec)
                .transpose()?
                .unwrap_or_default(),
            resources: self
                .resources
                .map(RawResources::into_spec)
                .transpose()?
                .unwrap_or_default(),
            reschedule: self
                .reschedule_after
                .as_ref()
                .map(parse_reschedule)
                .transpose()?
                .unwrap_or_default(),
            supervision,
            autoscale,
            update,
        }
        .validate()
    }
}

#[cfg(test)]
mod tests;
