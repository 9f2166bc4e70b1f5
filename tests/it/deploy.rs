//! The install kit in `deploy/`, on docker: the images `deploy/images/build.sh` makes from a
//! debootstrap root file system (with the debug binaries, tagged [`TAG`] so a user's `latest`
//! stays as it was), `deploy/install-agent.sh` on a fresh systemd host, and the compose cluster
//! of `deploy/compose/`.
//!
//! They need root, docker, debootstrap and docker-compose, and skip (need `docker`) without
//! them. Every container, network and project has a name of the test's own making and is
//! removed when the test ends, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pmcluster_tests::{bin_dir, free_port_range, http_get, skip, wait_until};
use serde_json::Value;

/// The images' tag: debug binaries, never to be taken for a release build.
const TAG: &str = "it-debug";
/// Building the root file systems the first time downloads and unpacks Debian packages.
const BUILD_DEADLINE: Duration = Duration::from_secs(900);
const DEADLINE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// A name no other run uses at the same time: `prefix`, this process and the clock.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", std::process::id())
}

fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"))
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this host can run these tests; the reason it cannot otherwise.
fn docker_usable(compose: bool) -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (debootstrap)".into());
    }
    if !works("docker", &["info"]) {
        return Err("`docker info` fails: no usable docker daemon".into());
    }
    if !works("debootstrap", &["--version"]) && !Path::new("/usr/sbin/debootstrap").is_file() {
        return Err("debootstrap is not installed (scripts/deps.sh installs it)".into());
    }
    if compose && !works("docker-compose", &["version"]) {
        return Err("docker-compose is not installed".into());
    }
    Ok(())
}

/// Builds the images once per run (the tests may ask at the same time); later calls wait for
/// the first and share its result.
fn images() -> Duration {
    static BUILT: OnceLock<Result<Duration, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let bins = bin_dir().map_err(|e| e.to_string())?;
        let started = Instant::now();
        // coreutils' timeout bounds a download or unpack that hangs.
        let out = Command::new("timeout")
            .arg(BUILD_DEADLINE.as_secs().to_string())
            .arg(repo().join("deploy/images/build.sh"))
            .arg("--bin-dir")
            .arg(&bins)
            .args(["--tag", TAG])
            .output()
            .map_err(|e| format!("running deploy/images/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "deploy/images/build.sh failed ({}, {:?}):\n{}\n{}",
                out.status,
                started.elapsed(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(started.elapsed())
    });
    match built {
        Ok(took) => *took,
        Err(e) => panic!("{e}"),
    }
}

/// A container of the test's own, removed (with its anonymous volumes) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

impl Container {
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("docker").arg("exec").arg(&self.0).args(args))
    }

    #[track_caller]
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in {}: {script} failed ({}):\n{}\n{}",
            self.0,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn copy_in(&self, from: &Path, to: &str) {
        run_ok(
            Command::new("docker")
                .arg("cp")
                .arg(from)
                .arg(format!("{}:{to}", self.0)),
        );
    }
}

/// The nodes as `pmcluster nodes -o json` lists them, run by `cli`.
fn nodes(out: &Output) -> Result<Vec<(String, String)>, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let list = v
        .as_array()
        .or_else(|| v.get("nodes").and_then(Value::as_array))
        .ok_or_else(|| format!("no node list in {v}"))?;
    Ok(list
        .iter()
        .map(|n| {
            let field = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (field("name"), field("status"))
        })
        .collect())
}

/// On a fresh systemd host made from the same root file system: the hardened coordinator unit,
/// then install-agent.sh twice (the second run changes nothing), and the agent runs under
/// systemd as the system user, registers over mutual TLS, and its instances outlive a restart
/// of the agent (KillMode=process).
#[test]
fn install_agent_on_a_systemd_host() {
    if let Err(why) = docker_usable(false) {
        return skip("docker", &why);
    }
    let started = Instant::now();
    let build = images();
    let bins = bin_dir().expect("the binaries' dir");

    // Certificates made on the test's side, as an operator would, then copied to the host.
    let pki = tempfile::tempdir().expect("a temp dir for the certificates");
    let node = "host-a";
    let cli = bins.join("pmcluster");
    let certs = |args: &[&str]| {
        run_ok(
            Command::new(&cli)
                .arg("certs")
                .args(args)
                .arg("--dir")
                .arg(pki.path()),
        )
    };
    certs(&["init"]);
    certs(&[
        "issue",
        "coordinator",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    ]);
    certs(&["issue", "agent", node]);
    certs(&["issue", "user", "admin", "--role", "admin"]);

    // No network at all: the coordinator runs on the host's loopback, beside the agent.
    let c = Container(unique("pmcluster-it-install-"));
    run_ok(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &c.0,
        "--hostname",
        node,
        "--network",
        "none",
        "--stop-signal",
        "RTMIN+3",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--cap-add",
        "SYS_ADMIN",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        &format!("pmcluster-systemd:{TAG}"),
    ]));
    wait_until(DEADLINE, "systemd to finish booting", || {
        let out = c.exec(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match state.as_str() {
            "running" | "degraded" => Ok(()),
            _ => Err(state),
        }
    });

    c.sh("mkdir -p /opt/pmcluster");
    c.copy_in(&repo().join("deploy"), "/opt/pmcluster/deploy");
    c.copy_in(pki.path(), "/opt/pmcluster/pki");
    c.copy_in(
        &bins.join("pmcluster-agent"),
        "/opt/pmcluster/pmcluster-agent",
    );
    c.copy_in(&bins.join("pmcluster-coordinator"), "/usr/local/bin/");
    c.copy_in(&cli, "/usr/local/bin/");

    // The coordinator with its unit as shipped (hardening included), on loopback with TLS.
    c.sh(
        "set -e; install -d -m 700 /etc/pmcluster; \
         cd /opt/pmcluster/pki; install -m 600 ca.pem coordinator.pem coordinator-key.pem /etc/pmcluster/; \
         echo PMCLUSTER_LISTEN=127.0.0.1:7450 > /etc/default/pmcluster-coordinator; \
         cp /opt/pmcluster/deploy/systemd/pmcluster-coordinator.service /etc/systemd/system/; \
         systemctl daemon-reload; systemctl enable --now pmcluster-coordinator",
    );

    let install = format!(
        "/opt/pmcluster/deploy/install-agent.sh --coordinator https://127.0.0.1:7450 \
         --node-name {node} --bin /opt/pmcluster/pmcluster-agent --label zone=a \
         --ca /opt/pmcluster/pki/ca.pem --cert /opt/pmcluster/pki/agent-{node}.pem \
         --key /opt/pmcluster/pki/agent-{node}-key.pem"
    );
    // What the second run must leave as it was: every file it writes (content, mode, owner,
    // mtime), the user, and the running agent.
    let snapshot = "stat -c '%n %a %U:%G %Y %s' /usr/local/bin/pmcluster-agent /etc/pmcluster \
                    /etc/pmcluster/* /etc/default/pmcluster-agent \
                    /etc/systemd/system/pmcluster-agent.service \
                    /etc/systemd/system/pmcluster-agent.service.d/user.conf; \
                    sha256sum /etc/pmcluster/* /etc/default/pmcluster-agent; \
                    getent passwd pmcluster; systemctl show -p MainPID pmcluster-agent";
    let first = c.sh(&install);
    assert!(
        first.contains("started pmcluster-agent"),
        "first run: {first}"
    );
    let before = c.sh(snapshot);
    let second = c.sh(&install);
    assert!(second.contains("nothing changed"), "second run: {second}");
    let after = c.sh(snapshot);
    assert_eq!(before, after, "the second run changed something");

    let show = c.sh(
        "systemctl show -p ActiveState -p KillMode -p Delegate -p User -p NoNewPrivileges \
         pmcluster-agent",
    );
    for want in [
        "ActiveState=active",
        "KillMode=process",
        "Delegate=yes",
        "User=pmcluster",
    ] {
        assert!(show.contains(want), "{want} not in:\n{show}");
    }
    let user = c.sh("stat -c %U /proc/$(systemctl show -p MainPID --value pmcluster-agent)");
    assert_eq!(user.trim(), "pmcluster", "the agent's user");

    let pmc = |args: &[&str]| {
        let mut full = vec![
            "pmcluster",
            "--coordinator",
            "https://127.0.0.1:7450",
            "--ca",
            "/opt/pmcluster/pki/ca.pem",
            "--cert",
            "/opt/pmcluster/pki/user-admin.pem",
            "--key",
            "/opt/pmcluster/pki/user-admin-key.pem",
        ];
        full.extend_from_slice(args);
        c.exec(&full)
    };
    wait_until(DEADLINE, "the agent to register", || {
        let list = nodes(&pmc(&["nodes", "-o", "json"]))?;
        if list.iter().any(|(n, s)| n == node && s == "ready") {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    });

    // An instance started through the agent outlives a restart of the agent's unit.
    let out = pmc(&["start", "sleep 1000", "--name", "nap"]);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid_of = || -> Result<i64, String> {
        let out = pmc(&["list", "nap", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let list = v
            .as_array()
            .or_else(|| v.get("instances").and_then(Value::as_array))
            .ok_or_else(|| format!("no instance list in {v}"))?;
        list.iter()
            .find(|i| i.get("status").and_then(Value::as_str) == Some("online"))
            .and_then(|i| i.get("pid").and_then(Value::as_i64))
            .filter(|pid| *pid > 0)
            .ok_or_else(|| format!("not online: {v}"))
    };
    let pid = wait_until(DEADLINE, "the instance to run", pid_of);
    let agent_before = c.sh("systemctl show -p MainPID --value pmcluster-agent");
    c.sh("systemctl restart pmcluster-agent");
    let agent_after = c.sh("systemctl show -p MainPID --value pmcluster-agent");
    assert_ne!(agent_before, agent_after, "the agent restarted");
    c.sh(&format!("test -d /proc/{pid}"));
    wait_until(
        DEADLINE,
        "the restarted agent to report the same instance",
        || match pid_of() {
            Ok(p) if p == pid => Ok(()),
            other => Err(format!("{other:?}, want pid {pid}")),
        },
    );
    eprintln!(
        "install_agent_on_a_systemd_host: {:.1}s (images {:.1}s)",
        started.elapsed().as_secs_f64(),
        build.as_secs_f64()
    );
}

/// The compose project, taken down by `down.sh` when dropped.
struct Project {
    name: String,
    state: PathBuf,
    lb_port: u16,
    down: bool,
}

impl Project {
    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(repo().join("deploy/compose").join(name));
        cmd.env("PMCLUSTER_COMPOSE_PROJECT", &self.name)
            .env("PMCLUSTER_COMPOSE_STATE", &self.state)
            .env("PMCLUSTER_LB_PORT", self.lb_port.to_string())
            .env("PMCLUSTER_LB_APP", "web")
            .env("PMCLUSTER_IMAGE_TAG", TAG);
        cmd
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    /// The CLI inside c1, as the admin user its environment names.
    fn cli(&self, args: &[&str]) -> Output {
        run(Command::new("docker")
            .args(["exec", &self.container("c1"), "pmcluster"])
            .args(args))
    }

    fn down(&mut self) {
        run_ok(&mut self.script("down.sh"));
        self.down = true;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.script("down.sh").output();
        }
    }
}

/// up.sh brings up three etcd members, the coordinator pair, three agents and HAProxy; an app
/// scaled over the agents answers through HAProxy from every instance; down.sh leaves no
/// container or network behind.
#[test]
fn compose_cluster_up_scale_down() {
    if let Err(why) = docker_usable(true) {
        return skip("docker", &why);
    }
    let started = Instant::now();
    let build = images();
    let state = tempfile::tempdir().expect("a temp dir for the compose state");
    let mut p = Project {
        name: unique("pmcit"),
        state: state.path().join("state"),
        lb_port: free_port_range(1).expect("a free port for HAProxy"),
        down: false,
    };
    let up = run_ok(p.script("up.sh").args(["--timeout", "180"]));
    assert!(up.contains("pmcluster is up"), "up.sh said:\n{up}");
    let up_took = started.elapsed();

    // The images carry no HTTP server: the repo's test app goes into each agent.
    let testapp = bin_dir()
        .expect("the binaries' dir")
        .join("pmcluster-testapp");
    for a in ["a1", "a2", "a3"] {
        run_ok(
            Command::new("docker")
                .arg("cp")
                .arg(&testapp)
                .arg(format!("{}:/usr/local/bin/", p.container(a))),
        );
    }
    let out = p.cli(&[
        "start",
        "/usr/local/bin/pmcluster-testapp",
        "--name",
        "web",
        "--instances",
        "1",
        "--port",
        "8000-8005",
        "--env",
        "TESTAPP_BIND=0.0.0.0",
    ]);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(DEADLINE, "the first instance through HAProxy", || {
        http_get(p.lb_port, "/")
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("status {}", r.status))
                }
            })
    });
    let out = p.cli(&["scale", "web", "3"]);
    assert!(
        out.status.success(),
        "scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The three instances online, one on each agent...
    wait_until(DEADLINE, "three instances of web online on a1..a3", || {
        let out = p.cli(&["list", "web", "-o", "json"]);
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let online = listed.matches("\"online\"").count();
        let spread = ["a1", "a2", "a3"]
            .iter()
            .all(|a| listed.contains(&format!("\"{a}\"")));
        if online == 3 && spread {
            Ok(())
        } else {
            Err(listed)
        }
    });
    // ...and each answers through HAProxy once its backend is rewritten (round robin: three
    // requests a poll; at most 2000 in all).
    let mut seen = std::collections::BTreeSet::new();
    let mut requests = 0;
    wait_until(DEADLINE, "all three instances through HAProxy", || {
        for _ in 0..3 {
            requests += 1;
            if requests > 2000 {
                return Ok(());
            }
            if let Ok(r) = http_get(p.lb_port, "/")
                && r.status == 200
                && let Ok(v) = serde_json::from_str::<Value>(&r.body)
                && let Some(i) = v.get("instance").and_then(Value::as_str)
            {
                seen.insert(i.to_string());
            }
        }
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(format!("instances seen: {seen:?} in {requests} requests"))
        }
    });
    assert_eq!(
        seen.len(),
        3,
        "instances seen through HAProxy in {requests} requests: {seen:?}"
    );

    p.down();
    let left = run_ok(Command::new("docker").args([
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", p.name),
    ]));
    assert!(left.trim().is_empty(), "containers left: {left}");
    let nets = run_ok(Command::new("docker").args([
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", p.name),
    ]));
    assert!(nets.trim().is_empty(), "networks left: {nets}");
    assert!(!p.state.exists(), "down.sh left {}", p.state.display());
    eprintln!(
        "compose_cluster_up_scale_down: {:.1}s (images {:.1}s, up.sh {:.1}s)",
        started.elapsed().as_secs_f64(),
        build.as_secs_f64(),
        (up_took - build.min(up_took)).as_secs_f64()
    );
}
