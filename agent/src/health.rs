//! Health checks: one probe of an instance (http, tcp or exec, each within its timeout) and the
//! pure bookkeeping that turns a series of results into a health state.
//!
//! A probe never spawns a task: the supervisor polls it as part of its own loop, so a probe
//! cannot outlive its instance. An exec probe's process goes through the agent's reaper like
//! every other child, and is killed (with its group) if the probe is dropped or times out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use pmcluster_spec::instance::expand;
use pmcluster_spec::supervise::{HealthCheck, Probe};
use tokio::net::TcpStream;

use crate::model::Health;
use crate::process::{Credentials, Exit, Reaper, describe, set_in_child, signal_group};

/// One probe's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

/// Consecutive results of one process's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    retries: u32,
    failures: u32,
    pub health: Health,
    /// Why the last check failed.
    pub last_failure: String,
}

/// What a result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Same,
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Tracker {
    pub fn new(retries: u32) -> Tracker {
        Tracker {
            // Zero retries would mean "unhealthy before any failure"; one failure is the least.
            retries: retries.max(1),
            failures: 0,
            health: Health::Unknown,
            last_failure: String::new(),
        }
    }

    pub fn record(&mut self, outcome: &Outcome) -> Change {
        let before = self.health;
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.health = Health::Healthy;
            }
            Outcome::Fail(why) => {
                self.failures = self.failures.saturating_add(1);
                self.last_failure = why.clone();
                if self.failures >= self.retries {
                    self.health = Health::Unhealthy;
                }
            }
        }
        match (before == self.health, self.health) {
            (false, Health::Healthy) => Change::Healthy,
            (false, Health::Unhealthy) => Change::Unhealthy,
            _ => Change::Same,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What a probe needs to know about the instance.
#[derive(Clone, Debug)]
pub struct Target {
    pub index: u32,
    pub port: Option<u16>,
    /// What `${HOST}` expands to.
    pub host: String,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// The instance's user, group and supplementary groups: an exec probe runs as the instance
    /// does, never as the agent. `Err` says why they are unknown; an exec probe then fails with
    /// it.
    pub credentials: Result<Credentials, String>,
}

/// A probe in flight, polled by the supervisor.
pub type Check = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One probe of `check` against `target`, bounded by the check's timeout.
pub fn probe(check: &HealthCheck, target: &Target, reaper: &Arc<Reaper>) -> Check {
    let timeout = check.timeout;
    let probe: Check = match &check.probe {
        Probe::Http {
            url,
            expected_status,
        } => Box::pin(http(
            expand(url, target.index, target.port, &target.host),
            *expected_status,
        )),
        Probe::Tcp => Box::pin(tcp(target.port, target.host.parse().ok())),
        Probe::Exec { command } => {
            Box::pin(exec(command.clone(), target.clone(), Arc::clone(reaper)))
        }
    };
    Box::pin(async move {
        match tokio::time::timeout(timeout, probe).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Fail(format!(
                "no answer within {}",
                crate::restart::human(timeout)
            )),
        }
    })
}

/// Passes when 127.0.0.1:`port` accepts a connection, or else `host`:`port` (an instance that
/// binds only its node's address, `${HOST}`).
async fn tcp(port: Option<u16>, host: Option<std::net::IpAddr>) -> Outcome {
    let Some(port) = port else {
        return Outcome::Fail("a tcp check needs a port and the instance has none".into());
    };
    let loopback = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(_) => return Outcome::Pass,
        Err(e) => e,
    };
    if let Some(ip) = host.filter(|ip| !ip.is_loopback())
        && TcpStream::connect((ip, port)).await.is_ok()
    {
        return Outcome::Pass;
    }
    Outcome::Fail(format!("connect to port {port}: {}", describe(&loopback)))
}

async fn http(url: String, expected: Option<u16>) -> Outcome {
    match http_status(&url).await {
        Ok(status) => {
            let ok = match expected {
                Some(want) => status == want,
                None => (200..300).contains(&status),
            };
            match (ok, expected) {
                (true, _) => Outcome::Pass,
                // A trial read "HTTP 200" alone as success where 201 was asked for: the status
                // wanted goes beside the one received.
                (false, Some(want)) => {
                    Outcome::Fail(format!("GET {url}: HTTP {status}, expected {want}"))
                }
                (false, None) => Outcome::Fail(format!("GET {url}: HTTP {status}, expected 2xx")),
            }
        }
        Err(why) => Outcome::Fail(format!("GET {url}: {why}")),
    }
}

/// The status code of `GET url`, over a fresh HTTP/1.1 connection that is closed afterwards (no
/// pool: a check must not keep sockets open in the instance between checks).
async fn http_status(url: &str) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| describe(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "close")
        .header(hyper::header::USER_AGENT, "pmcluster-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The connection future does the I/O; it is driven here, in this task, until the answer's
    // head arrives. The body is not read. With `Connection: close` the connection may finish in
    // the same poll that delivers the answer, so its end is not a failure by itself: the answer
    // (or the error of a connection that ended without one) comes through `send_request`.
    tokio::pin!(conn);
    let answer = sender.send_request(request);
    tokio::pin!(answer);
    let mut conn_done = false;
    loop {
        tokio::select! {
            biased;
            answer = &mut answer => {
                return answer.map(|r| r.status().as_u16()).map_err(|e| e.to_string());
            }
            ended = &mut conn, if !conn_done => match ended {
                Ok(()) => conn_done = true,
                Err(e) => return Err(e.to_string()),
            },
        }
    }
}

/// Kills an exec probe's process group unless it was seen to exit.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

async fn exec(command: String, target: Target, reaper: Arc<Reaper>) -> Outcome {
    use std::os::unix::process::CommandExt;
    let credentials = match target.credentials {
        Ok(c) => c,
        Err(why) => return Outcome::Fail(format!("{command:?} not run: {why}")),
    };
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&command)
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    // As the instance's own start does: with another user, the directory is entered after the
    // switch, with that user's rights.
    let switches_user = credentials.uid.is_some() || credentials.gid.is_some();
    let mut cwd_as_user = None;
    if let Some(cwd) = &target.cwd {
        if switches_user {
            match std::ffi::CString::new(cwd.as_str()) {
                Ok(c) => cwd_as_user = Some(c),
                Err(_) => return Outcome::Fail(format!("cwd {cwd:?} contains a NUL byte")),
            }
        } else {
            cmd.current_dir(cwd);
        }
    }
    // Not `cmd.uid`/`cmd.gid`, which drop every supplementary group: the instance has its
    // user's (see `process::set_in_child`), and the probe must reach what the instance reaches.
    set_in_child(&mut cmd, None, None, Vec::new(), credentials, cwd_as_user);
    let spawned = match reaper.spawn(&mut cmd) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("cannot run /bin/sh: {}", describe(&e))),
    };
    let mut guard = KillOnDrop(Some(spawned.pid));
    let exit = spawned.exit.await.unwrap_or(Exit::Unknown);
    guard.0 = None;
    match exit {
        Exit::Code(0) => Outcome::Pass,
        other => Outcome::Fail(format!("{command:?} {}", other.describe())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tracker_table() {
        let pass = Outcome::Pass;
        let fail = Outcome::Fail("HTTP 503".into());
        // (retries, results, changes, final health)
        type Case<'a> = (u32, Vec<&'a Outcome>, &'a str, Health);
        let cases: Vec<Case> = vec![
            (3, vec![], "", Health::Unknown),
            (3, vec![&pass], "H", Health::Healthy),
            (3, vec![&fail, &fail], "..", Health::Unknown),
            (3, vec![&fail, &fail, &fail], "..U", Health::Unhealthy),
            (
                3,
                vec![&pass, &fail, &fail, &pass, &fail, &fail],
                "H.....",
                Health::Healthy,
            ),
            (
                3,
                vec![&pass, &fail, &fail, &fail, &fail, &pass],
                "H..U.H",
                Health::Healthy,
            ),
            (1, vec![&pass, &fail], "HU", Health::Unhealthy),
            (0, vec![&fail], "U", Health::Unhealthy),
        ];
        for (retries, results, want, health) in cases {
            let mut t = Tracker::new(retries);
            let got: String = results
                .iter()
                .map(|o| match t.record(o) {
                    Change::Same => '.',
                    Change::Healthy => 'H',
                    Change::Unhealthy => 'U',
                })
                .collect();
            assert_eq!(got, want, "retries {retries} {results:?}");
            assert_eq!(t.health, health, "retries {retries} {results:?}");
        }
    }

    #[tokio::test]
    async fn probes_against_a_real_listener() {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        // A one-shot HTTP server answering 503, then 200 twice.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["503 Service Unavailable", "200 OK", "200 OK"] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let url = format!("http://127.0.0.1:{}/health", addr.port());
        assert_eq!(
            http(url.clone(), None).await,
            Outcome::Fail(format!("GET {url}: HTTP 503, expected 2xx"))
        );
        assert_eq!(http(url.clone(), Some(200)).await, Outcome::Pass);
        assert_eq!(
            http(url.clone(), Some(201)).await,
            Outcome::Fail(format!("GET {url}: HTTP 200, expected 201"))
        );
        let _ = server.await;
        // A port bound but not listening refuses connections; holding it keeps another test
        // from taking the freed port between the close and the check.
        let closed = tokio::net::TcpSocket::new_v4().and_then(|s| {
            s.bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
            Ok(s)
        });
        let closed_port = closed.as_ref().ok().and_then(|s| s.local_addr().ok());
        let Some(closed_port) = closed_port.map(|a| a.port()) else {
            panic!("cannot bind a socket on 127.0.0.1: {:?}", closed.err());
        };
        assert!(matches!(
            tcp(Some(closed_port), None).await,
            Outcome::Fail(_)
        ));
        let loopback = Some(std::net::Ipv4Addr::LOCALHOST.into());
        assert!(matches!(
            tcp(Some(closed_port), loopback).await,
            Outcome::Fail(_)
        ));
        assert!(matches!(tcp(None, None).await, Outcome::Fail(m) if m.contains("needs a port")));
    }

    #[tokio::test]
    async fn exec_probes() {
        let reaper = Arc::new(Reaper::new(false));
        let Ok(sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        else {
            return;
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let reaping = {
            let reaper = Arc::clone(&reaper);
            let cancel = cancel.clone();
            tokio::spawn(async move { reaper.run(sigchld, cancel).await })
        };
        let target = Target {
            index: 0,
            port: None,
            host: String::new(),
            env: vec![("WANT".into(), "7".into())],
            cwd: None,
            credentials: Ok(Credentials::default()),
        };
        let check = |command: &str, timeout_ms: u64| HealthCheck {
            probe: Probe::Exec {
                command: command.into(),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            retries: 1,
            restart_unhealthy: true,
        };
        assert_eq!(
            probe(&check("test \"$WANT\" = 7", 5000), &target, &reaper).await,
            Outcome::Pass
        );
        assert_eq!(
            probe(&check("exit 3", 5000), &target, &reaper).await,
            Outcome::Fail("\"exit 3\" exited with code 3".into())
        );
        assert_eq!(
            probe(&check("sleep 10", 100), &target, &reaper).await,
            Outcome::Fail("no answer within 100ms".into())
        );
        // Its user unknown (an adopted instance whose lookup failed): not run as the agent.
        let unknown = Target {
            credentials: Err("cannot look up user \"app\": EIO: I/O error".into()),
            ..target.clone()
        };
        assert_eq!(
            probe(&check("true", 5000), &unknown, &reaper).await,
            Outcome::Fail("\"true\" not run: cannot look up user \"app\": EIO: I/O error".into())
        );
        // As another user, with the supplementary groups the instance gets (root only).
        if nix::unistd::Uid::effective().is_root() {
            let nobody = Target {
                credentials: Ok(Credentials {
                    uid: Some(65534),
                    gid: Some(65534),
                    groups: Some(vec![65534, 4242]),
                }),
                cwd: Some("/".into()),
                ..target.clone()
            };
            let command = "test \"$(id -u)\" = 65534 && id -G | grep -qw 4242 && test \"$PWD\" = /";
            assert_eq!(
                probe(&check(command, 5000), &nobody, &reaper).await,
                Outcome::Pass
            );
        }
        cancel.cancel();
        let _ = reaping.await;
    }
}
