//! Checks of user input that happen before anything is sent: instance counts, the `start` command
//! line and its flags. Pure, so every message is pinned by a test; errors name the flag at fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pmcluster_spec::app::{MAX_INSTANCES, validate_name};
use pmcluster_spec::config::{
    RawPlacement, RawResources, Scalar, parse_duration, parse_reschedule,
};
use pmcluster_spec::placement::parse_memory;
use pmcluster_spec::supervise::Supervision;
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
    // Digits that do not fit a u32 are a number all the same, only too large.
    let too_large = || {
        format!(
            "invalid instance count {}: too large, the limit is {MAX_INSTANCES}",
            echo(text)
        )
    };
    let n: u32 = trimmed.parse().map_err(|_| {
        let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            too_large()
        } else {
            format!(
                "invalid instance count {}: must be a whole number 0 or more",
                echo(text)
            )
        }
    })?;
    if n > MAX_INSTANCES {
        return Err(too_large());
    }
    Ok(n)
}

/// What `scale APP N` asks for: `N` sets the count; `+N` and `-N` change it (`pm2 scale web +2`),
/// by the count the coordinator has when it takes the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTo {
    To(u32),
    By(i64),
}

/// Parses `scale`'s count (see [`ScaleTo`]).
pub fn parse_scale(text: &str) -> Result<ScaleTo, String> {
    let trimmed = text.trim();
    let (sign, digits) = match trimmed.as_bytes().first() {
        Some(b'+') => (1, &trimmed[1..]),
        Some(b'-') => (-1, &trimmed[1..]),
        _ => return parse_count(text).map(ScaleTo::To),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid instance count {}: give N to set it, or +N / -N to add or remove N",
            echo(text)
        ));
    }
    match digits.parse::<u32>() {
        Ok(n) if n <= MAX_INSTANCES => Ok(ScaleTo::By(sign * i64::from(n))),
        _ => Err(format!(
            "invalid instance count {}: too large, the limit is {MAX_INSTANCES}",
            echo(text)
        )),
    }
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
    /// `start "command line" ...`: create the app, or start it when it exists with this very
    /// spec (one with another spec is refused: `start` never changes an app).
    Apply {
        spec: Box<AppSpec>,
        /// The name came from the program's file name, not from `--name` (what a refusal to
        /// overwrite an app of that name suggests differs).
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
        || args.max_memory_restart.is_some()
        || args.cron_restart.is_some()
        || args.max_restarts.is_some()
        || args.min_uptime.is_some()
        || args.time
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
    let supervision = start_supervision(args, &base.supervision)?;
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
        supervision,
        ..base
    }
    .validate()
    .map_err(flag_error)
}

/// The supervision of `start`'s PM2 flags on top of `base`, each value read by the spec's own
/// parser (so `--max-memory-restart 1.5G` means what `max_memory_restart: "1.5G"` means in a
/// file); the whole is checked with the spec. As in a file, a size of 0 is no limit.
fn start_supervision(args: &StartArgs, base: &Supervision) -> Result<Supervision, UsageError> {
    let max_memory_restart = match &args.max_memory_restart {
        None => base.max_memory_restart,
        Some(text) => {
            Some(parse_memory("max_memory_restart", text).map_err(flag_error)?).filter(|n| *n > 0)
        }
    };
    let max_restarts = match &args.max_restarts {
        None => base.max_restarts,
        Some(text) => count_flag("--max-restarts", text)?,
    };
    let min_uptime = match &args.min_uptime {
        None => base.min_uptime,
        Some(text) => {
            parse_duration("min_uptime", &Scalar::Str(text.clone())).map_err(flag_error)?
        }
    };
    Ok(Supervision {
        max_memory_restart,
        max_restarts,
        min_uptime,
        cron_restart: args
            .cron_restart
            .clone()
            .or_else(|| base.cron_restart.clone()),
        log_timestamps: args.time || base.log_timestamps,
        ..base.clone()
    })
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
        "max_memory_restart" => "--max-memory-restart",
        "cron_restart" => "--cron-restart",
        "min_uptime" => "--min-uptime",
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
    let current = current.filter(|c| c.enabled);
    let mut p = current.cloned().unwrap_or_default();
    p.enabled = true;
    // A new policy, or one an older CLI stored with min 0 by default: as in a config file (and
    // Kubernetes' HPA), at least one instance stays unless --min says otherwise.
    if p.min == 0 {
        p.min = 1;
    }
    if current.is_none() && a.max.is_none() {
        return Err(UsageError::new(
            "--max: give the most instances it may scale to, e.g. --max 10 (with --min, the \
             fewest; 1 if left out)",
        ));
    }
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
    pmcluster_spec::wire::new_autoscale_from_wire(&p).map_err(autoscale_flag_error)?;
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
mod tests;
