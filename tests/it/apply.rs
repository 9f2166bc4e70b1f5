//! A PMDaemon-style config file with two apps, their logs and environment, and the lifecycle
//! verbs: stop, start, restart of one instance, delete.

use std::collections::BTreeMap;

use pmcluster_tests::{
    Cluster, Instance, ProcId, free_port_range, health, http_get, render, wait_until,
};
use serde_json::json;

use crate::{DEADLINE, by_index, live, wait_online};

fn proc_ids(list: &[Instance]) -> Vec<ProcId> {
    list.iter().filter_map(|i| ProcId::of(i.pid?)).collect()
}

#[track_caller]
fn wait_gone(procs: &[ProcId], what: &str) {
    wait_until(DEADLINE, what, || {
        let alive: Vec<u32> = procs.iter().filter(|p| p.alive()).map(|p| p.pid).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });
}

/// Waits until `logs ARGS` prints every one of `want`; returns the output.
#[track_caller]
fn wait_logs(c: &Cluster, args: &[&str], want: &[&str]) -> String {
    let what = format!("pmcluster {} to show {want:?}", args.join(" "));
    wait_until(DEADLINE, &what, || {
        let out = c.try_cli(args)?;
        if out.success() && want.iter().all(|w| out.stdout.contains(w)) {
            Ok(out.stdout)
        } else {
            Err(out.to_string())
        }
    })
}

fn pid_by_index(list: &[Instance]) -> BTreeMap<u32, Option<u32>> {
    list.iter().map(|i| (i.index, i.pid)).collect()
}

#[test]
fn apply_file_and_logs() {
    let c = Cluster::start(2).expect("coordinator and two agents start");
    let base = free_port_range(2).expect("two free ports");
    let config = json!({
        "apps": [
            {
                "name": "api",
                "script": c.testapp().display().to_string(),
                "instances": 2,
                "port": format!("{base}-{}", base + 1),
            },
            {
                "name": "echo",
                "script": "sh",
                "args": [
                    "-c",
                    "echo hello-from-$PMCLUSTER_INSTANCE_ID; echo var=$MY_VAR; \
                     echo greeting=$GREETING; exec sleep 600",
                ],
                "instances": 2,
                "instance_var": "MY_VAR",
                "env": {"GREETING": "hi-${INSTANCE_ID}"},
                "kill_timeout": "2s",
            },
        ]
    });
    let path = c.root().join("apps.json");
    std::fs::write(&path, config.to_string()).expect("write apps.json");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();

    let api = wait_online(&c, "api", 2);
    let echo = wait_online(&c, "echo", 2);
    for inst in &api {
        assert_eq!(inst.port, Some(base + inst.index as u16), "{inst}");
    }
    for inst in &echo {
        assert_eq!(inst.port, None, "an app without a port gets none: {inst}");
    }

    // Output of every instance, through the coordinator, with instance_var and expanded env.
    wait_logs(
        &c,
        &["logs", "echo", "--lines", "5"],
        &[
            "hello-from-0",
            "hello-from-1",
            "var=0",
            "var=1",
            "greeting=hi-0",
            "greeting=hi-1",
        ],
    );
    let one = wait_logs(
        &c,
        &["logs", "echo", "--instance", "1", "--lines", "5"],
        &["hello-from-1"],
    );
    assert!(
        !one.contains("hello-from-0"),
        "--instance 1 shows only index 1:\n{one}"
    );

    // The agent keeps the output in its data dir.
    let echo0 = by_index(&echo, 0).expect("echo[0]");
    let node = echo0.node.clone().expect("echo[0] has a node");
    let agent = c.agent(
        c.agent_idx(&node)
            .expect("echo[0] runs on one of our agents"),
    );
    let log_file = agent.data_dir.join("logs").join("echo-0-out.log");
    let text = std::fs::read_to_string(&log_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", log_file.display()));
    assert!(
        text.contains("hello-from-0"),
        "{}:\n{text}",
        log_file.display()
    );

    // Lines an instance writes later show up too.
    let api0_port = by_index(&api, 0)
        .expect("api[0]")
        .port
        .expect("api[0] port");
    let reply = http_get(api0_port, "/log?n=3").expect("GET /log on api[0]");
    assert_eq!(reply.status, 200, "{reply:?}");
    wait_logs(
        &c,
        &["logs", "api", "--instance", "0", "--lines", "5"],
        &["line 3"],
    );

    // stop: the processes end and the instances stay, stopped.
    let echo_procs = proc_ids(&echo);
    assert_eq!(
        echo_procs.len(),
        2,
        "both echo instances run:{}",
        render(&echo)
    );
    c.cli(&["stop", "echo"]).assert_ok();
    wait_until(DEADLINE, "both echo instances stopped", || {
        let list = c.instances("echo")?;
        if list.len() == 2
            && list
                .iter()
                .all(|i| i.status == "stopped" && i.pid.is_none())
        {
            Ok(())
        } else {
            Err(render(&list))
        }
    });
    wait_gone(&echo_procs, "the stopped echo processes to end");
    assert_eq!(
        pid_by_index(&c.instances("api").expect("list api")),
        pid_by_index(&api),
        "stopping echo leaves api alone"
    );

    // start: online again, as new processes.
    c.cli(&["start", "echo"]).assert_ok();
    let echo_again = wait_online(&c, "echo", 2);
    for (old, new) in echo.iter().zip(&echo_again) {
        assert_ne!(old.pid, new.pid, "{new} is a new process");
    }

    // restart of one instance: index 0 gets a new process, index 1 keeps its own.
    c.cli(&["restart", "api", "--instance", "0"]).assert_ok();
    let old0 = by_index(&api, 0).expect("api[0]").pid;
    let old1 = by_index(&api, 1).expect("api[1]").pid;
    let api_again = wait_until(DEADLINE, "api[0] online with a new pid", || {
        let list = c.instances("api")?;
        let i0 = by_index(&list, 0)?;
        if list.len() == 2 && list.iter().all(live) && i0.pid != old0 {
            Ok(list)
        } else {
            Err(render(&list))
        }
    });
    assert_eq!(
        by_index(&api_again, 1).expect("api[1]").pid,
        old1,
        "{}",
        render(&api_again)
    );
    let new0 = by_index(&api_again, 0).expect("api[0]").clone();
    wait_until(DEADLINE, "the restarted api[0] to answer /health", || {
        let h = health(api0_port)?;
        if h["instance"] == "0" && h["pid"] == new0.pid.unwrap_or(0) {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });

    // delete: gone from the list, processes gone; the other app stays.
    let api_procs = proc_ids(&api_again);
    c.cli(&["delete", "api"]).assert_ok();
    wait_until(DEADLINE, "api gone from the list", || {
        let all = c.instances("")?;
        if all.iter().all(|i| i.app != "api") {
            Ok(())
        } else {
            Err(render(&all))
        }
    });
    wait_gone(&api_procs, "the deleted api processes to end");
    let listed = c.cli(&["list", "api", "-o", "json"]);
    assert!(listed.assert_failed().contains("api"), "{listed}");
    assert_eq!(
        pid_by_index(&wait_online(&c, "echo", 2)),
        pid_by_index(&echo_again),
        "deleting api leaves echo alone"
    );

    let echo_procs = proc_ids(&echo_again);
    // --wait: returns once the processes ended, and then nothing is listed (no process ending).
    c.cli(&["delete", "echo", "--wait"]).assert_ok();
    let alive: Vec<u32> = echo_procs
        .iter()
        .filter(|p| p.alive())
        .map(|p| p.pid)
        .collect();
    assert!(
        alive.is_empty(),
        "still running after delete --wait: {alive:?}"
    );
    let all = c.instances("").expect("list");
    assert!(all.is_empty(), "{}", render(&all));
}

/// `pmcluster apply -f apps.json | true`: the reader is gone before the first line. A change
/// still does all it was asked (it had stopped after the first app), and a read ends quietly.
#[test]
fn a_change_whose_reader_went_away_is_made_whole() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let app = |name: &str| json!({"name": name, "script": "sleep", "args": ["600"]});
    let config = json!({"apps": [app("first"), app("second"), app("third")]});
    let path = c.root().join("three.json");
    std::fs::write(&path, config.to_string()).expect("write three.json");
    let applied = c
        .try_cli_unread(&["apply", "-f", &path.display().to_string()])
        .expect("apply runs");
    applied.assert_ok();
    for name in ["first", "second", "third"] {
        wait_online(&c, name, 1);
    }
    let scaled = c
        .try_cli_unread(&["scale", "third", "2", "--wait"])
        .expect("scale runs");
    scaled.assert_ok();
    wait_online(&c, "third", 2);
    let listed = c.try_cli_unread(&["list"]).expect("list runs");
    listed.assert_ok();
    assert!(listed.stderr.is_empty(), "{listed}");
}

/// `export` prints the apps as a config file that `apply -f` takes back: deleted and applied
/// again from it, each app has the very spec it had.
#[test]
fn exported_apps_apply_back_as_they_were() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let base = free_port_range(2).expect("two free ports");
    let config = json!({"apps": [
        {
            "name": "api",
            "script": c.testapp().display().to_string(),
            "instances": 2,
            "port": format!("{base}-{}", base + 1),
            "env": {"GREETING": "hi"},
            "max_memory_restart": "300M",
            "health_check": {"check_type": "http", "url": "http://127.0.0.1:${PORT}/health"},
            "update": {"max_surge": 0, "max_unavailable": 1},
        },
        {
            "name": "job",
            "script": "sleep",
            "args": ["600"],
            "autorestart": false,
            "kill_timeout": "3s",
            "placement": {"constraints": ["zone!=x"]},
        },
    ]});
    let path = c.root().join("apps.json");
    std::fs::write(&path, config.to_string()).expect("write apps.json");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    let specs = |c: &Cluster| -> Vec<serde_json::Value> {
        let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
        let apps = apps.expect("apps -o json is JSON");
        let apps = apps.as_array().cloned().unwrap_or_default();
        apps.iter().map(|a| a["spec"].clone()).collect()
    };
    let before = specs(&c);
    assert_eq!(before.len(), 2, "{before:?}");

    let exported = c.cli(&["export", "-o", "yaml"]);
    exported.assert_ok();
    let file = c.root().join("exported.yaml");
    std::fs::write(&file, &exported.stdout).expect("write exported.yaml");
    for app in ["api", "job"] {
        c.cli(&["delete", app, "--wait"]).assert_ok();
    }
    c.cli(&["apply", "-f", &file.display().to_string()])
        .assert_ok();
    assert_eq!(specs(&c), before, "exported:\n{}", exported.stdout);
    // One app alone, in JSON.
    let one = c.cli(&["export", "job"]).assert_ok().json();
    let one = one.expect("export is JSON");
    let names: Vec<String> = one["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["job"]);
    // In the units one writes: a trial found "300000ms" and sizes in bytes ("209715200").
    let job = &one["apps"][0];
    assert_eq!(
        (&job["kill_timeout"], &job["log_max_size"]),
        (&json!("3s"), &json!("10M")),
        "{one}"
    );
    assert_eq!(job["update"]["healthy_deadline"], "5m", "{one}");
    let api = c.cli(&["export", "api"]).assert_ok().json();
    let api = api.expect("export is JSON");
    assert_eq!(api["apps"][0]["max_memory_restart"], "300M", "{api}");
}

/// PM2's `all`: `stop all`, `start all`, `restart all`, `delete all` act on every app.
#[test]
fn all_stands_for_every_app() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let app = |name: &str| json!({"name": name, "script": "sleep", "args": ["600"]});
    let path = c.root().join("two.json");
    std::fs::write(&path, json!({"apps": [app("one"), app("two")]}).to_string())
        .expect("write two.json");
    c.cli(&["apply", "-f", &path.display().to_string(), "--wait"])
        .assert_ok();
    let states = |c: &Cluster| -> Vec<(String, String)> {
        let list = c.list_json("").expect("list");
        let mut out: Vec<(String, String)> = list
            .iter()
            .map(|i| {
                let field = |k: &str| i[k].as_str().unwrap_or_default().to_string();
                (field("app"), field("status"))
            })
            .collect();
        out.sort();
        out
    };
    let all = |state: &str| vec![("one".into(), state.into()), ("two".into(), state.into())];

    c.cli(&["stop", "all"]).assert_ok();
    wait_until(DEADLINE, "both apps stopped", || {
        let now = states(&c);
        if now == all("stopped") {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let started = c.cli(&["start", "all", "--wait"]);
    started.assert_ok();
    assert_eq!(states(&c), all("online"), "{started}");
    let pids = |c: &Cluster| -> Vec<u64> {
        let list = c.list_json("").expect("list");
        list.iter().filter_map(|i| i["pid"].as_u64()).collect()
    };
    let before = pids(&c);
    c.cli(&["restart", "all", "--wait"]).assert_ok();
    let after = pids(&c);
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );
    // Not one JSON value: refused, naming what to do instead.
    let json = c.cli(&["stop", "all", "-o", "json"]);
    assert_eq!(json.code(), Some(2), "{json}");
    assert!(json.stderr.contains("pmcluster apps -o json"), "{json}");

    c.cli(&["delete", "all", "--wait"]).assert_ok();
    let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
    assert_eq!(apps.expect("apps is JSON"), json!([]));
}

/// A config file's apps run next to it, as PM2 runs an ecosystem file's: a trial applied a file
/// from another directory, and its apps ran wherever `pmcluster up` had run (another file of
/// the same name there ran instead).
#[test]
fn a_config_files_apps_run_beside_it() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let port = free_port_range(1).expect("a free port");
    let proj = c.root().join("proj");
    std::fs::create_dir_all(proj.join("sub")).expect("make the project directory");
    let script = proj.join("run.sh");
    let testapp = c.testapp().display().to_string();
    std::fs::write(&script, format!("#!/bin/sh\nexec {testapp:?}\n")).expect("write run.sh");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, mode).expect("make run.sh executable");
    // Not executable: run by the interpreter of its extension, as PM2 runs `script: app.js`.
    let plain = proj.join("plain.sh");
    std::fs::write(&plain, "exec sleep 600\n").expect("write plain.sh");
    let file = proj.join("apps.json");
    let apps = json!({"apps": [
        {"name": "beside", "script": "./run.sh", "port": port.to_string()},
        {"name": "under", "script": "sleep", "args": ["600"], "cwd": "sub"},
        {"name": "plain", "script": "plain.sh", "min_uptime": "200ms"},
    ]});
    std::fs::write(&file, apps.to_string()).expect("write the config");
    let out = c.cli(&["apply", "-f", &file.display().to_string()]);
    out.assert_ok();
    assert!(
        out.stderr.contains(&format!(
            "note: beside runs in {}, where ./run.sh is",
            proj.display()
        )),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("note: ./plain.sh is not executable: running it with bash"),
        "{out}"
    );
    for (app, dir) in [
        ("beside", proj.clone()),
        ("under", proj.join("sub")),
        ("plain", proj.clone()),
    ] {
        let pid = wait_online(&c, app, 1)[0].pid.expect("a pid");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("its cwd");
        assert_eq!(cwd, dir, "{app}");
    }
    // `reload -f` of the same file reads it as `apply -f` did: nothing changed. Before, it
    // dropped the `cwd` found beside the file and rolled out replacements that could not start.
    for app in ["beside", "under", "plain"] {
        let out = c.cli(&["reload", app, "-f", &file.display().to_string(), "--yes"]);
        out.assert_ok();
        assert!(out.stdout.contains("nothing to change"), "{out}");
    }
    // A relative `--cwd` is this directory's, as PM2 takes it: the agent read it from its own.
    let out = c
        .try_cli_in(
            &proj,
            &["start", "sleep 600", "--name", "rel", "--cwd", "sub"],
        )
        .expect("pmcluster start runs");
    out.assert_ok();
    let pid = wait_online(&c, "rel", 1)[0].pid.expect("a pid");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("its cwd");
    assert_eq!(cwd, proj.join("sub"), "{out}");
}

/// A value of the wrong type refuses its own app only, as a bad value does: a trial's
/// `autorestart: "false"` kept the file's other apps from being applied.
#[test]
fn a_wrong_type_in_one_app_leaves_the_others_applied() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let file = c.root().join("typed.yaml");
    let text = "apps:\n  - name: good1\n    script: sleep\n    args: [\"600\"]\n  - name: bad1\n    \
                script: sleep\n    autorestart: \"false\"\n  - name: good2\n    script: sleep\n    \
                args: [\"600\"]\n";
    std::fs::write(&file, text).expect("write the config");
    let out = c.cli(&["apply", "-f", &file.display().to_string()]);
    let err = out.assert_failed().to_string();
    assert!(
        err.contains("1 of 3 apps not applied (bad1)")
            && err.contains("app \"bad1\": autorestart: invalid type")
            && err.contains("(line 7, column 5)"),
        "{err}"
    );
    for app in ["good1", "good2"] {
        wait_online(&c, app, 1);
    }
}

/// An app given `env.PORT` and no port of its own, as PM2 apps are: `${PORT}` in its command line
/// is that port, so the command line and the `PORT` the process gets agree. It used to become
/// empty (`PORT= testapp` here, which fails at once, as `http.server ${PORT}` did in a trial).
/// Without either, `start` warns that it will be empty.
#[test]
fn env_port_stands_for_port_in_the_command_line() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let port = free_port_range(1).expect("a free port");
    let testapp = c.testapp().display().to_string();
    let line = format!("env PORT=${{PORT}} {testapp}");
    let out = c.cli(&[
        "start",
        &line,
        "--name",
        "envport",
        "--env",
        &format!("PORT={port}"),
    ]);
    out.assert_ok();
    assert!(!out.stderr.contains("warning"), "{out}");
    wait_until(DEADLINE, "envport answers on env.PORT", || {
        pmcluster_tests::http_get(port, "/health").map_err(|e| e.to_string())
    });
    let out = c.cli(&["start", &line, "--name", "noport"]);
    out.assert_ok();
    assert!(
        out.stderr.contains(
            "warning: app \"noport\": its command line uses ${PORT}, but the app has no port"
        ),
        "{out}"
    );
}
