//! `up` and `down`: a single-machine cluster made of one coordinator and one agent, run as
//! background daemons out of a data directory.
//!
//! The data directory holds `coordinator.pid`, `agent.pid`, their logs, the address the
//! coordinator listens on and the agent's node name, plus each daemon's own data. Processes are
//! only ever signalled by the pid in their pid file, and only after `/proc/PID/cmdline` shows the
//! expected binary, so a recycled pid is never hit. Nothing here looks processes up by name.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_proto::v1 as pb;
use serde_json::json;

use crate::args::{DownArgs, OutputFormat, UpArgs};
use crate::client::{connect_with, request, unary};
use crate::error::UsageError;

mod cgroups;
mod listen;
mod node_name;
mod sweep;

pub use node_name::{choose_node_name, recorded_node_name};

use listen::check_listen_free;
pub use listen::{choose_listen, dial_url, home_coordinator, parse_listen};

pub const COORDINATOR_BIN: &str = "pmcluster-coordinator";
pub const AGENT_BIN: &str = "pmcluster-agent";

/// How long `up` waits for the coordinator to answer and the agent's node to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `down` gives the agent to stop its instances before SIGKILL.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const COORDINATOR_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the processes of instances an agent left running get between SIGTERM and SIGKILL:
/// an app's default `kill_timeout` (the agent, which knew each app's, had its chance).
const INSTANCE_STOP_TIMEOUT: Duration = pmcluster_spec::app::DEFAULT_KILL_TIMEOUT;
/// How often waits re-check; these are polls of other processes, not test sleeps.
const POLL: Duration = Duration::from_millis(100);

/// The files of one local cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn pid_file(&self, daemon: Daemon) -> PathBuf {
        self.path(&format!("{}.pid", daemon.short()))
    }
    fn log_file(&self, daemon: Daemon) -> PathBuf {
        self.path(&format!("{}.log", daemon.short()))
    }
    fn data_dir(&self, daemon: Daemon) -> PathBuf {
        self.path(daemon.short())
    }
    /// The address the coordinator was last told to listen on. `down` keeps it: a later `up`
    /// brings the cluster back there, and other verbs, while it is down, say so rather than
    /// dial the default address, where another cluster may answer.
    fn listen_file(&self) -> PathBuf {
        self.path("coordinator.listen")
    }
    /// The node name the running agent was given.
    fn node_file(&self) -> PathBuf {
        self.path("agent.node")
    }
    /// Where the agent records which node its data dir belongs to (it refuses to start under
    /// another name); kept by `down`.
    fn agent_identity(&self) -> PathBuf {
        self.data_dir(Daemon::Agent).join("identity.json")
    }
    /// Where the agent records its instances' cgroup directory while that exists.
    fn agent_cgroup_record(&self) -> PathBuf {
        self.data_dir(Daemon::Agent)
            .join(pmcluster_spec::instance::CGROUP_RECORD_FILE)
    }
    /// The lock a running agent holds on its data dir.
    fn agent_lock(&self) -> PathBuf {
        self.data_dir(Daemon::Agent).join("agent.lock")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Coordinator,
    Agent,
}

impl Daemon {
    fn short(self) -> &'static str {
        match self {
            Daemon::Coordinator => "coordinator",
            Daemon::Agent => "agent",
        }
    }
    fn binary(self) -> &'static str {
        match self {
            Daemon::Coordinator => COORDINATOR_BIN,
            Daemon::Agent => AGENT_BIN,
        }
    }
}

/// The default data directory: `$XDG_DATA_HOME/pmcluster`, else `$HOME/.local/share/pmcluster`.
/// (`$PMCLUSTER_HOME` arrives through `--data-dir`'s clap env binding.) A relative
/// `XDG_DATA_HOME` is ignored, as the XDG spec asks.
pub fn default_data_dir(
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let xdg = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = xdg {
        return Some(xdg.join("pmcluster"));
    }
    home.filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/share/pmcluster"))
}

/// What `up` and `down` take from the process environment, read once by `main` so that nothing
/// below it reads the environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub xdg_data_home: Option<OsString>,
    pub home: Option<OsString>,
    pub path: Option<OsString>,
    /// `PMCLUSTER_HOME`: the data dir of `up` (its `--data-dir` reads it through clap too).
    pub pmcluster_home: Option<OsString>,
    /// Directory of the running `pmcluster`, where the daemons ship.
    pub exe_dir: Option<PathBuf>,
}

impl Environment {
    pub fn from_process() -> Environment {
        Environment {
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
            path: std::env::var_os("PATH"),
            pmcluster_home: std::env::var_os("PMCLUSTER_HOME"),
            exe_dir: std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf)),
        }
    }
}

fn resolve_data_dir(arg: Option<PathBuf>, env: &Environment) -> anyhow::Result<Layout> {
    let dir = match arg {
        Some(dir) => dir,
        None => default_data_dir(env.xdg_data_home.clone(), env.home.clone()).ok_or_else(|| {
            UsageError::new(
                "cannot tell where to keep the local cluster: HOME is not set; give --data-dir",
            )
        })?,
    };
    Ok(Layout { dir })
}

/// True when `cmdline` (NUL-separated, as in /proc/PID/cmdline) runs the binary `name`.
pub fn cmdline_runs(cmdline: &[u8], name: &str) -> bool {
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    Path::new(argv0.as_ref())
        .file_name()
        .is_some_and(|f| f == OsStr::new(name))
}

/// Whether `pid` is a live process running `name`. A zombie has an empty cmdline and counts as
/// gone.
fn runs(pid: i32, name: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| cmdline_runs(&c, name))
}

/// Parses a pid file's content.
pub fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|p| *p > 0)
}

/// The value of `flag` in a NUL-separated command line (`--flag VALUE` or `--flag=VALUE`).
pub fn cmdline_flag(cmdline: &[u8], flag: &str) -> Option<String> {
    let mut words = cmdline
        .split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned());
    let with_value = format!("{flag}=");
    while let Some(word) = words.next() {
        let value = match word.strip_prefix(&with_value) {
            Some(value) => Some(value.to_string()),
            None if word == flag => words.next(),
            None => continue,
        };
        // The command line ends with a NUL: a flag last has an empty word after it.
        return value.filter(|v| !v.is_empty());
    }
    None
}

/// The coordinator `pmcluster up` runs from the data dir `PMCLUSTER_HOME` names (or the default
/// one), for a verb given no coordinator: see [`home_coordinator`].
pub fn local_coordinator_url(env: &Environment) -> anyhow::Result<Option<String>> {
    let Some(dir) = verbs_data_dir(env) else {
        return Ok(None);
    };
    let layout = Layout { dir };
    let recorded = fs::read_to_string(layout.listen_file())
        .ok()
        .and_then(|text| text.trim().parse::<SocketAddr>().ok());
    let running = running_pid(&layout, Daemon::Coordinator);
    Ok(home_coordinator(&layout.dir, recorded, running)?)
}

/// The data dir a verb given no coordinator looks in: `PMCLUSTER_HOME`, else the default one.
fn verbs_data_dir(env: &Environment) -> Option<PathBuf> {
    (env.pmcluster_home.clone())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| default_data_dir(env.xdg_data_home.clone(), env.home.clone()))
}

/// The pid of `daemon` if its pid file names a live process running its binary.
fn running_pid(layout: &Layout, daemon: Daemon) -> Option<i32> {
    let text = fs::read_to_string(layout.pid_file(daemon)).ok()?;
    parse_pid(&text).filter(|pid| runs(*pid, daemon.binary()))
}

/// Looks for `name` next to our own executable first (a release archive or `target/debug`),
/// then in `PATH`.
pub fn find_binary(
    name: &str,
    exe_dir: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let beside = exe_dir.map(|d| d.join(name)).filter(|p| is_executable(p));
    beside.or_else(|| {
        std::env::split_paths(path_var?)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    })
}

fn locate(daemon: Daemon, env: &Environment) -> anyhow::Result<PathBuf> {
    let exe_dir = env.exe_dir.as_deref();
    find_binary(daemon.binary(), exe_dir, env.path.as_deref()).ok_or_else(|| {
        let beside = exe_dir
            .map(|d| format!(" next to {} or", d.display()))
            .unwrap_or_default();
        anyhow::anyhow!(
            "cannot find {}{beside} in PATH; build them with cargo build --release \
             (they ship next to the pmcluster binary)",
            daemon.binary()
        )
    })
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

/// One daemon `up` started in this run, kept to notice if it dies during the wait.
struct Started {
    daemon: Daemon,
    child: Child,
}

fn spawn(
    layout: &Layout,
    daemon: Daemon,
    binary: &Path,
    args: &[OsString],
) -> anyhow::Result<Started> {
    let data = layout.data_dir(daemon);
    // Owner only, as each daemon keeps its data dir (the agent would otherwise tighten it at
    // its first start and warn about it).
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .with_context(|| format!("creating {}", data.display()))?;
    let log_path = layout.log_file(daemon);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(
        log,
        "--- pmcluster up: starting {} at {} ---",
        binary.display(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
    .with_context(|| format!("writing {}", log_path.display()))?;
    let stderr = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Its own process group, so Ctrl-C in this terminal does not reach the daemon.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid_file = layout.pid_file(daemon);
    fs::write(&pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(Started { daemon, child })
}

/// The last lines of a log, to show why a daemon died.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `up`: start what is not running, then wait until the node is ready.
/// Why `up` does not start a coordinator on `listen`, an address other hosts may reach, and what
/// runs one there.
fn not_loopback(listen: SocketAddr) -> UsageError {
    UsageError::new(format!(
        "--listen {listen}: `pmcluster up` runs a local cluster without TLS or credentials, so \
         its coordinator listens on loopback only (e.g. --listen 127.0.0.1:{}); for one other \
         hosts reach, run pmcluster-coordinator with --tls-cert, --tls-key and --client-ca (see \
         `pmcluster certs`)",
        listen.port()
    ))
}

pub async fn up(
    args: UpArgs,
    env: &Environment,
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let flag_listen = args.listen.as_deref().map(parse_listen).transpose()?;
    let layout = resolve_data_dir(args.data_dir, env)?;
    fs::create_dir_all(&layout.dir)
        .with_context(|| format!("creating {}", layout.dir.display()))?;
    let mut started = Vec::new();
    let mut notes = Vec::new();

    let coordinator_pid = running_pid(&layout, Daemon::Coordinator);
    let agent_pid = running_pid(&layout, Daemon::Agent);
    // Find both binaries before starting either, so a missing one leaves nothing behind.
    let coordinator_bin = coordinator_pid
        .is_none()
        .then(|| locate(Daemon::Coordinator, env))
        .transpose()?;
    let agent_bin = agent_pid
        .is_none()
        .then(|| locate(Daemon::Agent, env))
        .transpose()?;

    // Where the coordinator listens, and the agent's node: what the running daemons and the data
    // dir already have, checked before anything starts.
    let running_cmdline = agent_pid.and_then(|pid| fs::read(format!("/proc/{pid}/cmdline")).ok());
    let dials = running_cmdline
        .as_deref()
        .and_then(|cmdline| cmdline_flag(cmdline, "--coordinator"));
    let recorded_listen = fs::read_to_string(layout.listen_file())
        .ok()
        .and_then(|t| t.trim().parse::<SocketAddr>().ok());
    // A --listen `up` can never start a coordinator on is refused first: a trial's `up --listen
    // 0.0.0.0:17650` beside a running coordinator was told to `down` (stopping every instance)
    // and run that very command, which was then refused for this. (A coordinator an older `up`
    // left running there is gone on with, as before.)
    if let Some(wanted) = flag_listen
        && !wanted.ip().is_loopback()
        && !(coordinator_pid.is_some() && recorded_listen == Some(wanted))
    {
        return Err(not_loopback(wanted).into());
    }
    let listen = choose_listen(
        flag_listen,
        recorded_listen,
        coordinator_pid,
        agent_pid.zip(dials.as_deref()),
    )?;
    // An address recorded by an older `up` on every interface (which its coordinator then
    // refused) is taken as loopback, where the agent dials it anyway.
    let listen = match (flag_listen, listen.ip()) {
        (None, ip) if ip.is_unspecified() => {
            let loopback = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(loopback, listen.port())
        }
        _ => listen,
    };
    // The coordinator it starts serves plaintext, without credentials: it would refuse any
    // other address (README, "Security"), and only after the agent had started.
    if coordinator_bin.is_some() && !listen.ip().is_loopback() {
        return Err(not_loopback(listen).into());
    }
    let url = dial_url(listen);

    let agent_dir = layout.data_dir(Daemon::Agent);
    let recorded = running_cmdline
        .as_deref()
        .and_then(|cmdline| cmdline_flag(cmdline, "--node-name"))
        .or_else(|| {
            fs::read_to_string(layout.agent_identity())
                .ok()
                .and_then(|text| recorded_node_name(&text))
        });
    let (node_name, rename) = choose_node_name(
        args.node_name.as_deref(),
        recorded.as_deref(),
        hostname,
        &agent_dir,
        agent_pid.is_some(),
        args.rename_node,
    )?;
    if let (Some(pid), Some(dials)) = (agent_pid, &dials)
        && *dials != url
    {
        // Not the flag's doing (that was refused above): the two daemons disagree.
        anyhow::bail!(
            "the agent already running from this data directory (pid {pid}) dials the \
             coordinator at {dials}, not {url} where this `up` {} it, so its node would never \
             be ready; run `pmcluster down`, then `pmcluster up` again",
            if coordinator_pid.is_some() {
                "finds"
            } else {
                "would start"
            },
        );
    }

    // What the listen record said before this run wrote it, if it did.
    let mut listen_before: Option<Option<String>> = None;
    match &coordinator_bin {
        None => notes
            .extend(coordinator_pid.map(|pid| format!("coordinator already running (pid {pid})"))),
        Some(binary) => {
            check_listen_free(listen, &url).await?;
            let data = layout.data_dir(Daemon::Coordinator);
            let argv = [
                "--listen".into(),
                listen.to_string().into(),
                "--data-dir".into(),
                data.into_os_string(),
            ];
            started.push(spawn(&layout, Daemon::Coordinator, binary, &argv)?);
            listen_before = Some(fs::read_to_string(layout.listen_file()).ok());
            fs::write(layout.listen_file(), format!("{listen}\n"))
                .with_context(|| format!("writing {}", layout.listen_file().display()))?;
        }
    }

    match &agent_bin {
        None => notes.extend(agent_pid.map(|pid| format!("agent already running (pid {pid})"))),
        Some(binary) => {
            let mut argv: Vec<OsString> = vec![
                "--coordinator".into(),
                url.clone().into(),
                "--node-name".into(),
                node_name.clone().into(),
                "--data-dir".into(),
                agent_dir.into_os_string(),
                // `down` means everything stops: the agent takes its instances with it (a bare
                // agent would leave them running for the next one to adopt).
                "--stop-instances-on-exit".into(),
            ];
            if rename {
                argv.push("--rename-node".into());
            }
            started.push(spawn(&layout, Daemon::Agent, binary, &argv)?);
            fs::write(layout.node_file(), format!("{node_name}\n"))
                .with_context(|| format!("writing {}", layout.node_file().display()))?;
        }
    }

    for note in &notes {
        writeln!(out, "{note}").context("writing to stdout")?;
    }
    if let Err(e) = wait_ready(&layout, &url, &node_name, &mut started).await {
        // A coordinator that never came up there leaves the record as it was, or every later
        // plain `up` would try that address again (`down` keeps the record).
        if let Some(before) = listen_before
            && running_pid(&layout, Daemon::Coordinator).is_none()
        {
            let _ = match before {
                Some(text) => fs::write(layout.listen_file(), text),
                None => fs::remove_file(layout.listen_file()),
            };
        }
        return Err(e);
    }

    let pid = |d| running_pid(&layout, d);
    if matches!(format, OutputFormat::Json | OutputFormat::Yaml) {
        let value = json!({
            "data_dir": layout.dir,
            "coordinator": {
                "url": url,
                "pid": pid(Daemon::Coordinator),
                "log": layout.log_file(Daemon::Coordinator),
            },
            "agent": {
                "node": node_name,
                "pid": pid(Daemon::Agent),
                "log": layout.log_file(Daemon::Agent),
            },
        });
        let text = crate::output::document(&value, format)?;
        out.write_all(text.as_bytes())
            .context("writing to stdout")?;
        return Ok(());
    }
    let show_pid = |p: Option<i32>| p.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let mut text = format!(
        "coordinator listening on {url}{}\n\
         agent ready as node {node_name:?}{}\n\
         data: {}\n\
         logs: {} and {}\n",
        show_pid(pid(Daemon::Coordinator)),
        show_pid(pid(Daemon::Agent)),
        layout.dir.display(),
        layout.log_file(Daemon::Coordinator).display(),
        layout.log_file(Daemon::Agent).display(),
    );
    // Verbs find the cluster through the data dir they resolve, wherever it listens: only a
    // data dir other than theirs needs saying. (An exported PMCLUSTER_COORDINATOR would outlive
    // this cluster and send every later data dir's verbs here too.)
    if verbs_data_dir(env).as_deref() != Some(layout.dir.as_path()) {
        text.push_str(&format!(
            "other verbs find this cluster with: export PMCLUSTER_HOME={}\n",
            layout.dir.display()
        ));
    }
    text.push_str("stop it with: pmcluster down\n");
    out.write_all(text.as_bytes()).context("writing to stdout")
}

/// Waits until the coordinator answers and lists `node` as ready, failing early if a daemon
/// started by this run exits (stopping the other one it started).
async fn wait_ready(
    layout: &Layout,
    url: &str,
    node: &str,
    started: &mut [Started],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("the coordinator did not answer");
    loop {
        let exited = started.iter_mut().find_map(|s| match s.child.try_wait() {
            Ok(Some(status)) => Some((s.daemon, status)),
            _ => None,
        });
        if let Some((daemon, status)) = exited {
            let log = layout.log_file(daemon);
            let _ = fs::remove_file(layout.pid_file(daemon));
            // A half-started cluster is not left behind: an agent without its coordinator
            // would start what its data dir holds, with nothing to steer it.
            let mut stopped = String::new();
            for other in started.iter().filter(|s| s.daemon != daemon) {
                let grace = match other.daemon {
                    Daemon::Agent => AGENT_STOP_TIMEOUT,
                    Daemon::Coordinator => COORDINATOR_STOP_TIMEOUT,
                };
                match stop_daemon(layout, other.daemon, grace) {
                    Ok(_) => {
                        stopped = format!("; the {} it started is stopped", other.daemon.binary())
                    }
                    Err(e) => {
                        stopped = format!(
                            "; stopping the {} it started failed: {e:#}",
                            other.daemon.binary()
                        )
                    }
                }
            }
            // As `down` does: what the agent left (one killed past its grace, or one that exited
            // by itself after starting what its data dir held) goes too.
            if started.iter().any(|s| s.daemon == Daemon::Agent) {
                let (lines, survivors) = stop_left(layout);
                for line in lines {
                    stopped.push_str("; ");
                    stopped.push_str(&line);
                }
                if !survivors.is_empty() {
                    let pids: Vec<String> = survivors.iter().map(i32::to_string).collect();
                    stopped.push_str(&format!(
                        "; still running after SIGKILL: pid {}",
                        pids.join(", ")
                    ));
                }
            }
            anyhow::bail!(
                "{} exited right after starting ({status}){stopped}; its log {} ends with:\n{}",
                daemon.binary(),
                log.display(),
                log_tail(&log, 10)
            );
        }
        if let Ok(mut client) = connect_with(url, Duration::from_millis(500)).await {
            match unary(client.list_nodes(request(pb::ListNodesRequest {}))).await {
                Ok(reply) => {
                    let found = reply.nodes.iter().find(|n| n.name == node);
                    match found {
                        Some(n) if n.status == pb::NodeStatus::Ready as i32 => return Ok(()),
                        // It stays so until someone acts: no use waiting.
                        Some(n) if n.status == pb::NodeStatus::Quarantined as i32 => {
                            // Its message names the fix (`pmcluster nodes adopt NODE`).
                            anyhow::bail!(
                                "node {node:?} is quarantined: {}; the daemons are left running",
                                n.message
                            );
                        }
                        Some(n) if n.message.is_empty() => {
                            last = format!("node {node:?} is registered but not ready")
                        }
                        Some(n) => {
                            last =
                                format!("node {node:?} is registered but not ready: {}", n.message)
                        }
                        None => last = format!("node {node:?} has not registered yet"),
                    }
                }
                Err(e) => last = format!("the coordinator answered: {e}"),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the local cluster was not ready within {}s: {last}; the daemons are left \
                 running (stop them with 'pmcluster down'); see {} and {}",
                READY_TIMEOUT.as_secs(),
                layout.log_file(Daemon::Coordinator).display(),
                layout.log_file(Daemon::Agent).display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `down` did to one daemon.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    NotRunning,
    Terminated(i32),
    Killed(i32),
}

fn stop_daemon(layout: &Layout, daemon: Daemon, grace: Duration) -> anyhow::Result<Stopped> {
    let pid_file = layout.pid_file(daemon);
    let Some(pid) = running_pid(layout, daemon) else {
        // A stale pid file: its process is gone (or the pid now belongs to something else).
        remove_if_exists(&pid_file)?;
        return Ok(Stopped::NotRunning);
    };
    let name = daemon.binary();
    let signal = |sig| match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot signal {name} (pid {pid}): {e}")),
    };
    let gone_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while runs(pid, name) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    };
    signal(Signal::SIGTERM)?;
    let result = if gone_within(grace) {
        Stopped::Terminated(pid)
    } else {
        signal(Signal::SIGKILL)?;
        if !gone_within(Duration::from_secs(5)) {
            anyhow::bail!("{name} (pid {pid}) did not exit even after SIGKILL");
        }
        Stopped::Killed(pid)
    };
    remove_if_exists(&pid_file)?;
    Ok(result)
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("removing {}: {e}", path.display())),
    }
}

/// The key the agent of `layout` marks its instances' processes with: the agent's own
/// derivation (see `pmcluster_spec::instance::agent_key`), from the data dir `up` gives it,
/// resolved as the agent resolves it.
fn agent_key(layout: &Layout) -> String {
    let dir = layout.data_dir(Daemon::Agent);
    let dir = fs::canonicalize(&dir)
        .or_else(|_| std::path::absolute(&dir))
        .unwrap_or(dir);
    pmcluster_spec::instance::agent_key(&dir)
}

/// `down`: the agent first, so it stops its instances while the coordinator still runs; then
/// whatever of its instances it left running (it had to be killed, or had died before), and
/// what is left in its cgroups, which it would have removed itself.
pub fn down(args: DownArgs, env: &Environment, out: &mut dyn Write) -> anyhow::Result<()> {
    let layout = resolve_data_dir(args.data_dir, env)?;
    let mut any = false;
    let mut left = Vec::new();
    for (daemon, grace) in [
        (Daemon::Agent, AGENT_STOP_TIMEOUT),
        (Daemon::Coordinator, COORDINATOR_STOP_TIMEOUT),
    ] {
        let line = match stop_daemon(&layout, daemon, grace)? {
            Stopped::NotRunning => None,
            Stopped::Terminated(pid) => Some(format!("stopped {} (pid {pid})", daemon.short())),
            Stopped::Killed(pid) => Some(format!(
                "killed {} (pid {pid}): it did not stop within {}s of SIGTERM",
                daemon.short(),
                grace.as_secs()
            )),
        };
        if let Some(line) = line {
            any = true;
            writeln!(out, "{line}").context("writing to stdout")?;
        }
        if daemon == Daemon::Agent {
            let (lines, survivors) = stop_left(&layout);
            left = survivors;
            for line in &lines {
                writeln!(out, "{line}").context("writing to stdout")?;
            }
            any |= !lines.is_empty();
        }
    }
    if !any {
        writeln!(out, "nothing to stop").context("writing to stdout")?;
    }
    // The listen file stays (see `Layout::listen_file`).
    remove_if_exists(&layout.node_file())?;
    if !left.is_empty() {
        let pids: Vec<String> = left.iter().map(i32::to_string).collect();
        anyhow::bail!(
            "{} of the agent's instances could not be stopped, even with SIGKILL: pid {}",
            match left.len() {
                1 => "1 process".to_string(),
                n => format!("{n} processes"),
            },
            pids.join(", ")
        );
    }
    Ok(())
}

/// Once the agent is gone: what it left running, found by its key (SIGTERM first, the kinder
/// way), then whatever is left in its cgroups (what cleared its environment). Returns what to
/// say and the pids that survived both.
fn stop_left(layout: &Layout) -> (Vec<String>, Vec<i32>) {
    let key = agent_key(layout);
    let swept = sweep::stop_left(&key, INSTANCE_STOP_TIMEOUT);
    let node = agent_node(layout);
    let (record, lock) = (layout.agent_cgroup_record(), layout.agent_lock());
    let ended = cgroups::end_left(&cgroups::Agent {
        record: &record,
        lock: &lock,
        node: node.as_deref(),
        key: &key,
    });
    let mut lines: Vec<String> = swept_line(&swept).into_iter().collect();
    lines.extend(cgroups::lines(&ended));
    let mut left = swept.left;
    left.extend(
        ended
            .surviving()
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok()),
    );
    left.sort_unstable();
    left.dedup();
    (lines, left)
}

/// The node name of the agent `up` started (its cgroup directory is named after it), else the
/// one its data dir records.
fn agent_node(layout: &Layout) -> Option<String> {
    let given = fs::read_to_string(layout.node_file())
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    given.or_else(|| {
        fs::read_to_string(layout.agent_identity())
            .ok()
            .and_then(|text| recorded_node_name(&text))
    })
}

/// What `down` says of the processes the agent left running, if it stopped any.
fn swept_line(swept: &sweep::Swept) -> Option<String> {
    let processes = |n: usize| match n {
        1 => "1 process".to_string(),
        n => format!("{n} processes"),
    };
    let mut parts = Vec::new();
    if swept.stopped > 0 {
        let killed = match swept.killed {
            0 => String::new(),
            n => format!(
                " ({n} needed SIGKILL, {}s after SIGTERM)",
                INSTANCE_STOP_TIMEOUT.as_secs()
            ),
        };
        parts.push(format!(
            "{} of the agent's instances that it left running{killed}",
            processes(swept.stopped)
        ));
    }
    let pumps = match swept.pumps_killed {
        1 => "1 log pump".to_string(),
        n => format!("{n} log pumps"),
    };
    match (swept.stopped, swept.pumps_killed) {
        (_, 0) => {}
        (0, _) => parts.push(format!(
            "{pumps} of the agent that outlived their instances (SIGKILL)"
        )),
        _ => parts.push(format!("{pumps} that outlived them (SIGKILL)")),
    }
    (!parts.is_empty()).then(|| format!("stopped {}", parts.join(", and ")))
}

#[cfg(test)]
mod tests;
