//! `import pm2`: turns what PM2 users have — `pm2 jlist` output or a JSON ecosystem file — into
//! a pmcluster config file (the `{"apps": [...]}` that `apply -f` reads).
//!
//! [`convert`] is pure: text in, config and warnings out. Every PM2 setting pmcluster cannot
//! honour becomes a warning naming the field; only `pm2 jlist`'s own bookkeeping (pm_id, status,
//! uptimes, log paths PM2 chose) is left out without one, since it describes a running process,
//! not a setting. The result is checked with the same parser `apply` uses, so what is written
//! applies.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use pmcluster_spec::config::{Format, parse_apps, parse_config};
use pmcluster_spec::supervise::validate_cron;
use serde_json::{Map, Value, json};

use crate::args::{ImportSource, OutputFormat};
use crate::error::UsageError;

mod warnings;
pub use warnings::{apply_warnings, no_port_warnings, shared_port_warnings, small_memory_warnings};

/// A config for `apply -f`, and what did not carry over.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub config: Value,
    pub warnings: Vec<String>,
}

/// The file the conversion hint names when the refused one's name is not known to be a
/// JavaScript file's or would need quoting in a shell.
const DEFAULT_JS: &str = "ecosystem.config.js";

/// The most a config file (or standard input) may hold: the coordinator takes no larger message.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A config file's text, `-` for standard input. Read up to [`MAX_CONFIG_BYTES`] and no further:
/// `apply -f /dev/zero` (or a stream that never ends) is refused, not read until memory runs out.
pub fn read_config(path: &str) -> Result<String, UsageError> {
    use std::io::Read;
    let name = if path == "-" { "standard input" } else { path };
    let cannot = |e: std::io::Error| UsageError::new(format!("cannot read {name}: {e}"));
    let mut bytes = Vec::new();
    if path == "-" {
        let stdin = std::io::stdin();
        stdin
            .lock()
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        let file = std::fs::File::open(path).map_err(cannot)?;
        file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)
    }
    .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(UsageError::new(format!(
            "{name} holds more than {} MiB, more than any config of apps needs; is it the \
             right file?",
            MAX_CONFIG_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        UsageError::new(format!(
            "cannot read {name}: it is not UTF-8 text (the byte at offset {} is not)",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// How to make a JSON file of the JavaScript ecosystem file `path`, run in its directory: PM2's
/// ecosystem file is a program, which pmcluster does not run. A dynamic import loads an ES module
/// (`export default`: `.mjs`, or `.js` in a `"type": "module"` package), which `require()` refuses
/// before Node 20.19, as well as CommonJS (`module.exports`), whose exports it gives as `default`.
pub fn js_hint(path: &str) -> String {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            JS_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .unwrap_or(DEFAULT_JS);
    format!(
        "node --input-type=module -e \"const m = await import('./{name}'); \
         console.log(JSON.stringify(m.default))\" > eco.json"
    )
}

const JS_EXTENSIONS: [&str; 4] = [".js", ".cjs", ".mjs", ".ts"];

/// Refuses a JavaScript ecosystem file by its name.
pub fn refuse_js(path: &str) -> Result<(), UsageError> {
    let lower = path.to_ascii_lowercase();
    if JS_EXTENSIONS.iter().any(|ext| lower.ends_with(ext)) {
        return Err(js_error(path));
    }
    Ok(())
}

fn js_error(path: &str) -> UsageError {
    let hint = js_hint(path);
    UsageError::new(format!(
        "{path} is JavaScript, which pmcluster does not run; convert it to JSON first, in the \
         directory that holds it:\n  {hint}\nthen: pmcluster import pm2 eco.json"
    ))
}

/// Whether `text` reads as a JavaScript ecosystem file rather than a config: what such files
/// start with (after comments, which JSON has none of).
fn looks_like_js(text: &str) -> bool {
    let mut head = text.trim_start();
    loop {
        if let Some(rest) = head.strip_prefix("//") {
            head = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(rest) = head.strip_prefix("/*") {
            head = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    [
        "module.exports",
        "exports.",
        "export ",
        "const ",
        "let ",
        "var ",
        "'use strict'",
        "\"use strict\"",
    ]
    .iter()
    .any(|start| head.starts_with(start))
}

/// The apps of a config file for `apply -f` and `reload -f`, as `apply` reads them: a JavaScript
/// ecosystem file (by its name, or by what it holds when it is not JSON) is refused with the way
/// to convert it. `path` is the file's name (`-`: standard input), `source` its name in messages.
pub fn config_apps(
    text: &str,
    format: Format,
    path: &str,
    source: &str,
) -> Result<Vec<pmcluster_spec::AppSpec>, UsageError> {
    refuse_js(path)?;
    parse_apps(text, format).map_err(|e| {
        if e.field == "file" && looks_like_js(text) {
            js_error(source)
        } else if let Some(key) = pm2_only(&e) {
            UsageError::new(format!(
                "{source}: {e}; {key} is a PM2 ecosystem setting: convert the file with \
                 `pmcluster import pm2 {path}`, which says what each PM2 setting becomes"
            ))
        } else {
            UsageError::new(format!("{source}: {e}"))
        }
    })
}

/// As [`config_apps`] for `apply -f`, with each app's bad value its own error (the app named,
/// or its place): only a file that cannot be read as apps is one error for all.
#[allow(clippy::type_complexity)]
pub fn config_apps_each(
    text: &str,
    format: Format,
    path: &str,
    source: &str,
) -> Result<Vec<(String, Result<pmcluster_spec::AppSpec, UsageError>)>, UsageError> {
    refuse_js(path)?;
    let apps = pmcluster_spec::config::parse_apps_each(text, format).map_err(|e| {
        // The whole-file path words this error (a JavaScript file, a PM2 setting) as before.
        config_apps(text, format, path, source)
            .err()
            .unwrap_or_else(|| UsageError::new(format!("{source}: {e}")))
    })?;
    Ok(apps
        .into_iter()
        .map(|(label, spec)| {
            let spec = spec.map_err(|e| UsageError::new(format!("{source}: {e}")));
            (label, spec)
        })
        .collect())
}

/// The key of an unknown-field error that PM2's ecosystem files have and pmcluster's config
/// files do not: the file is then most likely a PM2 one.
fn pm2_only(e: &pmcluster_spec::SpecError) -> Option<String> {
    const PM2: &[&str] = &[
        "node_args",
        "interpreter",
        "interpreter_args",
        "watch",
        "ignore_watch",
        "error_file",
        "out_file",
        "log_file",
        "combine_logs",
        "log_date_format",
        "pid_file",
        "exp_backoff_restart_delay",
        "wait_ready",
        "namespace",
    ];
    if !e.message.contains("unknown field") {
        return None;
    }
    let key = e.field.rsplit('.').next().unwrap_or(&e.field);
    (PM2.contains(&key) || key.starts_with("env_")).then(|| key.to_string())
}

/// Converts `pm2 jlist` output (a JSON array of processes) or a JSON ecosystem file (`{"apps":
/// [...]}`, or one app object). `source` names the input in messages.
pub fn convert(text: &str, source: &str) -> Result<Imported, UsageError> {
    // As a config file is read: without a byte-order mark, and a key given twice refused.
    let text = pmcluster_spec::config::without_bom(text);
    let tree: Value = pmcluster_spec::config::json_tree(text).map_err(|e| {
        if looks_like_js(text) {
            js_error(source)
        } else {
            UsageError::new(format!(
                "{source}: not JSON ({e}); give `pm2 jlist` output or a JSON ecosystem file"
            ))
        }
    })?;
    let mut warnings = Vec::new();
    let apps = match &tree {
        Value::Array(procs) => from_jlist(procs, &mut warnings)?,
        Value::Object(map) => match map.get("apps") {
            Some(Value::Array(apps)) => apps
                .iter()
                .enumerate()
                .map(|(i, app)| from_ecosystem(app, &format!("apps[{i}]"), &mut warnings))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(UsageError::new(format!("{source}: apps: is not a list"))),
            None if map.contains_key("script") => {
                vec![from_ecosystem(&tree, "app", &mut warnings)?]
            }
            None => {
                return Err(UsageError::new(format!(
                    "{source}: neither `pm2 jlist` output (a list of processes) nor an ecosystem \
                     file ({{\"apps\": [...]}})"
                )));
            }
        },
        _ => {
            return Err(UsageError::new(format!(
                "{source}: neither `pm2 jlist` output (a list of processes) nor an ecosystem file \
                 ({{\"apps\": [...]}})"
            )));
        }
    };
    if apps.is_empty() {
        return Err(UsageError::new(format!("{source}: no app to import")));
    }
    let config = json!({ "apps": apps });
    // What is written must be what `apply` takes: check it with apply's own parser.
    parse_config(config.clone()).map_err(|e| {
        UsageError::new(format!(
            "{source}: the converted config is not valid for pmcluster: {e}"
        ))
    })?;
    Ok(Imported { config, warnings })
}

/// Settings with the same name and meaning in pmcluster's config.
const SAME: &[&str] = &[
    "max_memory_restart",
    "autorestart",
    "min_uptime",
    "max_restarts",
    "restart_delay",
    "kill_timeout",
    "listen_timeout",
    "merge_logs",
];

/// PM2 settings with another name in pmcluster's config.
const RENAMED: &[(&str, &str)] = &[
    ("time", "log_timestamps"),
    ("uid", "user"),
    ("gid", "group"),
];

/// Read by the conversion itself.
const HANDLED: &[&str] = &[
    "name",
    "script",
    "args",
    "cwd",
    "env",
    "instances",
    "exec_mode",
    "interpreter",
    "interpreter_args",
    "node_args",
    "instance_var",
    "cron_restart",
];

/// PM2 settings that pmcluster has no equivalent for; in `pm2 jlist`, reported only when set.
const UNSUPPORTED: &[&str] = &[
    "watch",
    "ignore_watch",
    "watch_options",
    "exp_backoff_restart_delay",
    "log_date_format",
    "error_file",
    "out_file",
    "log_file",
    "pid_file",
    "combine_logs",
    "log_type",
    "wait_ready",
    "shutdown_with_message",
    "increment_var",
    "namespace",
    "force",
    "source_map_support",
    "filter_env",
    "append_env_to_name",
    "stop_exit_codes",
    "vizion",
    "post_update",
    "automation",
    "autostart",
];

/// The variables of the PM2 daemon's own environment that `pm2 jlist` folds into each app's
/// `env`: the host's login environment and PM2's bookkeeping. On another host they would be
/// wrong, and pmcluster sets the instance variables itself.
fn daemon_variable(key: &str) -> bool {
    const HOST: &[&str] = &[
        "PATH",
        "HOME",
        "PWD",
        "OLDPWD",
        "SHELL",
        "USER",
        "LOGNAME",
        "TERM",
        "SHLVL",
        "_",
        "HOSTNAME",
        "MAIL",
        "LANG",
        "LANGUAGE",
        "TMPDIR",
        "XDG_RUNTIME_DIR",
        "XDG_SESSION_ID",
        "DBUS_SESSION_BUS_ADDRESS",
        "SSH_CLIENT",
        "SSH_CONNECTION",
        "SSH_TTY",
        "NODE_APP_INSTANCE",
        "unique_id",
        "pm_id",
        "PM2_HOME",
        "PM2_USAGE",
        "PM2_INTERACTOR_PROCESSING",
        "PM2_JSON_PROCESSING",
        "PM2_DISCRETE_MODE",
        "SILENT",
    ];
    HOST.contains(&key) || key.starts_with("LC_") || key.starts_with("PM2_")
}

/// What a PM2 `instances` value becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Count {
    N(u32),
    /// pmcluster's `"max"`: one instance per core of each node the app may run on.
    Max,
}

impl Count {
    fn to_value(self) -> Value {
        match self {
            Count::N(n) => json!(n),
            Count::Max => json!("max"),
        }
    }
}

/// PM2: a count, `"max"` or 0 for every core, -1 for every core but one (-N: but N).
fn instances(value: &Value, app: &str, warnings: &mut Vec<String>) -> Result<Count, UsageError> {
    let n = match value {
        Value::Null => return Ok(Count::N(1)),
        Value::String(s) if s.trim() == "max" => return Ok(Count::Max),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    match n {
        Some(0) => Ok(Count::Max),
        Some(n) if n < 0 => {
            warnings.push(format!(
                "{app}: instances: {n} (every core but {}) has no pmcluster equivalent; using \
                 \"max\" (one per core of each node the app may use)",
                -n
            ));
            Ok(Count::Max)
        }
        Some(n) => u32::try_from(n)
            .map(Count::N)
            .map_err(|_| UsageError::new(format!("{app}: instances: {n} is too large"))),
        None => Err(UsageError::new(format!(
            "{app}: instances: {value} is not a number or \"max\""
        ))),
    }
}

/// PM2's `cron_restart` as pmcluster's: PM2 also takes a leading seconds field, which goes when
/// it is `0` (the same times). What pmcluster's cron cannot run is left out with a warning, so
/// that the app and the others still convert.
fn cron_restart(value: &Value, app: &str, warnings: &mut Vec<String>) -> Option<String> {
    let expr = match value {
        Value::Null => return None,
        Value::String(s) if s.trim().is_empty() => return None,
        Value::String(s) => s.trim(),
        other => {
            warnings.push(format!(
                "{app}: cron_restart: {other} is not a cron expression; left out"
            ));
            return None;
        }
    };
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let expr = match fields.as_slice() {
        ["0", rest @ ..] if rest.len() == 5 => rest.join(" "),
        [seconds, rest @ ..] if rest.len() == 5 => {
            warnings.push(format!(
                "{app}: cron_restart: {expr:?} restarts at second {seconds} of a minute; \
                 pmcluster's cron_restart has no seconds field (minute hour day-of-month month \
                 day-of-week); left out"
            ));
            return None;
        }
        _ => expr.to_string(),
    };
    match validate_cron(&expr) {
        Ok(()) => Some(expr),
        Err(e) => {
            warnings.push(format!("{app}: cron_restart: {}; left out", e.message));
            None
        }
    }
}

/// The program a PM2 script runs under when no interpreter is given, by extension.
pub(crate) use pmcluster_spec::interpreter::by_extension as default_interpreter;

/// A list of words: a JSON list of strings, or one string split like a shell would.
/// PM2's `node_args` then `interpreter_args`: both go to the interpreter, in that order.
fn interpreter_args(
    node_args: Option<&Value>,
    interpreter_args: Option<&Value>,
    app: &str,
) -> Result<Vec<String>, UsageError> {
    let mut args = words(node_args, "node_args", app)?;
    args.extend(words(interpreter_args, "interpreter_args", app)?);
    Ok(args)
}

fn words(value: Option<&Value>, field: &str, app: &str) -> Result<Vec<String>, UsageError> {
    let bad = || UsageError::new(format!("{app}: {field}: not a string or a list of strings"));
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => shell_words::split(s)
            .map_err(|e| UsageError::new(format!("{app}: {field}: cannot split {s:?}: {e}"))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Env values as strings; PM2 takes numbers and booleans too.
fn env_map(
    value: Option<&Value>,
    app: &str,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, UsageError> {
    let mut env = BTreeMap::new();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(env);
    };
    let Value::Object(map) = value else {
        return Err(UsageError::new(format!("{app}: env: is not an object")));
    };
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                warnings.push(format!(
                    "{app}: env.{k}: not a string, number or boolean; left out"
                ));
                continue;
            }
        };
        env.insert(k.clone(), text);
    }
    Ok(env)
}

/// Whether a setting is on: anything but null, false, 0, "" and empty lists.
fn set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(true) => true,
    }
}

/// One PM2 app's settings, common to both inputs.
struct Pm2App<'a> {
    /// `name` as the user knows it, for messages.
    label: String,
    name: String,
    script: String,
    interpreter: Option<String>,
    interpreter_args: Vec<String>,
    args: Vec<String>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    count: Count,
    exec_mode: Option<String>,
    settings: &'a Map<String, Value>,
}

impl Pm2App<'_> {
    fn into_config(self, warnings: &mut Vec<String>) -> Value {
        let label = &self.label;
        let mut app = Map::new();
        app.insert("name".into(), json!(self.name));
        let interpreter = match self.interpreter.as_deref().map(str::trim) {
            Some("none") | Some("") => None,
            Some(other) => Some(other.to_string()),
            None => default_interpreter(&self.script).map(str::to_string),
        };
        let (script, args) = match interpreter {
            Some(program) => {
                let mut args = self.interpreter_args;
                args.push(self.script);
                args.extend(self.args);
                (program, args)
            }
            None => {
                if !self.interpreter_args.is_empty() {
                    warnings.push(format!(
                        "{label}: interpreter_args: no interpreter runs the script; left out"
                    ));
                }
                (self.script, self.args)
            }
        };
        app.insert("script".into(), json!(script));
        if !args.is_empty() {
            app.insert("args".into(), json!(args));
        }
        if let Some(cwd) = self.cwd.filter(|c| !c.is_empty()) {
            app.insert("cwd".into(), json!(cwd));
        }
        let mut env = self.env;
        // PM2's cluster mode shares one port among its workers; pmcluster's instances are
        // processes of their own, each with its own port (in PORT), behind a load balancer.
        if let Some(port) = env.get("PORT").and_then(|p| p.trim().parse::<u16>().ok()) {
            match self.count {
                Count::N(n) if n <= 1 => {
                    env.remove("PORT");
                    app.insert("port".into(), json!(port.to_string()));
                }
                Count::N(n) => match port.checked_add(u16::try_from(n - 1).unwrap_or(u16::MAX)) {
                    Some(last) => {
                        env.remove("PORT");
                        app.insert("port".into(), json!(format!("{port}-{last}")));
                        warnings.push(format!(
                            "{label}: env.PORT: {port} is shared by PM2's {n} cluster workers; \
                             pmcluster gives each instance its own port, so port is {port}-{last} \
                             (put a load balancer in front: pmcluster endpoints {} -o nginx)",
                            self.name
                        ));
                    }
                    None => warnings.push(format!(
                        "{label}: env.PORT: {port} with {n} instances runs past port 65535; \
                         kept as an env variable, set port to a range yourself"
                    )),
                },
                Count::Max => warnings.push(format!(
                    "{label}: env.PORT: {port} with instances \"max\": instances on one node \
                     would share it; kept as an env variable, set port to a range (e.g. \
                     \"auto:{port}-{}\") yourself",
                    port.saturating_add(99)
                )),
            }
        }
        if !env.is_empty() {
            app.insert("env".into(), json!(env));
        }
        app.insert("instances".into(), self.count.to_value());
        if let Some(mode) = self.exec_mode {
            let mode = mode.trim_end_matches("_mode").to_string();
            app.insert("exec_mode".into(), json!(mode));
        }
        let s = self.settings;
        for key in SAME {
            if let Some(v) = s.get(*key).filter(|v| !v.is_null()) {
                app.insert((*key).to_string(), v.clone());
            }
        }
        if let Some(cron) = s
            .get("cron_restart")
            .and_then(|v| cron_restart(v, label, warnings))
        {
            app.insert("cron_restart".into(), json!(cron));
        }
        for (pm2, ours) in RENAMED {
            if let Some(v) = s.get(*pm2).filter(|v| !v.is_null()) {
                app.insert((*ours).to_string(), v.clone());
            }
        }
        // pmcluster always exports NODE_APP_INSTANCE: PM2's default names no extra variable.
        if let Some(var) = s.get("instance_var").and_then(Value::as_str)
            && !var.is_empty()
            && var != "NODE_APP_INSTANCE"
        {
            app.insert("instance_var".into(), json!(var));
        }
        Value::Object(app)
    }
}

fn from_ecosystem(app: &Value, at: &str, warnings: &mut Vec<String>) -> Result<Value, UsageError> {
    let Value::Object(s) = app else {
        return Err(UsageError::new(format!("{at}: is not an object")));
    };
    let text = |key: &str| s.get(key).and_then(Value::as_str).map(str::to_string);
    let script = text("script")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| UsageError::new(format!("{at}: script: is missing")))?;
    let name = match text("name").filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => {
            // PM2 names an app after its script file.
            let n = Path::new(&script)
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or("app")
                .to_string();
            warnings.push(format!("{at}: name: missing; named {n:?} after its script"));
            n
        }
    };
    let label = format!("app {name}");
    for (key, value) in s {
        let known = HANDLED.contains(&key.as_str())
            || SAME.contains(&key.as_str())
            || RENAMED.iter().any(|(k, _)| k == key);
        if known {
            continue;
        }
        if key.starts_with("env_") {
            warnings.push(format!(
                "{label}: {key}: PM2's --env variants are not imported; merge the variables \
                 you need into env"
            ));
        } else if key == "watch" && !set(value) {
            // Off, as in pmcluster.
        } else if UNSUPPORTED.contains(&key.as_str()) {
            warnings.push(format!(
                "{label}: {key}: not supported by pmcluster; left out"
            ));
        } else {
            warnings.push(format!(
                "{label}: {key}: unknown to pmcluster's import; left out"
            ));
        }
    }
    let interpreter_args = interpreter_args(s.get("node_args"), s.get("interpreter_args"), &label)?;
    Ok(Pm2App {
        count: instances(s.get("instances").unwrap_or(&Value::Null), &label, warnings)?,
        env: env_map(s.get("env"), &label, warnings)?,
        args: words(s.get("args"), "args", &label)?,
        interpreter: text("interpreter"),
        interpreter_args,
        cwd: text("cwd"),
        exec_mode: text("exec_mode"),
        label,
        name,
        script,
        settings: s,
    }
    .into_config(warnings))
}

/// `pm2 jlist`: one entry per process, so a cluster app appears once per worker.
fn from_jlist(procs: &[Value], warnings: &mut Vec<String>) -> Result<Vec<Value>, UsageError> {
    // By name, in the order PM2 lists them.
    let mut groups: Vec<(String, Vec<&Map<String, Value>>)> = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let env = p
            .get("pm2_env")
            .and_then(Value::as_object)
            .ok_or_else(|| UsageError::new(format!("[{i}]: pm2_env: is missing")))?;
        let name = p
            .get("name")
            .or_else(|| env.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| UsageError::new(format!("[{i}]: name: is missing")))?;
        match groups.iter_mut().find(|(n, _)| n == name) {
            Some((_, members)) => members.push(env),
            None => groups.push((name.to_string(), vec![env])),
        }
    }
    let mut apps = Vec::new();
    for (name, members) in groups {
        let label = format!("app {name}");
        let s = members[0];
        let text = |key: &str| s.get(key).and_then(Value::as_str).map(str::to_string);
        let script = text("pm_exec_path")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| UsageError::new(format!("{label}: pm2_env.pm_exec_path: is missing")))?;
        let count = match instances(s.get("instances").unwrap_or(&Value::Null), &label, warnings)? {
            Count::Max => Count::Max,
            // Each worker is listed: their number is the count.
            Count::N(_) => Count::N(u32::try_from(members.len()).unwrap_or(u32::MAX)),
        };
        for key in UNSUPPORTED {
            let value = s.get(*key).unwrap_or(&Value::Null);
            let default_namespace = *key == "namespace" && value == "default";
            // PM2 fills these in for every process; they are its bookkeeping, not settings.
            let bookkeeping = matches!(*key, "vizion" | "automation" | "autostart" | "pid_file");
            if set(value) && !default_namespace && !bookkeeping {
                warnings.push(format!(
                    "{label}: {key}: not supported by pmcluster; left out"
                ));
            }
        }
        // `apply` starts every app it is given, whatever PM2 was doing with it.
        for status in ["stopped", "errored"] {
            let n = members
                .iter()
                .filter(|m| m.get("status").and_then(Value::as_str) == Some(status))
                .count();
            if n > 0 {
                let of = if members.len() > 1 {
                    format!(" ({n} of its {} processes)", members.len())
                } else {
                    String::new()
                };
                warnings.push(format!(
                    "{label}: status: {status} in PM2{of}; pmcluster apply starts it (then \
                     `pmcluster stop {name}` to stop it, or leave it out of the file)"
                ));
            }
        }
        let mut env = env_map(s.get("env"), &label, warnings)?;
        let daemon: Vec<String> = env.keys().filter(|k| daemon_variable(k)).cloned().collect();
        for k in &daemon {
            env.remove(k);
        }
        // PM2 also stores each app's own settings as a JSON string under its name.
        if env.get(&name).is_some_and(|v| v.starts_with('{')) {
            env.remove(&name);
        }
        if !daemon.is_empty() {
            warnings.push(format!(
                "{label}: env: left out the PM2 daemon's own environment ({}); add any the app \
                 needs to env",
                daemon.join(", ")
            ));
        }
        let interpreter_args =
            interpreter_args(s.get("node_args"), s.get("interpreter_args"), &label)?;
        apps.push(
            Pm2App {
                count,
                env,
                args: words(s.get("args"), "args", &label)?,
                interpreter: text("exec_interpreter").or_else(|| text("interpreter")),
                interpreter_args,
                cwd: text("pm_cwd").or_else(|| text("cwd")),
                exec_mode: text("exec_mode"),
                label,
                name,
                script,
                settings: s,
            }
            .into_config(warnings),
        );
    }
    Ok(apps)
}

/// `import pm2 FILE [--out OUT]`: warnings to stderr, the config to OUT or stdout.
pub fn run(source: ImportSource, output: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let ImportSource::Pm2 { file, out: target } = source;
    refuse_js(&file)?;
    let text = read_config(&file)?;
    let source = if file == "-" {
        "<stdin>"
    } else {
        file.as_str()
    };
    let imported = convert(&text, source)?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let yaml = output == OutputFormat::Yaml
        || target.as_deref().is_some_and(|t| {
            let t = t.to_string_lossy().to_ascii_lowercase();
            t.ends_with(".yaml") || t.ends_with(".yml")
        });
    let format = if yaml {
        OutputFormat::Yaml
    } else {
        OutputFormat::Json
    };
    let mut text = crate::output::document(&imported.config, format)?;
    // A text file ends with a newline (a trial's `--out apps.json` had none).
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let n = imported.config["apps"].as_array().map_or(0, Vec::len);
    match target {
        None => out.write_all(text.as_bytes()).context("writing to stdout"),
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            writeln!(
                out,
                "wrote {n} app{} to {}; run them with: pmcluster apply -f {}",
                if n == 1 { "" } else { "s" },
                path.display(),
                path.display()
            )
            .context("writing to stdout")
        }
    }
}

#[cfg(test)]
mod tests;
