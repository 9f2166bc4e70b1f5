//! A PM2 user's first commands: `start app.js` of a file here, `start ecosystem.config.js`, and
//! `logs` of every app.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pmcluster_tests::{CliOutput, Cluster, wait_until};

use crate::{DEADLINE, wait_online};

#[track_caller]
fn run_in(c: &Cluster, dir: &Path, args: &[&str]) -> CliOutput {
    c.try_cli_in(dir, args)
        .unwrap_or_else(|e| panic!("pmcluster {args:?}: {e}"))
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Waits until `logs APP` shows `needle`.
#[track_caller]
fn wait_log(c: &Cluster, app: &str, needle: &str) {
    wait_until(
        DEADLINE,
        &format!("{needle:?} in the logs of {app}"),
        || {
            let out = c.try_cli(&["logs", app, "--lines", "50"])?;
            match out.stdout.contains(needle) {
                true => Ok(()),
                false => Err(out.to_string()),
            }
        },
    );
}

fn app_names(c: &Cluster) -> Vec<String> {
    let out = c.cli(&["apps", "-o", "json"]);
    let v = out.assert_ok().json().expect("apps -o json");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect()
}

/// `start worker.sh` (a script that is not executable) and `start tick` (an executable file),
/// bare names of files here, start them as new apps as `start ./worker.sh` does: by the
/// interpreter of the extension, in this directory, named after the file. A stopped app named
/// like a file here is started itself, the file left alone; a file that cannot run still gets
/// the hint of what to type.
#[test]
fn start_of_a_file_here_by_its_bare_name_runs_it() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    write(
        dir,
        "worker.sh",
        "#!/bin/sh\necho worker-hello from $(cat greeting.txt)\nexec sleep 1000\n",
        0o644,
    );
    write(dir, "greeting.txt", "the-project\n", 0o644);
    write(
        dir,
        "tick",
        "#!/bin/sh\necho tick-hello\nexec sleep 1000\n",
        0o755,
    );
    write(dir, "data.txt", "not a program\n", 0o644);

    let out = run_in(&c, dir, &["start", "worker.sh"]);
    out.assert_ok();
    for said in [
        "running it with bash",
        "e.g. \"sh ./worker.sh\"",
        "started app worker",
    ] {
        assert!(out.stdout.contains(said), "{said:?} in {out}");
    }
    assert!(!out.stdout.contains("python"), "{out}");
    wait_online(&c, "worker", 1);
    // Run in this directory: its relative file is found.
    wait_log(&c, "worker", "worker-hello from the-project");

    run_in(&c, dir, &["start", "tick"]).assert_ok();
    wait_online(&c, "tick", 1);
    wait_log(&c, "tick", "tick-hello");

    // The same again is the app that runs, not another one.
    let again = run_in(&c, dir, &["start", "worker.sh"]);
    assert!(
        again.assert_ok().stdout.contains("already running"),
        "{again}"
    );

    // With flags it is the same app: only the count differs, which `scale` changes.
    let count = run_in(&c, dir, &["start", "worker.sh", "-i", "2"]);
    for said in [
        "already running",
        "`pmcluster scale worker 2` runs 2 instances",
    ] {
        assert!(
            count.assert_ok().stdout.contains(said),
            "{said:?} in {count}"
        );
    }
    // An executable file by its bare name with --name runs the file, not a program on PATH.
    run_in(&c, dir, &["start", "tick", "--name", "tock"]).assert_ok();
    wait_online(&c, "tock", 1);

    // A script's name with no such file here is neither run nor offered --name alone.
    let missing = run_in(&c, dir, &["start", "missing.py"]);
    assert_eq!(missing.code(), Some(1), "{missing}");
    assert!(
        missing
            .stderr
            .contains("there is no file missing.py in this directory"),
        "{missing}"
    );

    // An app of that name wins over the file.
    c.cli(&["start", "sleep 1000", "--name", "job.sh"])
        .assert_ok();
    wait_online(&c, "job.sh", 1);
    c.cli(&["stop", "job.sh"]).assert_ok();
    write(dir, "job.sh", "echo the file ran\n", 0o644);
    let named = run_in(&c, dir, &["start", "job.sh"]);
    assert!(
        named
            .assert_ok()
            .stdout
            .contains("started 1 instance of job.sh"),
        "{named}"
    );
    wait_online(&c, "job.sh", 1);

    let data = run_in(&c, dir, &["start", "data.txt"]);
    assert_eq!(data.code(), Some(1), "{data}");
    assert!(data.stderr.contains("chmod +x data.txt"), "{data}");

    let mut apps = app_names(&c);
    apps.sort();
    assert_eq!(apps, ["job.sh", "tick", "tock", "worker"]);
}

/// `start` of a config file (pmcluster's, a PM2 ecosystem file in JSON or in JavaScript) is
/// refused with exit 2 and the verb that reads it, creating nothing, by a bare name or a path;
/// the verb it names then works.
#[test]
fn start_of_a_config_file_points_to_apply_or_import() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let project = tempfile::tempdir().expect("project dir");
    let dir = project.path();
    write(
        dir,
        "apps.json",
        r#"{"apps": [{"name": "files", "script": "sleep", "args": ["1000"]}]}"#,
        0o644,
    );
    write(
        dir,
        "ecosystem.json",
        r#"{"apps": [{"name": "eco", "script": "sleep", "args": "1000", "watch": true}]}"#,
        0o644,
    );
    write(
        dir,
        "ecosystem.config.js",
        "module.exports = { apps: [{ name: 'eco', script: 'server.js' }] }\n",
        0o644,
    );
    write(
        dir,
        "apps.yaml",
        "apps:\n  - name: y\n    script: sleep\n",
        0o644,
    );
    let cases = [
        (&["start", "apps.json"][..], "pmcluster apply -f apps.json"),
        (&["start", "./apps.yaml"], "pmcluster apply -f ./apps.yaml"),
        (
            &["start", "ecosystem.json"],
            "pmcluster import pm2 ecosystem.json --out apps.json && pmcluster apply -f apps.json",
        ),
        (
            &["start", "ecosystem.config.js"],
            "import('./ecosystem.config.js')",
        ),
        (
            &["start", "ecosystem.config.js", "--name", "eco"],
            "then: pmcluster import pm2 eco.json --out apps.json",
        ),
    ];
    for (args, want) in cases {
        let out = run_in(&c, dir, args);
        assert_eq!(out.code(), Some(2), "{out}");
        assert!(out.stderr.contains(want), "{want:?} in {out}");
        assert!(out.stderr.contains("not a config file"), "{out}");
    }
    assert!(app_names(&c).is_empty(), "{:?}", app_names(&c));
    // What it points to does the job.
    run_in(&c, dir, &["apply", "-f", "apps.json"]).assert_ok();
    let imported = run_in(
        &c,
        dir,
        &["import", "pm2", "ecosystem.json", "--out", "converted.json"],
    );
    imported.assert_ok();
    run_in(&c, dir, &["apply", "-f", "converted.json"]).assert_ok();
    let mut apps = app_names(&c);
    apps.sort();
    assert_eq!(apps, ["eco", "files"]);
}

/// `logs` with no app and `logs all` show every app's lines, each prefixed `app[index]`, as
/// `pm2 logs` does; `-f` follows every app side by side. `--instance` needs one app, and an app
/// named `all` is that app.
#[test]
fn logs_of_every_app() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    for (app, n) in [("alpha", "1"), ("beta", "2")] {
        let line = format!("echo {app}-hello $PMCLUSTER_INSTANCE_ID; exec sleep 1000");
        c.cli(&["start", &line, "--shell", "--name", app, "-i", n])
            .assert_ok();
    }
    wait_online(&c, "alpha", 1);
    wait_online(&c, "beta", 2);
    wait_log(&c, "beta", "beta-hello 1");
    wait_log(&c, "alpha", "alpha-hello 0");
    for args in [&["logs"][..], &["logs", "all"]] {
        let out = c.cli(args);
        let text = out.assert_ok().stdout.clone();
        for want in [
            "alpha[0] | alpha-hello 0",
            "beta[0] | beta-hello 0",
            "beta[1] | beta-hello 1",
        ] {
            assert!(text.contains(want), "{want:?} in {out}");
        }
        // One app after the other.
        let first_beta = text.find("beta[").unwrap_or(0);
        assert!(
            text.rfind("alpha[").is_some_and(|a| a < first_beta),
            "{out}"
        );
    }
    let json = c.cli(&["logs", "-o", "json"]);
    let apps: Vec<String> = json
        .assert_ok()
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["app"].as_str().map(str::to_string))
        .collect();
    assert!(
        apps.contains(&"alpha".into()) && apps.contains(&"beta".into()),
        "{json}"
    );

    let one = c.try_cli(&["logs", "--instance", "0"]).expect("cli runs");
    assert_eq!(one.code(), Some(2), "{one}");
    assert!(
        one.stderr.contains("pmcluster logs APP --instance N"),
        "{one}"
    );

    // -f: lines of both apps as they are written.
    let mut follower = Command::new(&c.bins().cli)
        .args(["--coordinator", &c.url(), "logs", "-f", "--lines", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f starts");
    let stdout = follower.stdout.take().expect("piped stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Restarted until the follower, which may not be subscribed yet, saw both.
    let mut seen = (false, false);
    let until = Instant::now() + DEADLINE;
    while !(seen.0 && seen.1) && Instant::now() < until {
        c.cli(&["restart", "alpha"]).assert_ok();
        c.cli(&["restart", "beta", "--instance", "1"]).assert_ok();
        let round = Instant::now() + Duration::from_secs(3);
        while let Some(left) = round.checked_duration_since(Instant::now()) {
            let Ok(line) = lines.recv_timeout(left) else {
                break;
            };
            seen.0 |= line.starts_with("alpha[0] | alpha-hello");
            seen.1 |= line.starts_with("beta[1] | beta-hello");
        }
    }
    assert_eq!(
        seen,
        (true, true),
        "logs -f saw alpha's and beta's new lines"
    );
    // Its reader goes away (`| head`): the next line alpha writes ends the follower, whole, with
    // exit 0. A trial found it went on for ever, following beta, which wrote nothing more.
    drop(lines);
    let until = Instant::now() + DEADLINE;
    let ended = loop {
        if let Ok(Some(status)) = follower.try_wait() {
            break Some(status);
        }
        if Instant::now() >= until {
            break None;
        }
        c.cli(&["restart", "alpha"]).assert_ok();
        std::thread::sleep(Duration::from_millis(500));
    };
    if ended.is_none() {
        let _ = follower.kill();
        let _ = follower.wait();
    }
    let _ = reader.join();
    let ended = ended.expect("logs -f ended once its reader went away");
    assert!(ended.success(), "{ended:?}");

    c.cli(&[
        "start",
        "echo all-hello; exec sleep 1000",
        "--shell",
        "--name",
        "all",
    ])
    .assert_ok();
    wait_online(&c, "all", 1);
    wait_log(&c, "all", "all-hello");
    let named = c.cli(&["logs", "all"]);
    let text = named.assert_ok().stdout.clone();
    assert!(
        text.contains("all[0] | all-hello") && !text.contains("alpha"),
        "{named}"
    );
}

/// `logs` of every app with a token for some of them shows the apps it may read and names the
/// others on standard error; a token that may read none is refused as `logs APP` is.
#[test]
fn logs_of_every_app_shows_those_a_token_may_read() {
    let c = Cluster::start_tls(1).expect("a TLS coordinator and an agent start");
    for app in ["web", "other"] {
        let line = format!("echo {app}-hello; exec sleep 1000");
        c.cli(&["start", &line, "--shell", "--name", app])
            .assert_ok();
        wait_online(&c, app, 1);
        wait_log(&c, app, &format!("{app}-hello"));
    }
    let ca = c.pki().expect("a TLS cluster").ca().display().to_string();
    let as_token = |role: &str, apps: Option<&str>| {
        let mut args = vec!["token", "create", "--role", role, "-o", "json"];
        args.extend(apps.map(|a| ["--app", a]).into_iter().flatten());
        let made = c.cli(&args);
        let token = made.assert_ok().json().expect("token create -o json")["secret"]
            .as_str()
            .expect("a secret")
            .to_string();
        c.try_cli(&["--ca", &ca, "--token", &token, "logs"])
            .expect("cli runs")
    };
    let web = as_token("operate", Some("web*"));
    assert!(
        web.assert_ok().stdout.contains("web[0] | web-hello"),
        "{web}"
    );
    assert!(!web.stdout.contains("other-hello"), "{web}");
    assert!(
        web.stderr.contains("may not read their logs: other"),
        "{web}"
    );
    let read = as_token("read", None);
    assert!(read.assert_failed().contains("may not call"), "{read}");
}

/// A user trial found PM2's `start` flags refused, with clap's tip pointing to flags of another
/// meaning (`--max-memory-restart`: '--memory', a reservation). They now set the spec's fields,
/// shown by `info` in a config file's words; `start` of the same again starts the app as it is,
/// with another value it is refused naming the field; `--watch` gets a pointer (exit 2); and
/// `logs --err` / `--out` show one stream.
#[test]
fn pm2_start_flags_set_the_spec_and_watch_gets_a_pointer() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let line = "echo to-stdout; echo to-stderr >&2; exec sleep 1000";
    let flags = [
        "start",
        line,
        "--shell",
        "--name",
        "flags",
        "--max-memory-restart",
        "64M",
        "--cron-restart",
        "0 3 * * *",
        "--max-restarts",
        "3",
        "--time",
    ];
    c.cli(&flags).assert_ok();
    wait_online(&c, "flags", 1);
    let info = c.cli(&["info", "flags", "-o", "json"]);
    let v = info.assert_ok().json().expect("info -o json");
    let spec = &v["app"]["spec"];
    assert_eq!(spec["max_memory_restart"], "64M", "{info}");
    assert_eq!(spec["cron_restart"], "0 3 * * *", "{info}");
    assert_eq!(spec["max_restarts"], 3, "{info}");
    assert_eq!(spec["log_timestamps"], true, "{info}");

    // The same flags again: the app as it is, not another spec.
    let again = c.cli(&flags);
    assert!(
        again.assert_ok().stdout.contains("already running"),
        "{again}"
    );
    // Another value: `start` changes no app, and names what differs.
    let mut other = flags.to_vec();
    other[10] = "5";
    let refused = c.cli(&other);
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(refused.stderr.contains("max_restarts"), "{refused}");

    let watch = c.cli(&["start", "node server.js", "--name", "web", "--watch"]);
    assert_eq!(watch.code(), Some(2), "{watch}");
    assert!(
        watch
            .stderr
            .contains("--watch: pmcluster does not watch files")
            && watch.stderr.contains("pmcluster reload web")
            && !watch.stderr.contains("--wait"),
        "{watch}"
    );

    wait_log(&c, "flags", "to-stderr");
    let err = c.cli(&["logs", "flags", "--err"]);
    let text = &err.assert_ok().stdout;
    assert!(
        text.contains("to-stderr") && !text.contains("to-stdout"),
        "{err}"
    );
    let out = c.cli(&["logs", "flags", "--out"]);
    let text = &out.assert_ok().stdout;
    assert!(
        text.contains("to-stdout") && !text.contains("to-stderr"),
        "{out}"
    );
}
