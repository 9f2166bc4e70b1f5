//! `pmcluster up` / `down`: the single-machine default README's first command runs. A local
//! coordinator and agent come up as daemons (idempotently), run an app, and `down` stops them
//! and every instance; state survives `down`/`up`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::signal::Signal;
use pmcluster_tests::{
    Bins, ProcId, free_port_range, http_get, kill_pid, skip, wait_for, wait_until,
};
use serde_json::Value;

use crate::DEADLINE;

/// Runs the CLI with `home` as its PMCLUSTER_HOME and the coordinator at `url`.
fn pm(cli: &Path, home: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(cli)
        .args(args)
        .env("PMCLUSTER_HOME", home)
        .env("PMCLUSTER_COORDINATOR", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("pmcluster {args:?}: {e}"))
}

#[track_caller]
fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Pid recorded in a pid file `up` wrote, as a process identity.
fn daemon(home: &Path, file: &str) -> Option<ProcId> {
    let pid: u32 = std::fs::read_to_string(home.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    ProcId::of(pid)
}

/// The two online instances of `web`, as `list` shows them, or the list.
fn two_online(cli: &Path, home: &Path, url: &str) -> Result<Vec<ProcId>, String> {
    let out = pm(cli, home, url, &["list", "web", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let online: Vec<ProcId> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["status"] == "online")
        .filter_map(|i| ProcId::of(u32::try_from(i["pid"].as_u64()?).ok()?))
        .collect();
    if online.len() == 2 {
        Ok(online)
    } else {
        Err(list.to_string())
    }
}

/// Ends whatever `up` started, by pid, if the test failed half-way.
struct Down<'a> {
    cli: &'a Path,
    home: &'a Path,
    url: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = pm(self.cli, self.home, self.url, &["down"]);
    }
}

#[test]
fn up_runs_a_local_cluster_and_down_stops_everything() {
    let bins = Bins::locate().expect("binaries built (cargo build --workspace --bins)");
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path();
    let port = free_port_range(1).expect("a free port for the coordinator");
    let app_port = free_port_range(2).expect("free ports for the app");
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cli = bins.cli.as_path();
    let _down = Down {
        cli,
        home,
        url: &url,
    };

    let first = ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up",
    );
    assert!(first.contains("coordinator listening"), "{first}");
    let coordinator = daemon(home, "coordinator.pid").expect("coordinator pid file");
    let agent = daemon(home, "agent.pid").expect("agent pid file");
    // Idempotent: a second `up` starts nothing new.
    ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up again",
    );
    assert_eq!(daemon(home, "coordinator.pid"), Some(coordinator));
    assert_eq!(daemon(home, "agent.pid"), Some(agent));

    let testapp = bins.testapp.display().to_string();
    let ports = format!("{app_port}-{}", app_port + 1);
    ok(
        &pm(
            cli,
            home,
            &url,
            &[
                "start",
                &testapp,
                "--name",
                "web",
                "--instances",
                "2",
                "--port",
                &ports,
            ],
        ),
        "start",
    );
    let instances = wait_until(DEADLINE, "2 online instances", || {
        two_online(cli, home, &url)
    });

    // The daemons' logs are files: plain text, no terminal colour codes.
    for log in ["agent.log", "coordinator.log"] {
        let text = std::fs::read_to_string(home.join(log)).unwrap_or_default();
        assert!(text.contains(" INFO "), "{log} has log lines: {text}");
        assert!(!text.contains('\x1b'), "{log} holds escape codes: {text:?}");
    }

    // `down` stops the agent with its instances, then the coordinator.
    let out = ok(&pm(cli, home, &url, &["down"]), "down");
    assert!(out.contains("stopped agent"), "{out}");
    wait_until(DEADLINE, "daemons and instances gone", || {
        let alive: Vec<u32> = instances
            .iter()
            .chain([&coordinator, &agent])
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });

    // State survives: after `up` the app is back with two instances.
    ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "local"],
        ),
        "up after down",
    );
    wait_until(DEADLINE, "web back with 2 online", || {
        two_online(cli, home, &url)
    });
    ok(&pm(cli, home, &url, &["down"]), "down again");
}

#[track_caller]
fn refused(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: {}\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A plain `up` after `down` keeps the node name the first `up` gave (the agent's data dir
/// belongs to it, and the agent refuses any other); another `--node-name` is refused saying
/// what to do, and so is an `--listen` that a running agent does not dial, while a plain `up`
/// after a coordinator crash starts it where it was; `--rename-node` renames the node.
#[test]
fn up_keeps_the_node_name_and_says_whom_a_running_agent_dials() {
    let bins = Bins::locate().expect("binaries built (cargo build --workspace --bins)");
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path();
    let port = free_port_range(1).expect("a free port for the coordinator");
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cli = bins.cli.as_path();
    let _down = Down {
        cli,
        home,
        url: &url,
    };

    ok(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "a"],
        ),
        "up --node-name a",
    );
    ok(&pm(cli, home, &url, &["down"]), "down");
    let again = ok(
        &pm(cli, home, &url, &["up", "--listen", &listen]),
        "plain up",
    );
    assert!(again.contains("agent ready as node \"a\""), "{again}");
    ok(&pm(cli, home, &url, &["down"]), "down again");

    let err = refused(
        &pm(
            cli,
            home,
            &url,
            &["up", "--listen", &listen, "--node-name", "b"],
        ),
        2,
        "up --node-name b",
    );
    for want in [
        "--node-name b: this data directory's agent is node \"a\"",
        "leave out --node-name",
        "`pmcluster up --node-name b --rename-node`",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    assert_eq!(daemon(home, "coordinator.pid"), None, "nothing started");
    assert_eq!(daemon(home, "agent.pid"), None, "nothing started");

    // The coordinator goes (a crash, say) while the agent runs on, dialing its address; an
    // `up` on another address is refused (by its argument: exit 2) rather than waiting for a
    // node that never gets ready.
    ok(&pm(cli, home, &url, &["up", "--listen", &listen]), "up");
    // A trial's `up --listen 0.0.0.0:PORT` beside the running coordinator was told to `down`
    // and run it again, which was then refused: it is refused first, for what it is.
    let everywhere = format!("0.0.0.0:{port}");
    let err = refused(
        &pm(cli, home, &url, &["up", "--listen", &everywhere]),
        2,
        "up --listen 0.0.0.0",
    );
    assert!(
        err.contains("listens on loopback only") && !err.contains("pmcluster down"),
        "{err}"
    );
    let coordinator = daemon(home, "coordinator.pid").expect("coordinator pid file");
    kill_pid(coordinator.pid, Signal::SIGKILL).expect("kill the coordinator");
    wait_for(DEADLINE, "the coordinator gone", || !coordinator.alive());
    let other = free_port_range(1).expect("another free port");
    let other = format!("127.0.0.1:{other}");
    let err = refused(
        &pm(cli, home, &url, &["up", "--listen", &other]),
        2,
        "up on another address",
    );
    for want in [
        format!("dials the coordinator at {url}, not http://{other}"),
        format!("leave out --listen to start the coordinator on {listen} again"),
    ] {
        assert!(err.contains(&want), "{want:?} in {err}");
    }
    // Without --listen, `up` starts the coordinator again where it was, and the node is ready.
    let back = ok(&pm(cli, home, &url, &["up"]), "plain up after the crash");
    assert!(back.contains("agent already running"), "{back}");
    assert!(back.contains(&format!("listening on {url}")), "{back}");
    ok(&pm(cli, home, &url, &["down"]), "down at last");

    // A rename is the way out the refusal names: the agent renames its node.
    let renamed = ok(
        &pm(
            cli,
            home,
            &url,
            &[
                "up",
                "--listen",
                &listen,
                "--node-name",
                "b",
                "--rename-node",
            ],
        ),
        "up --node-name b --rename-node",
    );
    assert!(renamed.contains("agent ready as node \"b\""), "{renamed}");
    ok(&pm(cli, home, &url, &["down"]), "down after the rename");
    let again = ok(
        &pm(cli, home, &url, &["up", "--listen", &listen]),
        "plain up after the rename",
    );
    assert!(again.contains("agent ready as node \"b\""), "{again}");
    ok(&pm(cli, home, &url, &["down"]), "down for good");
}

/// The online instances of `app` as `list` shows them, once there are `n`.
fn online(cli: &Path, home: &Path, url: &str, app: &str, n: usize) -> Result<Vec<Value>, String> {
    let out = pm(cli, home, url, &["list", app, "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let up: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["status"] == "online" && i["pid"].as_u64().is_some_and(|p| p > 0))
        .cloned()
        .collect();
    if up.len() == n {
        Ok(up)
    } else {
        Err(list.to_string())
    }
}

/// A process the test started, killed by its pid when the test ends, however it ends.
struct Bystander(std::process::Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process an instance started (not a child of the test), SIGKILLed by its pid and start time
/// when the test ends, if `down` did not end it.
struct Stray(ProcId);

impl Drop for Stray {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGKILL);
    }
}

/// What the tests of `down` after a hung or dead agent share: the binaries, a home, the
/// coordinator's address and a port range for apps.
struct Local {
    bins: Bins,
    home: tempfile::TempDir,
    listen: String,
    url: String,
    app_port: u16,
}

impl Local {
    fn new(app_ports: u16) -> Local {
        let bins = Bins::locate().expect("binaries built (cargo build --workspace --bins)");
        let home = tempfile::tempdir().expect("temp dir");
        let port = free_port_range(1).expect("a free port for the coordinator");
        let app_port = free_port_range(app_ports).expect("free ports for the apps");
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        Local {
            bins,
            home,
            listen,
            url,
            app_port,
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn pm(&self, args: &[&str]) -> Output {
        pm(&self.bins.cli, self.home(), &self.url, args)
    }

    /// `up` as node `local`; the guard runs `down` when the test ends, however it ends.
    fn up(&self) -> Down<'_> {
        let down = Down {
            cli: &self.bins.cli,
            home: self.home(),
            url: &self.url,
        };
        let up = ["up", "--listen", &self.listen, "--node-name", "local"];
        ok(&self.pm(&up), "up");
        down
    }

    /// Starts the test app as `name` on `ports`, with `more` arguments, and waits until its `n`
    /// instances are online.
    fn start(&self, name: &str, n: usize, ports: &str, more: &[&str]) -> Vec<Value> {
        let testapp = self.bins.testapp.display().to_string();
        let count = n.to_string();
        let mut args = vec!["start", &testapp, "--name", name, "--instances", &count];
        args.extend(["--port", ports]);
        args.extend(more);
        ok(&self.pm(&args), &format!("start {name}"));
        let (cli, home, url) = (&self.bins.cli, self.home(), &self.url);
        wait_until(DEADLINE, &format!("{n} online of {name}"), || {
            online(cli, home, url, name, n)
        })
    }
}

/// `down` with a hung agent (stopped with SIGSTOP) kills it after its 30 s, then stops the
/// processes its instances left running, found by the agent's key in their environment: a
/// child an instance started, and one that ignores SIGTERM (SIGKILL), too. It says how many,
/// and a process that carries a key only like the agent's is left alone.
#[test]
fn down_stops_the_instances_a_hung_agent_leaves_running() {
    let local = Local::new(3);
    let (home, app_port) = (local.home(), local.app_port);
    let _down = local.up();
    let web_ports = format!("{app_port}-{}", app_port + 1);
    let stubborn_port = (app_port + 2).to_string();
    let web = local.start("web", 2, &web_ports, &[]);
    let ignores = ["--env", "TESTAPP_IGNORE_SIGTERM=1"];
    let stubborn = local.start("stubborn", 1, &stubborn_port, &ignores);
    let mut processes: Vec<ProcId> = web
        .iter()
        .chain(&stubborn)
        .filter_map(|i| ProcId::of(u32::try_from(i["pid"].as_u64()?).ok()?))
        .collect();
    assert_eq!(processes.len(), 3, "{processes:?}");
    let child = http_get(app_port, "/spawn-child").expect("web[0] spawns a child");
    let child: Value = serde_json::from_str(&child.body).expect("the child's pid as JSON");
    let child = child["child_pid"]
        .as_u64()
        .and_then(|p| ProcId::of(u32::try_from(p).ok()?))
        .expect("the child runs");
    processes.push(child);

    // A process with a key that only begins as the agent's.
    let environ = std::fs::read(format!("/proc/{}/environ", processes[0].pid))
        .expect("an instance's environment");
    let key = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"PMCLUSTER_AGENT_KEY="))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .expect("instances carry the agent key");
    let bystander = Bystander(
        Command::new("sleep")
            .arg("600")
            .env("PMCLUSTER_AGENT_KEY", format!("{key}0"))
            .env("PMCLUSTER_INSTANCE_UUID", "not-ours")
            .spawn()
            .expect("start a bystander"),
    );
    let bystander_id = ProcId::of(bystander.0.id()).expect("the bystander runs");

    let agent = daemon(home, "agent.pid").expect("agent pid file");
    kill_pid(agent.pid, Signal::SIGSTOP).expect("stop the agent");
    let out = ok(&local.pm(&["down"]), "down with a hung agent");
    for want in [
        format!("killed agent (pid {})", agent.pid),
        "stopped 4 processes of the agent's instances that it left running (1 needed SIGKILL"
            .to_string(),
        "stopped coordinator".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} in {out}");
    }
    wait_until(DEADLINE, "the instances and the child gone", || {
        let alive: Vec<u32> = processes
            .iter()
            .chain([&agent])
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });
    assert!(bystander_id.alive(), "the bystander was left alone");
}

/// The cgroup2 directory of a process, by `/proc/PID/cgroup` under this process's cgroup2 mount.
fn cgroup_dir(pid: u32) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = pmcluster_agent::cgroup::parse_mountinfo(&mountinfo)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = pmcluster_agent::cgroup::parse_own_cgroup(&text)?;
    Some(mount.join(own.trim_start_matches('/')))
}

/// Why the agent of `home` runs its instances without cgroups, as its log says, for a skip.
fn no_cgroups_because(home: &Path, instance: Option<&Path>) -> String {
    let log = std::fs::read_to_string(home.join("agent.log")).unwrap_or_default();
    let said = log
        .lines()
        .find(|l| l.contains("instances run without cgroups"))
        .map(str::to_string);
    said.unwrap_or_else(|| format!("the instance runs in cgroup {instance:?}"))
}

/// `down` after the agent died (kill -9) ends what its instances left in their cgroups: a
/// process an instance started with a cleared environment carries no key for `down`'s sweep to
/// find, but it is in the instance's cgroup. The agent's cgroup directory goes, as the agent's
/// own exit would have removed it, and so does the record of it. Reported as skipped where the
/// agent runs its instances without cgroups.
#[test]
fn down_ends_what_a_dead_agent_left_in_its_cgroups() {
    let local = Local::new(1);
    let home = local.home();
    let _down = local.up();
    let port = local.app_port.to_string();
    let web = local.start("web", 1, &port, &[]);
    let pid = web[0]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("the instance's pid");
    let instance_cgroup = cgroup_dir(pid);
    let base = instance_cgroup.as_deref().and_then(Path::parent);
    let Some(base) = base.filter(|b| {
        b.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pmcluster-local-"))
    }) else {
        let need = match nix::unistd::Uid::effective().is_root() {
            true => "cgroup2",
            false => "root",
        };
        return skip(need, &no_cgroups_because(home, instance_cgroup.as_deref()));
    };
    let record = home.join("agent").join("cgroup-base");
    assert_eq!(
        std::fs::read_to_string(&record).ok(),
        Some(format!("{}\n", base.display())),
        "the agent records its cgroup directory"
    );

    let child = http_get(local.app_port, "/spawn-child?env=clear").expect("a child, env -i");
    let child: Value = serde_json::from_str(&child.body).expect("the child's pid as JSON");
    let child = child["child_pid"]
        .as_u64()
        .and_then(|p| ProcId::of(u32::try_from(p).ok()?))
        .expect("the child runs");
    let stray = Stray(child);
    let environ = std::fs::read(format!("/proc/{}/environ", child.pid)).expect("its environment");
    assert!(
        environ.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&environ)
    );
    assert_eq!(
        cgroup_dir(child.pid),
        instance_cgroup,
        "in its instance's cgroup"
    );

    let agent = daemon(home, "agent.pid").expect("agent pid file");
    kill_pid(agent.pid, Signal::SIGKILL).expect("kill the agent");
    wait_for(DEADLINE, "the agent gone", || !agent.alive());
    let out = ok(&local.pm(&["down"]), "down after the agent died");
    for want in [
        "stopped 1 process of the agent's instances that it left running".to_string(),
        format!(
            "removed the agent's cgroup {} and 1 instance cgroup in it, killing 1 process left \
             in them (SIGKILL)",
            base.display()
        ),
    ] {
        assert!(out.contains(&want), "{want:?} in {out}");
    }
    wait_for(DEADLINE, "the env -i child gone", || !stray.0.alive());
    assert!(!base.exists(), "{} is left", base.display());
    assert!(!record.exists(), "the record is left");
}

/// A PM2 user's `pmcluster start ./server.py` in their project directory, with `up` run
/// elsewhere: the script is not executable, so it runs under python3, and it runs in the
/// project directory (its relative `greeting.txt` is found), as `pm2 start` runs an app where
/// it was started; before, it was looked up from `up`'s directory and crash-looped. The same
/// command again is "already running", not a refusal to change the app.
#[test]
fn start_runs_a_script_given_from_here_in_this_directory() {
    let bins = Bins::locate().expect("binaries built (cargo build --workspace --bins)");
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path();
    let project = tempfile::tempdir().expect("project dir");
    let project = project.path();
    let port = free_port_range(1).expect("a free port for the coordinator");
    let app_port = free_port_range(1).expect("a free port for the app");
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cli = bins.cli.as_path();
    let _down = Down {
        cli,
        home,
        url: &url,
    };
    ok(&pm(cli, home, &url, &["up", "--listen", &listen]), "up");
    std::fs::write(project.join("greeting.txt"), "hello from the project\n").expect("greeting");
    std::fs::write(
        project.join("server.py"),
        "import http.server, os\n\
         body = open('greeting.txt', 'rb').read()\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200)\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
    )
    .expect("server.py");
    let start = |what: &str| {
        let out = Command::new(cli)
            .args(["start", "./server.py", "--name", "py", "--port"])
            .arg(app_port.to_string())
            .current_dir(project)
            .env("PMCLUSTER_HOME", home)
            .env("PMCLUSTER_COORDINATOR", &url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("pmcluster start: {e}"));
        ok(&out, what)
    };
    let said = start("start");
    assert!(said.contains("running it with python3"), "{said}");
    assert!(
        said.contains(&format!("py runs in {}", project.display())),
        "{said}"
    );
    wait_until(
        DEADLINE,
        "the app to answer with the project's file",
        || match http_get(app_port, "/") {
            Ok(reply) if reply.body.contains("hello from the project") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let again = start("start again");
    assert!(again.contains("already running"), "{again}");
    ok(&pm(cli, home, &url, &["down"]), "down");
}

/// Runs the CLI with `home` as its PMCLUSTER_HOME and no coordinator given: it finds one from
/// the data dir.
fn pm_home(cli: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(cli)
        .args(args)
        .env("PMCLUSTER_HOME", home)
        .env_remove("PMCLUSTER_COORDINATOR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("pmcluster {args:?}: {e}"))
}

/// A data dir `up` used keeps its coordinator's address: while that coordinator is down (killed,
/// or after `down`), a verb given no coordinator fails naming the data dir and that address, and
/// calls no other cluster's coordinator (once, one on the default address got `delete all`); a
/// plain `up` brings the cluster back there.
#[test]
fn verbs_of_a_data_dir_whose_coordinator_is_down_reach_no_other_cluster() {
    let (theirs, mine) = (Local::new(1), Local::new(1));
    let _their_down = theirs.up();
    let port = theirs.app_port.to_string();
    theirs.start("precious", 1, &port, &[]);
    let _my_down = mine.up();
    let cli = mine.bins.cli.as_path();
    let listed = ok(&pm_home(cli, mine.home(), &["apps"]), "apps of mine");
    assert!(!listed.contains("precious"), "{listed}");

    let down_says = |what: &str| {
        // Reads only: in a regression, a change would go to whatever holds the default address.
        for args in [&["apps"][..], &["list"]] {
            let err = refused(&pm_home(cli, mine.home(), args), 1, what);
            let want = format!(
                "the coordinator of {} ({}) is not running: start it with `pmcluster up`",
                mine.home().display(),
                mine.url
            );
            assert!(err.contains(&want), "{what}: {want:?} in {err}");
        }
    };
    let coordinator = daemon(mine.home(), "coordinator.pid").expect("coordinator pid file");
    kill_pid(coordinator.pid, Signal::SIGKILL).expect("kill my coordinator");
    wait_for(DEADLINE, "my coordinator gone", || !coordinator.alive());
    down_says("after SIGKILL");
    ok(&pm_home(cli, mine.home(), &["up"]), "up after the kill");
    ok(&pm_home(cli, mine.home(), &["down"]), "down");
    down_says("after down");

    // Checked before a plain `up` could start anything on the default address.
    let recorded = std::fs::read_to_string(mine.home().join("coordinator.listen"));
    assert_eq!(recorded.ok().as_deref().map(str::trim), Some(&*mine.listen));
    let back = ok(&pm_home(cli, mine.home(), &["up"]), "plain up after down");
    assert!(
        back.contains(&format!("listening on {}", mine.url)),
        "{back}"
    );
    ok(&pm_home(cli, mine.home(), &["apps"]), "apps of mine again");
    // A variable set empty is unset: this data dir's coordinator, not a refusal of "".
    let empty = Command::new(cli)
        .args(["apps"])
        .env("PMCLUSTER_HOME", mine.home())
        .env("PMCLUSTER_COORDINATOR", "")
        .env("PMCLUSTER_TOKEN", "")
        .env_remove("RUST_LOG")
        .output()
        .expect("pmcluster apps");
    let listed = ok(&empty, "apps with PMCLUSTER_COORDINATOR empty");
    assert!(!listed.contains("precious"), "{listed}");

    let theirs_now = ok(&theirs.pm(&["apps"]), "their apps");
    assert!(theirs_now.contains("precious"), "{theirs_now}");
}
