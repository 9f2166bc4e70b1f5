//! Checks of user input that happen before anything is sent: instance counts, the `start` command
//! line and its flags. Pure, so every message is pinned by a test; errors name the flag at fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pmcluster_spec::app::{MAX_INSTANCES, validate_name};
use pmcluster_spec::config::{
    RawPlacement, RawResources, Scalar, parse_duration, parse_reschedule,
};
use pmcluster_spec::update::UpdatePolicy;
use pmcluster_spec::{AppSpec, PortSpec, SpecError, echo};

use clap::ValueEnum;

use crate::args::{Balance, OutputFormat, RestartArgs, StartArgs, UpdateFlags};
use crate::error::UsageError;

/// Parses an instance count: a whole number from 0 to the spec's limit.
pub fn parse_count(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    if trimmed == "max" {
        return Err(format!(
            "invalid instance count {}: give a number (\"max\" is only for `start \
             --instances max` and config files)",
            echo(text)
        ));
    }
    let n: u32 = trimmed.parse().map_err(|_| {
        format!(
            "invalid instance count {}: must be a whole number 0 or more",
            echo(text)
        )
    })?;
    if n > MAX_INSTANCES {
        return Err(format!(
            "invalid instance count {}: the limit is {MAX_INSTANCES}",
            echo(text)
        ));
    }
    Ok(n)
}

/// The first shell operator of `line` that a shell would interpret, if any: pipes, lists,
/// redirections and command substitution. Quoted text is skipped, except that `$(` and backticks
/// still substitute inside double quotes.
pub fn shell_operator(line: &str) -> Option<&'static str> {
    let mut chars = line.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        if single {
            single = c != '\'';
            continue;
        }
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if !double => single = true,
            '"' => double = !double,
            '`' => return Some("`"),
            '$' if chars.peek() == Some(&'(') => return Some("$("),
            _ if double => {}
            '|' if chars.peek() == Some(&'|') => return Some("||"),
            '|' => return Some("|"),
            '&' if chars.peek() == Some(&'&') => return Some("&&"),
            '&' => return Some("&"),
            ';' => return Some(";"),
            '>' => return Some(">"),
            '<' => return Some("<"),
            _ => {}
        }
    }
    None
}

/// What `pmcluster start` will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// `start APP [--instance N]`: start instances of an existing app that a user stopped.
    Existing { app: String, index: Option<u32> },
    /// `start "command line" ...`: create the app, or replace its spec.
    Apply {
        spec: Box<AppSpec>,
        /// The name came from the program's file name, not from `--name`; the caller must not
        /// overwrite an unrelated app that happens to have that name.
        derived_name: bool,
    },
}

/// Decides between starting an existing app and applying a new spec, and builds the spec.
///
/// `start web` (one word that is a valid app name, no spec flags) names an existing app, as in
/// PM2. Anything else is a command line to run.
pub fn plan_start(args: &StartArgs) -> Result<StartPlan, UsageError> {
    let spec_flags = args.name.is_some()
        || args.instances.is_some()
        || args.port.is_some()
        || !args.env.is_empty()
        || !args.secret_env.is_empty()
        || args.cwd.is_some()
        || args.instance_var.is_some()
        || args.shell
        || args.no_autorestart
        || args.restart_delay.is_some()
        || args.kill_timeout.is_some()
        || args.update.any()
        || !args.constraints.is_empty()
        || args.strategy.is_some()
        || args.distinct_hosts
        || args.max_per_node.is_some()
        || args.cpu.is_some()
        || args.memory.is_some()
        || args.overcommit
        || args.reschedule_after.is_some()
        || !args.extra_args.is_empty();
    let one_word = !args.target.trim().is_empty() && !args.target.contains(char::is_whitespace);
    if !spec_flags && one_word && validate_name(&args.target).is_ok() {
        return Ok(StartPlan::Existing {
            app: args.target.clone(),
            index: args.instance,
        });
    }
    if args.instance.is_some() {
        return Err(UsageError::new(
            "--instance starts one instance of an existing app: pmcluster start APP --instance N",
        ));
    }
    let derived_name = args.name.is_none();
    Ok(StartPlan::Apply {
        spec: Box::new(start_spec(args)?),
        derived_name,
    })
}

/// Builds and validates the spec of `start "command line" --name ... [flags]`.
pub fn start_spec(args: &StartArgs) -> Result<AppSpec, UsageError> {
    let line = args.target.trim();
    if line.is_empty() {
        return Err(UsageError::new(
            "the command line is empty; give the program to run, e.g. \"node server.js\"",
        ));
    }
    let words = shell_words::split(line)
        .map_err(|e| UsageError::new(format!("cannot split the command line {}: {e}", echo(line))));
    let (script, mut script_args) = if args.shell {
        // The shell parses the line, so it goes over verbatim; only the name needs a first word.
        (line.to_string(), Vec::new())
    } else {
        if let Some(op) = shell_operator(line) {
            return Err(UsageError::new(format!(
                "the command line contains the shell operator {op:?}, which pmcluster does not \
                 interpret; add --shell to run it through /bin/sh -c"
            )));
        }
        let mut words = words?.into_iter();
        let Some(script) = words.next() else {
            return Err(UsageError::new("the command line is empty"));
        };
        (script, words.collect())
    };
    if args.shell {
        // Quoted, so the shell sees each one as a single word.
        let mut script = script;
        for extra in &args.extra_args {
            script.push(' ');
            script.push_str(&shell_words::quote(extra));
        }
        return finish_spec(args, script, Vec::new(), line);
    }
    script_args.extend(args.extra_args.iter().cloned());
    finish_spec(args, script, script_args, line)
}

fn finish_spec(
    args: &StartArgs,
    script: String,
    script_args: Vec<String>,
    line: &str,
) -> Result<AppSpec, UsageError> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => derive_name(line)?,
    };
    // PM2's `-i max`: one instance per core, counted by the coordinator.
    let instances_max = args.instances.as_deref().map(str::trim) == Some("max");
    let instances = match &args.instances {
        None => 1,
        Some(_) if instances_max => 0,
        Some(text) => {
            parse_count(text).map_err(|e| UsageError::new(format!("--instances: {e}")))?
        }
    };
    let port = match &args.port {
        None => PortSpec::None,
        Some(text) => PortSpec::parse(text).map_err(flag_error)?,
    };
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(UsageError::new(format!(
                "--env: {} is not KEY=VALUE",
                echo(pair)
            )));
        };
        env.insert(key.to_string(), value.to_string());
    }
    let mut secret_env = std::collections::BTreeSet::new();
    for pair in &args.secret_env {
        // Never echo the pair: its value is the secret.
        let Some((key, value)) = pair.split_once('=') else {
            return Err(UsageError::new(
                "--secret-env: expected KEY=VALUE (the value is not shown here)",
            ));
        };
        env.insert(key.to_string(), value.to_string());
        secret_env.insert(key.to_string());
    }
    let duration = |field: &str, text: &Option<String>| {
        text.as_ref()
            .map(|t| parse_duration(field, &Scalar::Str(t.clone())).map_err(flag_error))
            .transpose()
    };
    let base = AppSpec::new(&name, &script, &[]);
    let update = PolicyChanges::parse(&args.update)?.apply(&base.update)?;
    AppSpec {
        args: script_args,
        cwd: args.cwd.clone().filter(|c| !c.is_empty()),
        env,
        secret_env,
        instances,
        port,
        instance_var: args.instance_var.clone().filter(|v| !v.is_empty()),
        shell: args.shell,
        autorestart: !args.no_autorestart,
        restart_delay: duration("restart_delay", &args.restart_delay)?
            .unwrap_or(base.restart_delay),
        kill_timeout: duration("kill_timeout", &args.kill_timeout)?.unwrap_or(base.kill_timeout),
        instances_max,
        placement: RawPlacement {
            strategy: args.strategy.clone(),
            constraints: Some(args.constraints.clone()),
            affinities: None,
            distinct_hosts: Some(args.distinct_hosts),
            max_per_node: args.max_per_node,
        }
        .into_spec()
        .map_err(flag_error)?,
        resources: RawResources {
            cpu: args.cpu.clone().map(Scalar::Str),
            memory: args.memory.clone().map(Scalar::Str),
            overcommit: Some(args.overcommit),
        }
        .into_spec()
        .map_err(flag_error)?,
        reschedule: args
            .reschedule_after
            .as_ref()
            .map(|t| parse_reschedule(&Scalar::Str(t.clone())))
            .transpose()
            .map_err(flag_error)?
            .unwrap_or_default(),
        update,
        ..base
    }
    .validate()
    .map_err(flag_error)
}

/// PM2 names an app after its script: `node` for "node server.js", `server` for "./server.sh".
fn derive_name(line: &str) -> Result<String, UsageError> {
    let first = shell_words::split(line)
        .ok()
        .and_then(|w| w.into_iter().next())
        .unwrap_or_default();
    let stem = Path::new(&first)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if validate_name(&stem).is_ok() {
        Ok(stem)
    } else {
        Err(UsageError::new(format!(
            "cannot name the app after {}; give it a name with --name",
            echo(&first)
        )))
    }
}

/// A spec error as the `start` flag that caused it: `--port: "30x0" is not a port number`.
fn flag_error(e: SpecError) -> UsageError {
    if let Some(key) = e.field.strip_prefix("env.") {
        return UsageError::new(format!("--env {key}: {}", e.message));
    }
    if e.field.starts_with("args[") {
        return UsageError::new(format!("command line ({}): {}", e.field, e.message));
    }
    let flag = match e.field.as_str() {
        "name" => "--name",
        "script" | "args" => "command line",
        "instances" => "--instances",
        "port" => "--port",
        "env" => "--env",
        "instance_var" => "--instance-var",
        "cwd" => "--cwd",
        "restart_delay" => "--restart-delay",
        "kill_timeout" => "--kill-timeout",
        "placement.constraints" => "--constraint",
        "placement.strategy" => "--strategy",
        "placement.max_per_node" => "--max-per-node",
        "resources.cpu" => "--cpu",
        "resources.memory" => "--memory",
        "reschedule_after" => "--reschedule-after",
        other => other,
    };
    UsageError::new(format!("{flag}: {}", e.message))
}

/// The update-policy flags that were given, parsed: each value checked on its own, with errors
/// that name the flag. [`PolicyChanges::apply`] puts them on top of a policy and checks the
/// whole (the spec's own rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub max_surge: Option<u32>,
    pub max_unavailable: Option<u32>,
    pub min_healthy_time: Option<Duration>,
    pub healthy_deadline: Option<Duration>,
    pub progress_deadline: Option<Duration>,
    pub auto_rollback: Option<bool>,
    pub canary: Option<u32>,
    pub shutdown_delay: Option<Duration>,
}

/// The `update` block's fields, each with its flag.
const POLICY_FLAGS: [(&str, &str); 8] = [
    ("max_surge", "--max-surge"),
    ("max_unavailable", "--max-unavailable"),
    ("min_healthy_time", "--min-healthy-time"),
    ("healthy_deadline", "--healthy-deadline"),
    ("progress_deadline", "--progress-deadline"),
    ("auto_rollback", "--auto-rollback"),
    ("canary", "--canary"),
    ("shutdown_delay", "--shutdown-delay"),
];

/// The flag of an `update` field (`max_surge` -> `--max-surge`).
fn policy_flag(field: &str) -> &str {
    POLICY_FLAGS
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(field, |(_, flag)| flag)
}

fn count_flag(flag: &str, text: &str) -> Result<u32, UsageError> {
    let t = text.trim();
    t.parse::<u32>().map_err(|_| {
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let why = if t.strip_prefix('-').is_some_and(digits) {
            "is negative; give a whole number 0 or more"
        } else if digits(t) {
            "is too large"
        } else {
            "is not a whole number (0 or more)"
        };
        UsageError::new(format!("{flag}: {} {why}", echo(text)))
    })
}

fn duration_flag(field: &str, text: &str) -> Result<Duration, UsageError> {
    let flag = policy_flag(field);
    if text.trim().starts_with('-') {
        return Err(UsageError::new(format!(
            "{flag}: {} is negative; give a duration of 0 or more, e.g. 5s",
            echo(text)
        )));
    }
    parse_duration(&format!("update.{field}"), &Scalar::Str(text.to_string()))
        .map_err(|e| UsageError::new(format!("{flag}: {}", e.message)))
}

impl PolicyChanges {
    /// Parses the flags given; bad values are refused here, before anything is sent.
    pub fn parse(flags: &UpdateFlags) -> Result<PolicyChanges, UsageError> {
        let count = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| count_flag(policy_flag(field), t))
                .transpose()
        };
        let duration = |field: &str, text: &Option<String>| {
            text.as_deref().map(|t| duration_flag(field, t)).transpose()
        };
        let auto_rollback = if flags.no_auto_rollback {
            Some(false)
        } else {
            flags
                .auto_rollback
                .as_deref()
                .map(|t| match t.trim().to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(UsageError::new(format!(
                        "--auto-rollback: {} is not true or false",
                        echo(t)
                    ))),
                })
                .transpose()?
        };
        Ok(PolicyChanges {
            max_surge: count("max_surge", &flags.max_surge)?,
            max_unavailable: count("max_unavailable", &flags.max_unavailable)?,
            min_healthy_time: duration("min_healthy_time", &flags.min_healthy_time)?,
            healthy_deadline: duration("healthy_deadline", &flags.healthy_deadline)?,
            progress_deadline: duration("progress_deadline", &flags.progress_deadline)?,
            auto_rollback,
            canary: count("canary", &flags.canary)?,
            shutdown_delay: duration("shutdown_delay", &flags.shutdown_delay)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self == &PolicyChanges::default()
    }

    /// Whether the flag of this `update` field was given.
    pub fn has(&self, field: &str) -> bool {
        match field {
            "max_surge" => self.max_surge.is_some(),
            "max_unavailable" => self.max_unavailable.is_some(),
            "min_healthy_time" => self.min_healthy_time.is_some(),
            "healthy_deadline" => self.healthy_deadline.is_some(),
            "progress_deadline" => self.progress_deadline.is_some(),
            "auto_rollback" => self.auto_rollback.is_some(),
            "canary" => self.canary.is_some(),
            "shutdown_delay" => self.shutdown_delay.is_some(),
            _ => false,
        }
    }

    /// `base` with the flags given, checked by the spec's rules ([`UpdatePolicy::validate`]).
    /// A rule between two fields names the flags given among them, with both values.
    pub fn apply(&self, base: &UpdatePolicy) -> Result<UpdatePolicy, UsageError> {
        let p = UpdatePolicy {
            max_surge: self.max_surge.unwrap_or(base.max_surge),
            max_unavailable: self.max_unavailable.unwrap_or(base.max_unavailable),
            min_healthy_time: self.min_healthy_time.unwrap_or(base.min_healthy_time),
            healthy_deadline: self.healthy_deadline.unwrap_or(base.healthy_deadline),
            progress_deadline: self.progress_deadline.unwrap_or(base.progress_deadline),
            auto_rollback: self.auto_rollback.unwrap_or(base.auto_rollback),
            canary: self.canary.unwrap_or(base.canary),
            shutdown_delay: self.shutdown_delay.unwrap_or(base.shutdown_delay),
        };
        p.validate().map_err(|e| self.policy_error(&e, &p))?;
        Ok(p)
    }

    fn policy_error(&self, e: &SpecError, p: &UpdatePolicy) -> UsageError {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let field = e.field.strip_prefix("update.").unwrap_or(&e.field);
        let (fields, text): (&[&str], String) = match field {
            "max_surge" => (
                &["max_surge", "max_unavailable"],
                "max_surge and max_unavailable would both be 0: nothing could ever be replaced; \
                 allow 1 or more of either"
                    .to_string(),
            ),
            "healthy_deadline" => (
                &["healthy_deadline", "min_healthy_time"],
                format!(
                    "healthy_deadline ({}) must be longer than min_healthy_time ({})",
                    show(p.healthy_deadline),
                    show(p.min_healthy_time)
                ),
            ),
            "progress_deadline" => (
                &["progress_deadline", "healthy_deadline"],
                format!(
                    "progress_deadline ({}) must be at least healthy_deadline ({})",
                    show(p.progress_deadline),
                    show(p.healthy_deadline)
                ),
            ),
            // A rule this client does not know yet: the spec's own words.
            other => (&[], format!("{other}: {}", e.message)),
        };
        let given: Vec<&str> = fields
            .iter()
            .filter(|f| self.has(f))
            .map(|f| policy_flag(f))
            .collect();
        let names = if given.is_empty() {
            e.field.clone()
        } else {
            given.join(", ")
        };
        UsageError::new(format!("{names}: {text}"))
    }

    /// Refuses a field given both as a flag and as `--set update.FIELD=...`.
    pub fn check_sets(&self, sets: &[String]) -> Result<(), UsageError> {
        for assignment in sets {
            let key = assignment
                .split_once('=')
                .map_or(assignment.as_str(), |(k, _)| k);
            if let Some(field) = key.trim().strip_prefix("update.")
                && self.has(field)
            {
                return Err(UsageError::new(format!(
                    "{}: also given as --set {key}=...; give it once",
                    policy_flag(field)
                )));
            }
            // A whole block sets every field: any policy flag would silently win over part of it.
            if key.trim() == "update"
                && let Some((_, flag)) = POLICY_FLAGS.iter().find(|(f, _)| self.has(f))
            {
                return Err(UsageError::new(format!(
                    "{flag}: --set update=... gives the whole policy already; give the field in \
                     the block or as a flag, not both"
                )));
            }
        }
        Ok(())
    }
}

/// `restart` takes update-policy flags only with `--rolling`: an in-place restart follows none.
pub fn check_restart(args: &RestartArgs) -> Result<(), UsageError> {
    if args.rolling || !args.update.any() {
        return Ok(());
    }
    let changes = PolicyChanges::parse(&args.update)?;
    let flag = POLICY_FLAGS
        .iter()
        .find(|(f, _)| changes.has(f))
        .map_or("--auto-rollback", |(_, flag)| flag);
    Err(UsageError::new(format!(
        "{flag}: only with --rolling (an in-place restart does not follow the update policy): \
         pmcluster restart {} --rolling {flag} ...",
        args.target.app
    )))
}

/// `endpoints --balance` configures a load balancer, so it goes with `-o nginx` or `-o haproxy`
/// only; without it, round robin (what both do by default).
pub fn check_balance(
    balance: Option<Balance>,
    output: OutputFormat,
) -> Result<Balance, UsageError> {
    match (balance, output) {
        (None, _) => Ok(Balance::default()),
        (Some(b), OutputFormat::Nginx | OutputFormat::Haproxy) => Ok(b),
        (Some(_), other) => {
            let name = other
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            Err(UsageError::new(format!(
                "--balance: only with -o nginx or -o haproxy (it picks the load balancer's \
                 policy), not with -o {name}"
            )))
        }
    }
}

/// Whether `autoscale` was given any option that changes the policy.
pub fn autoscale_changes(a: &crate::args::AutoscaleArgs) -> bool {
    a.min.is_some()
        || a.max.is_some()
        || a.cpu_threshold.is_some()
        || a.memory_threshold.is_some()
        || a.mode.is_some()
        || a.cooldown.is_some()
        || a.scale_down_fraction.is_some()
        || a.tolerance.is_some()
        || a.up_stabilization.is_some()
        || a.down_stabilization.is_some()
}

/// The policy `autoscale` sends: the options given, on top of the current policy when it is on.
/// Checked here first, so a bad option is named as the flag the user typed.
pub fn autoscale_policy(
    a: &crate::args::AutoscaleArgs,
    current: Option<&pmcluster_proto::v1::Autoscale>,
) -> Result<pmcluster_proto::v1::Autoscale, UsageError> {
    use pmcluster_proto::v1 as pb;
    if a.off {
        return Ok(pb::Autoscale::default());
    }
    let mut p = current.filter(|c| c.enabled).cloned().unwrap_or_default();
    p.enabled = true;
    if let Some(v) = a.min {
        p.min = v;
    }
    if let Some(v) = a.max {
        p.max = v;
    }
    if let Some(v) = a.cpu_threshold {
        p.cpu_threshold = v;
    }
    if let Some(text) = &a.memory_threshold {
        let t = text.trim().trim_end_matches('%');
        match t.parse::<f64>() {
            Ok(pct) => {
                p.memory_threshold = pct;
                p.memory_threshold_bytes = 0;
            }
            Err(_) => {
                p.memory_threshold_bytes =
                    pmcluster_spec::placement::parse_memory("autoscale.memory_threshold", text)
                        .map_err(autoscale_flag_error)?;
                p.memory_threshold = 0.0;
            }
        }
    }
    if let Some(v) = &a.mode {
        p.mode = v.clone();
    }
    if let Some(v) = a.scale_down_fraction {
        p.scale_down_fraction = v;
    }
    if let Some(v) = a.tolerance {
        p.tolerance = Some(v);
    }
    let ms = |field: &str, text: &Option<String>| -> Result<Option<u64>, UsageError> {
        let Some(t) = text else { return Ok(None) };
        let d = parse_duration(field, &Scalar::Str(t.clone())).map_err(autoscale_flag_error)?;
        Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    };
    if let Some(v) = ms("autoscale.cooldown", &a.cooldown)? {
        p.cooldown_ms = Some(v);
    }
    if let Some(v) = ms("autoscale.up_stabilization", &a.up_stabilization)? {
        p.up_stabilization_ms = v;
    }
    if let Some(v) = ms("autoscale.down_stabilization", &a.down_stabilization)? {
        p.down_stabilization_ms = Some(v);
    }
    pmcluster_spec::wire::autoscale_from_wire(&p).map_err(autoscale_flag_error)?;
    Ok(p)
}

fn autoscale_flag_error(e: SpecError) -> UsageError {
    let flag = match e.field.as_str() {
        "autoscale.min" => "--min",
        "autoscale.max" => "--max",
        "autoscale.cpu_threshold" => "--cpu-threshold",
        "autoscale.memory_threshold" => "--memory-threshold",
        "autoscale.mode" => "--mode",
        "autoscale.scale_down_fraction" => "--scale-down-fraction",
        "autoscale.tolerance" => "--tolerance",
        "autoscale.cooldown" => "--cooldown",
        "autoscale.up_stabilization" => "--up-stabilization",
        "autoscale.down_stabilization" => "--down-stabilization",
        other => other,
    };
    UsageError::new(format!("{flag}: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::args::{Cli, Command};

    #[test]
    fn balance_goes_with_a_load_balancer_format() {
        use OutputFormat as O;
        let cases = [
            (None, O::Table, Ok(Balance::Roundrobin)),
            (None, O::Haproxy, Ok(Balance::Roundrobin)),
            (Some(Balance::Sticky), O::Nginx, Ok(Balance::Sticky)),
            (Some(Balance::Leastconn), O::Haproxy, Ok(Balance::Leastconn)),
            (
                Some(Balance::Leastconn),
                O::Table,
                Err(
                    "--balance: only with -o nginx or -o haproxy (it picks the load balancer's \
                     policy), not with -o table",
                ),
            ),
            (
                Some(Balance::Roundrobin),
                O::Json,
                Err(
                    "--balance: only with -o nginx or -o haproxy (it picks the load balancer's \
                     policy), not with -o json",
                ),
            ),
        ];
        for (balance, output, want) in cases {
            let got = check_balance(balance, output).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{balance:?} {output:?}");
        }
    }

    fn start_args(line: &str) -> StartArgs {
        let words = shell_words::split(line).expect("test line splits");
        match Cli::try_parse_from(words).expect("parses").command {
            Command::Start(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counts() {
        let cases: &[(&str, Result<u32, &str>)] = &[
            ("0", Ok(0)),
            ("12", Ok(12)),
            (" 3 ", Ok(3)),
            (
                "-1",
                Err("invalid instance count \"-1\": must be a whole number 0 or more"),
            ),
            (
                "abc",
                Err("invalid instance count \"abc\": must be a whole number 0 or more"),
            ),
            (
                "1.5",
                Err("invalid instance count \"1.5\": must be a whole number 0 or more"),
            ),
            ("max", Err("invalid instance count \"max\": give a number")),
            ("100001", Err("the limit is 100000")),
        ];
        for (input, want) in cases {
            let got = parse_count(input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{input:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input:?}: {g}"),
                _ => panic!("{input:?}: got {got:?}"),
            }
        }
    }

    #[test]
    fn shell_operators() {
        let cases = [
            ("node server.js", None),
            ("node server.js --port=${PORT}", None),
            ("a | b", Some("|")),
            ("a || b", Some("||")),
            ("a && b", Some("&&")),
            ("a &", Some("&")),
            ("a; b", Some(";")),
            ("a > out.log", Some(">")),
            ("a < in", Some("<")),
            ("echo $(date)", Some("$(")),
            ("echo `date`", Some("`")),
            ("echo \"$(date)\"", Some("$(")),
            ("node -e 'a;b|c'", None),
            ("node -e \"a;b|c\"", None),
            ("echo a\\;b", None),
            ("grep -E 'a|b' file", None),
        ];
        for (input, want) in cases {
            assert_eq!(shell_operator(input), want, "{input}");
        }
    }

    /// `check(command line, expected)`: the plan as text, or the error message.
    fn check(line: &str, want: Result<&str, &str>) {
        let got = plan_start(&start_args(line)).map(|plan| match plan {
            StartPlan::Existing { app, index } => format!("start {app} {index:?}"),
            StartPlan::Apply { spec, derived_name } => format!(
                "apply name={}{} script={} args={:?} n={}{} port={} env={:?} shell={} auto={} delay={:?} kill={:?} cwd={:?} var={:?}",
                spec.name,
                if derived_name { "(derived)" } else { "" },
                spec.script,
                spec.args,
                spec.instances,
                if spec.instances_max { "(max)" } else { "" },
                spec.port,
                spec.env,
                spec.shell,
                spec.autorestart,
                spec.restart_delay,
                spec.kill_timeout,
                spec.cwd,
                spec.instance_var,
            ),
        });
        match (want, got) {
            (Ok(w), Ok(g)) => assert_eq!(g, w, "{line}"),
            (Err(w), Err(e)) => {
                let e = e.to_string();
                assert!(e.contains(w), "{line}\nwant error {w:?}\ngot {e:?}");
            }
            (w, g) => panic!("{line}\nwant {w:?}\ngot {g:?}"),
        }
    }

    #[test]
    fn start_plans() {
        check("pmcluster start web", Ok("start web None"));
        check("pmcluster start web --instance 2", Ok("start web Some(2)"));
        // A placement flag makes it a new app's spec, never a silently ignored flag.
        check(
            "pmcluster start web --cpu 1",
            Ok(
                "apply name=web(derived) script=web args=[] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start 'node server.js' --name web -i 4 --port 3000-3003 -e NODE_ENV=production -e A=b=c",
            Ok(
                "apply name=web script=node args=[\"server.js\"] n=4 port=3000-3003 env={\"A\": \"b=c\", \"NODE_ENV\": \"production\"} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start 'node server.js' --no-autorestart --restart-delay 2s --kill-timeout 1500 --cwd /srv --instance-var WORKER",
            Ok(
                "apply name=node(derived) script=node args=[\"server.js\"] n=1 port= env={} shell=false auto=false delay=2s kill=1.5s cwd=Some(\"/srv\") var=Some(\"WORKER\")",
            ),
        );
        check(
            "pmcluster start ./server.sh",
            Ok(
                "apply name=server(derived) script=./server.sh args=[] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start server.js -i 2",
            Ok(
                "apply name=server(derived) script=server.js args=[] n=2 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start 'node s.js' --name web -i max --port auto:3000-3100",
            Ok(
                "apply name=web script=node args=[\"s.js\"] n=0(max) port=auto:3000-3100 env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start \"python -c 'print(1)'\" --name py -- --flag 'two words'",
            Ok(
                "apply name=py script=python args=[\"-c\", \"print(1)\", \"--flag\", \"two words\"] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
        check(
            "pmcluster start './serve | tee log' --name s --shell -- 'a b'",
            Ok(
                "apply name=s script=./serve | tee log 'a b' args=[] n=1 port= env={} shell=true auto=true delay=0ns kill=5s cwd=None var=None",
            ),
        );
    }

    #[test]
    fn start_errors() {
        let cases = [
            (
                "pmcluster start 'node a.js | tee x' --name w",
                "shell operator \"|\"",
            ),
            ("pmcluster start 'a && b' --name w", "add --shell"),
            (
                "pmcluster start 'node s.js' --name w --port 30x0",
                "--port: \"30x0\" is not a port number",
            ),
            (
                "pmcluster start 'node s.js' --name w -i 4 --port 3000-3002",
                "--port: 3000-3002 holds 3 ports but 4 instances",
            ),
            (
                "pmcluster start 'node s.js' --name w -i -1",
                "--instances: invalid instance count \"-1\"",
            ),
            (
                "pmcluster start 'node s.js' --name w -i abc",
                "--instances: invalid instance count \"abc\"",
            ),
            (
                "pmcluster start 'node s.js' --name w -i max --port 3000",
                "--port: instances \"max\" needs a port range",
            ),
            (
                "pmcluster start 'node s.js' --name w -e FOO",
                "--env: \"FOO\" is not KEY=VALUE",
            ),
            (
                "pmcluster start 'node s.js' --name w -e 1A=x",
                "--env: \"1A\" is not a valid environment variable name",
            ),
            (
                "pmcluster start 'node s.js' --name 'my app'",
                "--name: \"my app\" is not a valid app name",
            ),
            (
                "pmcluster start 'node s.js' --name w --restart-delay soon",
                "--restart-delay: \"soon\" is not a duration",
            ),
            (
                "pmcluster start 'node s.js' --name w --kill-timeout 5x",
                "--kill-timeout:",
            ),
            (
                "pmcluster start 'node s.js' --name w --restart-delay 5124095576030h",
                "--restart-delay: 584542046years 1month 2days 15h 26m 24s is more than the maximum of 1h",
            ),
            (
                "pmcluster start 'node s.js' --name w --kill-timeout 18446744073709551615",
                "--kill-timeout: 584542046years",
            ),
            (
                "pmcluster start 'node s.js' --name w --reschedule-after 2days",
                "--reschedule-after: 2days is more than the maximum of 1day; write \"never\"",
            ),
            (
                "pmcluster start 'node s.js' --name w --min-healthy-time 2days",
                "--min-healthy-time: 2days is more than the maximum of 1day",
            ),
            (
                "pmcluster start 'node s.js' --name w --instance-var 9X",
                "--instance-var:",
            ),
            (
                "pmcluster start 'node s.js' --instance 2",
                "--instance starts one instance of an existing app",
            ),
            (
                "pmcluster start 'node \"unclosed'",
                "cannot split the command line",
            ),
            (
                "pmcluster start 'node s.js' --name w --constraint 'a b'",
                "--constraint:",
            ),
            (
                "pmcluster start 'node s.js' --name w --strategy random",
                "--strategy:",
            ),
            (
                "pmcluster start 'node s.js' --name w --memory lots",
                "--memory:",
            ),
            ("pmcluster start 'node s.js' --name w --cpu x", "--cpu:"),
            (
                "pmcluster start 'node s.js' --name w --distinct-hosts --max-per-node 2",
                "--max-per-node:",
            ),
            (
                "pmcluster start 'node s.js' --name w --reschedule-after soon",
                "--reschedule-after:",
            ),
            ("pmcluster start '   '", "the command line is empty"),
            (
                "pmcluster start '_x y'",
                "cannot name the app after \"_x\"; give it a name with --name",
            ),
        ];
        for (line, want) in cases {
            check(line, Err(want));
        }
    }

    #[test]
    fn placement_flags() {
        let args = start_args(
            "pmcluster start 'node s.js' --name w --constraint region=eu --constraint 'disk in (ssd)' \
             --strategy binpack --distinct-hosts --cpu 500m --memory 256M --reschedule-after never",
        );
        let spec = start_spec(&args).expect("valid");
        assert_eq!(spec.placement.constraints.len(), 2);
        assert_eq!(spec.placement.max_per_node, Some(1));
        assert_eq!(spec.resources.cpu_millis, 500);
        assert_eq!(spec.resources.memory_bytes, 256 << 20);
        assert_eq!(spec.reschedule, pmcluster_spec::app::Reschedule::Never);
    }

    fn policy_flags(line: &str) -> Result<PolicyChanges, UsageError> {
        let words = shell_words::split(line).expect("test line splits");
        let update = match Cli::try_parse_from(words).expect("parses").command {
            Command::Start(a) => a.update,
            Command::Reload(a) => a.update,
            Command::Restart(a) => a.update,
            other => panic!("{other:?}"),
        };
        PolicyChanges::parse(&update)
    }

    #[test]
    fn update_policy_flags() {
        let all = policy_flags(
            "pmcluster restart web --rolling --max-surge 2 --max-unavailable 1 \
             --min-healthy-time 2s --healthy-deadline 1m --progress-deadline 3m \
             --auto-rollback false --canary 1 --shutdown-delay 500ms",
        )
        .expect("valid");
        let want = PolicyChanges {
            max_surge: Some(2),
            max_unavailable: Some(1),
            min_healthy_time: Some(Duration::from_secs(2)),
            healthy_deadline: Some(Duration::from_secs(60)),
            progress_deadline: Some(Duration::from_secs(180)),
            auto_rollback: Some(false),
            canary: Some(1),
            shutdown_delay: Some(Duration::from_millis(500)),
        };
        assert_eq!(all, want);
        let p = all.apply(&UpdatePolicy::default()).expect("valid");
        assert_eq!(
            (p.max_surge, p.max_unavailable, p.canary, p.auto_rollback),
            (2, 1, 1, false)
        );
        // Fields not given keep the base's values.
        let base = UpdatePolicy {
            canary: 3,
            ..UpdatePolicy::default()
        };
        let one = policy_flags("pmcluster reload web --max-surge 4").expect("valid");
        assert_eq!(
            one.apply(&base).expect("valid"),
            UpdatePolicy {
                max_surge: 4,
                ..base.clone()
            }
        );
        assert!(
            policy_flags("pmcluster reload web")
                .expect("none")
                .is_empty()
        );
        let no = policy_flags("pmcluster start 'node s.js' --name w --no-auto-rollback");
        assert_eq!(no.expect("valid").auto_rollback, Some(false));
        assert_eq!(
            policy_flags("pmcluster reload web --auto-rollback TRUE")
                .expect("valid")
                .auto_rollback,
            Some(true)
        );
        // A plain number is milliseconds, as in config files and the other duration flags.
        assert_eq!(
            policy_flags("pmcluster reload web --shutdown-delay 1500")
                .expect("valid")
                .shutdown_delay,
            Some(Duration::from_millis(1500))
        );

        let bad = [
            (
                "pmcluster reload web --max-surge -1",
                "--max-surge: \"-1\" is negative; give a whole number 0 or more",
            ),
            (
                "pmcluster reload web --max-unavailable two",
                "--max-unavailable: \"two\" is not a whole number (0 or more)",
            ),
            (
                "pmcluster reload web --canary 1.5",
                "--canary: \"1.5\" is not a whole number (0 or more)",
            ),
            (
                "pmcluster reload web --canary 99999999999",
                "--canary: \"99999999999\" is too large",
            ),
            (
                "pmcluster reload web --min-healthy-time soon",
                "--min-healthy-time: \"soon\" is not a duration",
            ),
            (
                "pmcluster reload web --healthy-deadline -5s",
                "--healthy-deadline: \"-5s\" is negative; give a duration of 0 or more",
            ),
            (
                "pmcluster reload web --progress-deadline 10x",
                "--progress-deadline: \"10x\" is not a duration",
            ),
            (
                "pmcluster reload web --shutdown-delay ''",
                "--shutdown-delay: \"\" is not a duration",
            ),
            (
                "pmcluster reload web --shutdown-delay 2h",
                "--shutdown-delay: 2h is more than the maximum of 1h",
            ),
            (
                "pmcluster reload web --progress-deadline 18446744073709551615",
                "--progress-deadline: 584542046years",
            ),
            (
                "pmcluster reload web --auto-rollback maybe",
                "--auto-rollback: \"maybe\" is not true or false",
            ),
        ];
        for (line, want) in bad {
            let err = policy_flags(line).expect_err(line);
            assert!(
                err.0.starts_with(want),
                "{line}\nwant {want}\ngot  {}",
                err.0
            );
        }
        let cli = |line: &str| Cli::try_parse_from(shell_words::split(line).expect("splits"));
        assert!(cli("pmcluster reload web --auto-rollback true --no-auto-rollback").is_err());
        assert!(cli("pmcluster reload web --max-surge").is_err());
    }

    #[test]
    fn update_policy_rules_name_the_flags_given() {
        let base = UpdatePolicy::default();
        let cases = [
            (
                "pmcluster reload web --max-surge 0",
                "--max-surge: max_surge and max_unavailable would both be 0: nothing could ever \
                 be replaced",
            ),
            (
                "pmcluster reload web --max-surge 0 --max-unavailable 0",
                "--max-surge, --max-unavailable: max_surge and max_unavailable would both be 0",
            ),
            (
                "pmcluster reload web --min-healthy-time 10m",
                "--min-healthy-time: healthy_deadline (5m) must be longer than min_healthy_time \
                 (10m)",
            ),
            (
                "pmcluster reload web --healthy-deadline 5s",
                "--healthy-deadline: healthy_deadline (5s) must be longer than min_healthy_time \
                 (5s)",
            ),
            (
                "pmcluster reload web --healthy-deadline 20m",
                "--healthy-deadline: progress_deadline (10m) must be at least healthy_deadline \
                 (20m)",
            ),
            (
                "pmcluster reload web --progress-deadline 1m",
                "--progress-deadline: progress_deadline (1m) must be at least healthy_deadline \
                 (5m)",
            ),
        ];
        for (line, want) in cases {
            let changes = policy_flags(line).expect("each value is valid");
            let err = changes.apply(&base).expect_err(line);
            assert!(
                err.0.starts_with(want),
                "{line}\nwant {want}\ngot  {}",
                err.0
            );
        }
        // Together they can be fine: 0 surge with 1 unavailable, a longer deadline with it.
        for line in [
            "pmcluster reload web --max-surge 0 --max-unavailable 1",
            "pmcluster reload web --min-healthy-time 8m --healthy-deadline 9m",
        ] {
            let changes = policy_flags(line).expect("valid");
            assert!(changes.apply(&base).is_ok(), "{line}");
        }
    }

    #[test]
    fn update_policy_flags_elsewhere() {
        // `start`: the flags make the spec's policy, and count as spec flags.
        let spec = start_spec(&start_args(
            "pmcluster start 'node s.js' --name w --max-surge 3 --canary 1",
        ))
        .expect("valid");
        assert_eq!((spec.update.max_surge, spec.update.canary), (3, 1));
        assert!(matches!(
            plan_start(&start_args("pmcluster start web --max-surge 3")),
            Ok(StartPlan::Apply { .. })
        ));
        let err = plan_start(&start_args(
            "pmcluster start 'node s.js' --name w --max-surge 0",
        ))
        .expect_err("refused");
        assert!(
            err.0
                .starts_with("--max-surge: max_surge and max_unavailable"),
            "{}",
            err.0
        );

        // `reload`: one field given twice is refused.
        let changes = policy_flags("pmcluster reload web --max-surge 2").expect("valid");
        assert!(
            changes
                .check_sets(&["env.A=1".into(), "update.canary=1".into()])
                .is_ok()
        );
        let err = changes
            .check_sets(&["update.max_surge=3".into()])
            .expect_err("twice");
        assert_eq!(
            err.0,
            "--max-surge: also given as --set update.max_surge=...; give it once"
        );
        let err = changes
            .check_sets(&[r#"update={"max_surge": 3}"#.into()])
            .expect_err("a whole block and a flag");
        assert!(
            err.0.starts_with("--max-surge: --set update=..."),
            "{}",
            err.0
        );

        // `restart`: only with --rolling.
        let restart =
            |line: &str| match Cli::try_parse_from(shell_words::split(line).expect("splits"))
                .expect("parses")
                .command
            {
                Command::Restart(a) => a,
                other => panic!("{other:?}"),
            };
        assert!(check_restart(&restart("pmcluster restart web")).is_ok());
        assert!(check_restart(&restart("pmcluster restart web --rolling --canary 1")).is_ok());
        let err = check_restart(&restart("pmcluster restart web --shutdown-delay 2s"))
            .expect_err("needs --rolling");
        assert!(
            err.0.starts_with("--shutdown-delay: only with --rolling"),
            "{}",
            err.0
        );
        let err = check_restart(&restart("pmcluster restart web --no-auto-rollback"))
            .expect_err("needs --rolling");
        assert!(
            err.0.starts_with("--auto-rollback: only with --rolling"),
            "{}",
            err.0
        );
    }

    #[test]
    fn autoscale_flags() {
        use crate::args::{Cli, Command};
        let parse =
            |line: &str| match Cli::try_parse_from(shell_words::split(line).expect("splits"))
                .expect("parses")
                .command
            {
                Command::Autoscale(a) => a,
                other => panic!("{other:?}"),
            };
        let a = parse("pmcluster autoscale web --min 2 --max 10 --cpu-threshold 70 --cooldown 30s");
        assert!(autoscale_changes(&a));
        let p = autoscale_policy(&a, None).expect("valid");
        assert!(p.enabled && p.min == 2 && p.max == 10 && p.cooldown_ms == Some(30_000));
        // Options given later keep the rest of the current policy.
        let b = parse("pmcluster autoscale web --max 6");
        let p2 = autoscale_policy(&b, Some(&p)).expect("valid");
        assert_eq!((p2.min, p2.max, p2.cpu_threshold), (2, 6, 70.0));
        let m = parse("pmcluster autoscale web --max 3 --memory-threshold 512M");
        assert_eq!(
            autoscale_policy(&m, None)
                .expect("valid")
                .memory_threshold_bytes,
            512 << 20
        );
        assert!(
            !autoscale_policy(&parse("pmcluster autoscale web --off"), Some(&p))
                .expect("off")
                .enabled
        );
        let bad = [
            (
                "pmcluster autoscale web --min 5 --max 2 --cpu-threshold 70",
                "--min",
            ),
            (
                "pmcluster autoscale web --max 2 --cpu-threshold 70 --cooldown soon",
                "--cooldown",
            ),
            (
                "pmcluster autoscale web --max 2 --memory-threshold lots",
                "--memory-threshold",
            ),
            (
                "pmcluster autoscale web --max 2 --cpu-threshold 70 --tolerance 3",
                "--tolerance",
            ),
            (
                "pmcluster autoscale web --max 2 --cpu-threshold 70 --down-stabilization 2days",
                "--down-stabilization: 2days is more than the maximum of 1day",
            ),
        ];
        for (line, want) in bad {
            let err = autoscale_policy(&parse(line), None).expect_err(line);
            assert!(err.0.starts_with(want), "{line}: {}", err.0);
        }
        assert!(!autoscale_changes(&parse("pmcluster autoscale web")));
        assert!(
            Cli::try_parse_from(["pmcluster", "autoscale", "web", "--off", "--max", "3"]).is_err()
        );
    }
}
