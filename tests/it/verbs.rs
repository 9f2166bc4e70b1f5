//! Issue 15 item 5, the seeds' per-instance verbs end to end: `signal` (one instance or all,
//! bad names, unknown targets).

use std::time::Duration;

use pmcluster_tests::{Cluster, render, wait_until};

use crate::{DEADLINE, live, wait_online};

/// Waits until `logs APP --instance I` shows `needle`.
#[track_caller]
fn wait_log(c: &Cluster, app: &str, index: u32, needle: &str) {
    let i = index.to_string();
    wait_until(
        DEADLINE,
        &format!("{needle:?} in the logs of {app}[{index}]"),
        || {
            let out = c.try_cli(&["logs", app, "--instance", &i, "--lines", "200"])?;
            if out.stdout.contains(needle) {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    );
}

fn log_of(c: &Cluster, app: &str, index: u32) -> String {
    c.cli(&[
        "logs",
        app,
        "--instance",
        &index.to_string(),
        "--lines",
        "200",
    ])
    .assert_ok()
    .stdout
    .clone()
}

/// `signal` reaches the main process of one instance (USR2 by name) or of every instance (by
/// number), which go on running; a bad signal is refused naming `signal`, an unknown app or
/// index is not found.
#[test]
fn signal_reaches_one_instance_or_all() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 2).online().expect("web starts");
    let before = wait_online(&c, "web", 2);

    let out = c.cli(&["signal", "web", "--instance", "1", "USR2"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("web[1]") && out.stdout.contains("SIGUSR2 delivered"),
        "{out}"
    );
    assert!(!out.stdout.contains("web[0]"), "{out}");
    wait_log(&c, "web", 1, "testapp got SIGUSR2");
    assert!(
        !log_of(&c, "web", 0).contains("testapp got SIGUSR2"),
        "web[0] got a signal meant for web[1]"
    );

    // Every instance, by number (12 is SIGUSR2) and as JSON.
    let out = c.cli(&["-o", "json", "signal", "web", "10"]);
    out.assert_ok();
    let v = out.json().expect("signal -o json");
    let delivered: Vec<bool> = v["deliveries"]
        .as_array()
        .map(|a| a.iter().map(|d| d["delivered"] == true).collect())
        .unwrap_or_default();
    assert_eq!(delivered, [true, true], "{v}");
    wait_log(&c, "web", 0, "testapp got SIGUSR1");
    wait_log(&c, "web", 1, "testapp got SIGUSR1");

    // The same processes still run: a signal is not a restart.
    let after = wait_online(&c, "web", 2);
    for (b, a) in before.iter().zip(&after) {
        assert!(live(a) && a.pid == b.pid, "{}", render(&after));
    }

    let bad = c.try_cli(&["signal", "web", "USR9"]).expect("cli runs");
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stderr.contains("signal: \"USR9\""), "{bad}");
    let nope = c.try_cli(&["signal", "nope", "USR2"]).expect("cli runs");
    assert!(nope.assert_failed().contains("not found"), "{nope}");
    let index = c
        .try_cli(&["signal", "web", "--instance", "7", "USR2"])
        .expect("cli runs");
    assert!(index.assert_failed().contains("no instance 7"), "{index}");
}

/// A signal sent to an agent that then does not answer (stopped with SIGSTOP) is "sent, not
/// confirmed", and it does arrive once the agent runs again. It read "not delivered", and a
/// trial's retry would have sent it twice.
#[test]
fn a_signal_whose_agent_does_not_answer_is_unconfirmed_not_undelivered() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 1).online().expect("web starts");
    wait_online(&c, "web", 1);
    let agent = c.agent(0).pid();
    let agent = Pid::from_raw(i32::try_from(agent).expect("a pid"));
    kill(agent, Signal::SIGSTOP).expect("stop the agent");
    let out = c.try_cli(&["-o", "json", "signal", "web", "USR2"]);
    // Running again whatever the call said, before anything is asserted.
    kill(agent, Signal::SIGCONT).expect("continue the agent");
    let out = out.expect("cli runs");
    assert_eq!(out.code(), Some(1), "{out}");
    let v = out.json().expect("signal -o json");
    let d = &v["deliveries"][0];
    assert!(d["delivered"] == false && d["unconfirmed"] == true, "{out}");
    assert!(out.stderr.contains("may still get it"), "{out}");
    wait_log(&c, "web", 0, "testapp got SIGUSR2");
}

/// `program` on the PATH, or `None` after reporting the test as skipped for want of `need`.
pub(crate) fn program(name: &str, need: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        pmcluster_tests::skip(need, &format!("no {name} on the PATH"));
    }
    found
}

/// The message examples, a Node.js and a Python app, run as apps of two instances each: a
/// broadcast reaches every instance of an app, a unicast only its index, and an instance that
/// does not listen is reported as not reached.
#[test]
fn send_reaches_node_and_python_apps_by_broadcast_and_unicast() {
    let (Some(node), Some(python)) = (program("node", "node"), program("python3", "python")) else {
        return;
    };
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/messages");
    let c = Cluster::start(1).expect("coordinator and an agent start");
    for (app, cmd, lang) in [
        (
            "node-msg",
            format!("{} {}", node.display(), examples.join("app.js").display()),
            "node",
        ),
        (
            "py-msg",
            format!("{} {}", python.display(), examples.join("app.py").display()),
            "python",
        ),
    ] {
        c.cli(&["start", &cmd, "--name", app, "--instances", "2"])
            .assert_ok();
        wait_online(&c, app, 2);
        for i in 0..2 {
            wait_log(
                &c,
                app,
                i,
                &format!("{lang} instance {i} listening for messages"),
            );
        }

        let out = c.cli(&["send", app, "hello everyone"]);
        out.assert_ok();
        assert!(out.stdout.contains("message delivered"), "{out}");
        for i in 0..2 {
            wait_log(
                &c,
                app,
                i,
                &format!("{lang} instance {i} got message: hello everyone"),
            );
        }

        let out = c.cli(&["send", app, "--instance", "1", "just for one"]);
        out.assert_ok();
        wait_log(
            &c,
            app,
            1,
            &format!("{lang} instance 1 got message: just for one"),
        );
        assert!(
            !log_of(&c, app, 0).contains("just for one"),
            "{app}[0] got a unicast meant for [1]"
        );
    }

    // The test app does not listen on its socket: not delivered, said per instance, exit 1.
    c.start_app("web", 1).online().expect("web starts");
    let deaf = c.try_cli(&["send", "web", "anyone?"]).expect("cli runs");
    assert!(
        deaf.assert_failed()
            .contains("1 of 1 instance of web did not get the message"),
        "{deaf}"
    );
    assert!(deaf.stdout.contains("does not listen"), "{deaf}");
    let bad = c.try_cli(&["send", "web", "two\nlines"]).expect("cli runs");
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stderr.contains("message: must be one line"), "{bad}");
}

/// An instance that runs as another user gets no message socket (it lives in the agent's
/// private data dir), and `send` says so, with what to use instead. It said the instance did
/// not listen on a socket it was never given.
#[test]
fn send_to_an_instance_of_another_user_says_it_has_no_socket() {
    if !nix::unistd::Uid::effective().is_root() {
        return pmcluster_tests::skip("root", "only root starts an instance as another user");
    }
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let file = c.root().join("nobody.json");
    let spec = serde_json::json!({"name": "other", "script": "sleep", "args": ["600"],
                                  "user": "nobody"});
    std::fs::write(&file, spec.to_string()).expect("write the config");
    c.cli(&["apply", "-f", &file.display().to_string()])
        .assert_ok();
    wait_online(&c, "other", 1);
    let out = c.try_cli(&["send", "other", "hi"]).expect("cli runs");
    out.assert_failed();
    assert!(
        out.stdout
            .contains("runs as user nobody, and such an instance gets no message socket")
            && out.stdout.contains("use signal instead"),
        "{out}"
    );
}

/// The indices in an `endpoints -o json` text (an array of endpoints), sorted.
fn endpoint_indices(text: &str) -> Result<Vec<u64>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text:?}"))?;
    let mut out: Vec<u64> = v
        .as_array()
        .ok_or_else(|| format!("not an array: {text}"))?
        .iter()
        .filter_map(|e| e["index"].as_u64())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Ends a child process the test started.
struct Owned(std::process::Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `disable` takes one instance off the endpoints (a watcher's file follows) while it keeps
/// running, `list` shows it, a coordinator restart keeps it out, and `enable` brings it back.
#[test]
fn disable_takes_an_instance_out_of_rotation_until_enabled() {
    let mut c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 3).online().expect("web starts");
    let before = wait_online(&c, "web", 3);
    let file = c.root().join("endpoints.json");
    let f = file.display().to_string();
    let _watcher = Owned(
        std::process::Command::new(&c.bins().cli)
            .args(["--coordinator", &c.url(), "endpoints", "web", "-o", "json"])
            .args(["--watch", "--file", &f])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the endpoints watcher"),
    );
    let watched = |want: &[u64]| {
        wait_until(
            DEADLINE,
            &format!("endpoints {want:?} in the watched file"),
            || {
                let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
                let got = endpoint_indices(&text)?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
    };
    watched(&[0, 1, 2]);

    let out = c.cli(&["disable", "web", "--instance", "1"]);
    assert!(out.assert_ok().stdout.contains("disabled web[1]"), "{out}");
    watched(&[0, 2]);
    let list = c.cli(&["list", "web"]);
    assert!(list.stdout.contains("online (disabled)"), "{list}");
    let json = c.instances("web").expect("list -o json");
    let flags: Vec<bool> = json.iter().map(|i| i.json["disabled"] == true).collect();
    assert_eq!(flags, [false, true, false], "{}", render(&json));
    // Still the same process: out of rotation, not stopped.
    let one = crate::by_index(&json, 1).expect("web[1]");
    assert!(live(one) && one.pid == before[1].pid, "{}", render(&json));

    // Stored: a restarted coordinator keeps it out once every instance is reported again.
    c.kill_coordinator().expect("kill -9 the coordinator");
    c.restart_coordinator().expect("restart the coordinator");
    let after = wait_online(&c, "web", 3);
    assert!(
        after
            .iter()
            .map(|i| i.json["disabled"] == true)
            .eq([false, true, false]),
        "{}",
        render(&after)
    );
    let now = c.cli(&["endpoints", "web", "-o", "json"]);
    assert_eq!(
        endpoint_indices(&now.assert_ok().stdout),
        Ok(vec![0, 2]),
        "{now}"
    );
    watched(&[0, 2]);

    c.cli(&["enable", "web", "--instance", "1"]).assert_ok();
    watched(&[0, 1, 2]);
    let list = c.cli(&["list", "web"]);
    assert!(!list.stdout.contains("disabled"), "{list}");

    let whole = c.try_cli(&["disable", "web"]).expect("cli runs");
    assert_eq!(whole.code(), Some(2), "{whole}");
}

/// `leaky`'s events, oldest first, as `events -o json` prints them (one object a line).
fn leaky_events(c: &Cluster) -> Result<Vec<serde_json::Value>, String> {
    let out = c.try_cli(&[
        "events",
        "leaky",
        "--no-follow",
        "--history",
        "500",
        "-o",
        "json",
    ])?;
    if !out.success() {
        return Err(out.to_string());
    }
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

/// Where the first event of `events` that `pick` accepts is, with its time.
fn first_event(
    events: &[serde_json::Value],
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<(usize, i64)> {
    events
        .iter()
        .position(pick)
        .map(|i| (i, events[i]["at_ms"].as_i64().unwrap_or_default()))
}

fn is_leak_suspected(e: &serde_json::Value) -> bool {
    e["kind"] == "instance.leak_suspected"
}

/// The agent's restart for the memory limit, as the instance's state change reports it.
fn is_memory_restart(e: &serde_json::Value) -> bool {
    e["kind"] == "instance.state"
        && e["message"]
            .as_str()
            .is_some_and(|m| m.contains("over max_memory_restart"))
}

/// A process that leaks on purpose (the test app's steady 2 MiB/s from a few MiB, so about half
/// a minute to its 64M `max_memory_restart`) is suspected within the coordinator's 8 s leak
/// window, before that limit fires: the `instance.leak_suspected` event comes first, with
/// `(leak?)` in `list` and the trend in `info` meanwhile, then the restart for the limit. A
/// steady app next to it is not suspected.
#[test]
fn a_steady_leak_is_suspected_before_max_memory_restart() {
    let c = Cluster::start_with(1, &["--leak-window", "8s", "--leak-min-growth", "1M"])
        .expect("coordinator and an agent start");
    let port = pmcluster_tests::free_port_range(2).expect("free ports");
    let config = serde_json::json!({"apps": [
        {
            "name": "leaky",
            "script": c.testapp().display().to_string(),
            "port": port.to_string(),
            "env": {"TESTAPP_LEAK_KIB_PER_SEC": "2048"},
            "max_memory_restart": "64M",
        },
        {
            "name": "steady",
            "script": c.testapp().display().to_string(),
            "port": (port + 1).to_string(),
        },
    ]});
    let path = c.root().join("leak.json");
    std::fs::write(&path, config.to_string()).expect("write the config");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    wait_online(&c, "leaky", 1);
    wait_online(&c, "steady", 1);

    let suspected = wait_until(
        DEADLINE,
        "an instance.leak_suspected event for leaky[0]",
        || {
            let events = leaky_events(&c)?;
            if let Some(restart) = first_event(&events, is_memory_restart) {
                // Fails at once rather than waiting out the deadline.
                return Ok(Err(format!(
                    "the limit fired first, at {restart:?}: {events:?}"
                )));
            }
            match first_event(&events, is_leak_suspected) {
                Some(found) => Ok(Ok(found)),
                None => Err(format!("{events:?}")),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let list = c.cli(&["list", "leaky"]);
    assert!(list.stdout.contains("(leak?)"), "{list}");
    let info = c.cli(&["info", "leaky"]);
    assert!(
        info.stdout.contains("leaky[0]: memory leak suspected: +"),
        "{info}"
    );
    let leaky = c.instances("leaky").expect("list leaky");
    let one = crate::by_index(&leaky, 0).expect("leaky[0]");
    assert!(
        one.json["leak"]
            .as_str()
            .is_some_and(|l| l.contains("MiB/min")),
        "{}",
        one.json
    );

    // Then the limit fires, after the suspicion: later in the coordinator's order and clock.
    let (events, restart) = wait_until(
        Duration::from_secs(90),
        "leaky[0] restarted for its max_memory_restart",
        || {
            let events = leaky_events(&c)?;
            match first_event(&events, is_memory_restart) {
                Some(found) => Ok((events, found)),
                None => Err(format!("{events:?}")),
            }
        },
    );
    let leak = first_event(&events, is_leak_suspected).expect("the suspicion is still listed");
    assert_eq!(leak, suspected, "{events:?}");
    assert!(
        leak.0 < restart.0 && leak.1 <= restart.1,
        "the suspicion {leak:?} is not before the restart {restart:?}: {events:?}"
    );
    let restarted = wait_until(DEADLINE, "leaky[0]'s restart counted", || {
        let list = c.instances("leaky")?;
        match list.first() {
            Some(i) if i.restarts >= 1 => Ok(i.clone()),
            _ => Err(render(&list)),
        }
    });
    c.remember_pids(&restarted.pid.into_iter().collect::<Vec<_>>());

    let steady = c.instances("steady").expect("list steady");
    assert!(
        steady.iter().all(|i| i.json["leak"].is_null()),
        "{}",
        render(&steady)
    );
    let events = c.cli(&["events", "steady", "--no-follow", "--history", "100"]);
    assert!(!events.stdout.contains("leak"), "{events}");
}

/// `stats` sums an app's figures and `compare` puts its instances side by side, both from what
/// the agents report; an unknown app is not found.
#[test]
fn stats_and_compare_show_the_figures_the_agents_report() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 2).online().expect("web starts");
    // Memory comes with the first metrics sample after start.
    wait_until(DEADLINE, "memory figures for both instances", || {
        let v = c
            .cli(&["-o", "json", "stats", "web"])
            .json()
            .map_err(|e| e.to_string())?;
        if v["online"] == 2 && v["memory"]["min"].as_u64().is_some_and(|m| m > 0) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    let stats = c.cli(&["stats", "web"]);
    assert!(
        stats.assert_ok().stdout.contains("2 online of 2"),
        "{stats}"
    );
    assert!(stats.stdout.contains("nodes:     node-a 2"), "{stats}");

    let compare = c.cli(&["compare", "web"]);
    let lines: Vec<&str> = compare.assert_ok().stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|h| h.starts_with("INDEX")),
        "{compare}"
    );
    assert_eq!(lines.len(), 4, "header, two instances, the mean: {compare}");
    assert!(lines[3].starts_with("mean of 2 online"), "{compare}");
    let v = c
        .cli(&["-o", "json", "compare", "web"])
        .json()
        .expect("compare -o json");
    let ratios: Vec<f64> = v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["memory_ratio"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ratios.len(), 2, "{v}");
    assert!((ratios.iter().sum::<f64>() - 2.0).abs() < 1e-9, "{v}");

    let nope = c.try_cli(&["stats", "nope"]).expect("cli runs");
    assert!(nope.assert_failed().contains("not found"), "{nope}");

    // PMDaemon's spellings: `info APP --instance N` shows that instance alone, and one the app
    // does not have is not found, as `stop --instance` says it; `reload --rolling` is a reload.
    let one = c
        .cli(&["-o", "json", "info", "web", "--instance", "1"])
        .json()
        .expect("info --instance -o json");
    let indices: Vec<u64> = one["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["index"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(indices, [1], "{one}");
    let missing = c
        .try_cli(&["info", "web", "--instance", "7"])
        .expect("cli runs");
    assert_eq!(missing.code(), Some(1), "{missing}");
    assert!(
        missing
            .stderr
            .contains("app \"web\" has no instance 7: it has 2 (indices 0-1)"),
        "{missing}"
    );
    let reload = c.cli(&["reload", "web", "--rolling", "--yes"]);
    assert!(
        reload.assert_ok().stdout.contains("so a rolling restart"),
        "{reload}"
    );
    c.wait_online("web", 2)
        .expect("web is back after the reload");
}

/// An app with no port and nothing online: `endpoints` says why its list is empty (stderr,
/// exit 0), `stats` and `compare` say nothing is online rather than showing 0% figures, and
/// their JSON holds no `-0.0`.
#[test]
fn an_app_with_no_port_and_nothing_online_says_so() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.cli(&["start", "sleep 600", "--name", "idle"]).assert_ok();
    c.wait_online("idle", 1).expect("idle starts");
    let endpoints = c.cli(&["endpoints", "idle", "-o", "haproxy"]);
    endpoints.assert_ok();
    assert!(
        endpoints
            .stderr
            .contains("idle has no port, so it has no endpoints"),
        "{endpoints}"
    );
    c.cli(&["stop", "idle", "--wait"]).assert_ok();
    let stats = c.cli(&["stats", "idle"]);
    assert!(
        stats
            .assert_ok()
            .stdout
            .contains("cpu:       - (no instance online)"),
        "{stats}"
    );
    let compare = c.cli(&["compare", "idle"]);
    assert!(
        compare
            .assert_ok()
            .stdout
            .contains("no instance online: nothing to compare"),
        "{compare}"
    );
    for verb in ["stats", "compare"] {
        let out = c.cli(&["-o", "json", verb, "idle"]);
        assert!(!out.assert_ok().stdout.contains("-0.0"), "{out}");
    }
}

/// `events` and `monit` of an app that is not there fail at once with what `info` says, rather
/// than watching nothing; a deleted app's events are still there to read.
#[test]
fn events_and_monit_of_an_unknown_app_fail_as_info_does() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    let info = c.try_cli(&["info", "nosuchapp"]).expect("cli runs");
    assert_eq!(info.code(), Some(1), "{info}");
    assert!(
        info.stderr.contains("app \"nosuchapp\" not found"),
        "{info}"
    );
    // Bounded well below the harness's own limit: the fix is an answer at once.
    let quick = Duration::from_secs(10);
    for verb in ["events", "monit"] {
        let out = c
            .try_cli_timeout(&[verb, "nosuchapp"], quick)
            .expect("cli runs");
        assert_eq!(out.code(), info.code(), "{out}");
        assert_eq!(out.stderr, info.stderr, "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    c.start_app("gone", 1).online().expect("gone starts");
    c.cli(&["delete", "gone"]).assert_ok();
    let events = c.cli(&["events", "gone", "--no-follow"]);
    assert!(events.assert_ok().stdout.contains("gone"), "{events}");
}

/// `stop --wait` returns once the instances stopped are listed stopped, their processes ended:
/// one index (the other keeps running), then the rest; `-o json` says how many in `wait`.
#[test]
fn stop_wait_returns_once_the_processes_ended() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 2).online().expect("web starts");
    let before = wait_online(&c, "web", 2);
    let ended = |pid: Option<u32>| {
        pid.is_none_or(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    };

    let one = c.cli(&["stop", "web", "--instance", "1", "--wait"]);
    assert!(
        one.assert_ok().stdout.contains("web: 1 stopped after "),
        "{one}"
    );
    let now = c.instances("web").expect("list");
    let status: Vec<(&str, Option<u32>)> = now.iter().map(|i| (i.status.as_str(), i.pid)).collect();
    assert_eq!(
        status,
        [("online", before[0].pid), ("stopped", None)],
        "{}",
        render(&now)
    );
    assert!(ended(before[1].pid), "{}", render(&before));

    let all = c.cli(&["stop", "web", "--wait", "-o", "json"]);
    let v = all.assert_ok().json().expect("stop -o json");
    assert_eq!(v["wait"]["stopped"], 2, "{v}");
    let now = c.instances("web").expect("list");
    assert!(
        now.iter().all(|i| i.status == "stopped" && i.pid.is_none()),
        "{}",
        render(&now)
    );
    assert!(ended(before[0].pid), "{}", render(&before));
}

/// `enable` and `stop` report the instances they changed, not every one they were aimed at.
#[test]
fn enable_and_stop_count_only_what_they_changed() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 3).online().expect("web starts");
    c.cli(&["disable", "web", "--instance", "1"]).assert_ok();
    let enabled = c.cli(&["enable", "web"]);
    assert_eq!(
        enabled.assert_ok().stdout,
        "enabled 1 instance of web (2 were not disabled)\n",
        "{enabled}"
    );
    let again = c.cli(&["enable", "web", "--instance", "1"]);
    assert_eq!(
        again.assert_ok().stdout,
        "web[1] was not disabled; nothing changed\n",
        "{again}"
    );
    c.cli(&["stop", "web", "--instance", "0"]).assert_ok();
    let stopped = c.cli(&["stop", "web"]);
    assert_eq!(
        stopped.assert_ok().stdout,
        "stopped 2 instances of web (1 was already stopped)\n",
        "{stopped}"
    );
    let v = c
        .cli(&["-o", "json", "stop", "web"])
        .json()
        .expect("stop -o json");
    assert_eq!(
        (v["affected"].as_u64(), v["changed"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
}

/// `token create` on a plaintext coordinator makes the token, and warns that it restricts
/// nothing there: a call without credentials is an admin's.
#[test]
fn a_token_made_on_a_plaintext_coordinator_comes_with_a_warning() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let made = c.cli(&["token", "create", "--role", "read"]);
    // Only the token on stdout, so that `token create > file` saves it alone; the rest on
    // stderr (a trial's file held two lines of prose too).
    let stdout = &made.assert_ok().stdout;
    assert!(
        stdout.starts_with("pmc_") && stdout.trim_end().lines().count() == 1,
        "{made}"
    );
    for want in [
        format!("warning: the coordinator at {} serves without TLS", c.url()),
        "this token restricts nothing until the coordinator requires credentials".to_string(),
        "It is shown this once; keep it secret".to_string(),
        "use it with --token TOKEN".to_string(),
    ] {
        assert!(made.stderr.contains(&want), "{want:?} in {made}");
    }
}
