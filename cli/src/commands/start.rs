//! `start` of an app that exists: what a user stopped is started, and an app (or instance) that
//! runs already is said to, as PM2 does, rather than "started".

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use serde_json::json;
use tonic::Code;

use super::{acted, list_instances, plural, waits_for_adoption};
use crate::args::StartArgs;
use crate::error::{ApiError, UsageError};
use crate::failover::{Conn, call};
use crate::validate::{StartPlan, plan_start};
use crate::wait;

/// `start APP [--instance N]`: starts what a user stopped, or says that nothing was, as PM2 does,
/// rather than "started".
pub(super) async fn start_existing(
    conn: &mut Conn,
    app: &str,
    index: Option<u32>,
) -> anyhow::Result<wait::Said> {
    // An app not found is left to the start call, which says what to do instead.
    let running = match already_running(conn, app, index).await {
        Err(e) if e.code == Code::NotFound => None,
        other => other?,
    };
    if let Some(running) = running {
        let line = running.line(app, index);
        return Ok(wait::Said {
            value: json!({
                "app": app, "action": "none", "already_running": true, "index": index,
                "affected": running.count, "quarantined_nodes": [],
            }),
            lines: vec![line],
        });
    }
    let target = pb::InstanceTarget {
        app: app.to_string(),
        index,
        rolling: false,
    };
    let reply = match call!(conn, start, target).await {
        Err(e) if e.code == Code::NotFound && index.is_none() => {
            let hint = new_app_hint(app, local_file(app));
            return Err(anyhow::anyhow!("{}; {hint}", e.message));
        }
        other => other?,
    };
    let mut lines = vec![acted("started", "not stopped", app, index, &reply)];
    lines.extend(waits_for_adoption(&reply.quarantined_nodes, "start"));
    Ok(wait::Said {
        value: json!({
            "app": app, "action": "started", "already_running": false, "index": index,
            "affected": reply.affected, "changed": reply.changed,
            "quarantined_nodes": reply.quarantined_nodes,
        }),
        lines,
    })
}

/// `start WORD` of a word that names no app: PM2's `start app.py`, its first command. A file
/// here that can run (executable, or a script whose interpreter its extension names) is started
/// as a new app, as `start ./app.py` starts it; a config file is refused with the verb that
/// reads it. Else the plan as it is, whose "not found" says what to type.
///
/// An app of that name wins over a file of that name here, as before files were looked at:
/// `start web` starts the stopped app `web` wherever it is typed, even next to a file `web`.
pub(super) async fn file_here(
    args: &StartArgs,
    plan: StartPlan,
    conn: &mut Conn,
) -> anyhow::Result<StartPlan> {
    let StartPlan::Existing { app, index: None } = &plan else {
        return Ok(plan);
    };
    let config = crate::pm2::config_pointer_here(app);
    // Only a file this user owns, for a coordinator on this host: a remote agent would run
    // whatever `./WORD` is where it runs, and a mistyped app name in a shared directory must
    // not start a file someone else put there.
    let runnable = conn.on_this_host() && runnable_file(std::path::Path::new(app));
    if config.is_none() && !runnable {
        return Ok(plan);
    }
    let req = pb::GetAppRequest { name: app.clone() };
    match call!(conn, get_app, req).await {
        Ok(_) => return Ok(plan),
        Err(e) if e.code == Code::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(pointer) = config {
        return Err(UsageError::new(pointer).into());
    }
    let mut here = args.clone();
    here.target = format!("./{app}");
    eprintln!("no app is named {app:?}: starting the file ./{app} here as a new app");
    Ok(plan_start(&here)?)
}

/// Whether `path` is a file this user owns that can run: executable, or a script whose
/// interpreter its extension names. Only such a file is run for a bare word (`start app.py`, or
/// a program named like a file here): a file someone else put in a shared directory is not.
fn runnable_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata(path).is_ok_and(|m| m.uid() == nix::unistd::getuid().as_raw());
    own && match local_file_at(path) {
        Some(LocalFile::Executable) => true,
        Some(LocalFile::NotExecutable) => {
            crate::import::default_interpreter(&path.to_string_lossy()).is_some()
        }
        None => false,
    }
}

/// `start "FILE"` of a config file by its path, or with flags that make a new app of it: refused
/// with the verb that reads it, before anything is asked. A command line of more than one word
/// (`start "node ecosystem.config.js"`) runs what it says.
pub(super) fn refuse_config_file(args: &StartArgs) -> Result<(), UsageError> {
    let target = args.target.trim();
    if args.shell || target.is_empty() || target.contains(char::is_whitespace) {
        return Ok(());
    }
    match crate::pm2::config_pointer_here(target) {
        Some(pointer) => Err(UsageError::new(pointer)),
        None => Ok(()),
    }
}

/// A file of that name in the current directory, as `start` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalFile {
    Executable,
    NotExecutable,
}

fn local_file(name: &str) -> Option<LocalFile> {
    local_file_at(std::path::Path::new(name))
}

fn local_file_at(path: &std::path::Path) -> Option<LocalFile> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some(match meta.permissions().mode() & 0o111 {
        0 => LocalFile::NotExecutable,
        _ => LocalFile::Executable,
    })
}

/// The spec of `start "FILE ARGS"` where FILE is a script here that is not executable, run by
/// the interpreter of its extension as PM2 does (`pm2 start server.py`), and a line saying so;
/// else the spec as it is. The file is looked up from the app's `--cwd`, else from here.
pub(super) fn with_interpreter(spec: AppSpec) -> (AppSpec, Option<String>) {
    let Some(interpreter) = crate::import::default_interpreter(&spec.script) else {
        return (spec, None);
    };
    let at = std::path::Path::new(spec.cwd.as_deref().unwrap_or(".")).join(&spec.script);
    if spec.shell || local_file_at(&at) != Some(LocalFile::NotExecutable) {
        return (spec, None);
    }
    let head = file_head(&at);
    let other = another_interpreter(interpreter, shebang(&head).as_deref());
    let note = format!(
        "{} is not executable: running it with {interpreter}, as PM2 does (give the command line \
         to choose another, e.g. \"{other} {}\")",
        spec.script, spec.script
    );
    let mut args = vec![spec.script.clone()];
    args.extend(spec.args.iter().cloned());
    let spec = AppSpec {
        script: interpreter.to_string(),
        args,
        ..spec
    };
    (spec, Some(note))
}

/// The first bytes of a file, enough for its `#!` line; nothing when it cannot be read.
fn file_head(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(256).read_to_end(&mut head);
    }
    head
}

/// The program of a script's `#!` line (`#!/usr/bin/env python3.11`: `python3.11`), from the
/// start of the file.
fn shebang(head: &[u8]) -> Option<String> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let program = words.next()?;
    let name = program.rsplit('/').next()?;
    if name != "env" {
        return Some(name.to_string());
    }
    // `env -S node --flag` and `env python3`: the first word that is not env's own option.
    let program = words.find(|w| !w.starts_with('-'))?;
    Some(program.rsplit('/').next()?.to_string())
}

/// An example of another interpreter for the note of [`with_interpreter`]: the script's own
/// `#!` program when it names another, else a variant of the one chosen, so that a shell
/// script is not told to use Python.
fn another_interpreter(chosen: &str, shebang: Option<&str>) -> String {
    if let Some(program) = shebang.filter(|p| *p != chosen && !p.is_empty()) {
        return program.to_string();
    }
    match chosen {
        "python3" => "python3.12",
        "node" => "node --enable-source-maps",
        "bash" => "sh",
        "ruby" => "ruby -w",
        "perl" => "perl -w",
        "php" => "php -d display_errors=1",
        other => other,
    }
    .to_string()
}

/// [`with_interpreter`], then, for a coordinator on this machine (`local`), [`with_cwd_here`]
/// from the current directory: the spec of a new app as PM2 would run it, and a line for each
/// change. A remote cluster's hosts need not have this directory.
pub(super) fn for_here(spec: AppSpec, local: bool) -> (AppSpec, Vec<String>) {
    let here = std::env::current_dir().ok().filter(|_| local);
    let (spec, resolved) = match &here {
        Some(here) => absolute_cwd(spec, here),
        None => (spec, None),
    };
    let (spec, pathed) = match &here {
        Some(here) => with_path_here(spec, here),
        None => (spec, None),
    };
    let (spec, interpreted) = with_interpreter(spec);
    let (spec, moved) = match &here {
        Some(here) => with_cwd_here(spec, here, "give --cwd DIR for another directory"),
        None => (spec, None),
    };
    let notes = resolved
        .into_iter()
        .chain(pathed)
        .chain(interpreted)
        .chain(moved);
    (spec, notes.collect())
}

/// The spec with a relative `cwd` made absolute from `dir` (where `start` ran, or the config
/// file's directory), and a line saying so. The agent would read it from its own working
/// directory: a trial's `start r.sh --cwd sub` said it ran `./r.sh` and then errored with
/// `cwd "sub": No such file or directory`.
fn absolute_cwd(spec: AppSpec, dir: &std::path::Path) -> (AppSpec, Option<String>) {
    match &spec.cwd {
        Some(cwd) if !cwd.starts_with('/') => {
            // `components` drops the `.` of `cwd: "."` (`/srv/proj`, not `/srv/proj/.`).
            let absolute: std::path::PathBuf = dir.join(cwd).components().collect();
            let absolute = absolute.to_string_lossy().into_owned();
            let note = format!("{}: cwd {cwd} is {absolute}", spec.name);
            let spec = AppSpec {
                cwd: Some(absolute),
                ..spec
            };
            (spec, Some(note))
        }
        _ => (spec, None),
    }
}

/// An app of a config file in `dir`, applied to a coordinator on this machine, as PM2 runs an
/// ecosystem file's apps: a relative `cwd` is the file's neighbour, and with no `cwd` a program
/// or script that is a file next to the config runs there. A trial applied a file from another
/// directory: the apps ran in whatever directory `pmcluster up` had run in (another
/// `server.js` there ran instead), and all crash-looped after `down` and `up` elsewhere.
/// A script that is not executable runs under the interpreter of its extension, as PM2 runs an
/// ecosystem file's `script: "app.js"` (before, `apply` ran it as a program: "Permission
/// denied").
pub(crate) fn beside_file(spec: AppSpec, dir: &std::path::Path) -> (AppSpec, Vec<String>) {
    let (spec, resolved) = absolute_cwd(spec, dir);
    let (spec, pathed) = with_path_here(spec, dir);
    let (spec, moved) = with_cwd_here(spec, dir, "set cwd in the file for another directory");
    let (spec, interpreted) = with_interpreter(spec);
    let notes = resolved
        .into_iter()
        .chain(pathed)
        .chain(moved)
        .chain(interpreted);
    (spec, notes.collect())
}

/// [`for_here`] as it read a command line before a bare file name here became `./FILE`: an
/// app an older CLI created that way is the same app, not another spec to refuse.
pub(super) fn as_before_paths(spec: AppSpec, local: bool) -> AppSpec {
    let spec = with_interpreter(spec).0;
    match std::env::current_dir().ok().filter(|_| local) {
        Some(here) => with_cwd_here(spec, &here, "").0,
        None => spec,
    }
}

/// The spec of a new app whose program is a bare word naming a file that can run (executable,
/// or a script of a known extension) in its `--cwd`, else in `here`: the program as `./WORD`.
/// `start app.py` of a file here runs `./app.py`, and `start app.py --name x` must store the
/// same, or the two would be different apps and an executable `app.py` would be looked up on
/// PATH; PM2 too runs the file before anything on PATH. Else the spec as it is.
/// Only a file this user owns, as for `start WORD`: a program named like a file someone else
/// put in a shared directory stays the one on PATH. The line says which ran.
pub(super) fn with_path_here(spec: AppSpec, here: &std::path::Path) -> (AppSpec, Option<String>) {
    if spec.shell || spec.script.is_empty() || spec.script.contains('/') {
        return (spec, None);
    }
    let at = here
        .join(spec.cwd.as_deref().unwrap_or("."))
        .join(&spec.script);
    if !runnable_file(&at) {
        return (spec, None);
    }
    let note = format!(
        "{} runs ./{}, the file here, not a program of that name on PATH",
        spec.name, spec.script
    );
    let spec = AppSpec {
        script: format!("./{}", spec.script),
        ..spec
    };
    (spec, Some(note))
}

/// The spec of a new app whose program (or, for an interpreter or other program such as
/// `/usr/bin/env`, one of its arguments) is a file here given by a relative path, with no
/// `--cwd`: run in this directory, `here`, as PM2 runs an app where `pm2 start` ran (the path
/// would otherwise be looked up from the agent's working directory); and a line saying so. Else
/// the spec as it is.
pub(super) fn with_cwd_here(
    spec: AppSpec,
    here: &std::path::Path,
    other_dir: &str,
) -> (AppSpec, Option<String>) {
    if spec.cwd.is_some() || spec.shell {
        return (spec, None);
    }
    let relative = |p: &&String| !p.is_empty() && !p.starts_with('/') && !p.starts_with('-');
    let program_here = spec.script.contains('/') && !spec.script.starts_with('/');
    // A relative program is the file; else the first argument that names a file here (the
    // script of `python3 www/server.py` or of `/usr/bin/env node app.js`).
    let file = if program_here {
        Some(&spec.script).filter(|f| local_file_at(&here.join(f)).is_some())
    } else {
        spec.args
            .iter()
            .filter(relative)
            .find(|f| local_file_at(&here.join(f)).is_some())
    };
    let Some(file) = file.cloned() else {
        return (spec, None);
    };
    let dir = here.to_string_lossy().into_owned();
    let note = format!(
        "{} runs in {dir}, where {file} is, as with PM2 ({other_dir})",
        spec.name
    );
    let spec = AppSpec {
        cwd: Some(dir),
        ..spec
    };
    (spec, Some(note))
}

/// What to type to run `word` (no app of that name) as a new app, when `start WORD` could not
/// start it as a file here (see [`file_here`]): a bare word is then a program on PATH, so a
/// file needs its path, or its interpreter when it is not executable (PM2 picks one by
/// extension).
fn new_app_hint(word: &str, file: Option<LocalFile>) -> String {
    let stem = std::path::Path::new(word)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(word);
    match (file, crate::import::default_interpreter(word)) {
        (None, _) if crate::pm2::looks_like_id(word) => crate::pm2::id_hint().to_string(),
        // A script's name is no program one expects on PATH: most likely a file is missing,
        // and `--name` alone would make an app that cannot run.
        (None, Some(_)) => format!(
            "and there is no file {word} in this directory: give the script's path \
             (pmcluster start path/to/{word}), or, for a program {word} on PATH: pmcluster start \
             {word} --name NAME"
        ),
        (None, None) => format!(
            "to run {word:?} as a new app, give it a name: pmcluster start {word} --name NAME"
        ),
        (Some(LocalFile::Executable), _) => format!(
            "to run the file {word} here as a new app, give its path (a bare name is looked up \
             on PATH): pmcluster start ./{word} --name {stem}"
        ),
        (Some(LocalFile::NotExecutable), Some(interpreter)) => format!(
            "to run the file {word} here as a new app, give its interpreter (it is not \
             executable): pmcluster start \"{interpreter} {word}\" --name {stem}"
        ),
        (Some(LocalFile::NotExecutable), None) => format!(
            "to run the file {word} here as a new app, make it executable and give its path: \
             chmod +x {word} && pmcluster start ./{word} --name {stem}"
        ),
    }
}

/// An app (or one instance) that `start` would change nothing of: it has instances, and a user
/// stopped none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Running {
    count: u32,
    /// Of them, those that failed for good: a start leaves them so, a restart runs them again.
    errored: u32,
    /// Of them, those whose process exited with autorestart off (a one-shot job that ran): the
    /// same.
    exited: u32,
}

impl Running {
    /// What follows "nothing changed": the errored instances, which a start does not touch.
    /// `target` is what `restart` takes for them (`web`, `web --instance 2`).
    pub(super) fn errored_note(self, target: &str) -> String {
        let mut ended = Vec::new();
        if self.errored > 0 {
            ended.push(format!("{} errored", self.errored));
        }
        if self.exited > 0 {
            ended.push(format!("{} exited", self.exited));
        }
        match self.errored + self.exited {
            0 => String::new(),
            n => format!(
                " ({}: `pmcluster restart {target}` runs {} again)",
                ended.join(", "),
                if n == 1 { "it" } else { "them" }
            ),
        }
    }

    /// What `start` says of `app` (or its instance `index`) when it changes nothing.
    fn line(self, app: &str, index: Option<u32>) -> String {
        let note = self.errored_note(&match index {
            Some(i) => format!("{app} --instance {i}"),
            None => app.to_string(),
        });
        let ended = match index {
            _ if !self.all_ended() => None,
            Some(i) => Some(format!("{app}[{i}] ended by itself and is")),
            None if self.count == 1 => Some(format!("{app}'s instance ended by itself and is")),
            None => Some(format!(
                "{app}'s {} instances ended by themselves and are",
                self.count
            )),
        };
        match (ended, index) {
            (Some(ended), _) => format!("{ended} not stopped, so nothing changed{note}"),
            (None, Some(i)) => format!("{app}[{i}] is already running; nothing changed{note}"),
            (None, None) => format!(
                "{app} is already running ({}); nothing changed{note}",
                plural(self.count, "instance")
            ),
        }
    }

    /// None of them runs: each errored or exited.
    fn all_ended(self) -> bool {
        self.errored + self.exited == self.count
    }
}

/// `Some` when `start` of the app (or its instance `index`) would change nothing. Processes of
/// removed records still ending, and what a quarantined node holds unmanaged, are none of the
/// app's instances.
pub(super) async fn already_running(
    conn: &mut Conn,
    app: &str,
    index: Option<u32>,
) -> Result<Option<Running>, ApiError> {
    let instances = list_instances(conn, app).await?;
    let mine: Vec<&pb::Instance> = instances
        .iter()
        .filter(|i| !i.removed && !i.unmanaged && index.is_none_or(|x| x == i.index))
        .collect();
    Ok(running_of(&mine))
}

fn running_of(instances: &[&pb::Instance]) -> Option<Running> {
    let count = |f: &dyn Fn(&pb::Instance) -> bool| {
        u32::try_from(instances.iter().filter(|i| f(i)).count()).unwrap_or(u32::MAX)
    };
    let running = Running {
        count: count(&|_| true),
        errored: count(&|i| i.state == pb::InstanceState::Errored as i32),
        exited: count(&|i| i.state == pb::InstanceState::Exited as i32),
    };
    (running.count > 0 && count(&|i| i.stopped) == 0).then_some(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start "www/server.py 8000"` of a script that is not executable runs it with the
    /// interpreter of its extension, as PM2 does; an executable one, an unknown extension, a
    /// file that is not here, and a shell line are left as given.
    #[test]
    fn a_script_that_is_not_executable_gets_its_interpreter() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let at = |name: &str, mode: u32| -> std::io::Result<()> {
            let path = dir.path().join(name);
            std::fs::write(&path, "")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        };
        at("server.py", 0o644)?;
        at("run.sh", 0o755)?;
        at("data.txt", 0o644)?;
        let cwd = dir.path().to_string_lossy().into_owned();
        let spec = |script: &str, shell: bool| AppSpec {
            cwd: Some(cwd.clone()),
            shell,
            ..AppSpec::new("x", script, &["8000"])
        };
        let (got, note) = with_interpreter(spec("server.py", false));
        assert_eq!(
            (got.script.as_str(), got.args.as_slice()),
            (
                "python3",
                &["server.py".to_string(), "8000".to_string()][..]
            )
        );
        assert!(note.is_some_and(|n| n.contains("running it with python3")));
        for (script, shell) in [
            ("run.sh", false),
            ("data.txt", false),
            ("missing.py", false),
            ("server.py", true),
        ] {
            let (got, note) = with_interpreter(spec(script, shell));
            assert_eq!(got.script, script, "{script} shell={shell}");
            assert!(note.is_none(), "{script} shell={shell}");
        }
        Ok(())
    }

    /// A new app whose program, or its interpreter's script, is a file here by a relative path
    /// runs here; a program with no such argument, absolute paths, a file not here, a `--cwd`
    /// and a shell line are left as given.
    #[test]
    fn a_file_given_from_here_runs_here() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("www"))?;
        std::fs::write(dir.path().join("www/server.py"), "")?;
        std::fs::write(dir.path().join("app.js"), "")?;
        let here = dir.path().to_string_lossy().into_owned();
        let cwd_of = |script: &str, args: &[&str], cwd: Option<&str>, shell: bool| {
            let spec = AppSpec {
                cwd: cwd.map(str::to_string),
                shell,
                ..AppSpec::new("web", script, args)
            };
            let (got, note) =
                with_cwd_here(spec, dir.path(), "give --cwd DIR for another directory");
            assert_eq!(
                got.cwd.is_some() && cwd.is_none(),
                note.is_some(),
                "{script}"
            );
            got.cwd
        };
        let here_too = Some(here.clone());
        assert_eq!(cwd_of("www/server.py", &[], None, false), here_too);
        assert_eq!(cwd_of("./www/server.py", &["80"], None, false), here_too);
        assert_eq!(cwd_of("python3", &["www/server.py"], None, false), here_too);
        assert_eq!(cwd_of("node", &["app.js"], None, false), here_too);
        assert_eq!(cwd_of("redis-server", &[], None, false), None);
        assert_eq!(cwd_of("python3", &["-m", "http.server"], None, false), None);
        assert_eq!(cwd_of("www/missing.py", &[], None, false), None);
        assert_eq!(
            cwd_of("/usr/bin/env", &["node", "app.js"], None, false),
            here_too
        );
        assert_eq!(
            cwd_of("/usr/bin/python3", &["-u", "www/server.py"], None, false),
            here_too
        );
        assert_eq!(
            cwd_of("/usr/bin/env", &["node", "/srv/app.js"], None, false),
            None
        );
        assert_eq!(cwd_of("/srv/run", &["www/missing.py"], None, false), None);
        assert_eq!(cwd_of("node", &["app.js"], None, true), None);
        assert_eq!(
            cwd_of("node", &["app.js"], Some("/srv"), false),
            Some("/srv".to_string())
        );
        Ok(())
    }

    /// A bare word naming a runnable file here, or in the app's `--cwd`, is run by its path,
    /// whether `start app.py` or `start app.py --name x` made the spec; a word with no such
    /// file, a file that cannot run, a path and a shell line are left as given.
    #[test]
    fn a_bare_file_here_is_run_by_its_path() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("srv"))?;
        for (name, mode) in [
            ("app.py", 0o644),
            ("run", 0o755),
            ("notes", 0o644),
            ("srv/job.sh", 0o644),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, "")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        let script_of = |script: &str, cwd: Option<&str>, shell: bool| {
            let spec = AppSpec {
                cwd: cwd.map(str::to_string),
                shell,
                ..AppSpec::new("x", script, &[])
            };
            with_path_here(spec, dir.path()).0.script
        };
        assert_eq!(script_of("app.py", None, false), "./app.py");
        assert_eq!(script_of("run", None, false), "./run");
        assert_eq!(script_of("job.sh", Some("srv"), false), "./job.sh");
        assert_eq!(script_of("job.sh", None, false), "job.sh");
        assert_eq!(script_of("notes", None, false), "notes");
        assert_eq!(script_of("missing.py", None, false), "missing.py");
        assert_eq!(script_of("./app.py", None, false), "./app.py");
        assert_eq!(script_of("app.py", None, true), "app.py");
        // Then by its interpreter, as `start ./app.py` stores it.
        let (spec, note) = with_path_here(AppSpec::new("x", "app.py", &[]), dir.path());
        assert_eq!(
            note.as_deref(),
            Some("x runs ./app.py, the file here, not a program of that name on PATH")
        );
        let (spec, _) = with_interpreter(AppSpec {
            cwd: Some(dir.path().to_string_lossy().into_owned()),
            ..spec
        });
        assert_eq!(
            (spec.script.as_str(), spec.args.as_slice()),
            ("python3", &["./app.py".to_string()][..])
        );
        Ok(())
    }

    #[test]
    fn a_file_here_is_run_by_its_path_or_interpreter() {
        let cases = [
            (
                "redis-server",
                None,
                "pmcluster start redis-server --name NAME",
            ),
            (
                "app.py",
                Some(LocalFile::Executable),
                "give its path (a bare name is looked up on PATH): pmcluster start ./app.py \
                 --name app",
            ),
            (
                "app.py",
                Some(LocalFile::NotExecutable),
                "pmcluster start \"python3 app.py\" --name app",
            ),
            (
                "server.js",
                Some(LocalFile::NotExecutable),
                "pmcluster start \"node server.js\" --name server",
            ),
            (
                "run",
                Some(LocalFile::NotExecutable),
                "chmod +x run && pmcluster start ./run --name run",
            ),
            (
                "app.py",
                None,
                "and there is no file app.py in this directory: give the script's path \
                 (pmcluster start path/to/app.py), or, for a program app.py on PATH: pmcluster \
                 start app.py --name NAME",
            ),
            // PM2's `start 0` starts its process 0 again.
            (
                "0",
                None,
                "pmcluster knows apps by name, not by PM2's numeric ids",
            ),
        ];
        for (word, file, want) in cases {
            let got = new_app_hint(word, file);
            assert!(got.ends_with(want), "{word} {file:?}: {got}");
        }
    }

    /// The note of a script run by its extension's interpreter suggests one that fits the
    /// file: its `#!` program when that is another, else a variant of the one chosen (a shell
    /// script is not told to use Python).
    #[test]
    fn the_other_interpreter_fits_the_file() {
        let cases: [(&[u8], Option<&str>); 8] = [
            (b"#!/bin/sh\necho hi\n", Some("sh")),
            (b"#!/usr/bin/env python3.11\n", Some("python3.11")),
            (b"#!/usr/bin/env -S node --harmony\n", Some("node")),
            (b"#! /bin/bash -e\n", Some("bash")),
            (b"#!\n", None),
            (b"echo hi\n", None),
            (b"", None),
            (b"\xff\xfe", None),
        ];
        for (head, want) in cases {
            assert_eq!(shebang(head).as_deref(), want, "{head:?}");
        }
        let others = [
            ("bash", None, "sh"),
            ("bash", Some("bash"), "sh"),
            ("bash", Some("zsh"), "zsh"),
            ("python3", None, "python3.12"),
            ("python3", Some("python3.11"), "python3.11"),
            ("node", None, "node --enable-source-maps"),
            ("ruby", None, "ruby -w"),
        ];
        for (chosen, bang, want) in others {
            assert_eq!(another_interpreter(chosen, bang), want, "{chosen} {bang:?}");
        }
    }

    /// `start worker.sh` of a script that is not executable says it runs with bash, and gives
    /// another interpreter for a shell script, not Python.
    #[test]
    fn the_note_names_an_interpreter_of_the_script() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("worker.sh"), "#!/bin/sh\necho hi\n")?;
        std::fs::write(dir.path().join("server.js"), "console.log(1)\n")?;
        let cwd = dir.path().to_string_lossy().into_owned();
        for (script, want) in [
            (
                "worker.sh",
                "running it with bash, as PM2 does (give the command line to choose \
                 another, e.g. \"sh worker.sh\")",
            ),
            ("server.js", "e.g. \"node --enable-source-maps server.js\""),
        ] {
            let spec = AppSpec {
                cwd: Some(cwd.clone()),
                ..AppSpec::new("x", script, &[])
            };
            let note = with_interpreter(spec).1.unwrap_or_default();
            assert!(note.contains(want), "{note}");
            assert!(!note.contains("python"), "{note}");
        }
        Ok(())
    }

    /// `start FILE` of a config file by its path or with flags is refused before anything is
    /// asked; a command line of more words, or a shell line, is run as given, and so is a name
    /// with a config file's extension that is no file (found by a review).
    #[test]
    fn a_config_file_is_not_run() -> std::io::Result<()> {
        use clap::Parser;
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("conf"))?;
        for name in [
            "ecosystem.config.js",
            "conf/apps.yaml",
            "apps.toml",
            "apps.json",
        ] {
            std::fs::write(dir.path().join(name), "{}")?;
        }
        let start = |line: &str| -> Result<(), String> {
            let words = shell_words::split(line).expect("test line splits");
            let cli = crate::args::Cli::try_parse_from(words).map_err(|e| e.to_string())?;
            let crate::args::Command::Start(args) = cli.command else {
                return Err("not start".into());
            };
            refuse_config_file(&args).map_err(|e| e.0)
        };
        for line in [
            format!("pmcluster start {d}/ecosystem.config.js"),
            format!("pmcluster start {d}/ecosystem.config.js --name eco"),
            format!("pmcluster start {d}/conf/apps.yaml -i 2"),
            format!("pmcluster start {d}/apps.toml"),
        ] {
            let refused = start(&line).expect_err(&line);
            assert!(refused.contains("not a config file"), "{line}: {refused}");
        }
        for line in [
            format!("pmcluster start 'node {d}/ecosystem.config.js' --name eco"),
            format!("pmcluster start {d}/server.js"),
            format!("pmcluster start {d}/apps.json --shell --name a"),
            format!("pmcluster start {d}/missing.yaml --name m"),
        ] {
            assert_eq!(start(&line), Ok(()), "{line}");
        }
        Ok(())
    }

    #[test]
    fn running_is_nothing_stopped() {
        let inst = |stopped: bool, state: pb::InstanceState| pb::Instance {
            stopped,
            state: state as i32,
            ..pb::Instance::default()
        };
        let online = inst(false, pb::InstanceState::Online);
        let errored = inst(false, pb::InstanceState::Errored);
        let exited = inst(false, pb::InstanceState::Exited);
        let stopped = inst(true, pb::InstanceState::Stopped);
        // Stopped by a user but still stopping: a start brings it back.
        let stopping = inst(true, pb::InstanceState::Stopping);
        // Instances, and the running, errored and exited counts, if not stopped.
        type Case<'a> = (&'a [&'a pb::Instance], Option<(u32, u32, u32)>);
        let cases: &[Case] = &[
            (&[&online, &online], Some((2, 0, 0))),
            (&[&online, &errored], Some((2, 1, 0))),
            (&[&exited, &errored], Some((2, 1, 1))),
            (&[&online, &stopped], None),
            (&[&stopping], None),
            (&[], None),
        ];
        for (instances, want) in cases {
            let got = running_of(instances).map(|r| (r.count, r.errored, r.exited));
            assert_eq!(got, *want, "{instances:?}");
        }
        let running = |count, errored, exited| Running {
            count,
            errored,
            exited,
        };
        // Counts, restart's target, the note, whether none of them runs.
        let notes = [
            (
                running(3, 2, 0),
                "web",
                " (2 errored: `pmcluster restart web` runs them again)",
                false,
            ),
            (running(1, 0, 0), "web", "", false),
            (
                running(1, 0, 1),
                "job --instance 0",
                " (1 exited: `pmcluster restart job --instance 0` runs it again)",
                true,
            ),
            (
                running(3, 1, 2),
                "job",
                " (1 errored, 2 exited: `pmcluster restart job` runs them again)",
                true,
            ),
        ];
        for (r, target, note, ended) in notes {
            assert_eq!(r.errored_note(target), note, "{r:?}");
            assert_eq!(r.all_ended(), ended, "{r:?}");
        }
        let lines = [
            (
                running(2, 0, 0),
                None,
                "web is already running (2 instances); nothing changed",
            ),
            (
                running(1, 1, 0),
                Some(3),
                "web[3] ended by itself and is not stopped, so nothing changed (1 errored: \
                 `pmcluster restart web --instance 3` runs it again)",
            ),
            (
                running(1, 0, 1),
                None,
                "web's instance ended by itself and is not stopped, so nothing changed (1 \
                 exited: `pmcluster restart web` runs it again)",
            ),
            (
                running(2, 1, 1),
                None,
                "web's 2 instances ended by themselves and are not stopped, so nothing changed \
                 (1 errored, 1 exited: `pmcluster restart web` runs them again)",
            ),
        ];
        for (r, index, line) in lines {
            assert_eq!(r.line("web", index), line, "{r:?}");
        }
    }
}
