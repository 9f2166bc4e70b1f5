//! A rolling update across three agent hosts behind HAProxy on a host of its own ("lb"), its
//! backend kept current by `pmcluster endpoints --watch` on that host, while a bounded request
//! loop on the client host goes through HAProxy: no request may fail.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pmcluster_tests::{
    CLIENT_HOST, Cluster, Net, enter_netns, hosts_unavailable, http_get_url, skip, wait_until,
};

use crate::{DEADLINE, wait_online};

const LB_HOST: &str = "lb";
/// HAProxy's port on its own host (a namespace of the test's own: nothing else holds it).
const LB_PORT: u16 = 8080;
const N: usize = 6;

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A process the test started, killed by pid when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy (master-worker) on host "lb" and the watcher beside it that rewrites its backend
/// and reloads it.
struct Balancer {
    dir: PathBuf,
    haproxy: Option<Owned>,
    watcher: Option<Owned>,
}

impl Balancer {
    fn start(c: &Cluster, haproxy: PathBuf, app: &str) -> Balancer {
        let net = c.net().expect("test hosts");
        let lb = net.addr(LB_HOST).expect("the balancer's host");
        let dir = c.root().join("lb");
        fs::create_dir_all(&dir).expect("lb dir");
        let pidfile = dir.join("haproxy.pid");
        let main = format!(
            "global\n    master-worker\n    pidfile {pid}\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind {lb}:{LB_PORT}\n    default_backend {app}\n",
            pid = pidfile.display()
        );
        fs::write(dir.join("main.cfg"), main).expect("write main.cfg");
        let backend = dir.join("backend.cfg");
        let b = backend.display().to_string();
        c.cli(&["endpoints", app, "-o", "haproxy", "--file", &b])
            .assert_ok();
        let log = fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let proc = net
            .command(LB_HOST, haproxy)
            .expect("a command on the balancer's host")
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
        let mut balancer = Balancer {
            dir: dir.clone(),
            haproxy: Some(Owned(proc)),
            watcher: None,
        };
        let url = front(net);
        wait_until(DEADLINE, "haproxy answering on the client host", || {
            let body = curl(net, &url)?;
            body.contains("version").then_some(()).ok_or(body)
        });
        let exec = format!("kill -USR2 $(cat {})", pidfile.display());
        let watch_log = fs::File::create(dir.join("watcher.log")).expect("watcher log");
        let watcher = net
            .command(LB_HOST, &c.bins().cli)
            .expect("a command on the balancer's host")
            .args(["--coordinator", &c.url(), "endpoints", app, "-o", "haproxy"])
            .args(["--watch", "--file", &b, "--exec", &exec])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(watch_log)
            .spawn()
            .expect("start the endpoints watcher");
        balancer.watcher = Some(Owned(watcher));
        balancer
    }

    fn backend(&self) -> String {
        fs::read_to_string(self.dir.join("backend.cfg")).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.watcher.take();
        // The master's pid; its workers follow it (and the net's cleanup ends any left).
        if let Ok(pid) = fs::read_to_string(self.dir.join("haproxy.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        self.haproxy.take();
    }
}

/// HAProxy's front, as the client host reaches it.
fn front(net: &Net) -> String {
    let lb = net.addr(LB_HOST).expect("the balancer's host");
    format!("http://{lb}:{LB_PORT}/")
}

/// `curl URL` on the client host: its body, or why it failed.
fn curl(net: &Net, url: &str) -> Result<String, String> {
    let mut cmd = net
        .command(CLIENT_HOST, "curl")
        .map_err(|e| e.to_string())?;
    let out = cmd
        .args(["-sS", "--fail", "--max-time", "5", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Requests sent, failures (described), answers by version.
type Tally = (u64, Vec<String>, BTreeMap<String, u64>);

/// Requests through HAProxy from the client host, a new connection each, on a thread that
/// entered that host; bounded to 100,000 requests and 240 s.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Tally>>,
    handle: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(net: &Net) -> Load {
        let client = net.netns_path(CLIENT_HOST).expect("the client host");
        let url = front(net);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, Vec::new(), BTreeMap::new())));
        let (flag, out) = (stop.clone(), seen.clone());
        let handle = thread::spawn(move || {
            enter_netns(&client).map_err(|e| e.to_string())?;
            let end = Instant::now() + Duration::from_secs(240);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < end && n < 100_000 {
                n += 1;
                let reply = http_get_url(&url, Duration::from_secs(2));
                let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                s.0 += 1;
                match reply {
                    Ok(r) if r.status == 200 => {
                        let v = r.json().map_err(|e| e.to_string())?;
                        let version = v["version"].as_str().unwrap_or("?").to_string();
                        *s.2.entry(version).or_default() += 1;
                    }
                    Ok(r) => {
                        s.1.push(format!("request {n}: status {}: {}", r.status, r.body))
                    }
                    Err(e) => s.1.push(format!("request {n}: {e}")),
                }
                drop(s);
                thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        Load {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => panic!("the request loop: {e}"),
            _ => panic!("the request loop panicked"),
        }
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `web`: 6 instances of the test app bound to their node's address, with a health check and
/// a rolling update policy of one surge instance at a time.
fn apply_web(c: &Cluster) {
    let path = c.root().join("web.json");
    let text = serde_json::json!({
        "name": "web",
        "script": c.testapp().display().to_string(),
        "instances": N,
        "port": "auto:4300-4359",
        "env": { "TESTAPP_BIND": "${HOST}", "TESTAPP_VERSION": "v1" },
        "health_check": {
            "check_type": "http",
            "url": "http://${HOST}:${PORT}/health",
            "interval": "1s",
            "timeout": "1s",
            "retries": 2
        },
        "update": {
            "max_surge": 1,
            "min_healthy_time": "1s",
            "healthy_deadline": "6s",
            "progress_deadline": "20s",
            "shutdown_delay": "1s"
        }
    });
    fs::write(&path, text.to_string()).expect("write web.json");
    let file = path.display().to_string();
    c.cli(&["apply", "-f", &file]).assert_ok();
}

#[test]
fn hosts_rolling_update_behind_haproxy_on_its_own_host_loses_no_request() {
    if let Some(reason) = hosts_unavailable() {
        skip("root", &reason);
        return;
    }
    let Some(haproxy) = which("haproxy") else {
        skip(
            "haproxy",
            "no haproxy on PATH (Debian: apt-get install haproxy)",
        );
        return;
    };
    let test_start = Instant::now();
    let c = Cluster::start_hosts_with(3, &[], &[LB_HOST]).expect("a cluster on test hosts");
    let net = c.net().expect("test hosts");
    apply_web(&c);
    let before = wait_online(&c, "web", N);
    let old_version = before[0].json["version"].clone();
    let lb = Balancer::start(&c, haproxy, "web");
    wait_until(DEADLINE, "six servers in the backend", || {
        let b = lb.backend();
        if b.matches("    server ").count() == N {
            Ok(())
        } else {
            Err(b)
        }
    });
    // The backend names the instances by their hosts' addresses, not loopback.
    assert!(!lb.backend().contains("127.0.0.1"), "{}", lb.backend());

    let load = Load::start(net);
    let t0 = Instant::now();
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"])
        .assert_ok();
    c.try_cli_timeout(
        &["rollout", "status", "web", "--wait"],
        Duration::from_secs(180),
    )
    .expect("pmcluster rollout status --wait runs")
    .assert_ok();
    let rollout = t0.elapsed();
    // The rollout finished: every instance on the new version, and answering as it.
    let after = wait_online(&c, "web", N);
    let nodes: Vec<&str> = after.iter().filter_map(|i| i.node.as_deref()).collect();
    for i in &after {
        assert_ne!(i.json["version"], old_version, "{}", i.json);
        assert_eq!(i.json["version"], after[0].json["version"], "{}", i.json);
        let url = format!(
            "http://{}:{}/health",
            i.json["host"].as_str().unwrap_or("?"),
            i.port.unwrap_or(0)
        );
        let body = curl(net, &url).unwrap_or_else(|e| panic!("{e}"));
        assert!(body.contains("\"version\":\"v2\""), "{url}: {body}");
    }
    for node in ["node-a", "node-b", "node-c"] {
        assert!(nodes.contains(&node), "nothing on {node}: {nodes:?}");
    }
    // Then only v2 answers through HAProxy: the watcher rewrote its backend.
    wait_until(
        DEADLINE,
        "20 answers in a row from v2 through haproxy",
        || {
            let url = front(net);
            let versions: Vec<String> = (0..20)
                .map(|_| curl(net, &url).unwrap_or_else(|e| e))
                .collect();
            if versions.iter().all(|v| v.contains("\"version\":\"v2\"")) {
                Ok(())
            } else {
                Err(format!("{versions:?}"))
            }
        },
    );
    let (n, failures, versions) = load.finish();
    eprintln!(
        "hosts: rollout v1 -> v2 of {N} instances across 3 hosts took {rollout:?}; through \
         haproxy on its own host: {n} requests, {} failed, by version {versions:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed during the rollout: {failures:?}",
        failures.len()
    );
    assert!(
        versions.contains_key("v1") && versions.contains_key("v2"),
        "{versions:?}"
    );
    assert!(n >= 100, "only {n} requests were sent");
    drop(lb);
    eprintln!("hosts: the rollout test took {:?}", test_start.elapsed());
}
