//! An HA pair: two coordinators sharing one etcd (the harness's own, see [`Etcd`]), each on its
//! own port and prefix-sharing, with agents and the CLI given both URLs. Kill, stop and restart
//! one coordinator; ask which one leads.
//!
//! Drop order: agents and instances first (the [`Cluster`]), then the coordinators, by pid,
//! then etcd.

use std::fs;
use std::ops::Deref;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::bins::Bins;
use crate::cluster::{CLIENT_HOST, Cluster};
use crate::daemon::{Daemon, log_file, wait_listening};
use crate::error::{Error, io_err, unexpected};
use crate::etcd::Etcd;
use crate::hosts::Net;
use crate::ports::free_port_range;
use crate::wait::{poll_every, poll_until};

static PAIRS: AtomicU64 = AtomicU64::new(0);

/// The port each coordinator of a pair on test hosts listens on: each has a host of its own.
const HOSTS_PORT: u16 = 7450;
/// How long one `status` call may take: a coordinator cut off from etcd must not hang a test.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one in-process status poll may take: a poll that waits longer is a failed poll,
/// and the next one asks again.
const DIRECT_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Two coordinators on etcd, and agents of both.
pub struct Pair {
    /// `None` only while dropping (it goes first).
    cluster: Option<Cluster>,
    bins: Bins,
    dir: tempfile::TempDir,
    ports: [u16; 2],
    /// The current process of each coordinator (`None`: not started yet).
    coordinators: [Option<Daemon>; 2],
    /// Earlier processes, kept for their logs.
    past: Vec<Daemon>,
    runs: u32,
    prefix: String,
    /// Each coordinator's flags beyond those the pair sets.
    extra: [Vec<String>; 2],
    /// On test hosts: the net and each coordinator's host (the CLI runs on [`CLIENT_HOST`]).
    on: Option<(Arc<Net>, [String; 2])>,
    /// Last: after the coordinators are gone.
    etcd: Etcd,
}

impl Deref for Pair {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        self.cluster()
    }
}

impl Pair {
    /// Two coordinators (`--store etcd --lease-ttl 4s` plus `coordinator_args`) on `etcd`, the
    /// first started first (so it leads), and `n_agents` agents of both.
    pub fn start(etcd: Etcd, n_agents: usize, coordinator_args: &[&str]) -> Result<Pair, Error> {
        Pair::boot(etcd, n_agents, [coordinator_args; 2], None)
    }

    /// As [`Pair::start`], each coordinator with flags of its own (a `--metrics-listen` each).
    pub fn start_each(
        etcd: Etcd,
        n_agents: usize,
        coordinator_args: [&[&str]; 2],
    ) -> Result<Pair, Error> {
        Pair::boot(etcd, n_agents, coordinator_args, None)
    }

    /// As [`Pair::start`], on test hosts: coordinator i on host `hosts[i]` of `net` (listening
    /// on its address), agents on the hosts node-a, ..., the CLI on [`CLIENT_HOST`]; `etcd`
    /// is typically [`Etcd::single_on`] a host of the same net. Plaintext on the bridge, so
    /// `--insecure`, as [`Cluster::start_hosts`].
    pub fn start_hosts(
        etcd: Etcd,
        net: Arc<Net>,
        hosts: [&str; 2],
        n_agents: usize,
        coordinator_args: &[&str],
    ) -> Result<Pair, Error> {
        for h in hosts {
            net.host(h)?;
        }
        let on = Some((net, hosts.map(str::to_string)));
        let mut args = coordinator_args.to_vec();
        args.push("--insecure");
        Pair::boot(etcd, n_agents, [args.as_slice(); 2], on)
    }

    fn boot(
        etcd: Etcd,
        n_agents: usize,
        coordinator_args: [&[&str]; 2],
        on: Option<(Arc<Net>, [String; 2])>,
    ) -> Result<Pair, Error> {
        let bins = Bins::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("pmcluster-pair-")
            .tempdir()
            .map_err(io_err("creating the pair's directory"))?;
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let mut pair = Pair {
            cluster: None,
            bins,
            dir,
            ports: match on {
                Some(_) => [HOSTS_PORT, HOSTS_PORT],
                None => [free_port_range(1)?, free_port_range(1)?],
            },
            coordinators: [None, None],
            past: Vec::new(),
            runs: 0,
            prefix: format!("/pmcluster-it/{}-{n}", std::process::id()),
            extra: coordinator_args.map(|args| args.iter().map(|s| s.to_string()).collect()),
            on,
            etcd,
        };
        let booted = pair.spawn(0).and_then(|()| {
            pair.wait_leader(Duration::from_secs(30))?;
            pair.spawn(1)
        });
        if let Err(e) = booted {
            return Err(Error::Start {
                source: Box::new(e),
                tails: pair.tails(),
            });
        }
        let cluster = match &pair.on {
            Some((net, _)) => Cluster::start_external_on(Arc::clone(net), n_agents, &pair.urls()),
            None => Cluster::start_external(n_agents, &pair.urls()),
        };
        pair.cluster = Some(cluster?);
        Ok(pair)
    }

    pub fn cluster(&self) -> &Cluster {
        match &self.cluster {
            Some(c) => c,
            None => unreachable!("the cluster is only taken while dropping"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut Cluster {
        match &mut self.cluster {
            Some(c) => c,
            None => unreachable!("the cluster is only taken while dropping"),
        }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    /// `http://IP:PORT` of coordinator `i` (0 or 1): loopback, or its host's address.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{}", self.ip(i), self.ports[i])
    }

    fn ip(&self, i: usize) -> String {
        match &self.on {
            Some((net, hosts)) => net
                .addr(&hosts[i])
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "127.0.0.1".into()),
            None => "127.0.0.1".into(),
        }
    }

    /// The test host coordinator `i` runs on, for a pair on test hosts.
    pub fn host(&self, i: usize) -> Option<&str> {
        self.on.as_ref().map(|(_, hosts)| hosts[i].as_str())
    }

    /// A command that runs `program` on `host` (test hosts), or here on loopback.
    fn command(&self, host: &str, program: &std::path::Path) -> Result<Command, Error> {
        match &self.on {
            Some((net, _)) => net.command(host, program),
            None => Ok(Command::new(program)),
        }
    }

    /// Both URLs, comma-separated, as `--coordinator` takes them.
    pub fn urls(&self) -> String {
        format!("{},{}", self.url(0), self.url(1))
    }

    pub fn coordinator(&self, i: usize) -> Option<&Daemon> {
        self.coordinators[i].as_ref()
    }

    /// Starts coordinator `i` (again) on its port.
    pub fn spawn(&mut self, i: usize) -> Result<(), Error> {
        if self.coordinators[i].as_ref().is_some_and(Daemon::running) {
            return Err(unexpected("starting a coordinator", "it still runs"));
        }
        self.runs += 1;
        let name = format!("coordinator-{}", ["a", "b"][i]);
        let stdout_path = self
            .dir
            .path()
            .join(format!("{name}-{}.stdout.log", self.runs));
        let stderr_path = self
            .dir
            .path()
            .join(format!("{name}-{}.stderr.log", self.runs));
        let listen = format!("{}:{}", self.ip(i), self.ports[i]);
        let host = self.host(i).unwrap_or_default().to_string();
        let child = self
            .command(&host, &self.bins.coordinator)?
            .args(["--listen", &listen, "--store", "etcd", "--lease-ttl", "4s"])
            .args(["--etcd-endpoints", &self.etcd.endpoints().join(",")])
            .args(["--etcd-prefix", &self.prefix])
            .args(&self.extra[i])
            .env_remove("PMCLUSTER_LISTEN")
            .env_remove("PMCLUSTER_DATA_DIR")
            .env_remove("PMCLUSTER_STORE")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(log_file(&stderr_path)?)
            .spawn()
            .map_err(io_err(format!("spawning {name}")))?;
        let daemon = Daemon::new(
            &name,
            self.dir.path().to_path_buf(),
            stdout_path,
            stderr_path,
            child,
        );
        if let Some(old) = self.coordinators[i].replace(daemon) {
            self.past.push(old);
        }
        if let Some(d) = &self.coordinators[i] {
            wait_listening(d, &format!("{name} --listen {listen}"))?;
        }
        Ok(())
    }

    /// Replaces the extra flags of coordinator `i` for its next [`Pair::spawn`].
    pub fn set_args(&mut self, i: usize, coordinator_args: &[&str]) {
        self.extra[i] = coordinator_args.iter().map(|s| s.to_string()).collect();
    }

    /// SIGKILL coordinator `i`.
    pub fn kill(&self, i: usize) {
        if let Some(d) = &self.coordinators[i] {
            d.kill();
        }
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        if let Some(d) = &self.coordinators[i] {
            d.signal(sig);
        }
    }

    /// `status -o json` as coordinator `i` answers it (`None`: through both URLs), whether or
    /// not the cluster can serve (exit 0 or 3).
    pub fn status(&self, i: Option<usize>) -> Result<Value, Error> {
        let url = match i {
            Some(i) => self.url(i),
            None => self.urls(),
        };
        let child = self
            .command(CLIENT_HOST, &self.bins.cli)?
            .args(["--coordinator", &url, "status", "-o", "json"])
            .env_remove("PMCLUSTER_COORDINATOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running pmcluster status"))?;
        let out = output_within(child, STATUS_TIMEOUT, "pmcluster status")?;
        if !matches!(out.status.code(), Some(0 | 3)) {
            return Err(unexpected(
                "pmcluster status",
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| unexpected("pmcluster status -o json", e.to_string()))
    }

    /// Which coordinator says it leads, asking each directly.
    pub fn leader(&self) -> Option<usize> {
        (0..2).find(|&i| {
            self.coordinators[i].as_ref().is_some_and(Daemon::running)
                && self.status(Some(i)).is_ok_and(|v| {
                    v["coordinators"].as_array().is_some_and(|list| {
                        list.iter()
                            .any(|c| c["answered"] == true && c["role"] == "leader")
                    })
                })
        })
    }

    /// Waits until one coordinator leads; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, Error> {
        poll_until(timeout, "a leader", || {
            self.leader().ok_or_else(|| self.roles())
        })
    }

    /// Whether coordinator `i` says, itself, that it leads. Asked in-process on loopback (no
    /// CLI process per poll, so that takeover times are not padded by process starts), through
    /// the CLI on test hosts.
    pub fn leads(&self, i: usize) -> bool {
        if !self.coordinators[i].as_ref().is_some_and(Daemon::running) {
            return false;
        }
        if self.on.is_some() {
            let url = self.url(i);
            return self.status(Some(i)).is_ok_and(|v| {
                v["coordinators"].as_array().is_some_and(|list| {
                    list.iter().any(|c| {
                        c["answered"] == true && c["role"] == "leader" && c["advertise"] == url
                    })
                })
            });
        }
        get_status(&self.url(i)).is_ok_and(|reply| {
            reply
                .coordinators
                .iter()
                .any(|c| c.this && c.role == "leader")
        })
    }

    /// Waits until coordinator `i` leads; returns how long that took. Only `i` is asked: a
    /// stopped coordinator would hold each poll for the whole status timeout.
    pub fn wait_leads(&self, i: usize, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        poll_until(timeout, &format!("coordinator {i} leading"), || {
            if self.leads(i) {
                Ok(start.elapsed())
            } else {
                // Only `i` is asked: asking a stopped coordinator too would stall every poll.
                Err(self.role(i))
            }
        })
    }

    fn roles(&self) -> String {
        (0..2).map(|i| self.role(i)).collect::<Vec<_>>().join("; ")
    }

    /// What coordinator `i` says of itself, for failure reports: in-process on loopback (a
    /// stopped coordinator costs [`DIRECT_STATUS_TIMEOUT`], not a CLI's whole timeout).
    fn role(&self, i: usize) -> String {
        let said = if self.on.is_some() {
            self.status(Some(i))
                .map(|v| v.to_string())
                .map_err(|e| e.to_string())
        } else {
            get_status(&self.url(i)).map(|reply| format!("{reply:?}"))
        };
        match said {
            Ok(s) | Err(s) => format!("{}: {s}", self.url(i)),
        }
    }

    /// Deletes the election's leader key in etcd, as its lease's expiry would, while the leader
    /// may know nothing of it (it is stopped, say): the standby's campaign wins at once, and the
    /// deposed leader's writes meet the fence. Returns the key. Through etcd's JSON gateway, so
    /// that no etcd client is needed here.
    pub fn take_leader_key(&self) -> Result<String, Error> {
        let election = format!("{}/election/", self.prefix);
        let endpoint = self.etcd.endpoints().into_iter().next().unwrap_or_default();
        let range = serde_json::json!({
            "key": b64(election.as_bytes()),
            "range_end": b64(&prefix_end(election.as_bytes())),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
            "limit": 1,
            "keys_only": true,
        });
        let found = etcd_post(&endpoint, "/v3/kv/range", &range)?;
        let key = found["kvs"][0]["key"]
            .as_str()
            .ok_or_else(|| unexpected("reading the leader key", found.to_string()))?
            .to_string();
        etcd_post(
            &endpoint,
            "/v3/kv/deleterange",
            &serde_json::json!({ "key": key }),
        )?;
        Ok(key)
    }

    /// The last lines of both coordinators' stderr (every run), for failure reports.
    pub fn tails(&self) -> String {
        let mut out = String::new();
        for d in self.past.iter().chain(self.coordinators.iter().flatten()) {
            out.push_str(&format!(
                "\n===== {} (pid {}) =====\n{}\n",
                d.name,
                d.pid(),
                d.stderr_tail(40)
            ));
        }
        out
    }

    /// Every line of coordinator `i`'s stderr, all runs.
    pub fn stderr(&self, i: usize) -> String {
        let name = format!("coordinator-{}", ["a", "b"][i]);
        self.past
            .iter()
            .chain(self.coordinators.iter().flatten())
            .filter(|d| d.name == name)
            .map(|d| fs::read_to_string(&d.stderr_path).unwrap_or_default())
            .collect()
    }
}

/// Waits for `child` (its stdout and stderr piped, short) at most `timeout`; kills it past that.
fn output_within(
    mut child: std::process::Child,
    timeout: Duration,
    what: &str,
) -> Result<std::process::Output, Error> {
    let waited = poll_every(Duration::from_millis(10), timeout, what, || {
        match child.try_wait() {
            Ok(Some(_)) => Ok(Ok(())),
            Ok(None) => Err("running".to_string()),
            Err(e) => Ok(Err(io_err(format!("waiting for {what}"))(e))),
        }
    });
    if let Err(e) = waited.and_then(|r| r) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    child
        .wait_with_output()
        .map_err(io_err(format!("reading the output of {what}")))
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Agents (which stop their instances) while a coordinator may still answer.
        drop(self.cluster.take());
        for d in self.coordinators.iter().flatten() {
            // SIGKILL ends a stopped (SIGSTOP) process too.
            d.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "harness: coordinator logs of the failed test:{}",
                self.tails()
            );
        }
    }
}

/// One `GetStatus` call to `url`, within [`DIRECT_STATUS_TIMEOUT`] in all.
fn get_status(url: &str) -> Result<pmcluster_proto::v1::StatusReply, String> {
    use pmcluster_proto::v1::coordination_client::CoordinationClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(DIRECT_STATUS_TIMEOUT)
        .timeout(DIRECT_STATUS_TIMEOUT);
    runtime.block_on(async {
        let call = async {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            CoordinationClient::new(channel)
                .get_status(pmcluster_proto::v1::GetStatusRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(DIRECT_STATUS_TIMEOUT, call)
            .await
            .map_err(|_| format!("no status from {url} within {DIRECT_STATUS_TIMEOUT:?}"))?
    })
}

/// POSTs `body` to etcd's JSON gateway at `endpoint` + `path`; the answer as JSON.
fn etcd_post(endpoint: &str, path: &str, body: &Value) -> Result<Value, Error> {
    let url = format!("{endpoint}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut reply = agent
        .post(&url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| unexpected(format!("POST {url}"), e.to_string()))?;
    let text = reply
        .body_mut()
        .read_to_string()
        .map_err(|e| unexpected(format!("POST {url}"), e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| unexpected(format!("POST {url}"), format!("{e}: {text}")))
}

/// The first key after every key that starts with `prefix` (etcd's range end of a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Standard base64 with padding, as etcd's gateway wants byte fields.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
