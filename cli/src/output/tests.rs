//! Table tests of the renderers.
use super::*;
use crate::args::Balance;
use std::time::Duration;

const NOW: i64 = 1_700_000_000_000;

fn instance(app: &str, index: u32, state: pb::InstanceState) -> pb::Instance {
    let online = state == pb::InstanceState::Online;
    pb::Instance {
        id: format!("id-{app}-{index}"),
        app: app.into(),
        index,
        node: if state == pb::InstanceState::Pending {
            String::new()
        } else {
            "node-a".into()
        },
        state: state as i32,
        pid: if online { 4100 + index } else { 0 },
        port: 3000 + index,
        cpu_percent: if online { 12.5 } else { 0.0 },
        memory_bytes: if online { 24_536_678 } else { 0 },
        restarts: index,
        started_at_ms: if online { NOW - 5_000 } else { 0 },
        app_version: 1,
        last_exit_code: None,
        message: String::new(),
        stopped: state == pb::InstanceState::Stopped,
        health: 0,
        host: if state == pb::InstanceState::Pending {
            String::new()
        } else {
            "10.0.0.1".into()
        },
        disabled: false,
        leak: String::new(),
        removed: false,
        unmanaged: false,
    }
}

#[test]
fn endpoint_renderings() {
    let e = pb::Endpoints {
        app: "web".into(),
        endpoints: vec![
            pb::Endpoint {
                host: "10.0.0.1".into(),
                port: 4100,
                index: 0,
                node: "a".into(),
                version: 2,
                instance_id: "1e2d4b6c-0000-4000-8000-000000000001".into(),
            },
            pb::Endpoint {
                host: "10.0.0.2".into(),
                port: 4101,
                index: 1,
                node: "b".into(),
                version: 2,
                instance_id: "0b9c7e2a-0000-4000-8000-000000000002".into(),
            },
            pb::Endpoint {
                host: "10.0.0.2".into(),
                port: 4102,
                index: 1,
                node: "b".into(),
                version: 2,
                instance_id: "5f1d3a90-0000-4000-8000-000000000003".into(),
            },
        ],
    };
    assert_eq!(
        endpoints_plain(&e),
        "10.0.0.1:4100\n10.0.0.2:4101\n10.0.0.2:4102\n"
    );
    let nginx = endpoints_nginx(&e, Balance::Roundrobin);
    assert!(nginx.contains("upstream web {\n"), "{nginx}");
    assert!(
        nginx.contains("    server 10.0.0.2:4101 max_fails=1 fail_timeout=1s;  # web[1] v2\n"),
        "{nginx}"
    );
    assert!(nginx.ends_with("}\n"));
    let haproxy = endpoints_haproxy(&e, Balance::Roundrobin);
    assert!(haproxy.contains("backend web\n"), "{haproxy}");
    assert!(
        haproxy.contains("    server web-0-v2-1e2d4b6c 10.0.0.1:4100\n"),
        "{haproxy}"
    );
    // Two copies of index 1 (a handoff): distinct server names, as HAProxy requires.
    let names: std::collections::BTreeSet<&str> = haproxy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names.len(), 3, "{haproxy}");
    assert_eq!(endpoints_json(&e)[1]["port"], 4101);
    // No endpoint: nginx needs a server line to accept the block.
    let none = pb::Endpoints {
        app: "web".into(),
        endpoints: vec![],
    };
    assert!(endpoints_nginx(&none, Balance::Roundrobin).contains("server 127.0.0.1:9 down;"));
    assert!(!endpoints_haproxy(&none, Balance::Roundrobin).contains("    server "));
}

#[test]
fn topology_tree() {
    let nodes = vec![
        pb::Node {
            name: "node-a".into(),
            status: pb::NodeStatus::Ready as i32,
            cores: 2,
            ..Default::default()
        },
        pb::Node {
            name: "node-b".into(),
            status: pb::NodeStatus::Draining as i32,
            cores: 4,
            ..Default::default()
        },
    ];
    let mut pending = instance("web", 2, pb::InstanceState::Pending);
    pending.message = "1 pending: no ready node".into();
    let instances = vec![
        instance("web", 0, pb::InstanceState::Online),
        instance("web", 1, pb::InstanceState::Launching),
        pending,
    ];
    let want = "node-a (ready, 2 cores, 2 instances)\n  ├─ web[0] online pid 4100 port 3000\n  \
                └─ web[1] launching port 3001\nnode-b (draining, 4 cores, 0 instances)\n\
                (no node) 1 pending: no ready node\n  └─ web[2] pending port 3002\n";
    assert_eq!(topology_text(&nodes, &instances), want);
    let json = topology_json(&nodes, &instances);
    assert_eq!(json[0]["instance_list"].as_array().map(Vec::len), Some(2));
    assert_eq!(json[2]["status"], "pending");
    assert_eq!(topology_text(&[], &[]), format!("{NO_NODES}\n"));
}

#[test]
fn human_units() {
    let bytes = [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (24_536_678, "23.4 MiB"),
        (8 * 1024 * 1024 * 1024, "8.0 GiB"),
    ];
    for (input, want) in bytes {
        assert_eq!(human_bytes(input), want, "{input}");
    }
    let ages = [
        (-5_000, "0s"),
        (0, "0s"),
        (5_999, "5s"),
        (180_000, "3m"),
        (7_200_000, "2h"),
        (4 * 86_400_000, "4d"),
    ];
    for (input, want) in ages {
        assert_eq!(human_age(input), want, "{input}");
    }
    assert_eq!(human_millis(2000), "2s");
    assert_eq!(human_millis(0), "0s");
    assert_eq!(timestamp(NOW), "2023-11-14T22:13:20Z");
}

#[test]
fn ranges() {
    let cases: &[(&[u32], &str)] = &[
        (&[], ""),
        (&[3], "3"),
        (&[0, 1, 2, 3], "0-3"),
        (&[8, 7, 0, 1, 5, 3, 2, 3], "0-3,5,7-8"),
    ];
    for (input, want) in cases {
        assert_eq!(index_ranges(input), *want, "{input:?}");
    }
}

#[test]
fn state_names() {
    use pb::InstanceState as S;
    let cases = [
        (S::Unspecified as i32, "unknown"),
        (S::Pending as i32, "pending"),
        (S::Launching as i32, "launching"),
        (S::Online as i32, "online"),
        (S::Stopped as i32, "stopped"),
        (S::Exited as i32, "exited"),
        (S::Restarting as i32, "restarting"),
        (S::Errored as i32, "errored"),
        (S::Stopping as i32, "stopping"),
        (S::Unknown as i32, "unknown"),
        (99, "unknown"),
    ];
    for (input, want) in cases {
        assert_eq!(state_name(input), want, "{input}");
    }
    assert_eq!(node_status_name(pb::NodeStatus::Ready as i32), "ready");
    assert_eq!(node_status_name(pb::NodeStatus::Down as i32), "down");
    assert_eq!(
        node_status_name(pb::NodeStatus::Reconnecting as i32),
        "reconnecting"
    );
    assert_eq!(node_status_name(3), "draining");
    assert_eq!(node_status_name(4), "ineligible");
    assert_eq!(node_status_name(0), "unknown");
    assert_eq!(node_status_name(99), "unknown");
}

fn check_table(got: String, want: &str) {
    assert_eq!(got, want, "\ngot:\n{got}\nwant:\n{want}");
}

#[test]
fn instance_table() {
    use pb::InstanceState as S;
    let mut pending = instance("web", 2, S::Pending);
    pending.message = "no ready node".into();
    pending.port = 0;
    let mut errored = instance("web", 3, S::Errored);
    errored.message = "cannot execute \"nod\": not found".into();
    let mut healthy = instance("web", 1, S::Online);
    healthy.health = pb::HealthState::Healthy as i32;
    let mut pending_too = instance("web", 4, S::Pending);
    pending_too.message = "no ready node".into();
    pending_too.port = 0;
    let cases: Vec<(Vec<pb::Instance>, &str)> = vec![
        (
            vec![instance("web", 0, S::Online)],
            "\
APP  INDEX  NODE     PID  PORT  STATUS  HEALTH    CPU       MEM  RESTARTS  UPTIME
web      0  node-a  4100  3000  online  -       12.5%  23.4 MiB         0      5s
",
        ),
        (
            vec![
                instance("api", 0, S::Stopped),
                healthy,
                pending,
                errored,
                pending_too,
            ],
            "\
APP  INDEX  NODE     PID  PORT  STATUS   HEALTH     CPU       MEM  RESTARTS  UPTIME
api      0  node-a     -  3000  stopped  -            -         -         0       -
web      1  node-a  4101  3001  online   healthy  12.5%  23.4 MiB         1      5s
web      2  -          -     -  pending  -            -         -         2       -
web      3  node-a     -  3003  errored  -            -         -         3       -
web      4  -          -     -  pending  -            -         -         4       -

  web[2,4]: no ready node
  web[3]: cannot execute \"nod\": not found
",
        ),
        // A down node's instance keeps its pid; its figures are not measured (a trial read CPU
        // `0.0%` there beside MEM `-`).
        (
            vec![pb::Instance {
                state: S::Unknown as i32,
                pid: 4100,
                cpu_percent: 0.0,
                memory_bytes: 0,
                started_at_ms: 0,
                message: "node node-a is down".into(),
                ..instance("web", 0, S::Online)
            }],
            "\
APP  INDEX  NODE     PID  PORT  STATUS   HEALTH  CPU  MEM  RESTARTS  UPTIME
web      0  node-a  4100  3000  unknown  -         -    -         0       -

  web[0]: node node-a is down
",
        ),
    ];
    for (input, want) in cases {
        // One machine: the agents' address is loopback.
        let input: Vec<pb::Instance> = input
            .into_iter()
            .map(|mut i| {
                if !i.host.is_empty() {
                    i.host = "127.0.0.1".into();
                }
                i
            })
            .collect();
        check_table(instances_table(&input, NOW), want);
    }
    // Across hosts, the address that reaches each instance; on one machine no column for it.
    let on = |index: u32, host: &str| {
        let mut i = instance("web", index, S::Online);
        i.host = host.into();
        i
    };
    check_table(
        instances_table(&[on(0, "10.7.0.2"), on(1, "")], NOW),
        "\
APP  INDEX  NODE    HOST       PID  PORT  STATUS  HEALTH    CPU       MEM  RESTARTS  UPTIME
web      0  node-a  10.7.0.2  4100  3000  online  -       12.5%  23.4 MiB         0      5s
web      1  node-a  -         4101  3001  online  -       12.5%  23.4 MiB         1      5s
",
    );
    let local = instances_table(&[on(0, "127.0.0.1")], NOW);
    assert!(!local.contains("HOST"), "{local}");
}

#[test]
fn instance_json_shape() {
    use pb::InstanceState as S;
    let got = instances_json(
        &[
            pb::Instance {
                disabled: true,
                leak: "+2.0 MiB/min over 1m".into(),
                ..instance("web", 1, S::Online)
            },
            instance("web", 2, S::Pending),
        ],
        NOW,
    );
    let want = json!([
        {"app": "web", "index": 1, "id": "id-web-1", "node": "node-a", "host": "10.0.0.1", "pid": 4101,
         "port": 3001, "status": "online", "health": null, "cpu": 12.5, "memory": 24_536_678, "restarts": 1,
         "uptime_ms": 5000, "started_at_ms": NOW - 5000, "version": 1,
         "last_exit_code": null, "stopped": false, "disabled": true, "removed": false, "unmanaged": false,
         "leak": "+2.0 MiB/min over 1m", "message": ""},
        {"app": "web", "index": 2, "id": "id-web-2", "node": null, "host": null, "pid": null,
         "port": 3002, "status": "pending", "health": null, "cpu": 0.0, "memory": 0, "restarts": 2,
         "uptime_ms": null, "started_at_ms": null, "version": 1,
         "last_exit_code": null, "stopped": false, "disabled": false, "removed": false, "unmanaged": false, "leak": null, "message": ""},
    ]);
    assert_eq!(got, want);
}

fn node(name: &str, status: pb::NodeStatus) -> pb::Node {
    pb::Node {
        name: name.into(),
        status: status as i32,
        labels: [
            ("zone".to_string(), "a".to_string()),
            ("disk".into(), "ssd".into()),
        ]
        .into_iter()
        .collect(),
        cores: 8,
        memory_bytes: 16 * 1024 * 1024 * 1024,
        instances: 3,
        last_heartbeat_ms: NOW - 1_000,
        hostname: name.into(),
        agent_version: "0.1.0".into(),
        cpu_percent: 7.25,
        memory_used_bytes: 3 * 1024 * 1024 * 1024,
        ..Default::default()
    }
}

#[test]
fn node_table_and_json() {
    let mut down = node("b", pb::NodeStatus::Down);
    down.labels.clear();
    down.last_heartbeat_ms = 0;
    let mut reconnecting = node("c", pb::NodeStatus::Reconnecting);
    reconnecting.labels.clear();
    // A trial read a down node's last CPU and memory as current: not measured, they read `-`.
    check_table(
        nodes_table(
            &[node("a", pb::NodeStatus::Ready), down.clone(), reconnecting],
            NOW,
        ),
        "\
NODE  STATUS        CORES    MEMORY   CPU  MEM USED  INSTANCES  ALLOCATED  LABELS           LAST HEARTBEAT
a     ready             8  16.0 GiB  7.2%   3.0 GiB          3  -          disk=ssd,zone=a  1s ago
b     down              8  16.0 GiB     -         -          3  -          -                never
c     reconnecting      8  16.0 GiB     -         -          3  -          -                1s ago
",
    );
    let got = node_json(&node("a", pb::NodeStatus::Ready));
    assert_eq!(got["labels"], json!({"disk": "ssd", "zone": "a"}));
    assert_eq!(got["status"], "ready");
    assert_eq!(got["last_heartbeat_ms"], NOW - 1_000);
    assert_eq!(got["cpu_percent"], json!(7.25));
    let got = node_json(&down);
    assert_eq!(
        [&got["cpu_percent"], &got["memory_used_bytes"]],
        [&Value::Null; 2]
    );
}

fn app(name: &str) -> pb::App {
    pb::App {
        spec: Some(pb::AppSpec {
            name: name.into(),
            script: "node".into(),
            args: vec!["server.js".into(), "--title".into(), "my app".into()],
            instances: 4,
            port: "3000-3003".into(),
            env: [("NODE_ENV".to_string(), "production".to_string())]
                .into_iter()
                .collect(),
            autorestart: Some(true),
            restart_delay_ms: 2000,
            ..Default::default()
        }),
        version: 2,
        updated_at_ms: NOW - 180_000,
        online: 3,
        pending: 1,
        stopped: 0,
        ..pb::App::default()
    }
}

/// Issue 12 item 4: a secret env value is shown nowhere, its key and the others are.
#[test]
fn secret_env_values_are_hidden() {
    let mut spec = pmcluster_spec::AppSpec::new("web", "node", &["server.js"]);
    spec.env.insert("DB_PASS".into(), "hunter2".into());
    spec.env.insert("MODE".into(), "prod".into());
    spec.secret_env.insert("DB_PASS".into());
    let app = pb::App {
        spec: Some(pb::AppSpec::from(&spec)),
        version: 1,
        ..pb::App::default()
    };
    let instances = [instance("web", 0, pb::InstanceState::Online)];
    let outputs = [
        app_info_text(&app, &instances, NOW),
        app_info_json(&app, &instances, NOW).to_string(),
        apps_json(std::slice::from_ref(&app)).to_string(),
    ];
    for out in outputs {
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("DB_PASS"), "{out}");
        assert!(out.contains("<secret>"), "{out}");
        assert!(out.contains("prod"), "{out}");
    }
}

/// `info` shows the whole spec: supervision, health check, update policy and autoscaling, in
/// the table and, with config-file names and shapes, in `-o json`; env values stay hidden.
#[test]
fn info_shows_the_whole_spec() {
    use pmcluster_spec::autoscale::{AutoscalePolicy, MemoryThreshold};
    use pmcluster_spec::supervise::{HealthCheck, Probe, StopSignal};
    let mut spec = pmcluster_spec::AppSpec::new("api", "node", &["api.js"]);
    spec.env.insert("DB_PASS".into(), "<secret>".into());
    spec.env.insert("MODE".into(), "<hidden>".into());
    spec.secret_env.insert("DB_PASS".into());
    let sv = &mut spec.supervision;
    sv.max_memory_restart = Some(512 << 20);
    sv.max_restarts = 7;
    sv.min_uptime = Duration::from_secs(3);
    sv.cron_restart = Some("0 3 * * *".into());
    sv.listen_timeout = Duration::from_secs(8);
    sv.stop_signal = StopSignal::Int;
    sv.user = Some("deploy".into());
    sv.group = Some("staff".into());
    sv.health_check = Some(HealthCheck {
        probe: Probe::Http {
            url: "http://127.0.0.1:${PORT}/healthz".into(),
            expected_status: None,
        },
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        retries: 3,
        restart_unhealthy: true,
    });
    spec.update.max_surge = 2;
    spec.update.canary = 1;
    let mut autoscale = AutoscalePolicy::new(2, 10, 70.0);
    autoscale.memory_threshold = Some(MemoryThreshold::Percent(80.0));
    spec.autoscale = Some(autoscale);
    let app = pb::App {
        spec: Some(pb::AppSpec::from(&spec)),
        version: 1,
        ..pb::App::default()
    };

    let text = app_info_text(&app, &[], NOW);
    for want in [
        "min uptime:     3s\n",
        "max restarts:   7 in 1m of runs shorter than min uptime (backoff up to 15s)\n",
        "max memory:     512.0 MiB (restart above)\n",
        "cron restart:   0 3 * * *\n",
        "listen timeout: 8s\n",
        "stop signal:    SIGINT\n",
        "health check:   http http://127.0.0.1:${PORT}/healthz every 5s, timeout 2s, \
         unhealthy after 3 failures, restarts unhealthy\n",
        "user:           deploy, group staff\n",
        "update:         surge 2, unavailable 0, min healthy 5s, healthy deadline 5m, \
         progress deadline 10m, auto rollback on, canary 1\n",
        "autoscale:      2-10 instances, threshold, cpu 70%, memory 80%, scale down by 0.5, \
         tolerance 0.1, cooldown 15s, stabilization 0s up, 5m down\n",
        "DB_PASS=<secret>",
        "MODE=<hidden>",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    let got = app_info_json(&app, &[], NOW)["app"]["spec"].clone();
    assert_eq!(got["max_memory_restart"], "512M");
    assert_eq!(got["max_restarts"], 7);
    assert_eq!(got["min_uptime"], "3s");
    assert_eq!(got["cron_restart"], "0 3 * * *");
    assert_eq!(got["listen_timeout"], "8s");
    assert_eq!(got["stop_signal"], "SIGINT");
    assert_eq!(got["user"], "deploy");
    assert_eq!(got["group"], "staff");
    assert_eq!(
        got["health_check"]["url"],
        "http://127.0.0.1:${PORT}/healthz"
    );
    assert_eq!(got["health_check"]["restart_unhealthy"], true);
    assert_eq!(got["update"]["max_surge"], 2);
    assert_eq!(got["update"]["canary"], 1);
    assert_eq!(got["autoscale"]["max"], 10);
    assert_eq!(got["autoscale"]["memory_threshold"], 80.0);
    // The fields it had keep their shapes.
    assert_eq!(
        got["env"],
        json!({"DB_PASS": "<secret>", "MODE": "<hidden>"})
    );
    assert_eq!(got["kill_timeout_ms"], 5000);
    assert_eq!(got["instances"], 1);

    // Unset options are null, not missing.
    let plain = app_json(&self::app("web"))["spec"].clone();
    for key in [
        "health_check",
        "max_memory_restart",
        "user",
        "group",
        "cron_restart",
        "autoscale",
    ] {
        assert_eq!(plain.get(key), Some(&Value::Null), "{key}: {plain}");
    }
    assert_eq!(plain["max_restarts"], 15);
    assert_eq!(plain["update"]["max_surge"], 1);
}

/// A `--shell` app's line is shown as typed (it is stored whole, as the shell gets it), not
/// quoted once more as if it were one word; other command lines are quoted word by word.
#[test]
fn a_shell_line_is_shown_as_typed() {
    let spec = |script: &str, args: &[&str], shell: bool| pb::AppSpec {
        script: script.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        shell,
        ..Default::default()
    };
    let cases = [
        (
            spec("bash -c 'echo job-done; exit 0'", &[], true),
            "bash -c 'echo job-done; exit 0'",
        ),
        (
            spec("./serve.sh | tee out.log", &[], true),
            "./serve.sh | tee out.log",
        ),
        (
            spec("node", &["server.js", "my app"], false),
            "node server.js 'my app'",
        ),
        (spec("/opt/my tool", &[], false), "'/opt/my tool'"),
    ];
    for (spec, want) in cases {
        assert_eq!(command_line(&spec), want, "{spec:?}");
    }
}

#[test]
fn app_table_and_info() {
    check_table(
        apps_table(&[app("web")]),
        "\
APP  VERSION  ONLINE  PENDING  STOPPED  RESTARTING  ERRORED  EXITED  PORT       COMMAND
web        2     3/4        1        0           0        0       0  3000-3003  node server.js --title 'my app'
",
    );
    // A trial's errored app read "0/1, 0 pending, 0 stopped" and nothing more.
    let failing = pb::App {
        online: 0,
        pending: 0,
        restarting: 1,
        errored: 2,
        exited: 1,
        ..app("web")
    };
    check_table(
        apps_table(std::slice::from_ref(&failing)),
        "\
APP  VERSION  ONLINE  PENDING  STOPPED  RESTARTING  ERRORED  EXITED  PORT       COMMAND
web        2     0/4        0        0           1        2       1  3000-3003  node server.js --title 'my app'
",
    );
    let info = app_info_text(&failing, &[], NOW);
    assert!(
        info.contains(
            "instances:      4 desired: 0 online, 0 pending, 0 stopped, 1 restarting, 2 errored, \
             1 exited\n"
        ),
        "{info}"
    );
    let json = app_json(&failing);
    assert_eq!(
        [&json["restarting"], &json["errored"], &json["exited"]],
        [&json!(1), &json!(2), &json!(1)]
    );
    check_table(
        app_info_text(&app("web"), &[], NOW),
        "\
app:            web
version:        2 (updated 3m ago)
instances:      4 desired: 3 online, 1 pending, 0 stopped
script:         node
args:           server.js --title 'my app'
port:           3000-3003
cwd:            -
env:            NODE_ENV=production
placement:      spread
resources:      -
reschedule:     after its node is down 30s
instance var:   -
shell:          no
autorestart:    yes
restart delay:  2s
kill timeout:   5s
exec mode:      fork
min uptime:     1s
max restarts:   15 in 1m of runs shorter than min uptime (backoff up to 15s)
max memory:     -
cron restart:   -
listen timeout: 30s
stop signal:    SIGTERM
health check:   -
user:           -
logs:           rotate at 10.0 MiB, keep 5
update:         surge 1, unavailable 0, min healthy 5s, healthy deadline 5m, progress deadline 10m, auto rollback on
autoscale:      -

no instances
",
    );
    let got = app_json(&app("web"));
    assert_eq!(got["spec"]["env"], json!({"NODE_ENV": "production"}));
    assert_eq!(got["spec"]["cwd"], Value::Null);
    assert_eq!(got["instances"], 4);
    assert_eq!(got["online"], 3);

    let placed = pb::Placement {
        strategy: "binpack".into(),
        constraints: vec!["zone=a".into(), "disk!=hdd".into()],
        affinities: vec![pb::Affinity {
            expr: "gpu".into(),
            weight: -20,
        }],
        distinct_hosts: false,
        max_per_node: 2,
    };
    let cases = [
        (None, "spread"),
        (
            Some(placed),
            "binpack; only zone=a, disk!=hdd; prefers gpu (-20); at most 2 per node",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(placement_text(input.as_ref()), want);
    }
    let resources = |cpu_millis, memory_bytes, overcommit| pb::Resources {
        cpu_millis,
        memory_bytes,
        overcommit,
    };
    let cases = [
        (None, "-"),
        (Some(resources(0, 0, true)), "-"),
        (Some(resources(500, 0, false)), "500m cpu"),
        (
            Some(resources(250, 256 << 20, true)),
            "250m cpu, 256.0 MiB (overcommit)",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(resources_text(input.as_ref()), want);
    }
}

#[test]
fn balance_policies() {
    let e = pb::Endpoints {
        app: "web".into(),
        endpoints: vec![pb::Endpoint {
            host: "10.0.0.1".into(),
            port: 4100,
            index: 0,
            node: "a".into(),
            version: 1,
            instance_id: "1e2d4b6c-0000-4000-8000-000000000001".into(),
        }],
    };
    let head = "# generated by pmcluster endpoints web\nupstream web {\n";
    let server = "    server 10.0.0.1:4100 max_fails=1 fail_timeout=1s;  # web[0] v1\n}\n";
    let cases = [
        (Balance::Roundrobin, ""),
        (Balance::Leastconn, "    least_conn;\n"),
        (Balance::Sticky, "    ip_hash;\n"),
    ];
    for (balance, directive) in cases {
        assert_eq!(
            endpoints_nginx(&e, balance),
            format!("{head}{directive}{server}"),
            "{balance:?}"
        );
    }
    let cases = [
        (Balance::Roundrobin, "roundrobin"),
        (Balance::Leastconn, "leastconn"),
        (Balance::Sticky, "source"),
    ];
    for (balance, algorithm) in cases {
        let want = format!(
            "# generated by pmcluster endpoints web\nbackend web\n    balance {algorithm}\n    \
             option redispatch\n    retry-on conn-failure empty-response response-timeout\n    \
             retries 3\n    server web-0-v1-1e2d4b6c 10.0.0.1:4100\n"
        );
        assert_eq!(endpoints_haproxy(&e, balance), want, "{balance:?}");
    }
}

/// The hint to turn autoscaling on suggests a `--max` the app's ports hold: the coordinator
/// refuses one over them.
#[test]
fn the_autoscale_hint_fits_the_ports() {
    let off = |instances| pb::AutoscaleStatus {
        app: "web".into(),
        instances,
        ..Default::default()
    };
    let cases: &[(Option<&str>, u32, &str)] = &[
        (None, 2, "--min 2 --max 10 --cpu-threshold 70"),
        (Some(""), 2, "--min 2 --max 10 "),
        (Some("3000-3003"), 2, "--min 2 --max 4 "),
        (Some("auto:3000-3002"), 1, "--min 2 --max 3 "),
        (Some("3000-3099"), 2, "--min 2 --max 10 "),
        (Some("3000-3099"), 30, "--min 2 --max 30 "),
        (
            Some("3000"),
            1,
            "its port 3000 holds one instance: give it a range to autoscale",
        ),
    ];
    for (port, instances, want) in cases {
        let got = autoscale_text(&off(*instances), *port);
        assert!(got.contains(want), "{port:?}: want {want:?} in\n{got}");
        assert!(got.starts_with("web: autoscaling is off"), "{got}");
    }
}

/// `info`'s version line says when instances run another version than the app's: a trial read
/// a failed rollout's version there as the one running.
#[test]
fn info_says_which_instances_run_another_version() {
    let on = |index, version| pb::Instance {
        app_version: version,
        ..instance("web", index, pb::InstanceState::Online)
    };
    let version_line = |instances: &[pb::Instance]| {
        app_info_text(&app("web"), instances, NOW)
            .lines()
            .find(|l| l.starts_with("version:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(version_line(&[on(0, 2), on(1, 2)]), "2 (updated 3m ago)");
    assert_eq!(
        version_line(&[on(0, 1), on(1, 2)]),
        "2 (updated 3m ago); 1 of 2 instances runs version 1"
    );
    assert_eq!(
        version_line(&[on(0, 1), on(1, 1), on(2, 2)]),
        "2 (updated 3m ago); 2 of 3 instances run version 1"
    );
    assert_eq!(
        version_line(&[on(0, 1), on(1, 3), on(2, 2)]),
        "2 (updated 3m ago); 2 of 3 instances run versions 1, 3"
    );
}

/// One instance is "1 instance", autoscaling off or on.
#[test]
fn autoscale_counts_one_instance_in_the_singular() {
    let status = |enabled| pb::AutoscaleStatus {
        app: "web".into(),
        instances: 1,
        policy: Some(pb::Autoscale {
            enabled,
            ..Default::default()
        }),
        ..Default::default()
    };
    let off = autoscale_text(&status(false), None);
    assert!(
        off.starts_with("web: autoscaling is off (1 instance)\n"),
        "{off}"
    );
    let on = autoscale_text(&status(true), None);
    assert!(on.contains("  now: 1 instance, 0 online"), "{on}");
    assert!(!on.contains("1 instances"), "{on}");
}

#[test]
fn info_says_so_of_a_single_instance_in_the_singular() {
    let app = app("web");
    let one = pb::Instance {
        app_version: 1,
        ..instance("web", 0, pb::InstanceState::Online)
    };
    let text = app_info_text(&app, &[one], NOW);
    assert!(text.contains("; 1 of 1 instance runs version 1"), "{text}");
}

mod streams;
