//! PM2 habits that mean something else here, or nothing: the verbs of PM2's dump file and boot
//! scripts, `--update-env`, `--watch`, PM2's numeric ids and `start` of a config file. Each gets a pointer
//! to what pmcluster does instead, rather than clap's guess at a verb spelled alike or a bare
//! "not found".

use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use pmcluster_spec::config::Format;

use crate::args::Command;
use crate::error::ApiError;

/// clap's refusal of a PM2 verb or flag that pmcluster has no use for, as a pointer to what it
/// does instead; any other error as clap words it. clap would offer a verb spelled alike
/// (`save`: "a similar subcommand exists: 'scale'", `resurrect`: 'restart'), which does
/// something else. (Hidden verbs and flags would do the same, but clap_complete puts hidden
/// ones in the completion scripts.) `args` is the command line, for the app of `--update-env`.
pub fn explain(err: clap::Error, args: &[OsString]) -> clap::Error {
    let said = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let pointer = match err.kind() {
        ErrorKind::InvalidSubcommand => said(ContextKind::InvalidSubcommand)
            .and_then(|word| verb(word).or_else(|| (word == "env").then(|| env(args)))),
        ErrorKind::UnknownArgument => said(ContextKind::InvalidArg).and_then(|a| flag(a, args)),
        _ => None,
    };
    match pointer {
        Some(pointer) => clap::Error::raw(err.kind(), format!("{pointer}\n")),
        None => err,
    }
}

/// What to do instead of PM2's verbs for its dump file and boot scripts.
fn verb(word: &str) -> Option<String> {
    Some(match word {
        "save" | "dump" => "pmcluster keeps no dump file: the coordinator stores each app as it \
             changes, and `pmcluster up` (or the coordinator's restart) brings them back. For a \
             copy in a file: pmcluster export -o yaml > apps.yaml (back with `pmcluster apply \
             -f apps.yaml`)"
            .to_string(),
        "resurrect" => "nothing to resurrect: the apps come back by themselves when the \
             coordinator starts (`pmcluster up` on one machine); from a file written by \
             `pmcluster export`: pmcluster apply -f apps.yaml"
            .to_string(),
        "startup" | "unstartup" => "pmcluster makes no boot script: run `pmcluster up` at boot \
             on one machine (it is idempotent), or, on hosts, the systemd units in \
             deploy/systemd/ (pmcluster-coordinator.service, pmcluster-agent.service; \
             deploy/install-agent.sh installs an agent's); the apps come back with the \
             coordinator"
            .to_string(),
        _ => return None,
    })
}

/// What to do instead of a PM2 flag that pmcluster has no use for: `--update-env`, and
/// `--watch` (clap's guess, `--wait`, waits for the instances to come up).
fn flag(arg: &str, args: &[OsString]) -> Option<String> {
    let name = arg.split_once('=').map_or(arg, |(name, _)| name);
    match name {
        "--update-env" => Some(update_env(args)),
        "--watch" | "--ignore-watch" | "--watch-delay" => Some(watch(name, args)),
        _ => None,
    }
}

/// PM2's `--watch` restarts on a file change; pmcluster's agents may run on other hosts than
/// the files one edits, so a change is rolled out by a command.
fn watch(flag: &str, args: &[OsString]) -> String {
    let app = app_without(args, flag).unwrap_or_else(|| "APP".to_string());
    format!(
        "{flag}: pmcluster does not watch files; after a change, restart the app's instances \
         one after another with: pmcluster reload {app}"
    )
}

/// PM2's `env APP` shows a process's environment; here it is the env of the app's spec, which
/// `info` shows (clap's guess would be `send` or `events`).
fn env(args: &[OsString]) -> String {
    let app = args
        .iter()
        .skip_while(|a| *a != "env")
        .nth(1)
        .map(|a| a.to_string_lossy())
        .filter(|a| !a.starts_with('-'));
    // `pm2 env 0` names a process by id: pointing to `info 0` would only lead to a not-found.
    let by_id = app.as_deref().is_some_and(looks_like_id);
    let app = match app {
        Some(a) if !by_id => shell_words::quote(&a).into_owned(),
        _ => "APP".to_string(),
    };
    let names = if by_id {
        format!("; {} (`pmcluster apps` lists them)", id_hint())
    } else {
        String::new()
    };
    format!(
        "pmcluster has no `env` verb: an app runs with the env of its spec (no shell env is \
         added), which `pmcluster info {app}` shows, secrets masked (`pmcluster info {app} -o \
         json`: .app.spec.env). Change it with: pmcluster reload {app} --set env.KEY=VALUE{names}"
    )
}

/// PM2's `restart APP --update-env` takes the shell's env; here env is part of the app's spec.
fn update_env(args: &[OsString]) -> String {
    let app = app_after_verb(args).unwrap_or_else(|| "APP".to_string());
    format!(
        "--update-env: pmcluster does not take env from your shell, an app runs with the env it \
         was given. Change it with a rolling update: pmcluster reload {app} --set env.KEY=VALUE \
         (repeat --set for more)"
    )
}

/// The app of `restart web --update-env`: the command line read again without the flag.
fn app_after_verb(args: &[OsString]) -> Option<String> {
    app_without(args, "--update-env")
}

/// The app a command line names once `flag` (a switch, or `flag=VALUE`) is left out; for
/// `start` of a command line, the name it would get.
fn app_without(args: &[OsString], flag: &str) -> Option<String> {
    let rest = args.iter().filter(|a| {
        let a = a.to_string_lossy();
        a != flag && !a.starts_with(&format!("{flag}="))
    });
    let (cli, _) = crate::args::parse_from(rest).ok()?;
    let app = match &cli.command {
        // `start server.js` of a file here makes an app named after the file, `server`.
        Command::Start(s) => match crate::validate::plan_start(s).ok()? {
            crate::validate::StartPlan::Existing { app, .. } if Path::new(&app).is_file() => {
                Path::new(&app).file_stem()?.to_string_lossy().into_owned()
            }
            crate::validate::StartPlan::Existing { app, .. } => app,
            crate::validate::StartPlan::Apply { spec, .. } => spec.name,
        },
        other => app_named(other)?.to_string(),
    };
    Some(shell_words::quote(&app).into_owned())
}

/// Whether `app` reads as a PM2 id (`pm2 stop 0`) rather than a name.
pub fn looks_like_id(app: &str) -> bool {
    !app.is_empty() && app.bytes().all(|b| b.is_ascii_digit())
}

/// What follows "app "0" not found" for a name that reads as a PM2 id.
pub fn id_hint() -> &'static str {
    "pmcluster knows apps by name, not by PM2's numeric ids"
}

/// The app a verb names, for [`with_id_hint`].
pub fn app_named(command: &Command) -> Option<&str> {
    Some(match command {
        Command::Info(a) => &a.app,
        Command::Stats(a) | Command::Compare(a) => &a.app,
        Command::Stop(a) => &a.target.app,
        Command::Restart(a) => &a.target.app,
        Command::Delete(a) => &a.app,
        Command::Scale(a) => &a.app,
        Command::Signal(a) => &a.app,
        Command::Send(a) => &a.app,
        Command::Disable(a) => &a.app,
        Command::Enable(a) => &a.app,
        Command::Reload(a) => &a.app,
        Command::Endpoints(a) => &a.app,
        Command::Autoscale(a) => &a.app,
        Command::Logs(a) => a.app.as_deref()?,
        Command::List(a) => a.app.as_deref()?,
        Command::Events(a) => a.app.as_deref()?,
        Command::Monit(a) => a.app.as_deref()?,
        _ => return None,
    })
}

/// A "not found" of an app named like a PM2 id (`stop 0`), with the hint that pmcluster names
/// apps; any other outcome as it is.
pub fn with_id_hint(done: anyhow::Result<()>, app: Option<&str>) -> anyhow::Result<()> {
    let Err(err) = done else { return done };
    let Some(app) = app.filter(|a| looks_like_id(a)) else {
        return Err(err);
    };
    match err.downcast_ref::<ApiError>() {
        Some(e) if e.code == tonic::Code::NotFound && e.message.contains(&format!("{app:?}")) => {
            // The coordinator's "not found" may already say where the names are.
            let list = match e.message.contains("pmcluster apps") {
                true => "",
                false => ": `pmcluster list` shows the names",
            };
            Err(ApiError {
                code: e.code,
                message: format!("{}; {}{list}", e.message, id_hint()),
            }
            .into())
        }
        _ => Err(err),
    }
}

/// What `start FILE` says of a config file, by its name as PM2 tells one (`*.config.js`,
/// `.cjs`, `.mjs`; `.json`, `.yml`, `.yaml`) and, for pmcluster's own formats, `.toml`: the
/// verb that reads it. `text` is the file's, when it could be read: it tells a pmcluster config
/// (`apply -f`) from a PM2 ecosystem file (`import pm2`, then `apply -f`). None for a name that
/// is no config file's.
pub fn config_pointer(target: &str, text: Option<&str>) -> Option<String> {
    let lower = target.to_ascii_lowercase();
    let quoted = shell_words::quote(target);
    let not_a_program = "`start` runs a program or an app, not a config file";
    if [".config.js", ".config.cjs", ".config.mjs"]
        .iter()
        .any(|ext| lower.ends_with(ext))
    {
        // As `apply -f` and `import pm2` refuse it: PM2's JavaScript ecosystem file is a
        // program that pmcluster does not run.
        return Some(format!(
            "{target} is a PM2 ecosystem file in JavaScript; {not_a_program}, and pmcluster does \
             not run the file's JavaScript. Convert it to JSON in the directory that holds it:\n  \
             {}\nthen: pmcluster import pm2 eco.json --out apps.json && pmcluster apply -f \
             apps.json",
            crate::import::js_hint(target)
        ));
    }
    let format = match () {
        _ if lower.ends_with(".json") => Format::Json,
        _ if lower.ends_with(".yaml") || lower.ends_with(".yml") => Format::Yaml,
        _ if lower.ends_with(".toml") => Format::Toml,
        _ => return None,
    };
    let ours = text.is_some_and(|t| crate::import::config_apps(t, format, target, target).is_ok());
    // `import pm2` reads JSON only: an ecosystem file in YAML goes to `apply -f`, which names
    // what it cannot take.
    let pm2 = !ours
        && format == Format::Json
        && text.is_some_and(|t| crate::import::convert(t, target).is_ok());
    Some(match pm2 {
        true => format!(
            "{target} is a PM2 ecosystem file (or `pm2 jlist` output); {not_a_program}. Convert \
             it, then apply it: pmcluster import pm2 {quoted} --out apps.json && pmcluster apply \
             -f apps.json"
        ),
        false => format!(
            "{target} is a config file; {not_a_program}. Create or update its apps with: \
             pmcluster apply -f {quoted}"
        ),
    })
}

/// [`config_pointer`] of a file here (or anywhere, by its path), read when it is small enough
/// to be a config.
pub fn config_pointer_here(target: &str) -> Option<String> {
    const MAX: u64 = 4 << 20;
    // No file, no pointer: `start missing.yaml` is an app name or a command like any other.
    let meta = std::fs::metadata(target).ok().filter(|m| m.is_file())?;
    let text = (meta.len() <= MAX)
        .then(|| std::fs::read_to_string(target).ok())
        .flatten();
    config_pointer(target, text.as_deref())
}

#[cfg(test)]
mod tests;
