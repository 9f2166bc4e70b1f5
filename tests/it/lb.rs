//! A real HAProxy in front of an app, kept current by `pmcluster endpoints --watch`, and a
//! bounded request loop through it. Shared by the rollout test and the rollout benchmark
//! (`benches/rollout12.rs` includes this file).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_tests::{Cluster, free_port_range, http_get, wait_for, wait_until};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// A process the test started, killed by PID when dropped.
pub struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy in master-worker mode in front of `web`, and the watcher that rewrites its backend.
pub struct Balancer {
    pub port: u16,
    dir: PathBuf,
    haproxy: Option<Owned>,
    watcher: Option<Owned>,
    /// Reloads the watcher asked for before HAProxy ran (none of them reached it).
    asked_at_start: usize,
}

impl Balancer {
    pub fn start(c: &Cluster, app: &str) -> Balancer {
        Balancer::start_with(c, app, &[])
    }

    /// [`Balancer::start`] with more `endpoints` flags (e.g. `--balance sticky`) for both the
    /// first backend and the watcher.
    pub fn start_with(c: &Cluster, app: &str, endpoints_args: &[&str]) -> Balancer {
        let haproxy = which("haproxy").expect("haproxy on PATH (apt-get install haproxy)");
        let dir = c.root().join("lb");
        fs::create_dir_all(&dir).expect("lb dir");
        let port = free_port_range(1).expect("a free port for the balancer");
        let main = format!(
            "global\n    master-worker\n    pidfile {pid}\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend {app}\n",
            pid = dir.join("haproxy.pid").display()
        );
        fs::write(dir.join("main.cfg"), main).expect("write main.cfg");
        let backend = dir.join("backend.cfg");
        let b = backend.display().to_string();
        let mut first = vec!["endpoints", app, "-o", "haproxy", "--file", &b];
        first.extend_from_slice(endpoints_args);
        c.cli(&first).assert_ok();
        // The watcher first: it writes the backend and asks for a reload at once, and HAProxy
        // loses a reload asked for while it is still starting. Until HAProxy runs there is no
        // pid file, and nothing to reload. Reloads go through the compose deployment's script,
        // which confirms each one (HAProxy drops a USR2 now and then).
        let pidfile = dir.join("haproxy.pid").display().to_string();
        let reload = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/compose/haproxy/reload.sh");
        let exec = format!(
            "! [ -f {pidfile} ] || sh {} $(cat {pidfile})",
            reload.display()
        );
        let watch_log = fs::File::create(dir.join("watcher.log")).expect("watcher log");
        let watcher = Command::new(&c.bins().cli)
            .args(["--coordinator", &c.url(), "endpoints", app, "-o", "haproxy"])
            .args(["--watch", "--file", &b, "--exec", &exec])
            .args(endpoints_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(watch_log)
            .spawn()
            .expect("start the endpoints watcher");
        let mut lb = Balancer {
            port,
            dir: dir.clone(),
            haproxy: None,
            watcher: Some(Owned(watcher)),
            asked_at_start: 0,
        };
        wait_for(DEADLINE, "the watcher's first backend", || {
            lb.reloads_asked() >= 1
        });
        lb.asked_at_start = lb.reloads_asked();
        let log = fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let proc = Command::new(haproxy)
            .arg("-W")
            .arg("-f")
            .arg(dir.join("main.cfg"))
            .arg("-f")
            .arg(&backend)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        lb.haproxy = Some(Owned(proc));
        wait_for(DEADLINE, "haproxy to answer", || {
            http_get(port, "/").is_ok_and(|r| r.status == 200)
        });
        // Its worker answers before the master has loaded: a reload asked for in between would
        // be lost.
        wait_for(DEADLINE, "the haproxy master to finish loading", || {
            lb.loads() >= 1
        });
        lb
    }

    pub fn backend(&self) -> String {
        fs::read_to_string(self.dir.join("backend.cfg")).unwrap_or_default()
    }

    /// How many times HAProxy has loaded its config: once at start, then once per reload.
    pub fn loads(&self) -> usize {
        fs::read_to_string(self.dir.join("haproxy.log"))
            .unwrap_or_default()
            .matches("Loading success")
            .count()
    }

    /// How many reloads the watcher has asked for: it logs `APP: N endpoints` after each.
    pub fn reloads_asked(&self) -> usize {
        fs::read_to_string(self.dir.join("watcher.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(" endpoints"))
            .count()
    }

    /// Waits until the watcher has asked for at least `asked` reloads since HAProxy started,
    /// and HAProxy has done every one of them: it then serves the backend last written.
    pub fn wait_reloaded(&self, asked: usize) {
        wait_until(DEADLINE, "HAProxy to load every backend written", || {
            let asked_now = self.reloads_asked().saturating_sub(self.asked_at_start);
            let loads = self.loads();
            if asked_now >= asked && loads > asked_now {
                Ok(())
            } else {
                Err(format!(
                    "{asked_now} reloads asked (want {asked}), {loads} loads:\n{}",
                    self.backend()
                ))
            }
        });
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.watcher.take();
        // The master's pid; its workers follow it.
        if let Ok(pid) = fs::read_to_string(self.dir.join("haproxy.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        self.haproxy.take();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Requests through the balancer in a loop (new connection each, bounded in count and time),
/// counting failures and the versions that answered.
/// Requests sent, failures (described), and answers by version.
pub type Tally = (u64, Vec<String>, BTreeMap<String, u64>);

pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Tally>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, Vec::new(), BTreeMap::new())));
        let (flag, out) = (stop.clone(), seen.clone());
        let handle = thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(240);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < end && n < 200_000 {
                n += 1;
                let reply = http_get(port, "/");
                let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                s.0 += 1;
                match reply
                    .ok()
                    .filter(|r| r.status == 200)
                    .and_then(|r| r.json().ok())
                {
                    Some(v) => {
                        let version = v["version"].as_str().unwrap_or("?").to_string();
                        *s.2.entry(version).or_default() += 1;
                    }
                    None => {
                        let t = s.0;
                        s.1.push(format!("request {t} failed"));
                    }
                }
                drop(s);
                thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// (requests, failures, answers by version) so far.
    pub fn snapshot(&self) -> Tally {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until every answer of 20 in a row comes from `version`.
pub fn wait_all_answers(port: u16, version: &str) {
    wait_until(DEADLINE, &format!("all answers from {version}"), || {
        let versions: Vec<String> = (0..20)
            .filter_map(|_| http_get(port, "/").ok()?.json().ok())
            .map(|v: Value| v["version"].as_str().unwrap_or("?").to_string())
            .collect();
        if versions.len() == 20 && versions.iter().all(|v| v == version) {
            Ok(())
        } else {
            Err(format!("{versions:?}"))
        }
    });
}
