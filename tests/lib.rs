//! Harness for pmcluster's end-to-end tests (and, later, benchmarks): runs a real coordinator and
//! real agents on loopback in a temporary directory, drives the real `pmcluster` CLI, and talks
//! to instances over plain HTTP.
//!
//! It owns every process it starts and ends them by pid when the [`Cluster`] drops: agents first
//! with SIGTERM (so they stop their instances), then SIGKILL for leftovers, then the coordinator,
//! then any instance it saw that is still alive. It never kills by name, and never kills a pid
//! unless that pid is still the very process it recorded (same start time).
//!
//! It must not make correctness depend on sleeping: callers wait on conditions with
//! [`wait_until`], which polls and, on timeout, panics with the last state it observed.
//!
//! The binaries come from the cargo target dir (`cargo build --workspace --bins`): the dir of
//! the running test executable, or `PMCLUSTER_BIN_DIR`.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long the harness waits for a daemon to come up or a CLI call to finish.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI call may take before the harness kills it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agents get after SIGTERM to stop their instances and exit.
pub const AGENT_GRACE: Duration = Duration::from_secs(10);
/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(75);
/// Set to keep the temporary directory of every cluster, not only of failed tests.
pub const KEEP_ENV: &str = "PMCLUSTER_TEST_KEEP";
/// Overrides where the binaries are looked up.
pub const BIN_DIR_ENV: &str = "PMCLUSTER_BIN_DIR";

pub const COORDINATOR_BIN: &str = "pmcluster-coordinator";
pub const AGENT_BIN: &str = "pmcluster-agent";
pub const CLI_BIN: &str = "pmcluster";
pub const TESTAPP_BIN: &str = "pmcluster-testapp";

/// Node names given to the agents of [`Cluster::start`], in order.
pub const NODE_NAMES: [&str; 8] = [
    "node-a", "node-b", "node-c", "node-d", "node-e", "node-f", "node-g", "node-h",
];

/// Why the harness could not do what it was asked.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("{binary} not found in {}: run cargo build --workspace --bins first", dir.display())]
    MissingBinary { binary: String, dir: PathBuf },
    #[error("cannot find the cargo target dir from {}: set {BIN_DIR_ENV}", exe.display())]
    NoBinDir { exe: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited early ({status}); stderr ends with:\n{tail}")]
    EarlyExit {
        what: String,
        status: String,
        tail: String,
    },
    #[error("timed out after {after:?} waiting for {what}; last observed: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("{what}: {message}")]
    Unexpected { what: String, message: String },
    #[error("{source}\n{tails}")]
    Start {
        #[source]
        source: Box<Error>,
        tails: String,
    },
}

/// As `Display`, so that `expect` in tests prints the readable message (with its newlines).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Lets `?` turn a harness error into the "last observed state" of a [`wait_until`] closure.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn unexpected(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Unexpected {
        what: what.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, or fails with the last `Err` it
/// returned (the observed state) once `timeout` has passed.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> Result<T, String>,
) -> Result<T, Error> {
    poll_every(POLL_INTERVAL, timeout, what, check)
}

fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(interval);
    }
}

/// [`poll_until`] for tests: panics on timeout with what was awaited and the last observed state.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    match poll_until(timeout, what, check) {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// [`wait_until`] for a plain condition.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_until(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
}

/// Unix time in milliseconds, to compare with the coordinator's timestamps (same host).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Binaries

/// The dir holding the workspace binaries: `PMCLUSTER_BIN_DIR`, else the profile dir of the
/// running executable (`target/debug/deps/it-xxx` -> `target/debug`).
pub fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(io_err("locating the test executable"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::NoBinDir { exe: exe.clone() })?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| Error::NoBinDir { exe: exe.clone() })?;
    }
    Ok(dir.to_path_buf())
}

/// Path of one workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            binary: name.to_string(),
            dir,
        })
    }
}

/// The four binaries a cluster needs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub coordinator: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
    pub testapp: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Bins, Error> {
        Ok(Bins {
            coordinator: binary(COORDINATOR_BIN)?,
            agent: binary(AGENT_BIN)?,
            cli: binary(CLI_BIN)?,
            testapp: binary(TESTAPP_BIN)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, by pid

/// The fields of `/proc/PID/stat` the harness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// Start time in clock ticks since boot: with the pid, identifies a process across pid reuse.
    pub start_ticks: u64,
}

/// Reads `/proc/PID/stat`; `None` when there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); ppid is field 4, pgrp 5, starttime 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether a process with this pid runs (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Every process whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == ppid && s.state != 'Z'))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is an agent's log pump (see the agent's `logs` module), by its environment.
pub fn is_log_pump(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"PMCLUSTER_PUMP_FOR="))
    })
}

/// One process, identified by pid and start time so that a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The process running now under `pid`, if any.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = proc_stat(pid)?;
        Some(ProcId {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// Whether this very process still runs (not a zombie, not a newer process with its pid).
    pub fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| {
            s.start_ticks == self.start_ticks && !matches!(s.state, 'Z' | 'X' | 'x')
        })
    }

    /// Sends `sig` to this process if it still runs. Returns whether a signal was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        if !self.alive() {
            return false;
        }
        signal::kill(pid_of(self.pid), sig).is_ok()
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// The process group `pid` leads, as `kill` expects it.
fn group_of(pid: u32) -> Pid {
    Pid::from_raw(-i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Sends `sig` to `pid` (for tests that kill an instance on purpose).
pub fn kill_pid(pid: u32, sig: Signal) -> Result<(), Error> {
    signal::kill(pid_of(pid), sig).map_err(|e| Error::Io {
        what: format!("sending {sig} to pid {pid}"),
        source: std::io::Error::from(e),
    })
}

/// The last `n` lines of a file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A daemon the harness started: the coordinator or an agent.
#[derive(Debug)]
pub struct Daemon {
    /// "coordinator", or the agent's node name.
    pub name: String,
    pub data_dir: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pid: u32,
    /// Behind a lock so that a test can poll it from a closure that also borrows the cluster.
    child: Mutex<Child>,
    exited: Mutex<Option<ExitStatus>>,
}

impl Daemon {
    fn new(
        name: &str,
        data_dir: PathBuf,
        stdout_path: PathBuf,
        stderr_path: PathBuf,
        child: Child,
    ) -> Daemon {
        Daemon {
            name: name.to_string(),
            data_dir,
            stdout_path,
            stderr_path,
            pid: child.id(),
            child: Mutex::new(child),
            exited: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once it has exited (reaps it); `None` while it runs.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if exited.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            *exited = child.try_wait().ok().flatten();
        }
        *exited
    }

    pub fn running(&self) -> bool {
        self.try_exit().is_none()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr_path, n)
    }

    /// Sends `sig` if it still runs (and so is not yet reaped: the pid is still ours).
    pub fn signal(&self, sig: Signal) {
        if self.running() {
            let _ = signal::kill(pid_of(self.pid), sig);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&self) {
        if self.running() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let status = child.wait().ok();
            *self.exited.lock().unwrap_or_else(|e| e.into_inner()) = status;
        }
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, "exit", || self.try_exit().ok_or_else(String::new)).ok()
    }
}

fn log_file(path: &Path) -> Result<File, Error> {
    File::create(path).map_err(io_err(format!("creating {}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// Ports and HTTP

/// Port ranges handed out by this process, so that concurrent tests never share one.
static RESERVED: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one((Instant::now(), std::process::id(), n))
}

/// Lowest port of the kernel's ephemeral range: outgoing connections and `:0` listeners take
/// ports from there, so app ranges stay below it.
fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first port of `n` consecutive ports that are free on 127.0.0.1 now, from a random start
/// between 15000 and the ephemeral range, and never handed out before by this process.
pub fn free_port_range(n: u16) -> Result<u16, Error> {
    let low: u16 = 15000;
    let high = ephemeral_low().max(low + 2000);
    for _ in 0..500 {
        let span = u64::from(high - low - n);
        let start = low + u16::try_from(random_u64() % span).unwrap_or(0);
        let end = start + n - 1;
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if reserved.iter().any(|&(a, b)| start <= b && a <= end) {
            continue;
        }
        if (start..=end).all(port_free) {
            reserved.push((start, end));
            return Ok(start);
        }
    }
    Err(unexpected(
        "picking ports",
        format!("no run of {n} free ports found between {low} and {high}"),
    ))
}

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_str(&self.body).map_err(|e| {
            unexpected(
                "parsing an HTTP body as JSON",
                format!("{e}: {}", self.body),
            )
        })
    }
}

/// `GET path` on 127.0.0.1:port with HTTP/1.1 and `Connection: close`, 2 s timeouts.
pub fn http_get(port: u16, path: &str) -> Result<HttpReply, Error> {
    let what = format!("GET http://127.0.0.1:{port}{path}");
    let timeout = Duration::from_secs(2);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_err(&what))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err(&what))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_err(&what))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_err(&what))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_err(&what))?;
    parse_http(&raw).map_err(|m| unexpected(what, m))
}

fn parse_http(raw: &[u8]) -> Result<HttpReply, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(HttpReply { status, body })
}

fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut body = String::new();
    loop {
        let (size_line, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| "truncated chunk".to_string())?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| "truncated chunk".to_string())?;
        body.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or_default();
    }
}

/// `GET /health` of a testapp instance, as JSON, expecting status 200.
pub fn health(port: u16) -> Result<Value, Error> {
    let reply = http_get(port, "/health")?;
    if reply.status != 200 {
        return Err(unexpected(
            format!("GET /health on port {port}"),
            format!("status {}: {}", reply.status, reply.body),
        ));
    }
    reply.json()
}

// ---------------------------------------------------------------------------------------------
// CLI output and list entries

/// What one `pmcluster` run printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole output unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &CliOutput {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics unless it exited non-zero; returns stderr.
    #[track_caller]
    pub fn assert_failed(&self) -> &str {
        assert!(!self.success(), "expected failure from {self}");
        &self.stderr
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            unexpected(
                format!("parsing the output of pmcluster {}", self.args.join(" ")),
                format!("{e}: {self}"),
            )
        })
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pmcluster {:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// One entry of `pmcluster list -o json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub app: String,
    pub index: u32,
    pub id: String,
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub status: String,
    pub restarts: u64,
    /// The whole JSON object, for fields the harness does not model.
    pub json: Value,
}

impl Instance {
    pub fn from_json(v: &Value) -> Result<Instance, Error> {
        let bad =
            |field: &str| unexpected("a list entry", format!("bad or missing {field} in {v}"));
        let opt_u64 = |field: &str| -> Result<Option<u64>, Error> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| bad(field)),
            }
        };
        let string = |field: &str| -> Result<String, Error> {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(field))
        };
        Ok(Instance {
            app: string("app")?,
            index: opt_u64("index")?
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("index"))?,
            id: string("id")?,
            node: match v.get("node") {
                None | Some(Value::Null) => None,
                Some(n) => Some(n.as_str().ok_or_else(|| bad("node"))?.to_string()),
            },
            pid: opt_u64("pid")?
                .map(|n| u32::try_from(n).map_err(|_| bad("pid")))
                .transpose()?,
            port: opt_u64("port")?
                .map(|n| u16::try_from(n).map_err(|_| bad("port")))
                .transpose()?,
            status: string("status")?,
            restarts: opt_u64("restarts")?.unwrap_or(0),
            json: v.clone(),
        })
    }

    /// Running and reported online, with a pid.
    pub fn online(&self) -> bool {
        self.status == "online" && self.pid.is_some()
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        write!(
            f,
            "{}[{}] {} on {} pid={} port={} restarts={}",
            self.app,
            self.index,
            self.status,
            self.node.as_deref().unwrap_or("-"),
            or_dash(self.pid.map(|p| p.to_string())),
            or_dash(self.port.map(|p| p.to_string())),
            self.restarts
        )
    }
}

/// One line per instance, for "last observed" messages.
pub fn render(instances: &[Instance]) -> String {
    if instances.is_empty() {
        return "no instances".to_string();
    }
    let lines: Vec<String> = instances.iter().map(|i| format!("\n  {i}")).collect();
    lines.concat()
}

/// How many instances each node has.
pub fn per_node(instances: &[Instance]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in instances {
        let node = i.node.clone().unwrap_or_else(|| "-".to_string());
        *counts.entry(node).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A coordinator and its agents on loopback, in one temporary directory.
pub struct Cluster {
    /// `None` once kept (the directory then outlives the cluster).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bins: Bins,
    coordinator: Option<Daemon>,
    /// Earlier coordinator processes (killed), kept for their logs.
    past_coordinators: Vec<Daemon>,
    /// Port the coordinator serves on; kept across restarts.
    port: u16,
    agents: Vec<Daemon>,
    /// Instance processes seen in `list`, killed at drop if still alive.
    instance_procs: Mutex<BTreeSet<ProcId>>,
    cli_runs: AtomicU64,
    coordinator_args: Vec<String>,
}

impl Cluster {
    /// A coordinator and `n_agents` agents named node-a, node-b, ..., each ready.
    pub fn start(n_agents: usize) -> Result<Cluster, Error> {
        Cluster::start_with(n_agents, &[])
    }

    /// As [`Cluster::start`], with extra coordinator flags (e.g. `--heartbeat-timeout 3s`).
    pub fn start_with(n_agents: usize, coordinator_args: &[&str]) -> Result<Cluster, Error> {
        if n_agents > NODE_NAMES.len() {
            return Err(unexpected(
                "starting a cluster",
                format!("at most {} agents", NODE_NAMES.len()),
            ));
        }
        let bins = Bins::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("pmcluster-it-")
            .tempdir()
            .map_err(io_err("creating the temporary directory"))?;
        let root = dir.path().to_path_buf();
        let mut cluster = Cluster {
            dir: Some(dir),
            root,
            bins,
            coordinator: None,
            past_coordinators: Vec::new(),
            port: 0,
            agents: Vec::new(),
            instance_procs: Mutex::new(BTreeSet::new()),
            cli_runs: AtomicU64::new(0),
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
        };
        match cluster.boot(n_agents) {
            Ok(()) => Ok(cluster),
            Err(e) => Err(Error::Start {
                source: Box::new(e),
                tails: cluster.tails(),
            }),
        }
    }

    fn boot(&mut self, n_agents: usize) -> Result<(), Error> {
        self.spawn_coordinator()?;
        let names = &NODE_NAMES[..n_agents];
        for name in names {
            self.add_agent(name)?;
        }
        self.wait_ready(names, STARTUP_TIMEOUT)
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Path of `pmcluster-testapp`.
    pub fn testapp(&self) -> &Path {
        &self.bins.testapp
    }

    /// The coordinator's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for `--coordinator` and gRPC clients.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn coordinator(&self) -> Option<&Daemon> {
        self.coordinator.as_ref()
    }

    pub fn agents(&self) -> &[Daemon] {
        &self.agents
    }

    /// The agent [`Cluster::add_agent`] returned `idx` for.
    pub fn agent(&self, idx: usize) -> &Daemon {
        &self.agents[idx]
    }

    /// Index of the first agent started with this node name.
    pub fn agent_idx(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.name == name)
    }

    /// Starts the coordinator on `self.port` (0 the first time) and waits for the line that
    /// names its address.
    fn spawn_coordinator(&mut self) -> Result<(), Error> {
        let run = self.past_coordinators.len() + usize::from(self.coordinator.is_some()) + 1;
        let data_dir = self.root.join("coordinator");
        fs::create_dir_all(&data_dir).map_err(io_err("creating the coordinator data dir"))?;
        let stdout_path = self.root.join(format!("coordinator-{run}.stdout.log"));
        let stderr_path = self.root.join(format!("coordinator-{run}.stderr.log"));
        let listen = format!("127.0.0.1:{}", self.port);
        let child = Command::new(&self.bins.coordinator)
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.coordinator_args)
            .env_remove("PMCLUSTER_LISTEN")
            .env_remove("PMCLUSTER_DATA_DIR")
            // Plain logs in the files the failure report prints.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(log_file(&stderr_path)?)
            .spawn()
            .map_err(io_err(format!(
                "spawning {}",
                self.bins.coordinator.display()
            )))?;
        if let Some(old) = self.coordinator.take() {
            self.past_coordinators.push(old);
        }
        let daemon = self.coordinator.insert(Daemon::new(
            "coordinator",
            data_dir,
            stdout_path.clone(),
            stderr_path,
            child,
        ));
        const PREFIX: &str = "pmcluster-coordinator listening on ";
        let port = poll_until(STARTUP_TIMEOUT, "the coordinator's listening line", || {
            let out = fs::read_to_string(&stdout_path).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with(PREFIX)) {
                let addr = &line[PREFIX.len()..];
                return match addr.trim().parse::<SocketAddr>() {
                    Ok(a) => Ok(Ok(a.port())),
                    Err(e) => Ok(Err(unexpected(
                        "the coordinator's listening line",
                        format!("{line:?}: {e}"),
                    ))),
                };
            }
            if let Some(status) = daemon.try_exit() {
                return Ok(Err(Error::EarlyExit {
                    what: format!("pmcluster-coordinator --listen {listen}"),
                    status: status.to_string(),
                    tail: daemon.stderr_tail(30),
                }));
            }
            Err(format!("stdout so far: {out:?}"))
        })??;
        if self.port != 0 && port != self.port {
            return Err(unexpected(
                "restarting the coordinator",
                format!("asked for port {}, it listens on {port}", self.port),
            ));
        }
        self.port = port;
        Ok(())
    }

    /// Starts an agent named `name` with a data dir of its own, without waiting for it to be
    /// ready. Returns its index for [`Cluster::agent`].
    pub fn add_agent(&mut self, name: &str) -> Result<usize, Error> {
        self.add_agent_with(name, &[])
    }

    /// As [`Cluster::add_agent`], with extra agent flags (e.g. `--label region=eu`). The agent
    /// stops its instances when it gets SIGTERM (`--stop-instances-on-exit`), so that a test's
    /// end cleans up.
    pub fn add_agent_with(&mut self, name: &str, extra_args: &[&str]) -> Result<usize, Error> {
        let data_dir = self
            .root
            .join(format!("agent-{}-{name}", self.agents.len()));
        self.spawn_agent(name, data_dir, extra_args, true)
    }

    /// As [`Cluster::add_agent_with`], but SIGTERM makes the agent leave its instances running
    /// (the agent's default).
    pub fn add_agent_leaving_instances(
        &mut self,
        name: &str,
        extra_args: &[&str],
    ) -> Result<usize, Error> {
        let data_dir = self
            .root
            .join(format!("agent-{}-{name}", self.agents.len()));
        self.spawn_agent(name, data_dir, extra_args, false)
    }

    /// Starts an agent named `name` on an existing data dir (another agent's, say, to reuse it
    /// under a new name). Returns its index for [`Cluster::agent`].
    pub fn add_agent_in(
        &mut self,
        name: &str,
        data_dir: PathBuf,
        extra_args: &[&str],
    ) -> Result<usize, Error> {
        self.spawn_agent(name, data_dir, extra_args, true)
    }

    /// Starts a new agent with the name and data dir of agent `idx` (which must have exited or
    /// been killed), as an agent restart on the same host would. Returns the new agent's index.
    pub fn restart_agent(&mut self, idx: usize, extra_args: &[&str]) -> Result<usize, Error> {
        let old = &self.agents[idx];
        if old.running() {
            return Err(unexpected(
                format!("restarting agent {}", old.name),
                "it still runs; kill it first",
            ));
        }
        let (name, data_dir) = (old.name.clone(), old.data_dir.clone());
        self.spawn_agent(&name, data_dir, extra_args, true)
    }

    fn spawn_agent(
        &mut self,
        name: &str,
        data_dir: PathBuf,
        extra_args: &[&str],
        stop_instances_on_exit: bool,
    ) -> Result<usize, Error> {
        let idx = self.agents.len();
        let base = format!("agent-{idx}-{name}");
        fs::create_dir_all(&data_dir).map_err(io_err("creating an agent data dir"))?;
        let stdout_path = self.root.join(format!("{base}.stdout.log"));
        let stderr_path = self.root.join(format!("{base}.stderr.log"));
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("--coordinator")
            .arg(self.url())
            .arg("--node-name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra_args)
            .env_remove("PMCLUSTER_STOP_INSTANCES_ON_EXIT")
            // Plain logs in the files the failure report prints.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(log_file(&stderr_path)?);
        if stop_instances_on_exit {
            cmd.arg("--stop-instances-on-exit");
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", self.bins.agent.display())))?;
        self.agents
            .push(Daemon::new(name, data_dir, stdout_path, stderr_path, child));
        Ok(idx)
    }

    /// Waits until `nodes` lists each of `names` as ready.
    pub fn wait_ready(&self, names: &[&str], timeout: Duration) -> Result<(), Error> {
        let what = format!("nodes {names:?} to be ready");
        poll_until(timeout, &what, || {
            for (i, agent) in self.agents.iter().enumerate() {
                // Only the newest agent of a name counts: an older one may have been killed on purpose.
                let newest = !self.agents[i + 1..].iter().any(|a| a.name == agent.name);
                if newest
                    && names.contains(&agent.name.as_str())
                    && let Some(status) = agent.try_exit()
                {
                    return Ok(Err(Error::EarlyExit {
                        what: format!("agent {}", agent.name),
                        status: status.to_string(),
                        tail: agent.stderr_tail(30),
                    }));
                }
            }
            let nodes = self.nodes_json()?;
            let ready: BTreeSet<&str> = nodes
                .iter()
                .filter(|n| n["status"] == "ready")
                .filter_map(|n| n["name"].as_str())
                .collect();
            if names.iter().all(|n| ready.contains(n)) {
                Ok(Ok(()))
            } else {
                Err(format!("{}", Value::Array(nodes)))
            }
        })?
    }

    /// Runs `pmcluster --coordinator URL args...`, killing it after [`CLI_TIMEOUT`].
    pub fn try_cli(&self, args: &[&str]) -> Result<CliOutput, Error> {
        self.try_cli_timeout(args, CLI_TIMEOUT)
    }

    pub fn try_cli_timeout(&self, args: &[&str], timeout: Duration) -> Result<CliOutput, Error> {
        let run = self.cli_runs.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("cli");
        fs::create_dir_all(&dir).map_err(io_err("creating the cli output dir"))?;
        let out_path = dir.join(format!("{run}.out"));
        let err_path = dir.join(format!("{run}.err"));
        let what = format!("pmcluster {}", args.join(" "));
        let mut child = Command::new(&self.bins.cli)
            .arg("--coordinator")
            .arg(self.url())
            .args(args)
            .env_remove("PMCLUSTER_COORDINATOR")
            .stdin(Stdio::null())
            .stdout(log_file(&out_path)?)
            .stderr(log_file(&err_path)?)
            .spawn()
            .map_err(io_err(format!("spawning {what}")))?;
        // A CLI call takes milliseconds; poll its exit finely so that waits stay quick.
        let interval = Duration::from_millis(10);
        let waited = poll_every(interval, timeout, &what, || match child.try_wait() {
            Ok(Some(status)) => Ok(Ok(status)),
            Ok(None) => Err(tail(&err_path, 5)),
            Err(e) => Ok(Err(io_err(format!("waiting for {what}"))(e))),
        });
        let status = match waited {
            Ok(status) => status?,
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timeout);
            }
        };
        let read = |p: &Path| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(io_err(format!("reading {}", p.display())))
        };
        let output = CliOutput {
            args: args.iter().map(|s| s.to_string()).collect(),
            status,
            stdout: read(&out_path)?,
            stderr: read(&err_path)?,
        };
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        Ok(output)
    }

    /// [`Cluster::try_cli`] that panics if the CLI could not be run at all (its exit status is
    /// the caller's to check).
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        match self.try_cli(args) {
            Ok(out) => out,
            Err(e) => panic!("running pmcluster {args:?}: {e}"),
        }
    }

    /// `list [APP] -o json` (every app when `app` is empty), as JSON objects. Remembers the
    /// instance pids it sees so that drop can end them.
    pub fn list_json(&self, app: &str) -> Result<Vec<Value>, Error> {
        let mut args = vec!["list", "-o", "json"];
        if !app.is_empty() {
            args.push(app);
        }
        let out = self.try_cli(&args)?;
        if !out.success() {
            return Err(unexpected("pmcluster list", out.to_string()));
        }
        let entries = match out.json()? {
            Value::Array(entries) => entries,
            other => return Err(unexpected("pmcluster list -o json", other.to_string())),
        };
        let pids = entries
            .iter()
            .filter_map(|e| e["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok());
        self.remember_instances(pids);
        Ok(entries)
    }

    /// `list [APP]` as typed entries, sorted by app and index.
    pub fn instances(&self, app: &str) -> Result<Vec<Instance>, Error> {
        let mut list = self
            .list_json(app)?
            .iter()
            .map(Instance::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_by(|a, b| (&a.app, a.index).cmp(&(&b.app, b.index)));
        Ok(list)
    }

    /// `nodes -o json`.
    pub fn nodes_json(&self) -> Result<Vec<Value>, Error> {
        let out = self.try_cli(&["nodes", "-o", "json"])?;
        if !out.success() {
            return Err(unexpected("pmcluster nodes", out.to_string()));
        }
        match out.json()? {
            Value::Array(nodes) => Ok(nodes),
            other => Err(unexpected("pmcluster nodes -o json", other.to_string())),
        }
    }

    /// Records processes to end at drop whatever their parent (instances adopted by a restarted
    /// agent are not its children).
    pub fn remember_pids(&self, pids: &[u32]) {
        let mut known = self
            .instance_procs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &pid in pids {
            if let Some(id) = ProcId::of(pid) {
                known.insert(id);
            }
        }
    }

    /// Records processes that are children of one of our agents, for the safety net at drop.
    fn remember_instances(&self, pids: impl Iterator<Item = u32>) {
        let agent_pids: BTreeSet<u32> = self.agents.iter().map(Daemon::pid).collect();
        let mut known = self
            .instance_procs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for pid in pids {
            if let Some(stat) = proc_stat(pid)
                && agent_pids.contains(&stat.ppid)
            {
                known.insert(ProcId {
                    pid,
                    start_ticks: stat.start_ticks,
                });
            }
        }
    }

    /// Pids of the running agents.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents
            .iter()
            .filter(|a| a.running())
            .map(|a| a.pid())
            .collect()
    }

    /// Every child process of a running agent but its log pumps (which carry
    /// `PMCLUSTER_PUMP_FOR` from their start), with the agent's node name.
    pub fn agent_children(&self) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        for agent in self.agents.iter() {
            if agent.running() {
                for pid in children_of(agent.pid()) {
                    if is_log_pump(pid) {
                        continue;
                    }
                    out.insert(pid, agent.name.clone());
                }
            }
        }
        let pids: Vec<u32> = out.keys().copied().collect();
        self.remember_instances(pids.into_iter());
        out
    }

    /// SIGKILLs the coordinator and reaps it.
    pub fn kill_coordinator(&mut self) -> Result<(), Error> {
        let daemon = self
            .coordinator
            .as_ref()
            .ok_or_else(|| unexpected("killing the coordinator", "it is not running"))?;
        daemon.kill();
        Ok(())
    }

    /// Starts the coordinator again on the same port with the same data dir.
    pub fn restart_coordinator(&mut self) -> Result<(), Error> {
        if let Some(c) = self.coordinator.as_ref()
            && c.running()
        {
            return Err(unexpected(
                "restarting the coordinator",
                "it still runs; kill it first",
            ));
        }
        self.spawn_coordinator()
    }

    /// The last lines of every daemon's stderr, for failure reports.
    pub fn tails(&self) -> String {
        let mut out = String::new();
        let daemons = self
            .past_coordinators
            .iter()
            .chain(self.coordinator.iter())
            .chain(self.agents.iter());
        for d in daemons {
            out.push_str(&format!(
                "\n===== {} (pid {}) {} =====\n{}\n",
                d.name,
                d.pid(),
                d.stderr_path.display(),
                d.stderr_tail(40)
            ));
        }
        out
    }

    /// Ends every process this cluster started or saw, by pid.
    fn shutdown(&mut self) {
        // Learn the latest instances while the coordinator and agents still run.
        if self.coordinator.as_ref().is_some_and(Daemon::running) {
            let _ = self.try_cli_timeout(&["list", "-o", "json"], Duration::from_secs(5));
        }
        self.agent_children();
        for agent in self.agents.iter() {
            agent.signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + AGENT_GRACE;
        for agent in self.agents.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            if agent.wait_exit(left).is_none() {
                eprintln!(
                    "harness: agent {} (pid {}) still runs {AGENT_GRACE:?} after SIGTERM; \
                     sending SIGKILL",
                    agent.name,
                    agent.pid()
                );
                agent.kill();
            }
        }
        if let Some(c) = self.coordinator.as_ref() {
            c.kill();
        }
        let known = std::mem::take(
            &mut *self
                .instance_procs
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for proc in known {
            if !proc.alive() {
                continue;
            }
            // An instance that leads its own process group may have children in it.
            if proc_stat(proc.pid).is_some_and(|s| s.pgrp == proc.pid) {
                let _ = signal::kill(group_of(proc.pid), Signal::SIGKILL);
            }
            proc.signal(Signal::SIGKILL);
            eprintln!(
                "harness: instance pid {} outlived its agent; sent SIGKILL",
                proc.pid
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
        let failed = std::thread::panicking();
        if failed {
            eprintln!("harness: daemon logs of the failed test:{}", self.tails());
        }
        if (failed || std::env::var_os(KEEP_ENV).is_some())
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!("harness: kept {}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling `list` in the background

/// Samples `list -o json` every 100 ms on its own thread, checking an invariant on each sample.
/// Collects violations instead of panicking, so the main thread reports them with context.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Sampler {
    pub fn start(
        cli: PathBuf,
        url: String,
        app: &str,
        check: impl Fn(&[Instance]) -> Result<(), String> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let app = app.to_string();
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            let mut violations = Vec::new();
            // Bounded: stops when asked, and never runs past ten minutes.
            let end = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let out = Command::new(&cli)
                    .args(["--coordinator", &url, "list", &app, "-o", "json"])
                    .output();
                if let Ok(out) = out
                    && out.status.success()
                    && let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    let list: Vec<Instance> = entries
                        .iter()
                        .filter_map(|e| Instance::from_json(e).ok())
                        .collect();
                    samples += 1;
                    if let Err(why) = check(&list) {
                        violations.push(why);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (samples, violations)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns how many samples were taken and the violations seen.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((0, vec!["sampler thread panicked".into()]))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http() {
        let cases: [(&[u8], Result<HttpReply, ()>); 4] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
                Ok(HttpReply {
                    status: 200,
                    body: "{}".into(),
                }),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                Ok(HttpReply {
                    status: 503,
                    body: String::new(),
                }),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                Ok(HttpReply {
                    status: 200,
                    body: "abcde".into(),
                }),
            ),
            (b"HTTP/1.1 200 OK\r\n", Err(())),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_http(raw).map_err(|_| ()),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let stat = proc_stat(me).expect("own /proc stat");
        assert!(matches!(stat.state, 'R' | 'S'), "{stat:?}");
        let id = ProcId::of(me).expect("own id");
        assert!(id.alive());
        let reused = ProcId {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        assert!(!reused.alive());
    }

    #[test]
    fn port_ranges_do_not_overlap() {
        let mut ranges: Vec<(u16, u16)> = (0..20)
            .map(|_| {
                let start = free_port_range(12).expect("a free range");
                (start, start + 11)
            })
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 < pair[1].0, "{ranges:?}");
        }
    }

    #[test]
    fn parses_list_entries() {
        let v = serde_json::json!({
            "app": "web", "index": 3, "id": "x", "node": null, "pid": null, "port": 20003,
            "status": "pending", "restarts": 0
        });
        let i = Instance::from_json(&v).expect("parses");
        assert_eq!(
            i.to_string(),
            "web[3] pending on - pid=- port=20003 restarts=0"
        );
        assert!(!i.online());
        assert!(Instance::from_json(&serde_json::json!({"app": "web"})).is_err());
    }
}
