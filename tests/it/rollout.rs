//! Issue 5: rolling updates behind a real HAProxy kept current by `pmcluster endpoints --watch`:
//! zero failed requests through a reload, an automatic rollback of a bad version, and a rollout
//! that survives a coordinator restart half-way.
//!
//! Needs `haproxy` on PATH (`.ci/run` installs Debian's package); without it the test says so
//! and fails, since CI must run it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use pmcluster_tests::{Cluster, Sampler, free_port_range, per_node, render, wait_until};

use crate::lb::{Balancer, Load, wait_all_answers};
use crate::{DEADLINE, wait_online};

/// `rollout status web --wait`, allowed longer than an ordinary CLI call.
fn wait_rollout(c: &Cluster) -> pmcluster_tests::CliOutput {
    c.try_cli_timeout(
        &["rollout", "status", "web", "--wait"],
        std::time::Duration::from_secs(180),
    )
    .expect("pmcluster rollout status --wait runs")
}

fn config(dir: &Path, testapp: &str, base: u16) -> String {
    let path = dir.join("web.json");
    let text = serde_json::json!({
        "name": "web",
        "script": testapp,
        "instances": 6,
        "port": format!("auto:{base}-{}", base + 59),
        "env": { "TESTAPP_VERSION": "v1" },
        "health_check": { "check_type": "http", "url": "http://127.0.0.1:${PORT}/health", "interval": "1s", "timeout": "1s", "retries": 2 },
        "update": {
            "max_surge": 1,
            "min_healthy_time": "1s",
            "healthy_deadline": "6s",
            "progress_deadline": "20s",
            "shutdown_delay": "1s"
        }
    });
    fs::write(&path, text.to_string()).expect("write web.json");
    path.display().to_string()
}

/// A cluster of `agents` agents running `web`, the test app at v1 on `auto:` ports, with
/// `instances` and the spec's other fields from `more` (its update policy, restart policy).
fn web_on_auto_ports(agents: usize, instances: u32, more: serde_json::Value) -> Cluster {
    let c = Cluster::start(agents).expect("cluster starts");
    let base = free_port_range(20).expect("free ports");
    let path = c.root().join("web.json");
    let mut text = serde_json::json!({
        "name": "web",
        "script": c.testapp().display().to_string(),
        "instances": instances,
        "port": format!("auto:{base}-{}", base + 19),
        "env": { "TESTAPP_VERSION": "v1" },
    });
    if let (Some(spec), Some(more)) = (text.as_object_mut(), more.as_object()) {
        spec.extend(more.clone());
    }
    fs::write(&path, text.to_string()).expect("write web.json");
    c.cli(&["apply", "-f", &path.display().to_string()])
        .assert_ok();
    c
}

#[test]
fn rolling_updates_behind_haproxy_lose_no_request() {
    let mut c = Cluster::start(3).expect("cluster starts");
    let base = free_port_range(60).expect("free ports");
    let testapp = c.testapp().display().to_string();
    let file = config(c.root(), &testapp, base);
    c.cli(&["apply", "-f", &file]).assert_ok();
    wait_online(&c, "web", 6);
    let lb = Balancer::start(&c, "web");
    wait_until(DEADLINE, "six servers in the backend", || {
        let b = lb.backend();
        if b.matches("    server ").count() == 6 {
            Ok(())
        } else {
            Err(b)
        }
    });

    // 1. A reload to v2 under load: no request fails, and then only v2 answers. An old instance
    // keeps its process until the rollout drains it: it is never restarted in place (the load
    // balancer's retries would hide that from the request loop, so it is checked directly).
    let originals: BTreeMap<String, u32> = c
        .instances("web")
        .expect("list")
        .into_iter()
        .filter_map(|i| Some((i.id, i.pid?)))
        .collect();
    assert_eq!(originals.len(), 6);
    let watch = Sampler::start(c.bins().cli.clone(), c.url(), "web", move |list| {
        let changed: Vec<String> = list
            .iter()
            .filter_map(|i| {
                let (was, now) = (*originals.get(&i.id)?, i.pid?);
                (was != now).then(|| format!("{} index {}: pid {was} -> {now}", i.id, i.index))
            })
            .collect();
        if changed.is_empty() {
            Ok(())
        } else {
            Err(changed.join("; "))
        }
    });
    let load = Load::start(lb.port);
    let out = c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("TESTAPP_VERSION"),
        "the diff is shown: {out}"
    );
    wait_rollout(&c).assert_ok();
    let (samples, changed) = watch.finish();
    assert!(samples > 3, "the pid watch ran ({samples} samples)");
    assert!(
        changed.is_empty(),
        "old instances restarted in place: {changed:#?}"
    );
    wait_all_answers(lb.port, "v2");
    let (n, failures, versions) = load.snapshot();
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed during the reload: {failures:?}",
        failures.len()
    );
    assert!(
        versions.contains_key("v1") && versions.contains_key("v2"),
        "{versions:?}"
    );
    eprintln!("reload v1 -> v2: {n} requests, 0 failed, by version {versions:?}");

    // 2. A version that fails its health check: rolled back on its own, still without a failed
    // request.
    c.cli(&[
        "reload",
        "web",
        "--set",
        "env.TESTAPP_FAIL_HEALTH=1",
        "--yes",
    ])
    .assert_ok();
    let status = wait_rollout(&c);
    assert!(
        !status.success(),
        "a failed rollout exits non-zero: {status}"
    );
    assert!(status.to_string().contains("failed"), "{status}");
    wait_until(DEADLINE, "the rollback to finish", || {
        let out = c.cli(&["rollout", "status", "web", "-o", "json"]);
        let v = out.json().map_err(|e| e.to_string())?;
        if v["kind"] == "rollback" && v["state"] == "succeeded" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let history = c.cli(&["rollout", "history", "web"]);
    assert!(history.stdout.contains("rolled back"), "{history}");
    wait_all_answers(lb.port, "v2");
    let (n2, failures, _) = load.snapshot();
    assert!(
        failures.is_empty(),
        "{} requests failed during the failed rollout: {failures:?}",
        failures.len()
    );
    eprintln!(
        "bad version rolled back: {} more requests, 0 failed",
        n2 - n
    );

    // 3. A rollout survives a coordinator restart half-way.
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v3", "--yes"])
        .assert_ok();
    wait_until(DEADLINE, "the rollout to be under way", || {
        let v = c
            .cli(&["rollout", "status", "web", "-o", "json"])
            .json()
            .map_err(|e| e.to_string())?;
        if v["done"].as_u64().is_some_and(|d| (1..6).contains(&d)) {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    c.kill_coordinator().expect("kill -9 the coordinator");
    c.restart_coordinator().expect("restart the coordinator");
    wait_rollout(&c).assert_ok();
    wait_all_answers(lb.port, "v3");
    let (n3, failures, versions) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {n3} requests failed: {failures:?}",
        failures.len()
    );
    eprintln!("all phases: {n3} requests, 0 failed, by version {versions:?}");
    // The old processes may still be ending (listed as stopping) when the rollout succeeds.
    wait_online(&c, "web", 6);
    drop(lb);
}

/// A rolling update of an app spread 2/2/2 over three nodes leaves it 2/2/2, as a fresh
/// placement would. Each replacement used to be placed with its old copy still counted on its
/// node, which then tied with a node that had already got its own copy back, and the update
/// ended 3/2/1.
#[test]
fn a_rolling_update_keeps_the_spread() {
    let c = web_on_auto_ports(
        3,
        6,
        serde_json::json!({ "update": { "max_surge": 1, "min_healthy_time": "1s" } }),
    );
    let spread = |list: &[pmcluster_tests::Instance]| -> Vec<usize> {
        let mut counts: Vec<usize> = per_node(list).into_values().collect();
        counts.sort_unstable();
        counts
    };
    let before = wait_online(&c, "web", 6);
    assert_eq!(spread(&before), [2, 2, 2], "{}", render(&before));
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"])
        .assert_ok();
    wait_rollout(&c).assert_ok();
    // The old copies may still be stopping when the rollout succeeds.
    let after = wait_online(&c, "web", 6);
    assert!(
        after.iter().all(|i| before.iter().all(|b| b.id != i.id)),
        "every index replaced:{}",
        render(&after)
    );
    assert_eq!(spread(&after), [2, 2, 2], "{}", render(&after));
}

/// `rollout undo` of a rollout that has replaced one index of three: the undo returns to v1,
/// which the two indices not reached still run and which index 0's old copy runs beside its
/// v2 replacement. Those three processes carry on under the new version number (their pids
/// stay), and only the v2 replacement goes, as a Kubernetes rollback keeps the pods of the
/// template it returns to. Before, every index was replaced by a fresh process of the same v1.
#[test]
fn an_undo_keeps_the_processes_that_run_the_version_it_returns_to() {
    // A replacement is on trial for 10 s: the undo comes while index 0's is. The kept old copy
    // beside it has then to be healthy that long before the v2 copy drains.
    let c = web_on_auto_ports(
        1,
        3,
        serde_json::json!({ "update": { "max_surge": 1, "min_healthy_time": "10s" } }),
    );
    let pids = |list: &[pmcluster_tests::Instance]| -> BTreeMap<String, Option<u32>> {
        list.iter().map(|i| (i.id.clone(), i.pid)).collect()
    };
    let before = pids(&wait_online(&c, "web", 3));
    c.cli(&["reload", "web", "--set", "env.TESTAPP_VERSION=v2", "--yes"])
        .assert_ok();
    wait_until(DEADLINE, "index 0's v2 replacement online", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        let fresh = list
            .iter()
            .filter(|i| !before.contains_key(&i.id) && i.status == "online")
            .count();
        if fresh == 1 && list.len() == 4 {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    });
    let undo = c.cli(&["rollout", "undo", "web"]);
    undo.assert_ok();
    wait_until(DEADLINE, "the undo's rollout to succeed", || {
        let v = c
            .cli(&["rollout", "status", "web", "-o", "json"])
            .json()
            .map_err(|e| e.to_string())?;
        if v["kind"] == "rollback" && v["state"] == "succeeded" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    wait_until(DEADLINE, "the v2 replacement to go", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        if pids(&list) == before && list.iter().all(|i| i.status == "online") {
            Ok(())
        } else {
            Err(format!("want {before:?}, have {list:?}"))
        }
    });
    let versions: Vec<String> = c
        .instances("web")
        .expect("list")
        .iter()
        .map(|i| i.json["version"].to_string())
        .collect();
    assert_eq!(versions, ["3", "3", "3"], "{undo}");
}

/// A rollout that fails with `auto_rollback` off stops there: the indices it did not reach keep
/// their processes of the version before, and they serve, as the old side of a failed
/// Kubernetes deployment does. Before, the failed version was pushed onto them in place (each
/// restarted into the crash loop), and the app went down whole.
#[test]
fn a_failed_rollout_without_rollback_leaves_the_old_instances_serving() {
    let c = web_on_auto_ports(
        1,
        2,
        serde_json::json!({ "update": {
            "max_surge": 1,
            "min_healthy_time": "1s",
            "healthy_deadline": "3s",
            "auto_rollback": false
        } }),
    );
    let before: BTreeMap<String, Option<u32>> = wait_online(&c, "web", 2)
        .iter()
        .map(|i| (i.id.clone(), i.pid))
        .collect();
    // An unparsable setting: every process of version 2 exits at once.
    c.cli(&[
        "reload",
        "web",
        "--set",
        "env.TESTAPP_STARTUP_DELAY_MS=soon",
        "--yes",
    ])
    .assert_ok();
    wait_until(DEADLINE, "the rollout to fail", || {
        let v = c
            .cli(&["rollout", "status", "web", "-o", "json"])
            .json()
            .map_err(|e| e.to_string())?;
        if v["state"] == "failed" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    // The failed replacement goes in the pass that would also have moved the others onto its
    // version: once it is gone, the records say which version each index runs.
    let list = wait_until(DEADLINE, "the failed replacement to go", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        if list.len() == 2 {
            Ok(list)
        } else {
            Err(format!("{list:?}"))
        }
    });
    let versions: Vec<String> = list.iter().map(|i| i.json["version"].to_string()).collect();
    assert_eq!(versions, ["1", "1"], "{list:?}");
    let after: BTreeMap<String, Option<u32>> = list.iter().map(|i| (i.id.clone(), i.pid)).collect();
    assert_eq!(after, before, "the old processes were replaced: {list:?}");
    for i in &list {
        let port = i.port.expect("an old instance has its port");
        let got = pmcluster_tests::http_get(port, "/").expect("an old instance answers");
        assert!(got.body.contains("\"v1\""), "{got:?}");
    }
    // And the status says what is left, and the ways on.
    let status = c.cli(&["rollout", "status", "web"]);
    let said = status.assert_failed();
    assert!(
        said.contains("keep running version 1") && said.contains("rollout undo web"),
        "{said}"
    );
    // A scale-up meanwhile adds what serves, not the failed version (a review's finding).
    c.cli(&["scale", "web", "3"]).assert_ok();
    let list = wait_online(&c, "web", 3);
    let added = list
        .iter()
        .find(|i| !before.contains_key(&i.id))
        .expect("a third instance");
    assert_eq!(added.json["version"].to_string(), "1", "{list:?}");
    let body = added.port.and_then(http_body).unwrap_or_default();
    assert!(body.contains("\"v1\""), "{body}");
    // And an undo names that version as the one it returns to.
    let undo = c.cli(&["rollout", "undo", "web"]);
    assert!(
        undo.assert_ok()
            .stdout
            .contains("the spec of version 1 as version 3"),
        "{undo}"
    );
}

/// A replacement that its agent stops restarting (errored: `max_restarts` crashes) fails the
/// rollout then, naming the crashes, rather than at a healthy deadline minutes away; the
/// automatic rollback follows, and every instance serves the old version again.
#[test]
fn an_errored_replacement_fails_the_rollout_without_waiting_out_its_deadline() {
    let c = web_on_auto_ports(
        1,
        2,
        serde_json::json!({
            "max_restarts": 2,
            "restart_delay": "100ms",
            "update": { "max_surge": 1, "min_healthy_time": "1s", "healthy_deadline": "10m" }
        }),
    );
    wait_online(&c, "web", 2);
    c.cli(&[
        "reload",
        "web",
        "--set",
        "env.TESTAPP_STARTUP_DELAY_MS=soon",
        "--yes",
    ])
    .assert_ok();
    // Within the harness's deadline, far inside the 10 minutes of the healthy deadline.
    let failed = wait_until(DEADLINE, "the rollout to fail", || {
        let v = c
            .cli(&["rollout", "history", "web", "-o", "json"])
            .json()
            .map_err(|e| e.to_string())?;
        let text = v.to_string();
        if text.contains("rolled back") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(
        failed.contains("instance 0 of version 2 errored") && failed.contains("exited with code"),
        "{failed}"
    );
    wait_until(DEADLINE, "both instances on v1 again", || {
        let list = c.instances("web").map_err(|e| e.to_string())?;
        let v1 = list
            .iter()
            .filter(|i| {
                i.online()
                    && i.port
                        .and_then(http_body)
                        .is_some_and(|b| b.contains("\"v1\""))
            })
            .count();
        if v1 == 2 && list.len() == 2 {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    });
}

fn http_body(port: u16) -> Option<String> {
    pmcluster_tests::http_get(port, "/").ok().map(|r| r.body)
}

/// `reload --wait` returns once every instance runs the new version (each port answers with
/// it at once), and exits 1 naming the replacement that errored, as
/// `restart --rolling --wait` and `apply --wait` do. Before, `reload` took no `--wait`.
#[test]
fn reload_wait_returns_with_the_new_version_in_place_or_fails_with_the_rollout() {
    let c = web_on_auto_ports(
        1,
        2,
        serde_json::json!({
            "max_restarts": 2,
            "restart_delay": "100ms",
            "update": { "max_surge": 1, "min_healthy_time": "500ms", "healthy_deadline": "10m" }
        }),
    );
    wait_online(&c, "web", 2);
    let out = c
        .try_cli_timeout(
            &[
                "reload",
                "web",
                "--set",
                "env.TESTAPP_VERSION=v2",
                "--yes",
                "--wait",
                "-o",
                "json",
            ],
            std::time::Duration::from_secs(120),
        )
        .expect("pmcluster reload --wait runs");
    out.assert_ok();
    let said = out.json().expect("one JSON value");
    assert_eq!(said["wait"]["up"], 2, "{out}");
    // The rollout as it stands after the wait, not as the reply gave it at the start.
    assert_eq!(said["deployment"]["state"], "succeeded", "{out}");
    let list = c.instances("web").expect("list");
    let serving: Vec<Option<String>> = list
        .iter()
        .filter(|i| i.online())
        .map(|i| i.port.and_then(http_body))
        .collect();
    assert!(
        serving.len() >= 2
            && serving
                .iter()
                .filter(|b| b.as_deref().is_some_and(|b| b.contains("\"v2\"")))
                .count()
                == 2,
        "both indices answer v2 when reload --wait returns: {serving:?}\n{}",
        render(&list)
    );
    let bad = c
        .try_cli_timeout(
            &[
                "reload",
                "web",
                "--set",
                "env.TESTAPP_STARTUP_DELAY_MS=soon",
                "--yes",
                "--wait",
            ],
            std::time::Duration::from_secs(120),
        )
        .expect("pmcluster reload --wait runs");
    assert_eq!(bad.code(), Some(1), "{bad}");
    assert!(bad.stderr.contains("errored"), "{bad}");
}
