//! The cluster: a coordinator and agents on loopback in one temporary directory, the CLI run
//! against it, and the cleanup at drop that ends, by pid, everything it started or saw.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmcluster_agent::process::{read_stat, signal_group};
use serde_json::Value;

use crate::bins::Bins;
use crate::cli::{CliOutput, Instance, render};
use crate::daemon::{Daemon, log_file, wait_listening};
use crate::error::{Error, io_err, unexpected};
use crate::proc::{ProcId, children_of, is_log_pump};
use crate::run::{Stdout, run_bounded, run_bounded_with};
use crate::wait::poll_until;

/// How long the harness waits for a daemon to come up, or for instances to come online.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI call may take before the harness kills it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long agents get after SIGTERM to stop their instances and exit.
pub const AGENT_GRACE: Duration = Duration::from_secs(10);
/// Set to keep the temporary directory of every cluster, not only of failed tests.
pub const KEEP_ENV: &str = "PMCLUSTER_TEST_KEEP";

/// Node names given to the agents of [`Cluster::start`], in order.
pub const NODE_NAMES: [&str; 8] = [
    "node-a", "node-b", "node-c", "node-d", "node-e", "node-f", "node-g", "node-h",
];

/// The test host that runs the CLI in a [`Cluster::start_hosts`] cluster: no daemon runs there.
pub const CLIENT_HOST: &str = "client";

/// A coordinator and its agents on loopback (or on test hosts), in one temporary directory.
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
    /// Agent cgroups to remove at the end besides those the agents' data dirs name then (see
    /// [`Cluster::remember_cgroups_of`]).
    cgroups: Mutex<BTreeSet<PathBuf>>,
    cli_runs: AtomicU64,
    coordinator_args: Vec<String>,
    /// Coordinator URLs (comma-separated) of coordinators the cluster does not run itself
    /// (an HA pair, see [`crate::Pair`]); agents and the CLI get them all.
    external: Option<String>,
    /// Mutual TLS on every link: the coordinator serves it, each agent and CLI call presents
    /// its certificate from here.
    tls: Option<crate::Pki>,
    /// Test hosts: the coordinator, each agent and the CLI run on hosts of their own (network
    /// namespaces, see [`crate::Net`]) instead of loopback. Shared with the daemons a test
    /// runs on the same hosts beside the cluster (an HA pair, etcd).
    net: Option<Arc<crate::Net>>,
    /// Daemons started from now on log to a pipe whose reader is gone (see
    /// [`Cluster::start_logs_unread`]).
    logs_unread: bool,
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
        let args = coordinator_args.iter().map(|s| s.to_string()).collect();
        Cluster::build(n_agents, args, None, false, None, false)
    }

    /// As [`Cluster::start`], with every daemon's stderr, where it logs, a pipe whose reader
    /// is gone before it starts (a log reader that went away: a restarted journal, `| head`):
    /// each of its log lines fails with EPIPE. `RUST_LOG=debug` makes them log much. Their
    /// logs are not kept, so a failure report has none.
    pub fn start_logs_unread(n_agents: usize) -> Result<Cluster, Error> {
        Cluster::build(n_agents, Vec::new(), None, false, None, true)
    }

    /// As [`Cluster::start_with`], on test hosts (see [`crate::Net`]): host "coordinator" runs
    /// the coordinator (plaintext on its bridge address, so `--insecure`), hosts node-a, ...
    /// run one agent each, and host [`CLIENT_HOST`], with no daemon, runs the CLI. The caller
    /// checks [`crate::hosts_unavailable`] first.
    pub fn start_hosts(n_agents: usize, coordinator_args: &[&str]) -> Result<Cluster, Error> {
        Cluster::start_hosts_with(n_agents, coordinator_args, &[])
    }

    /// As [`Cluster::start_hosts`], with more hosts on the same net that run nothing yet
    /// (`extra_hosts`, e.g. a load balancer's), after the client.
    pub fn start_hosts_with(
        n_agents: usize,
        coordinator_args: &[&str],
        extra_hosts: &[&str],
    ) -> Result<Cluster, Error> {
        if n_agents > NODE_NAMES.len() {
            return Err(unexpected(
                "starting a cluster",
                format!("at most {} agents", NODE_NAMES.len()),
            ));
        }
        let mut names = vec!["coordinator"];
        names.extend(&NODE_NAMES[..n_agents]);
        names.push(CLIENT_HOST);
        names.extend(extra_hosts);
        let net = Arc::new(crate::Net::create(&names)?);
        let mut args: Vec<String> = coordinator_args.iter().map(|s| s.to_string()).collect();
        args.push("--insecure".into());
        Cluster::build(n_agents, args, None, false, Some(net), false)
    }

    /// As [`Cluster::start_external`], on the test hosts `net`: each agent on the host of its
    /// name (node-a, ...), the CLI on [`CLIENT_HOST`]; `net` must have those hosts.
    pub fn start_external_on(
        net: Arc<crate::Net>,
        n_agents: usize,
        urls: &str,
    ) -> Result<Cluster, Error> {
        if n_agents > NODE_NAMES.len() {
            return Err(unexpected(
                "starting a cluster",
                format!("at most {} agents", NODE_NAMES.len()),
            ));
        }
        Cluster::build(
            n_agents,
            Vec::new(),
            Some(urls.to_string()),
            false,
            Some(net),
            false,
        )
    }

    /// The test hosts of a [`Cluster::start_hosts`] cluster.
    pub fn net(&self) -> Option<&crate::Net> {
        self.net.as_deref()
    }

    /// A command that runs `program` on host `host` of a [`Cluster::start_hosts`] cluster, or
    /// here when the cluster runs on loopback.
    fn command_on(&self, host: &str, program: &Path) -> Result<Command, Error> {
        match &self.net {
            Some(net) => net.command(host, program),
            None => Ok(Command::new(program)),
        }
    }

    /// The address the coordinator listens on.
    fn coordinator_ip(&self) -> String {
        match &self.net {
            Some(net) => net
                .addr("coordinator")
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "127.0.0.1".into()),
            None => "127.0.0.1".into(),
        }
    }

    /// As [`Cluster::start`], all over mutual TLS, with a CA and certificates made in the
    /// cluster's directory (see [`Cluster::pki`]).
    pub fn start_tls(n_agents: usize) -> Result<Cluster, Error> {
        Cluster::build(n_agents, Vec::new(), None, true, None, false)
    }

    /// The certificates of a [`Cluster::start_tls`] cluster.
    pub fn pki(&self) -> Option<&crate::Pki> {
        self.tls.as_ref()
    }

    /// `n_agents` agents (node-a, ...) of coordinators that run elsewhere, at `urls`
    /// (comma-separated, as `--coordinator` takes them); ready when one of them answers.
    pub fn start_external(n_agents: usize, urls: &str) -> Result<Cluster, Error> {
        if n_agents > NODE_NAMES.len() {
            return Err(unexpected(
                "starting a cluster",
                format!("at most {} agents", NODE_NAMES.len()),
            ));
        }
        Cluster::build(
            n_agents,
            Vec::new(),
            Some(urls.to_string()),
            false,
            None,
            false,
        )
    }

    fn build(
        n_agents: usize,
        mut coordinator_args: Vec<String>,
        external: Option<String>,
        tls: bool,
        net: Option<Arc<crate::Net>>,
        logs_unread: bool,
    ) -> Result<Cluster, Error> {
        let bins = Bins::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("pmcluster-it-")
            .tempdir()
            .map_err(io_err("creating the temporary directory"))?;
        let root = dir.path().to_path_buf();
        let tls = if tls {
            let pki = crate::Pki::create(&root.join("pki"))?;
            coordinator_args.extend(pki.coordinator_args());
            Some(pki)
        } else {
            None
        };
        let mut cluster = Cluster {
            dir: Some(dir),
            root,
            bins,
            coordinator: None,
            past_coordinators: Vec::new(),
            port: 0,
            agents: Vec::new(),
            instance_procs: Mutex::new(BTreeSet::new()),
            cgroups: Mutex::new(BTreeSet::new()),
            cli_runs: AtomicU64::new(0),
            coordinator_args,
            external,
            tls,
            net,
            logs_unread,
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
        if self.external.is_none() {
            self.spawn_coordinator()?;
        }
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
        match &self.external {
            Some(urls) => urls.clone(),
            None if self.tls.is_some() => {
                format!("https://{}:{}", self.coordinator_ip(), self.port)
            }
            None => format!("http://{}:{}", self.coordinator_ip(), self.port),
        }
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
        let listen = format!("{}:{}", self.coordinator_ip(), self.port);
        let child = self
            .command_on("coordinator", &self.bins.coordinator)?
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.coordinator_args)
            .env_remove("PMCLUSTER_LISTEN")
            .env_remove("PMCLUSTER_DATA_DIR")
            // Plain logs in the files the failure report prints.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", self.log_level())
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(self.log_stream(&stderr_path)?)
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
        let port =
            wait_listening(daemon, &format!("pmcluster-coordinator --listen {listen}"))?.port();
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

    /// As [`Cluster::add_agent`], dialling `coordinator` (one URL or a comma-separated list)
    /// instead of this cluster's URL.
    pub fn add_agent_at(&mut self, name: &str, coordinator: &str) -> Result<usize, Error> {
        let data_dir = self
            .root
            .join(format!("agent-{}-{name}", self.agents.len()));
        self.spawn_agent(name, data_dir, &["--coordinator", coordinator], true)
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
        let mut cmd = self.command_on(name, &self.bins.agent)?;
        // An explicit --coordinator among the extra flags replaces the cluster's (clap takes
        // the flag once).
        if !extra_args.contains(&"--coordinator") {
            cmd.arg("--coordinator").arg(self.url());
        }
        // An explicit --tls-cert (a test's wrong certificate) replaces the node's own.
        if let Some(pki) = &self.tls
            && !extra_args.contains(&"--tls-cert")
        {
            cmd.args(pki.agent_args(name)?);
        }
        cmd.arg("--node-name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra_args)
            .env_remove("PMCLUSTER_STOP_INSTANCES_ON_EXIT")
            // Plain logs in the files the failure report prints.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", self.log_level())
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(self.log_stream(&stderr_path)?);
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

    /// Where a daemon's stderr goes: `path`, or a pipe nobody reads (see
    /// [`Cluster::start_logs_unread`]).
    fn log_stream(&self, path: &Path) -> Result<Stdio, Error> {
        if !self.logs_unread {
            return Ok(Stdio::from(log_file(path)?));
        }
        let (reader, writer) = std::io::pipe().map_err(io_err("making a pipe"))?;
        drop(reader);
        Ok(Stdio::from(writer))
    }

    /// The daemons' `RUST_LOG`: `debug` where nobody reads their logs, so that they write much
    /// to the closed pipe; else the caller's level, `info` by default.
    fn log_level(&self) -> String {
        match std::env::var("RUST_LOG") {
            _ if self.logs_unread => "debug".to_string(),
            Ok(level) if !level.is_empty() => level,
            _ => "info".to_string(),
        }
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
        self.try_cli_at(&self.url(), args, timeout)
    }

    /// Runs `pmcluster --coordinator COORDINATOR args...` (one URL or a comma-separated list),
    /// killing it after `timeout`.
    pub fn try_cli_at(
        &self,
        coordinator: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CliOutput, Error> {
        let (mut cmd, run) = self.cli_command(coordinator, args)?;
        run_bounded(&mut cmd, &self.root.join("cli"), &run, args, timeout)
    }

    /// As [`Cluster::try_cli`], run in `dir` (what `start app.py` finds there).
    pub fn try_cli_in(&self, dir: &Path, args: &[&str]) -> Result<CliOutput, Error> {
        let (mut cmd, run) = self.cli_command(&self.url(), args)?;
        cmd.current_dir(dir);
        run_bounded(&mut cmd, &self.root.join("cli"), &run, args, CLI_TIMEOUT)
    }

    /// As [`Cluster::try_cli`], with a stdout whose reader went away before the command started
    /// (`pmcluster ... | true`).
    pub fn try_cli_unread(&self, args: &[&str]) -> Result<CliOutput, Error> {
        let (mut cmd, run) = self.cli_command(&self.url(), args)?;
        let dir = self.root.join("cli");
        run_bounded_with(&mut cmd, &dir, &run, args, CLI_TIMEOUT, Stdout::Unread)
    }

    /// `pmcluster --coordinator COORDINATOR args...`, and a name for its output files.
    fn cli_command(&self, coordinator: &str, args: &[&str]) -> Result<(Command, String), Error> {
        let run = self.cli_runs.fetch_add(1, Ordering::Relaxed);
        // A test's own --ca (no or another certificate) replaces the test user's.
        let tls = match &self.tls {
            Some(pki) if !args.contains(&"--ca") => pki.cli_args(),
            _ => Vec::new(),
        };
        let mut cmd = self.command_on(CLIENT_HOST, &self.bins.cli)?;
        cmd.arg("--coordinator")
            .arg(coordinator)
            .args(tls)
            .args(args)
            .env_remove("PMCLUSTER_COORDINATOR");
        Ok((cmd, run.to_string()))
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

    /// Waits until `app` has exactly `n` instances, indices 0..n, all [`Instance::live`]; returns
    /// them sorted by index.
    pub fn wait_online(&self, app: &str, n: usize) -> Result<Vec<Instance>, Error> {
        poll_until(
            STARTUP_TIMEOUT,
            &format!("{n} online instances of {app}"),
            || {
                let list = self.instances(app)?;
                let indices_ok = list
                    .iter()
                    .enumerate()
                    .all(|(i, inst)| inst.index as usize == i);
                if list.len() == n && indices_ok && list.iter().all(Instance::live) {
                    Ok(list)
                } else {
                    Err(render(&list))
                }
            },
        )
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

    /// Keeps the cgroup the agent of `data_dir` records now, to remove at drop: one a later
    /// agent on the dir (under another node name) no longer records.
    pub fn remember_cgroups_of(&self, data_dir: &Path) {
        if let Some(base) = recorded_cgroup(data_dir) {
            (self.cgroups.lock().unwrap_or_else(|e| e.into_inner())).insert(base);
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
            // One read for the parent and the start time, so both are of the same process.
            if let Some(stat) = read_stat(pid)
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
        // Frozen or cut-off daemons could neither answer nor stop.
        if let Some(net) = &self.net {
            net.release();
        }
        // Learn the latest instances while the coordinator and agents still run.
        if self.coordinator.as_ref().is_some_and(Daemon::running) || self.external.is_some() {
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
            if read_stat(proc.pid).is_some_and(|s| s.pgrp == proc.pid) {
                signal_group(proc.pid, Signal::SIGKILL);
            }
            proc.signal(Signal::SIGKILL);
            eprintln!(
                "harness: instance pid {} outlived its agent; sent SIGKILL",
                proc.pid
            );
        }
        if let Some(net) = &self.net {
            net.kill_everything();
        }
        // An agent that did not exit by itself (kill -9 in a test, or after its grace) never
        // removed its cgroups; the record it keeps in its data dir names them.
        let mut bases =
            std::mem::take(&mut *self.cgroups.lock().unwrap_or_else(|e| e.into_inner()));
        bases.extend(
            self.agents
                .iter()
                .filter_map(|a| recorded_cgroup(&a.data_dir)),
        );
        for base in bases {
            remove_empty_cgroups(&base);
        }
    }
}

/// The cgroup directory the agent of `data_dir` records there, if it is an agent cgroup.
fn recorded_cgroup(data_dir: &Path) -> Option<PathBuf> {
    let record = data_dir.join(pmcluster_spec::instance::CGROUP_RECORD_FILE);
    let base = PathBuf::from(fs::read_to_string(record).ok()?.trim());
    let ours = base.starts_with("/sys/fs/cgroup")
        && base
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pmcluster-"));
    ours.then_some(base)
}

/// Removes the empty directories of an agent's cgroup `base`, deepest first. One still holding
/// a process stays (the kernel refuses it).
fn remove_empty_cgroups(base: &Path) {
    fn below(dir: &Path) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                below(&entry.path());
            }
        }
        // Busy (a process left) or gone: nothing to do.
        let _ = fs::remove_dir(dir);
    }
    below(base);
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
