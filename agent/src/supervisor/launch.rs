//! Launching an instance's process: its port, user and groups, CPU affinity, limits, cgroup,
//! working directory and output pipes, then the spawn through the reaper. Every failure says
//! whether retrying can help ([`StartError`]).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::resource::Resource;
use pmcluster_spec::instance::{instance_argv, instance_env};
use pmcluster_spec::{AppSpec, PortSpec};
use tokio::time::Instant;

use super::{Running, Supervisor};
use crate::cgroup;
use crate::health;
use crate::into_cgroup;
use crate::logs::pump::{output, spawn_pump};
use crate::model::InstanceState;
use crate::orphans::instance_markers;
use crate::process::{self, ExitWatch, ProcId, describe, unix_ms};
use crate::state::{MESSAGES_VAR, Target};

/// Why a start did not happen.
pub(super) enum StartError {
    /// Retrying cannot help until the assignment changes (invalid spec, unknown user).
    Fatal(String),
    /// Retry with backoff (the program may be installed, the port freed, the dir created).
    Retry(String),
}
impl Supervisor {
    /// Spawns the instance's process.
    pub(super) fn start(&mut self, target: &Target) -> Result<Running, StartError> {
        let a = &target.assignment;
        // Reported from this attempt on, whatever its outcome: the coordinator takes a report
        // of an older epoch for one about the process before a restart. With it, the state and
        // message of before the restart go, so no report pairs the new epoch with them.
        let epoch = a.restart_epoch;
        self.agent.state.update(&self.id, |s| {
            if s.restart_epoch != epoch {
                s.restart_epoch = epoch;
                s.state = InstanceState::Launching;
                s.message.clear();
            }
        });
        let spec = a.spec.clone().map_err(StartError::Fatal)?;
        let port = match spec.port {
            PortSpec::Auto(lo, hi) => {
                let picked = self.agent.ports.pick(&self.id, lo, hi, self.auto_port);
                self.auto_port = picked;
                Some(picked.ok_or_else(|| {
                    StartError::Retry(format!("no free port in {} on this host", spec.port))
                })?)
            }
            fixed => {
                let port = a.port.or_else(|| fixed.port_for(a.index));
                if let Some(p) = port
                    && !crate::ports::is_free(p)
                {
                    // Checked before spawning: a program that cannot bind would crash-loop with
                    // nothing but its own log to say why.
                    return Err(StartError::Retry(format!(
                        "port {p} is already in use on this host"
                    )));
                }
                port
            }
        };
        let host = self.agent.host();
        let argv = instance_argv(&spec, a.index, port, &host);
        let Some((program, args)) = argv.split_first() else {
            return Err(StartError::Fatal("the command is empty".to_string()));
        };
        if let Some(cwd) = &spec.cwd {
            match std::fs::metadata(cwd) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(StartError::Retry(format!("cwd {cwd:?} is not a directory")));
                }
                Err(e) => return Err(StartError::Retry(format!("cwd {cwd:?}: {}", describe(&e)))),
            }
        }
        let run_as = run_as(&spec).map_err(StartError::from)?;
        let affinity = affinity(&spec.supervision.cpu_affinity).map_err(StartError::Fatal)?;
        let limits = limits(&spec.supervision.limits).map_err(StartError::Fatal)?;
        let (stdout, stderr, pumps) =
            output(&self.agent.logs_dir, &a.app, a.index, &spec).map_err(StartError::Retry)?;
        let env = instance_env(&spec, a.index, port, &host);
        let markers = instance_markers(&self.agent.marker, &self.id);
        // With another user, the directory is entered after the switch (in the child): the
        // instance must be able to enter it itself.
        let switches_user = run_as.credentials.uid.is_some() || run_as.credentials.gid.is_some();
        let cwd_c = match &spec.cwd {
            Some(cwd) => Some(
                std::ffi::CString::new(cwd.as_str())
                    .map_err(|_| StartError::Fatal(format!("cwd {cwd:?} contains a NUL byte")))?,
            ),
            None => None,
        };
        let health_target = health_target(&spec, a.index, port, host.clone(), Ok(&run_as));
        // The message socket lives in the agent's private data dir, which another user cannot
        // reach: an instance that runs as one gets no PMCLUSTER_MESSAGES.
        let mut env = env;
        if !switches_user && let Some(socket) = self.agent.message_socket(&self.id) {
            // A socket file left by the previous process would make the new one's bind fail.
            let _ = std::fs::remove_file(&socket);
            env.push((
                MESSAGES_VAR.to_string(),
                socket.to_string_lossy().into_owned(),
            ));
        }
        let special = !run_as.credentials.is_empty() || affinity.is_some() || !limits.is_empty();
        let entering_cwd = switches_user && spec.cwd.is_some();
        let failed = |e: io::Error| spawn_error(&e, program, &spec, entering_cwd, special);
        // Made last: nothing below can fail before the spawn but the spawn itself.
        let (cgroup_path, cgroup_procs, fresh) = match self.agent.cgroups.create(&self.id) {
            Some((path, fd, fresh)) => (Some(path), Some(fd), fresh),
            None => (None, None, false),
        };
        let discard = |e| {
            if let Some(path) = &cgroup_path {
                cgroup::discard(path);
            }
            e
        };
        // Cloned by `into_cgroup` where the kernel allows it: straight into its cgroup when it
        // has a new one. Else std's spawn, the child joining the cgroup itself.
        let mut stdio = Some((stdout, stderr));
        let mut spawned = None;
        let clone_into = match &cgroup_path {
            _ if !into_cgroup::usable() => None,
            Some(path) if fresh => cgroup::open_dir(path).map(Some),
            Some(_) => None,
            None => Some(None),
        };
        if let Some(dir) = clone_into {
            let markers_env: Vec<(String, String)> = markers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let layers = run_as
                .env
                .iter()
                .chain(env.iter())
                .chain(markers_env.iter());
            let envp =
                into_cgroup::environment(layers).map_err(|e| discard(StartError::Fatal(e)))?;
            let path_var = envp
                .iter()
                .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
                .map(|p| std::ffi::OsStr::from_bytes(p).to_os_string());
            let resolved = into_cgroup::resolve(program, path_var.as_deref());
            let Some(resolved) = resolved else {
                return Err(discard(failed(io::Error::from_raw_os_error(
                    nix::errno::Errno::ENOENT as i32,
                ))));
            };
            let argv: Result<Vec<std::ffi::CString>, _> = argv
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()))
                .collect();
            let argv = argv.map_err(|_| {
                discard(StartError::Fatal(format!(
                    "cannot run {program:?}: an argument holds a NUL byte (fix the spec and \
                     apply it again)"
                )))
            })?;
            let stdin = std::fs::File::open("/dev/null")
                .map_err(|e| discard(StartError::Retry(format!("/dev/null: {}", describe(&e)))))?;
            let Some((out, err)) = stdio.take() else {
                return Err(discard(StartError::Retry("no output pipes".to_string())));
            };
            let setup = into_cgroup::Setup {
                program: resolved,
                argv,
                envp,
                stdin: stdin.into(),
                stdout: out,
                stderr: err,
                cwd: cwd_c.clone().filter(|_| !switches_user),
                cwd_as_user: cwd_c.clone().filter(|_| switches_user),
                affinity,
                limits: limits.clone(),
                credentials: run_as.credentials.clone(),
            };
            match self.agent.reaper.spawn_with(|| {
                into_cgroup::spawn(&setup, dir.as_ref().map(std::os::fd::AsFd::as_fd))
            }) {
                Ok(s) => spawned = Some(s),
                Err(into_cgroup::SpawnError::Child(e)) => return Err(discard(failed(e))),
                Err(into_cgroup::SpawnError::Clone(e)) => {
                    into_cgroup::unusable(&e);
                    stdio = Some((setup.stdout, setup.stderr));
                }
            }
        }
        let spawned = match spawned {
            Some(s) => s,
            None => {
                let Some((out, err)) = stdio.take() else {
                    return Err(discard(StartError::Retry("no output pipes".to_string())));
                };
                let mut cmd = std::process::Command::new(program);
                cmd.args(args)
                    // The user's HOME, USER and LOGNAME first, so that the spec's env overrides
                    // them.
                    .envs(run_as.env.iter().map(|(k, v)| (k, v)))
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    // Last, so the spec cannot override them: how a later agent tells its
                    // instances.
                    .envs(markers.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    // Pipes to its pump (see `crate::logs::pump`).
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    // Its own process group, so a stop reaches everything it started.
                    .process_group(0);
                let mut cwd_as_user = None;
                if let (Some(cwd), Some(c)) = (&spec.cwd, &cwd_c) {
                    if switches_user {
                        cwd_as_user = Some(c.clone());
                    } else {
                        cmd.current_dir(cwd);
                    }
                }
                // Not `cmd.uid`/`cmd.gid`: see `process::set_in_child` for why it switches them
                // itself.
                process::set_in_child(
                    &mut cmd,
                    cgroup_procs,
                    affinity,
                    limits,
                    run_as.credentials,
                    cwd_as_user,
                );
                let spawned = self
                    .agent
                    .reaper
                    .spawn(&mut cmd)
                    .map_err(|e| discard(failed(e)))?;
                // The parent's copies of the pipes' write ends go with the command (a pipe must
                // end when the instance's processes are gone), and so does `cgroup.procs`.
                drop(cmd);
                spawned
            }
        };
        let pid = spawned.pid;
        let proc = ProcId::started(pid);
        let restarted = self.started_once;
        self.started_once = true;
        let mut running = Running::new(
            proc,
            ExitWatch::Child(spawned.exit),
            Instant::now(),
            a.clone(),
            Arc::clone(&spec),
            port,
            &health_target,
        );
        running.unpumped = pumps;
        running.cgroup = cgroup_path;
        let state = if running.ready {
            InstanceState::Online
        } else {
            InstanceState::Launching
        };
        let health = running.health_state();
        let message = self.reason.take().unwrap_or_default();
        tracing::info!(instance = %self.id, app = %a.app, index = a.index, pid, ?port, "started");
        self.agent.state.update(&self.id, |s| {
            s.state = state;
            s.pid = Some(pid);
            // Unknown until the metrics pass samples this process: the figures held are the
            // last process's (after a memory restart, above the limit).
            s.cpu_percent = 0.0;
            s.memory_bytes = 0;
            s.port = port;
            s.started_at_ms = unix_ms();
            s.restart_epoch = a.restart_epoch;
            s.health = health;
            s.message = message;
            if restarted {
                s.restarts = s.restarts.saturating_add(1);
            }
        });
        Ok(running)
    }
}

impl Supervisor {
    /// Starts the pump of the process [`Supervisor::start`] started.
    pub(super) fn start_pump(&self, r: &mut Running) {
        let pipes = std::mem::take(&mut r.unpumped);
        let (pumps, exit) = spawn_pump(&self.agent, &self.id, pipes);
        r.pumps = pumps;
        r.pump_exit = exit;
    }
}

/// A failed spawn as a start error: whether retrying can help, and what a user can act on.
fn spawn_error(
    e: &io::Error,
    program: &str,
    spec: &AppSpec,
    entering_cwd: bool,
    special: bool,
) -> StartError {
    let cwd_refused = matches!(e.raw_os_error(), Some(code)
        if code == nix::errno::Errno::EACCES as i32);
    if entering_cwd && cwd_refused {
        // The program itself is checked by exec as the same user; a refused directory is
        // the likelier cause, and the one a user can act on.
        return StartError::Retry(format!(
            "cannot run {program:?} in cwd {:?} as its user: {}",
            spec.cwd.as_deref().unwrap_or_default(),
            describe(e)
        ));
    }
    let mut message = format!("cannot run {program:?}: {}", describe(e));
    // A relative path is looked up from the instance's directory, which without a cwd is the
    // agent's: wherever `pmcluster up` ran, not where the user typed `start ./run.sh`.
    let dir = || {
        spec.cwd.clone().or_else(|| {
            std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string())
        })
    };
    let interpreter = pmcluster_spec::interpreter::by_extension(program);
    let run_by = |name: &str| match interpreter {
        Some(i) => format!(", or its interpreter: {i} {name}"),
        None => String::new(),
    };
    if e.kind() == io::ErrorKind::NotFound && program.contains('/') && !program.starts_with('/') {
        message.push_str(&format!(
            " (looked up from the instance's working directory {:?}: give an absolute path, \
             or set cwd)",
            dir().unwrap_or_default()
        ));
    } else if e.kind() == io::ErrorKind::NotFound && !program.contains('/') {
        // A PM2 habit (`script: server.py`): PM2 runs a file of the app's directory. Here a bare
        // name is a program on PATH, as in a shell.
        use std::os::unix::fs::PermissionsExt;
        let here = dir().map(|d| std::path::Path::new(&d).join(program));
        let meta = here.and_then(|f| std::fs::metadata(f).ok().filter(|m| m.is_file()));
        match meta.map(|m| m.permissions().mode() & 0o111 != 0) {
            Some(true) => message.push_str(&format!(
                " (a bare name is looked up on PATH; for the file in the instance's working \
                 directory give ./{program}{})",
                run_by(program)
            )),
            Some(false) => message.push_str(&format!(
                " (a bare name is looked up on PATH; the file of that name in the instance's \
                 working directory is not executable{})",
                match interpreter {
                    Some(i) => format!(": run it with its interpreter, {i} {program}"),
                    None => format!(": chmod +x it and give ./{program}"),
                }
            )),
            None => {}
        }
    } else if e.kind() == io::ErrorKind::PermissionDenied
        && !entering_cwd
        && let Some(i) = interpreter
        && not_executable(program, dir)
    {
        message.push_str(&format!(
            " (the script is not executable: chmod +x it, or run it with its interpreter: \
             {i} {program})"
        ));
    }
    // A NUL byte in the argv or environment (std refuses it before exec), or an argument
    // too long for the kernel: the spec itself is at fault, and retrying cannot help.
    // Validation refuses both; this covers a spec stored before it did.
    let too_long = e.raw_os_error() == Some(nix::errno::Errno::E2BIG as i32);
    let nul = e.raw_os_error().is_none() && e.kind() == io::ErrorKind::InvalidInput;
    if nul || too_long {
        return StartError::Fatal(format!(
            "{message} (the spec's command line or env holds a NUL byte or an over-long \
             value; fix the spec and apply it again)"
        ));
    }
    // Not being allowed to switch user or raise a limit does not get better by retrying.
    let denied = matches!(e.raw_os_error(), Some(code)
        if code == nix::errno::Errno::EPERM as i32 || code == nix::errno::Errno::EINVAL as i32);
    if special && denied {
        StartError::Fatal(format!(
            "{message} (user, group, cpu_affinity or limits need privileges this agent \
             lacks)"
        ))
    } else {
        StartError::Retry(message)
    }
}

/// Whether `program` (a path, relative to the instance's directory `dir` unless absolute) is a
/// file without any execute bit. EACCES has other causes (a directory on the way that cannot be
/// searched, a `noexec` mount), where `chmod +x` on the script would be the wrong advice.
fn not_executable(program: &str, dir: impl Fn() -> Option<String>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = if program.starts_with('/') {
        std::path::PathBuf::from(program)
    } else if program.contains('/') {
        match dir() {
            Some(d) => std::path::Path::new(&d).join(program),
            None => return false,
        }
    } else {
        // A bare name is found on PATH, not here: nothing to say of a file.
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 == 0)
}

/// What an instance's health probes run against, for a process this agent started or one it
/// adopted: built in one place so that both run an exec probe as the instance's user. Without
/// the user (`run_as` failed, which only an adopted process can have: a start fails first),
/// exec probes fail with the lookup error rather than run as the agent.
pub(super) fn health_target(
    spec: &AppSpec,
    index: u32,
    port: Option<u16>,
    host: String,
    run_as: Result<&RunAs, &RunAsError>,
) -> health::Target {
    let (user_env, credentials) = match run_as {
        Ok(r) => (r.env.clone(), Ok(r.credentials.clone())),
        Err(e) => (Vec::new(), Err(e.to_string())),
    };
    // The user's HOME, USER and LOGNAME first, as for the instance: the spec's env overrides
    // them.
    let env = user_env
        .into_iter()
        .chain(instance_env(spec, index, port, &host))
        .collect();
    health::Target {
        index,
        // An app with no port probes the one its env gives as PORT, as `${PORT}` stands for.
        port: pmcluster_spec::instance::port_of(spec, port),
        host,
        env,
        cwd: spec.cwd.clone(),
        credentials,
    }
}

/// Why the user or group an instance runs as is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum RunAsError {
    /// The database answered that there is no such user or group (or the name cannot be one):
    /// only a change of the host or of the spec helps.
    #[error("{0}")]
    Missing(String),
    /// The database could not be read (an NSS backend such as LDAP or SSSD down): a later try
    /// may succeed.
    #[error("{0}")]
    Lookup(String),
}
impl From<RunAsError> for StartError {
    fn from(e: RunAsError) -> StartError {
        match e {
            // Final, as the CLI's `--wait` takes it: an operator creates the user or fixes the
            // spec, and applying either starts it.
            RunAsError::Missing(m) => StartError::Fatal(m),
            // One NSS hiccup during a crash restart must not leave the instance down for good.
            RunAsError::Lookup(m) => StartError::Retry(m),
        }
    }
}
/// A user or group database answer as the entry, or why there is none.
fn found<T>(what: &str, name: &str, answer: nix::Result<Option<T>>) -> Result<T, RunAsError> {
    match answer {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => Err(RunAsError::Missing(format!(
            "{what} {name:?} does not exist on this host"
        ))),
        Err(e) => Err(RunAsError::Lookup(format!(
            "cannot look up {what} {name:?}: {e}"
        ))),
    }
}

/// Who an instance runs as: its credentials and, with a `user`, what a login as that user would
/// put in its environment.
#[derive(Debug)]
pub(super) struct RunAs {
    pub(super) credentials: process::Credentials,
    /// `HOME`, `USER` and `LOGNAME` of the user. Set before the instance's own environment, so
    /// the spec's `env` overrides them.
    pub(super) env: Vec<(String, String)>,
}
/// The user and group to run as (names or numbers; a user without a group runs with its primary
/// group) and, for a user, its supplementary groups. Reads the user and group databases, so it
/// runs before the fork, never in the child.
pub(super) fn run_as(spec: &AppSpec) -> Result<RunAs, RunAsError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let s = &spec.supervision;
    let user = match &s.user {
        None => None,
        Some(name) => {
            let answer = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(uid.into()),
                Err(_) => User::from_name(name),
            };
            Some(found("user", name, answer)?)
        }
    };
    let gid = match &s.group {
        None => user.as_ref().map(|u| u.gid.as_raw()),
        Some(name) => {
            let answer = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(gid.into()),
                Err(_) => Group::from_name(name),
            };
            Some(found("group", name, answer)?.gid.as_raw())
        }
    };
    let Some(user) = user else {
        // A group alone: the agent's user and supplementary groups, another primary group.
        return Ok(RunAs {
            credentials: process::Credentials {
                uid: None,
                gid,
                groups: None,
            },
            env: Vec::new(),
        });
    };
    // As initgroups(3) (and systemd's User=/Group=) do: every group the user is a member of, plus
    // the group it runs with. Only a privileged agent can set them; an unprivileged one can only
    // run instances as itself, with its own groups.
    let groups = if Uid::effective().is_root() {
        let name = std::ffi::CString::new(user.name.as_str()).map_err(|_| {
            RunAsError::Missing(format!("user {:?}: the name holds a NUL byte", user.name))
        })?;
        let primary = Gid::from_raw(gid.unwrap_or(user.gid.as_raw()));
        let list = nix::unistd::getgrouplist(&name, primary).map_err(|e| {
            RunAsError::Lookup(format!(
                "cannot look up the groups of user {:?}: {e}",
                user.name
            ))
        })?;
        Some(list.into_iter().map(Gid::as_raw).collect())
    } else {
        None
    };
    let env = vec![
        ("HOME".to_string(), user.dir.to_string_lossy().into_owned()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
    ];
    Ok(RunAs {
        credentials: process::Credentials {
            uid: Some(user.uid.as_raw()),
            gid,
            groups,
        },
        env,
    })
}
pub(super) fn affinity(cpus: &[u32]) -> Result<Option<nix::sched::CpuSet>, String> {
    if cpus.is_empty() {
        return Ok(None);
    }
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(*cpu as usize).map_err(|_| {
            format!(
                "cpu_affinity: no CPU {cpu} (at most {})",
                nix::sched::CpuSet::count() - 1
            )
        })?;
    }
    Ok(Some(set))
}
/// The spec's limits as `setrlimit` resources (names were validated with the spec).
pub(super) fn limits(by_name: &BTreeMap<String, u64>) -> Result<Vec<(Resource, u64)>, String> {
    by_name
        .iter()
        .map(|(name, value)| {
            let resource = match name.as_str() {
                "nofile" => Resource::RLIMIT_NOFILE,
                "nproc" => Resource::RLIMIT_NPROC,
                "core" => Resource::RLIMIT_CORE,
                "memlock" => Resource::RLIMIT_MEMLOCK,
                "stack" => Resource::RLIMIT_STACK,
                "as" => Resource::RLIMIT_AS,
                "fsize" => Resource::RLIMIT_FSIZE,
                "cpu" => Resource::RLIMIT_CPU,
                other => return Err(format!("limits: unknown limit {other:?}")),
            };
            Ok((resource, *value))
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_affinity() {
        let by_name: BTreeMap<String, u64> =
            [("nofile".to_string(), 4096), ("core".to_string(), 0)].into();
        assert_eq!(
            limits(&by_name),
            Ok(vec![
                (Resource::RLIMIT_CORE, 0),
                (Resource::RLIMIT_NOFILE, 4096)
            ])
        );
        let bad: BTreeMap<String, u64> = [("nofiles".to_string(), 1)].into();
        assert!(limits(&bad).is_err());
        assert!(matches!(affinity(&[]), Ok(None)));
        assert!(matches!(affinity(&[0]), Ok(Some(_))));
        assert!(affinity(&[1 << 20]).is_err_and(|e| e.contains("no CPU")));
    }

    /// A user or group database that cannot be read is retried; one that says "no such user"
    /// is final.
    #[test]
    fn a_failed_lookup_is_retried_and_a_missing_user_is_final() {
        let unreadable: nix::Result<Option<()>> = Err(nix::errno::Errno::EIO);
        let e = found("user", "app", unreadable).err();
        assert_eq!(
            e,
            Some(RunAsError::Lookup(
                "cannot look up user \"app\": EIO: I/O error".to_string()
            ))
        );
        assert!(matches!(e.map(StartError::from), Some(StartError::Retry(m))
            if m.starts_with("cannot look up user \"app\"")));
        let e = found::<()>("group", "app", Ok(None)).err();
        assert!(matches!(e.map(StartError::from), Some(StartError::Fatal(m))
            if m == "group \"app\" does not exist on this host"));
        assert_eq!(found("user", "app", Ok(Some(7))), Ok(7));
    }

    /// Without its user, an adopted instance's health target carries the lookup error and none
    /// of a user's environment: an exec probe fails with it rather than run as the agent.
    #[test]
    fn a_health_target_without_its_user_says_why() {
        let spec = AppSpec::new("web", "sleep", &["60"]);
        let lost = RunAsError::Lookup("cannot look up user \"app\": EIO: I/O error".into());
        let target = health_target(&spec, 2, Some(8080), "10.0.0.5".into(), Err(&lost));
        assert_eq!(target.credentials, Err(lost.to_string()));
        assert!(
            !target.env.iter().any(|(k, _)| k == "HOME"),
            "{:?}",
            target.env
        );
        let run_as = RunAs {
            credentials: process::Credentials {
                uid: Some(1000),
                gid: Some(1000),
                groups: Some(vec![1000, 27]),
            },
            env: vec![("HOME".to_string(), "/home/app".to_string())],
        };
        let target = health_target(&spec, 2, Some(8080), "10.0.0.5".into(), Ok(&run_as));
        assert_eq!(target.credentials, Ok(run_as.credentials.clone()));
        assert_eq!(target.env.first(), Some(&run_as.env[0]));
        assert_eq!((target.index, target.port), (2, Some(8080)));
    }

    /// A relative program that is not found names the directory it was looked up from.
    #[test]
    fn a_relative_program_not_found_names_the_directory() {
        let not_found = io::Error::from(io::ErrorKind::NotFound);
        let mut spec = AppSpec::new("rel", "./run.sh", &[]);
        spec.cwd = Some("/srv/app".into());
        let text = |e: StartError| match e {
            StartError::Retry(m) | StartError::Fatal(m) => m,
        };
        let said = text(spawn_error(&not_found, "./run.sh", &spec, false, false));
        assert!(
            said.contains("looked up from the instance's working directory \"/srv/app\""),
            "{said}"
        );
        // A bare name is looked up in PATH, and an absolute path is what it says.
        for program in ["run.sh", "/srv/app/run.sh"] {
            let said = text(spawn_error(&not_found, program, &spec, false, false));
            assert!(!said.contains("looked up from"), "{said}");
        }
    }

    /// PM2 habits: a bare `server.py` that is a file of the instance's directory, and a script
    /// that is not executable, get the two ways to run them.
    #[test]
    fn a_script_that_cannot_run_names_the_ways_that_can() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("server.py");
        std::fs::write(&script, "")?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let mut spec = AppSpec::new("py", "server.py", &[]);
        spec.cwd = Some(dir.path().display().to_string());
        let text = |e: StartError| match e {
            StartError::Retry(m) | StartError::Fatal(m) => m,
        };
        let not_found = io::Error::from(io::ErrorKind::NotFound);
        let said = text(spawn_error(&not_found, "server.py", &spec, false, false));
        assert!(
            said.contains("give ./server.py, or its interpreter: python3 server.py"),
            "{said}"
        );
        // Not executable: only its interpreter would run it.
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
        let said = text(spawn_error(&not_found, "server.py", &spec, false, false));
        assert!(
            said.contains("not executable: run it with its interpreter, python3 server.py"),
            "{said}"
        );
        // Not a file there: a program missing from PATH, nothing to suggest.
        let said = text(spawn_error(&not_found, "redis-server", &spec, false, false));
        assert!(!said.contains('('), "{said}");
        let denied = io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32);
        let said = text(spawn_error(&denied, "./server.py", &spec, false, false));
        assert!(
            said.contains("chmod +x it, or run it with its interpreter: python3"),
            "{said}"
        );
        // Executable already (refused for another reason: a directory, a noexec mount), or not
        // there at all: no advice to chmod it.
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let said = text(spawn_error(&denied, "./server.py", &spec, false, false));
        assert!(!said.contains("chmod"), "{said}");
        let said = text(spawn_error(&denied, "./missing.py", &spec, false, false));
        assert!(!said.contains("chmod"), "{said}");
        Ok(())
    }
}
