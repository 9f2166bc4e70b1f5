//! etcd for the tests of the HA store and the coordinator pair: one member, or a cluster of
//! several on loopback, each in a temporary dir on free ports, started from the `etcd` binary
//! (Debian's `etcd-server`). Every member is killed by pid when the [`Etcd`] drops, also when
//! the test panics.
//!
//! A host without the binary skips the test ([`Etcd::single_or_skip`]), unless
//! `PMCLUSTER_TEST_REQUIRE` names `etcd`: then the test fails.
//!
//! With [`EtcdTls`] the members serve their client URLs over TLS and require a client
//! certificate signed by the given CA (`--client-cert-auth`); peer URLs stay plaintext, and
//! `/health` is read on a separate plaintext metrics URL (`--listen-metrics-urls`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::daemon::{Daemon, log_file, tail};
use crate::error::{Error, io_err, unexpected};
use crate::hosts::Net;
use crate::http::http_get_within;
use crate::ports::free_port_range;
use crate::skip::skip;
use crate::tls::Pki;
use crate::wait::{poll_every, poll_until};

/// How long a member may take to answer healthy after it starts.
pub const ETCD_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the binary is looked for when `etcd` is not on `PATH`.
const DEFAULT_BINARY: &str = "/usr/bin/etcd";

/// The `etcd` binary: the first on `PATH`, else Debian's.
pub fn etcd_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(DEFAULT_BINARY)).filter(|p| p.is_file()))
}

/// The TLS a member serves its clients with: `--cert-file`, `--key-file`, and the CA every
/// client certificate must chain to (`--trusted-ca-file` with `--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl EtcdTls {
    /// The coordinator certificate of `pki` (issued for 127.0.0.1) as etcd's server
    /// certificate, and `pki`'s CA for the clients: the setup the README shows.
    pub fn from_pki(pki: &Pki) -> EtcdTls {
        let (cert, key) = pki.pair("coordinator");
        EtcdTls {
            cert,
            key,
            client_ca: pki.ca(),
        }
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    /// The address it listens on: loopback, or its test host's.
    ip: String,
    client_port: u16,
    peer_port: u16,
    /// Where `/health` is served: the client port, or with TLS the plaintext metrics port.
    health_port: u16,
    tls: bool,
    data_dir: PathBuf,
    /// `None` once killed.
    process: Option<Daemon>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    fn metrics_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.health_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }
}

/// etcd members this test started.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    members: Vec<Member>,
    /// `--initial-cluster`.
    initial_cluster: String,
    /// `--initial-cluster-token`: unique, so two test clusters never take each other's members.
    token: String,
    tls: Option<EtcdTls>,
    /// The test host the (single) member runs on, if not loopback.
    on: Option<(Arc<Net>, String)>,
    /// Kept last: dropped after the members are killed.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// One member.
    pub fn single() -> Result<Etcd, Error> {
        Etcd::cluster(1)
    }

    /// `n` members on loopback, each healthy (the cluster has a leader) before this returns.
    pub fn cluster(n: usize) -> Result<Etcd, Error> {
        Etcd::start(n, None, None)
    }

    /// One member serving TLS to clients with a certificate of `tls.client_ca`.
    pub fn single_tls(tls: EtcdTls) -> Result<Etcd, Error> {
        Etcd::start(1, Some(tls), None)
    }

    /// One member on test host `host` of `net`, listening on that host's address (its own port
    /// space, so etcd's usual ports 2379 and 2380).
    pub fn single_on(net: Arc<Net>, host: &str) -> Result<Etcd, Error> {
        net.host(host)?;
        Etcd::start(1, None, Some((net, host.to_string())))
    }

    fn start(
        n: usize,
        tls: Option<EtcdTls>,
        on: Option<(Arc<Net>, String)>,
    ) -> Result<Etcd, Error> {
        let binary = etcd_binary().ok_or_else(|| Error::MissingBinary {
            binary: "etcd".to_string(),
            dir: PathBuf::from(DEFAULT_BINARY)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("pmcluster-etcd-")
            .tempdir()
            .map_err(io_err("making the etcd test dir"))?;
        let mut members = Vec::new();
        for i in 0..n {
            let (ip, ports) = match &on {
                Some((net, host)) => (net.addr(host)?.to_string(), 2379),
                None => ("127.0.0.1".to_string(), free_port_range(3)?),
            };
            members.push(Member {
                name: format!("m{i}"),
                ip,
                client_port: ports,
                peer_port: ports + 1,
                health_port: if tls.is_some() { ports + 2 } else { ports },
                tls: tls.is_some(),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pmcluster-test".to_string());
        let mut etcd = Etcd {
            binary,
            members,
            initial_cluster,
            token,
            tls,
            on,
            dir,
        };
        for i in 0..n {
            etcd.spawn(i)?;
        }
        for i in 0..n {
            etcd.wait_healthy(i, ETCD_STARTUP_TIMEOUT)?;
        }
        Ok(etcd)
    }

    /// [`Etcd::single`], or `None` after reporting the test as skipped when this host has no
    /// etcd binary. Panics when etcd is there but does not start.
    #[track_caller]
    pub fn single_or_skip() -> Option<Etcd> {
        Etcd::cluster_or_skip(1)
    }

    /// [`Etcd::single_on`], or `None` after reporting a skip (see [`Etcd::single_or_skip`]).
    #[track_caller]
    pub fn single_on_or_skip(net: Arc<Net>, host: &str) -> Option<Etcd> {
        if !etcd_or_skip() {
            return None;
        }
        match Etcd::single_on(net, host) {
            Ok(etcd) => Some(etcd),
            Err(e) => panic!("starting etcd on test host {host}: {e}"),
        }
    }

    /// [`Etcd::cluster`], or `None` after reporting a skip (see [`Etcd::single_or_skip`]).
    #[track_caller]
    pub fn cluster_or_skip(n: usize) -> Option<Etcd> {
        if !etcd_or_skip() {
            return None;
        }
        match Etcd::cluster(n) {
            Ok(etcd) => Some(etcd),
            Err(e) => panic!("starting etcd ({n} members): {e}"),
        }
    }

    /// [`Etcd::single_tls`], or `None` after reporting a skip (see [`Etcd::single_or_skip`]).
    #[track_caller]
    pub fn single_tls_or_skip(tls: EtcdTls) -> Option<Etcd> {
        if !etcd_or_skip() {
            return None;
        }
        match Etcd::single_tls(tls) {
            Ok(etcd) => Some(etcd),
            Err(e) => panic!("starting etcd with TLS: {e}"),
        }
    }

    fn member(&self, i: usize) -> Result<&Member, Error> {
        self.members.get(i).ok_or_else(|| {
            unexpected(
                format!("etcd member {i}"),
                format!("there are {} members", self.members.len()),
            )
        })
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let (binary, initial_cluster, token) = (&self.binary, &self.initial_cluster, &self.token);
        let tls = self.tls.clone();
        let member = self
            .members
            .get_mut(i)
            .ok_or_else(|| unexpected(format!("starting etcd member {i}"), "no such member"))?;
        let stdout_path = self.dir.path().join(format!("{}.out", member.name));
        let stderr_path = self.dir.path().join(format!("{}.err", member.name));
        let client = member.client_url();
        let peer = member.peer_url();
        let mut command = match &self.on {
            Some((net, host)) => net.command(host, binary)?,
            None => Command::new(binary),
        };
        if let Some(tls) = &tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth")
                .args(["--listen-metrics-urls", &member.metrics_url()]);
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-token", token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file(&stdout_path)?)
            .stderr(log_file(&stderr_path)?)
            .spawn()
            .map_err(io_err(format!("starting {}", binary.display())))?;
        member.process = Some(Daemon::new(
            &format!("etcd {}", member.name),
            member.data_dir.clone(),
            stdout_path,
            stderr_path,
            child,
        ));
        Ok(())
    }

    /// Client URLs of every member, e.g. for `--etcd-endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> Result<String, Error> {
        Ok(self.member(i)?.client_url())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members
            .get(i)
            .and_then(|m| m.process.as_ref())
            .filter(|d| d.running())
            .map(Daemon::pid)
    }

    /// Waits until member `i` answers `/health` with `"health":"true"` (it has a leader).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> Result<(), Error> {
        let member = self.member(i)?;
        let what = format!(
            "etcd member {} healthy on {}",
            member.name,
            member.client_url()
        );
        poll_until(timeout, &what, || {
            if let Some(d) = &member.process
                && let Some(status) = d.try_exit()
            {
                return Err(format!(
                    "it exited ({status}); stderr ends with:\n{}",
                    d.stderr_tail(20)
                ));
            }
            let reply = match &self.on {
                Some((net, host)) => {
                    curl_on(net, host, &format!("{}/health", member.metrics_url()))?
                }
                None => http_get_within(member.health_port, "/health", Duration::from_secs(1))
                    .map_err(|e| e.to_string())?,
            };
            if reply.body.contains("\"health\":\"true\"") {
                Ok(())
            } else {
                Err(format!("status {}: {}", reply.status, reply.body))
            }
        })
    }

    /// SIGKILL member `i`, and reap it.
    pub fn kill(&mut self, i: usize) -> Result<(), Error> {
        let member = self.member(i)?;
        if let Some(d) = &member.process {
            d.kill();
        }
        Ok(())
    }

    /// SIGSTOP member `i`: it holds its connections but answers nothing.
    /// Returns once every thread of the member has stopped: `kill` returns before each thread
    /// has taken the SIGSTOP, and one still running could answer one more request.
    pub fn stop(&self, i: usize) -> Result<(), Error> {
        self.signal(i, Signal::SIGSTOP)?;
        let Some(pid) = self.pid(i) else {
            return Err(unexpected(
                format!("stopping etcd member {i}"),
                "it has no process",
            ));
        };
        poll_every(
            Duration::from_millis(2),
            Duration::from_secs(10),
            &format!("every thread of etcd member {i} (pid {pid}) stopped"),
            || all_threads_stopped(pid),
        )
    }

    /// SIGCONT member `i`.
    pub fn cont(&self, i: usize) -> Result<(), Error> {
        self.signal(i, Signal::SIGCONT)
    }

    fn signal(&self, i: usize, sig: Signal) -> Result<(), Error> {
        let member = self.member(i)?;
        match &member.process {
            Some(d) if d.running() => {
                d.signal(sig);
                Ok(())
            }
            _ => Err(unexpected(
                format!("sending {sig} to etcd member {}", member.name),
                "it does not run",
            )),
        }
    }

    /// Kills member `i` if it runs and starts it again on its data dir and ports. Does not wait
    /// for it to be healthy, which needs a quorum ([`Etcd::wait_healthy`]).
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.kill(i)?;
        self.spawn(i)
    }

    /// The end of member `i`'s log, for failure reports.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        match self.members.get(i).and_then(|m| m.process.as_ref()) {
            Some(d) => tail(&d.stderr_path, lines),
            None => String::new(),
        }
    }
}

/// `curl URL` on test host `host` (the test process cannot reach a host's address itself).
fn curl_on(net: &Net, host: &str, url: &str) -> Result<crate::http::HttpReply, String> {
    let mut cmd = net.command(host, "curl").map_err(|e| e.to_string())?;
    let out = cmd
        .args(["-sS", "--max-time", "1", "-w", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl on {host}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url} on {host}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Ok(crate::http::HttpReply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    })
}

/// Whether this host has an etcd binary; if not, reports the running test as skipped.
#[track_caller]
fn etcd_or_skip() -> bool {
    if etcd_binary().is_some() {
        return true;
    }
    skip(
        "etcd",
        "no etcd binary on PATH or at /usr/bin/etcd (Debian: apt-get install etcd-server)",
    );
    false
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &self.members {
            if let Some(d) = &member.process {
                // A stopped process dies of SIGKILL too.
                d.kill();
            }
        }
    }
}

/// `Ok` once every thread of `pid` is in state T (stopped), else the first that is not.
fn all_threads_stopped(pid: u32) -> Result<(), String> {
    let dir = format!("/proc/{pid}/task");
    let threads = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    for thread in threads {
        let thread = thread.map_err(|e| format!("{dir}: {e}"))?;
        let path = thread.path().join("stat");
        // A thread that ended between the listing and this read stops nothing.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Err(format!("{} is in state {state:?}", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_stops_and_continues() {
        let Some(mut etcd) = Etcd::single_or_skip() else {
            return;
        };
        let pid = etcd.pid(0).expect("member 0 runs");
        etcd.stop(0).expect("stop");
        assert!(
            http_get_within(
                etcd.members[0].client_port,
                "/health",
                Duration::from_millis(300)
            )
            .is_err(),
            "a stopped member answered"
        );
        etcd.cont(0).expect("cont");
        etcd.wait_healthy(0, ETCD_STARTUP_TIMEOUT)
            .expect("healthy again");
        etcd.restart(0).expect("restart");
        let again = etcd.pid(0).expect("member 0 runs again");
        assert_ne!(again, pid);
        assert!(!crate::proc::pid_alive(pid));
        etcd.wait_healthy(0, ETCD_STARTUP_TIMEOUT)
            .expect("healthy after a restart");
        drop(etcd);
        assert!(!crate::proc::pid_alive(again));
    }

    #[test]
    fn three_members_lose_and_regain_quorum() {
        let Some(mut etcd) = Etcd::cluster_or_skip(3) else {
            return;
        };
        assert_eq!(etcd.endpoints().len(), 3);
        etcd.kill(2).expect("kill member 2");
        etcd.wait_healthy(0, ETCD_STARTUP_TIMEOUT)
            .expect("two of three keep a quorum");
        etcd.stop(1).expect("stop member 1");
        let no_quorum =
            poll_until(
                ETCD_STARTUP_TIMEOUT,
                "member 0 without quorum",
                || match http_get_within(
                    etcd.members[0].client_port,
                    "/health",
                    Duration::from_secs(1),
                ) {
                    Ok(reply) if reply.body.contains("\"health\":\"true\"") => Err(reply.body),
                    _ => Ok(()),
                },
            );
        assert!(no_quorum.is_ok(), "{no_quorum:?}");
        etcd.cont(1).expect("cont member 1");
        etcd.restart(2).expect("restart member 2");
        for i in 0..3 {
            etcd.wait_healthy(i, ETCD_STARTUP_TIMEOUT)
                .expect("quorum again");
        }
    }
}
