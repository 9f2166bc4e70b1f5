use super::*;
use crate::placement::Strategy;
use crate::supervise::StopSignal;
use std::time::Duration;

fn check(text: &str, format: Format, want: Result<&[(&str, u32, &str)], &str>) {
    let got = parse_apps(text, format);
    match (want, got) {
        (Ok(w), Ok(g)) => {
            let g: Vec<(String, u32, String)> = g
                .iter()
                .map(|s| (s.name.clone(), s.instances, s.port.to_string()))
                .collect();
            let w: Vec<(String, u32, String)> = w
                .iter()
                .map(|(n, i, p)| (n.to_string(), *i, p.to_string()))
                .collect();
            assert_eq!(g, w, "{text}");
        }
        (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{text}\nwant {w:?}\ngot {e}"),
        (w, g) => panic!("{text}\nwant {w:?}\ngot {g:?}"),
    }
}

const SEED_SINGLE: &str = r#"{
      "name": "web-cluster", "script": "node", "args": ["server.js"], "instances": 4,
      "exec_mode": "cluster", "port": "3000-3003", "env": {"NODE_ENV": "production"},
      "instance_var": "INSTANCE_ID", "merge_logs": true }"#;

const SEED_MANY: &str = r#"{ "apps": [
      { "name": "master-instance", "script": "node", "args": ["server.js", "--role=master"],
        "instances": 1, "port": "3000", "env": {"ROLE": "master", "ENABLE_CRON": "true"} },
      { "name": "worker-instances", "script": "node", "args": ["server.js", "--role=worker"],
        "instances": 6, "port": "3001-3006", "env": {"ROLE": "worker"} },
      { "name": "worker-tier", "script": "python", "args": ["worker.py"], "instances": 2,
        "env": {"TIER": "worker", "POOL": 10} } ] }"#;

#[test]
fn files() {
    use Format::*;
    check(SEED_SINGLE, Json, Ok(&[("web-cluster", 4, "3000-3003")]));
    check(
        SEED_MANY,
        Json,
        Ok(&[
            ("master-instance", 1, "3000"),
            ("worker-instances", 6, "3001-3006"),
            ("worker-tier", 2, ""),
        ]),
    );
    check(
        "name: web\nscript: node\nargs: server.js --x\ninstances: 3\nport: 4100-4199\n",
        Yaml,
        Ok(&[("web", 3, "4100-4199")]),
    );
    check(
        "[[apps]]\nname = \"web\"\nscript = \"node\"\ninstances = 2\nport = \"8080-8081\"\n[[apps]]\nname = \"api\"\nscript = \"x\"\n",
        Toml,
        Ok(&[("web", 2, "8080-8081"), ("api", 1, "")]),
    );
    check(
        r#"{"name": "web", "script": "node", "instancez": 2}"#,
        Json,
        Err("unknown field `instancez`"),
    );
    check(
        r#"{"apps": [{"name": "web", "script": "n", "colour": 1}]}"#,
        Json,
        Err("unknown field `colour`"),
    );
    check(r#"{"name": "web", "script": "node""#, Json, Err("file"));
    check(r#"{"name": "web", "script": ""}"#, Json, Err("script"));
    check(r#"{"script": "node"}"#, Json, Err("name"));
    check(
        r#"{"name": "web", "script": "node", "instances": -1}"#,
        Json,
        Err("instances"),
    );
    check(
        r#"{"name": "web", "script": "node", "instances": "lots"}"#,
        Json,
        Err("instances"),
    );
    check(
        r#"{"name": "web", "script": "node", "instances": 4, "port": "3000-3002"}"#,
        Json,
        Err("holds 3 ports"),
    );
    check(
        r#"{"name": "web", "script": "node", "port": "30x0"}"#,
        Json,
        Err("port"),
    );
    check(
        r#"{"name": "web", "script": "node", "restart_delay": "2 parsecs"}"#,
        Json,
        Err("restart_delay"),
    );
    check(r#"{"apps": []}"#, Json, Err("defines no app"));
    check(
        r#"{"apps": [{"name": "a", "script": "x"}, {"name": "a", "script": "y"}]}"#,
        Json,
        Err("defined twice"),
    );
}

#[test]
fn defaults_and_conversions() {
    let specs = parse_apps(
            r#"{"name": "w", "script": "node", "args": "a 'b c'", "restart_delay": "2s", "kill_timeout": 1500, "env": {"N": 1, "B": true}}"#,
            Format::Json,
        )
        .unwrap();
    let s = &specs[0];
    assert_eq!(s.args, vec!["a", "b c"]);
    assert_eq!(s.restart_delay, Duration::from_secs(2));
    assert_eq!(s.kill_timeout, Duration::from_millis(1500));
    assert_eq!(s.env.get("N").map(String::as_str), Some("1"));
    assert_eq!(s.env.get("B").map(String::as_str), Some("true"));
    assert!(s.autorestart);
    assert_eq!(s.instances, 1);
}

#[test]
fn placement_blocks() {
    let specs = parse_apps(
            r#"{"name": "w", "script": "x", "instances": "max", "port": "auto:3000-3100",
                "placement": {"strategy": "binpack", "constraints": ["region=eu", "disk in (ssd,nvme)"],
                              "affinities": [{"expr": "zone=a", "weight": -20}], "distinct_hosts": true},
                "resources": {"cpu": "250m", "memory": "512M"}, "reschedule_after": "never"}"#,
            Format::Json,
        )
        .unwrap();
    let s = &specs[0];
    assert!(s.instances_max);
    assert_eq!(s.placement.strategy, Strategy::Binpack);
    assert_eq!(s.placement.constraints.len(), 2);
    assert_eq!(s.placement.affinities[0].weight, -20);
    assert_eq!(s.placement.max_per_node, Some(1));
    assert_eq!(s.resources.cpu_millis, 250);
    assert_eq!(s.resources.memory_bytes, 512 << 20);
    assert_eq!(s.reschedule, Reschedule::Never);
    let wire = pmcluster_proto::v1::AppSpec::from(s);
    assert_eq!(AppSpec::try_from(wire).as_ref(), Ok(s));

    let bad = [
        (
            r#"{"name": "w", "script": "x", "placement": {"strategy": "random"}}"#,
            "placement.strategy",
        ),
        (
            r#"{"name": "w", "script": "x", "placement": {"constraints": ["a b"]}}"#,
            "placement.constraints",
        ),
        (
            r#"{"name": "w", "script": "x", "placement": {"colour": 1}}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"name": "w", "script": "x", "placement": {"distinct_hosts": true, "max_per_node": 3}}"#,
            "contradicts",
        ),
        (
            r#"{"name": "w", "script": "x", "placement": {"affinities": [{"expr": "a=b", "weight": 500}]}}"#,
            "outside -100..100",
        ),
        (
            r#"{"name": "w", "script": "x", "resources": {"memory": "lots"}}"#,
            "resources.memory",
        ),
        (
            r#"{"name": "w", "script": "x", "resources": {"cpu": "-1"}}"#,
            "resources.cpu",
        ),
        (
            r#"{"name": "w", "script": "x", "reschedule_after": "soon"}"#,
            "reschedule_after",
        ),
        (
            r#"{"name": "w", "script": "x", "instances": "max", "port": 3000}"#,
            "single port",
        ),
    ];
    for (text, want) in bad {
        let err = parse_apps(text, Format::Json).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

/// The seeds' fault-tolerant and tuned clusters parse as written.
#[test]
fn seed_supervision_and_autoscale() {
    let specs = parse_apps(
        r#"{ "name": "fault-tolerant-cluster", "script": "node", "args": ["server.js"],
                 "instances": 4, "port": "3000-3009", "autorestart": true, "max_restarts": 5,
                 "min_uptime": "10s", "restart_delay": "2s", "max_memory_restart": "600M",
                 "cpu_affinity": "0,1", "limits": {"nofile": 65536}, "stop_signal": "SIGINT",
                 "cron_restart": "0 3 * * *", "time": true, "log_max_size": "1M", "log_retain": 3,
                 "health_check": { "check_type": "http", "url": "http://localhost:${PORT}/health",
                                   "timeout": 5, "interval": 15, "retries": 3 },
                 "autoscale": { "min": 2, "max": 10, "cpu_threshold": 70, "cooldown": "30s" } }"#,
        Format::Json,
    )
    .unwrap();
    let s = &specs[0];
    let sup = &s.supervision;
    assert_eq!(sup.max_restarts, 5);
    assert_eq!(sup.min_uptime, Duration::from_secs(10));
    assert_eq!(sup.max_memory_restart, Some(600 << 20));
    assert_eq!(sup.cpu_affinity, vec![0, 1]);
    assert_eq!(sup.limits.get("nofile"), Some(&65536));
    assert_eq!(sup.stop_signal, StopSignal::Int);
    assert!(sup.log_timestamps);
    assert_eq!(sup.log_max_bytes, Some(1 << 20));
    assert_eq!(sup.log_keep, 3);
    let hc = sup.health_check.as_ref().unwrap();
    assert_eq!(hc.interval, Duration::from_secs(15));
    assert_eq!(hc.timeout, Duration::from_secs(5));
    assert_eq!(hc.retries, 3);
    let auto = s.autoscale.as_ref().unwrap();
    assert_eq!(
        (auto.min, auto.max, auto.cpu_threshold),
        (2, 10, Some(70.0))
    );
    assert_eq!(auto.cooldown, Duration::from_secs(30));
    let wire = pmcluster_proto::v1::AppSpec::from(s);
    assert_eq!(AppSpec::try_from(wire).as_ref(), Ok(s));

    let bad = [
        (
            r#"{"name": "w", "script": "x", "cron_restart": "every day"}"#,
            "cron_restart",
        ),
        (
            r#"{"name": "w", "script": "x", "stop_signal": "SIGKILL"}"#,
            "stop_signal",
        ),
        (
            r#"{"name": "w", "script": "x", "limits": {"files": 1}}"#,
            "unknown limit",
        ),
        (
            r#"{"name": "w", "script": "x", "health_check": {"check_type": "ping"}}"#,
            "health_check.check_type",
        ),
        (
            r#"{"name": "w", "script": "x", "health_check": {"check_type": "exec"}}"#,
            "health_check.command",
        ),
        (
            r#"{"name": "w", "script": "x", "health_check": {"colour": 1}}"#,
            "unknown field",
        ),
        (
            r#"{"name": "w", "script": "x", "max_memory_restart": "lots"}"#,
            "max_memory_restart",
        ),
        (
            r#"{"name": "w", "script": "x", "autoscale": {"min": 5, "max": 2, "cpu_threshold": 70}}"#,
            "autoscale.min",
        ),
        (
            r#"{"name": "w", "script": "x", "autoscale": {"max": 2, "cpu_threshold": 170000}}"#,
            "autoscale.cpu_threshold",
        ),
        (
            r#"{"name": "w", "script": "x", "port": "3000-3001", "autoscale": {"max": 5, "cpu_threshold": 70}}"#,
            "autoscale.max",
        ),
    ];
    for (text, want) in bad {
        let err = parse_apps(text, Format::Json).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn config_export_round_trips() {
    let text = r#"{ "name": "web", "script": "node", "args": ["s.js"], "instances": 3,
            "port": "3000-3009", "env": {"A": "1"}, "placement": {"constraints": ["zone=a"], "distinct_hosts": true},
            "resources": {"cpu": "250m", "memory": "64M"}, "reschedule_after": "never",
            "health_check": {"check_type": "http", "interval": 2}, "max_memory_restart": "600M",
            "autoscale": {"min": 1, "max": 5, "cpu_threshold": 60},
            "update": {"max_surge": 2, "min_healthy_time": "1s", "shutdown_delay": "500ms"} }"#;
    let spec = parse_apps(text, Format::Json).unwrap().remove(0);
    let back = to_config(&spec).to_string();
    assert_eq!(
        parse_apps(&back, Format::Json).unwrap().remove(0),
        spec,
        "{back}"
    );
    let plain = AppSpec::new("w", "x", &[]);
    let back = to_config(&plain).to_string();
    assert_eq!(
        parse_apps(&back, Format::Json).unwrap().remove(0),
        plain,
        "{back}"
    );
    // Found by the wire_specs fuzz target: JSON read this back one bit off (0.1...564).
    let mut odd = spec.clone();
    odd.autoscale.as_mut().unwrap().tolerance = 0.10000381469726563;
    let back = to_config(&odd).to_string();
    assert_eq!(parse_apps(&back, Format::Json).unwrap().remove(0), odd);
}

/// Every duration of a config file is bounded, named as written in the file.
#[test]
fn durations_have_a_maximum() {
    let cases = [
        (
            r#""restart_delay": 9223372036854775807"#,
            "restart_delay: 292271023years",
        ),
        (
            r#""restart_delay": "2h""#,
            "restart_delay: 2h is more than the maximum of 1h",
        ),
        (
            r#""kill_timeout": "1h 1s""#,
            "kill_timeout: 1h 1s is more than",
        ),
        (
            r#""reschedule_after": "30days""#,
            "reschedule_after: 30days is more than the maximum of 1day; write \"never\"",
        ),
        (r#""min_uptime": "2h""#, "min_uptime"),
        (r#""restart_window": "2days""#, "restart_window"),
        (r#""restart_backoff_max": "2h""#, "restart_backoff_max"),
        (r#""listen_timeout": "2h""#, "listen_timeout"),
        (
            r#""health_check": {"check_type": "tcp", "interval": 86400}"#,
            "health_check.interval: 1day is more than the maximum of 1h",
        ),
        (
            r#""health_check": {"check_type": "tcp", "timeout": 1e300}"#,
            "health_check.timeout",
        ),
        (
            r#""autoscale": {"max": 2, "cpu_threshold": 50, "cooldown": "2days"}"#,
            "autoscale.cooldown",
        ),
        (
            r#""autoscale": {"max": 2, "cpu_threshold": 50, "up_stabilization": "2days"}"#,
            "autoscale.up_stabilization",
        ),
        (
            r#""autoscale": {"max": 2, "cpu_threshold": 50, "down_stabilization": "2days"}"#,
            "autoscale.down_stabilization",
        ),
        (
            r#""update": {"min_healthy_time": "2days"}"#,
            "update.min_healthy_time",
        ),
        (
            r#""update": {"healthy_deadline": "2days"}"#,
            "update.healthy_deadline",
        ),
        (
            r#""update": {"progress_deadline": "2days"}"#,
            "update.progress_deadline",
        ),
        (
            r#""update": {"shutdown_delay": "2h"}"#,
            "update.shutdown_delay",
        ),
    ];
    for (field, want) in cases {
        let text = format!(r#"{{"name": "w", "script": "x", {field}}}"#);
        let err = parse_apps(&text, Format::Json).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains("maximum"), "{text}: {err}");
    }
    // Each bound itself is accepted.
    let at_max = r#"{"name": "w", "script": "x", "restart_delay": "1h", "kill_timeout": "1h",
            "reschedule_after": "1day", "update": {"healthy_deadline": "1day", "progress_deadline": "1day"}}"#;
    assert!(parse_apps(at_max, Format::Json).is_ok());
}

#[test]
fn nul_bytes_are_named() {
    let cases = [
        (
            r#"{"name": "w", "script": "no\u0000de"}"#,
            "script: \"no\\0de\" contains a NUL byte",
        ),
        (
            r#"{"name": "w", "script": "x", "args": ["a", "b", "c\u0000"]}"#,
            "args[2]: ",
        ),
        (
            r#"{"name": "w", "script": "x", "env": {"FOO": "a\u0000b"}}"#,
            "env.FOO: ",
        ),
        (
            r#"{"name": "w", "script": "x", "env": {"A=B": "1"}}"#,
            "env: \"A=B\" is not a valid",
        ),
        (
            r#"{"name": "w", "script": "x", "cwd": "/t\u0000"}"#,
            "cwd: ",
        ),
    ];
    for (text, want) in cases {
        let err = parse_apps(text, Format::Json).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn format_from_path() {
    assert_eq!(Format::from_path("a.yml"), Format::Yaml);
    assert_eq!(Format::from_path("a.YAML"), Format::Yaml);
    assert_eq!(Format::from_path("a.toml"), Format::Toml);
    assert_eq!(Format::from_path("ecosystem.json"), Format::Json);
}

/// Type errors name the app (by name, else its place in `apps`) and the field, with the line and
/// column where the format gives them, and no Rust type names.
#[test]
fn type_errors_name_the_app_and_field() {
    use Format::*;
    let cases: &[(&str, Format, &str)] = &[
        (
            r#"{"name":"x6","script":"sleep","args":"100","autorestart":"false"}"#,
            Json,
            r#"app "x6": autorestart: invalid type: string "false", expected a boolean (line 1, column 64)"#,
        ),
        (
            "apps: [{name: y1, script: sleep, autorestart: 5}]\n",
            Yaml,
            r#"app "y1": autorestart: invalid type: integer `5`, expected a boolean"#,
        ),
        (
            r#"{"name":"y3","script":"sleep","args":100}"#,
            Json,
            r#"app "y3": args: expected a string or a list of strings"#,
        ),
        (
            r#"{"name":"y4","script":"sleep","env":["A=1"]}"#,
            Json,
            r#"app "y4": env: invalid type: sequence, expected a map"#,
        ),
        (
            r#"{"name":"y8","script":"sleep","max_restarts":-1}"#,
            Json,
            r#"app "y8": max_restarts: invalid value: integer `-1`, expected a whole number from 0 to 4294967295"#,
        ),
        (
            r#"{"apps":[{"name":"ok1","script":"x"},{"name":"bad2","script":"x","wacth":true}]}"#,
            Json,
            "app \"bad2\": wacth: unknown field `wacth`, expected one of `name`",
        ),
        (
            r#"{"apps":[{"name":"ok1","script":"x"},{"script":"x","shell":"yes"}]}"#,
            Json,
            r#"apps[1].shell: invalid type: string "yes", expected a boolean"#,
        ),
        (
            r#"{"apps":[{"name":"ok1","script":"x"},{"script":"x","min_uptime":"zz"}]}"#,
            Json,
            "apps[1].min_uptime: \"zz\" is not a duration",
        ),
        (
            "[[apps]]\nname = \"t1\"\nscript = \"x\"\n\n[apps.health_check]\nretries = \"3\"\n",
            Toml,
            r#"app "t1": health_check.retries: invalid type: string "3", expected a whole number from 0 to 4294967295 (line 6, column 11)"#,
        ),
        (
            r#"{"name":"e1","script":"x","env":{"A":{"x":1}}}"#,
            Json,
            r#"app "e1": env.A: expected a string, a number, a boolean or {"secret": VALUE}"#,
        ),
        (
            r#"{"name":"p1","script":"x","port":[3000]}"#,
            Json,
            r#"app "p1": port: expected a string, a number or a boolean"#,
        ),
        (
            r#"{"name":"c1","script":"x","cpu_affinity":{"a":1}}"#,
            Json,
            r#"app "c1": cpu_affinity: expected a list of core numbers or a string like "0,1""#,
        ),
        (
            r#"{"name":"i1","script":"x","instances":"99999999999"}"#,
            Json,
            r#"app "i1": instances: "99999999999" is too large: the limit is 100000"#,
        ),
        (
            r#"{"name":"i2","script":"x","instances":99999999999}"#,
            Json,
            r#"app "i2": instances: 99999999999 is too large: the limit is 100000"#,
        ),
        // Kept as they were.
        (
            r#"{"name":"x1","script":"x","instances":"four"}"#,
            Json,
            r#"app "x1": instances: "four" is neither a whole number of instances (0 or more) nor "max" (one per core)"#,
        ),
        (
            r#"{"name":"x2","script":"x","instances":"max5"}"#,
            Json,
            r#"app "x2": instances: "max5" is neither a whole number of instances (0 or more) nor "max" (one per core)"#,
        ),
        (
            r#"{"name":"x3","script":"x","instances":-2}"#,
            Json,
            r#"app "x3": instances: -2 is neither a whole number of instances (0 or more) nor "max" (one per core)"#,
        ),
        // A user trial got "1000 is neither a whole number ... nor "max"" for `instances = 1e3`.
        (
            "name = \"f1\"\nscript = \"x\"\ninstances = 1e3\n",
            Toml,
            r#"app "f1": instances: 1000.0 is a float; write the whole number 1000, or "max" (one per core)"#,
        ),
        (
            r#"{"name":"f2","script":"x","instances":2.0}"#,
            Json,
            r#"app "f2": instances: 2.0 is a float; write the whole number 2, or "max""#,
        ),
        (
            "name: f3\nscript: x\ninstances: 2.5\n",
            Yaml,
            r#"app "f3": instances: 2.5 is a float; write a whole number of instances (0 or more), or "max""#,
        ),
        (
            r#"{"name":"f4","script":"x","instances":-3.0}"#,
            Json,
            r#"app "f4": instances: -3.0 is a float; write a whole number of instances (0 or more)"#,
        ),
        (
            "name = \"f5\"\nscript = \"x\"\ninstances = 1e30\n",
            Toml,
            r#"app "f5": instances: 1e30 is a float; write a whole number of instances (0 or more)"#,
        ),
    ];
    let mut wrong = Vec::new();
    for (text, format, want) in cases {
        let got = parse_apps(text, *format).expect_err(text).to_string();
        if !got.contains(want) {
            wrong.push(format!("{text}\nwant {want}\ngot  {got}"));
        }
        assert!(!got.contains("file:"), "{got}");
        for rust in ["RawArgs", "Scalar", "u32", "untagged"] {
            assert!(!got.contains(rust), "{got}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// A value refused after the parse (a port that does not parse, a bad duration, a count over the
/// ports) is located in the text as a type error is: the line and column the format's parser
/// gives (YAML's is the key's, JSON's and TOML's the value's).
#[test]
fn checked_values_say_where_they_are() {
    use Format::*;
    let cases: &[(&str, Format, &str)] = &[
        (
            "apps:\n  - name: web\n    script: node\n    port: 30x0\n",
            Yaml,
            r#"app "web": port: "30x0" is not a port number (1-65535) (line 4, column 5)"#,
        ),
        (
            "apps:\n  - name: ok\n    script: x\n  - name: b\n    restart_delay: soon\n    script: x\n",
            Yaml,
            "app \"b\": restart_delay: \"soon\" is not a duration; write e.g. \"2s\" or 2000 \
             (line 5, column 5)",
        ),
        (
            "name: w\nscript: x\nhealth_check:\n  url: http://localhost/\n  interval: -1s\n",
            Yaml,
            "health_check.interval: \"-1s\" is not a duration",
        ),
        (
            "name: w\nscript: x\ninstances: 3\nport: 3000-3001\n",
            Yaml,
            "3 instances were asked for; widen the range (e.g. 3000-3002) (line 4, column 1)",
        ),
        (
            r#"{"name":"j","script":"x",
  "port":"99999"}"#,
            Json,
            r#"app "j": port: "99999""#,
        ),
        (
            "name = \"t\"\nscript = \"x\"\nrestart_delay = \"soon\"\n",
            Toml,
            "(line 3, column 17)",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, format, want) in cases {
        let got = parse_apps(text, *format).expect_err(text).to_string();
        if !got.contains(want) || !got.contains("(line ") {
            wrong.push(format!("{text}\nwant {want}\ngot  {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    // A config made by a program has no text to point into.
    let tree = serde_json::json!({"name": "p", "script": "x", "port": "30x0"});
    let got = parse_config(tree).expect_err("a bad port").to_string();
    assert!(!got.contains("line"), "{got}");
    // The steps of the fields errors name.
    use super::position::{Step, steps};
    let key = |k: &str| Step::Key(k.to_string());
    assert_eq!(
        steps("health_check.path"),
        Some(vec![key("health_check"), key("path")])
    );
    assert_eq!(steps("args[2]"), Some(vec![key("args"), Step::Index(2)]));
    assert_eq!(
        steps("env.\"A B\".x"),
        Some(vec![key("env"), key("A B"), key("x")])
    );
    assert_eq!(steps("args[x]"), None);
}

/// A bad value in one app of a file is that app's error alone: `apply -f` applies the others.
/// A file that is not apps at all is one error.
#[test]
fn each_app_of_a_file_is_validated_apart() {
    let text = r#"{"apps": [
        {"name": "m1", "script": "x"},
        {"name": "m2", "script": "x", "instances": 5000, "port": "auto:18700-18710"},
        {"name": "m4", "script": "x", "instances": "max5"},
        {"script": "x"},
        {"name": "m3", "script": "x"}
    ]}"#;
    let apps = parse_apps_each(text, Format::Json).expect("the file is read");
    let labels: Vec<&str> = apps.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["m1", "m2", "m4", "apps[3]", "m3"]);
    assert!(apps[0].1.is_ok() && apps[4].1.is_ok(), "{apps:?}");
    let m2 = apps[1].1.as_ref().expect_err("m2 is refused").to_string();
    assert!(m2.starts_with("app \"m2\": port:"), "{m2}");
    let m4 = apps[2].1.as_ref().expect_err("m4 is refused").to_string();
    assert!(m4.starts_with("app \"m4\": instances:"), "{m4}");
    let unnamed = apps[3]
        .1
        .as_ref()
        .expect_err("apps[3] is refused")
        .to_string();
    assert!(unnamed.starts_with("apps[3].name: is missing"), "{unnamed}");
    // The whole file fails as before with parse_apps.
    assert!(parse_apps(text, Format::Json).is_err());
    for bad in [
        r#"{"apps": [{"name": "a", "script": "x"}, {"name": "a", "script": "y"}]}"#,
        r#"{"apps": []}"#,
        r#"{"apps": [{"name": "a", "script": "x", "nope": 1}]}"#,
        "[1, 2",
    ] {
        assert!(parse_apps_each(bad, Format::Json).is_err(), "{bad}");
    }
}

/// A value of the wrong type is its app's error too, placed in the file: a trial's
/// `autorestart: "false"` kept the file's other apps from being applied, with no line.
#[test]
fn a_wrong_type_is_its_apps_error_with_its_place() {
    let text = "apps:\n  - name: good1\n    script: x\n  - name: bad1\n    script: x\n    \
                autorestart: \"false\"\n  - script: x\n    instances: [1]\n  - name: good2\n    \
                script: x\n";
    let apps = parse_apps_each(text, Format::Yaml).expect("the file is read");
    let labels: Vec<&str> = apps.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["good1", "bad1", "apps[2]", "good2"]);
    assert!(apps[0].1.is_ok() && apps[3].1.is_ok(), "{apps:?}");
    let bad1 = apps[1].1.as_ref().expect_err("bad1 is refused").to_string();
    assert_eq!(
        bad1,
        "app \"bad1\": autorestart: invalid type: string \"false\", expected a boolean \
         (line 6, column 5)"
    );
    let unnamed = apps[2]
        .1
        .as_ref()
        .expect_err("apps[2] is refused")
        .to_string();
    assert!(unnamed.starts_with("apps[2].instances: "), "{unnamed}");
    // parse_apps (one spec, `reload --set`) still refuses the file for it.
    assert!(parse_apps(text, Format::Yaml).is_err());
}

/// An empty file and a key given twice are said in the user's words, not the parser's.
#[test]
fn empty_files_and_duplicate_keys() {
    for format in [Format::Json, Format::Yaml, Format::Toml] {
        let e = parse_apps(" \n", format).expect_err("empty");
        assert_eq!(
            e.to_string(),
            "file: the file is empty: write one app, or {\"apps\": [...]}"
        );
    }
    let e = parse_apps("name: a\nname: b\nscript: x\n", Format::Yaml).expect_err("twice");
    let text = e.to_string();
    assert!(
        text.contains("duplicate") && !text.contains("DuplicateKeyPolicy"),
        "{text}"
    );
    // JSON too, at any depth, where a tree kept the last value without a word.
    for json in [
        r#"{"name": "a", "script": "x", "instances": 1, "instances": 3}"#,
        r#"{"apps": [{"name": "a", "script": "x", "env": {"A": "1", "A": "2"}}]}"#,
    ] {
        let e = parse_apps(json, Format::Json).expect_err(json).to_string();
        assert!(e.contains("is given twice at line 1"), "{e}");
    }
    // What is not twice is read as before, numbers of every kind included.
    let ok = r#"{"name": "a", "script": "x", "instances": 2, "max_memory_restart": 1.5e9,
        "env": {"A": "1", "B": "-3"}, "args": ["a", "b"], "autorestart": true, "cwd": null}"#;
    let apps = parse_apps(ok, Format::Json).expect("reads");
    assert_eq!(apps[0].instances, 2);
    assert_eq!(apps[0].args, ["a", "b"]);
    assert_eq!(apps[0].env.len(), 2);
}

/// Input as editors and people make it: a byte-order mark, two YAML documents, an empty item.
#[test]
fn files_as_editors_save_them() {
    let bom = "\u{feff}{\"name\": \"a\", \"script\": \"x\"}";
    assert_eq!(
        parse_apps(bom, Format::Json).expect("a BOM is skipped")[0].name,
        "a"
    );
    // A value's error is placed in the text after the mark, not at its start.
    let bom_bad = "\u{feff}{\"name\": \"a\",\n \"script\": \"x\", \"port\": \"30x0\"}";
    let e = parse_apps(bom_bad, Format::Json)
        .expect_err("a bad port")
        .to_string();
    assert!(e.contains("(line 2, column"), "{e}");
    let two = "name: a\nscript: x\n---\nname: b\nscript: y\n";
    let e = parse_apps(two, Format::Yaml)
        .expect_err("two documents")
        .to_string();
    assert!(
        e.contains("a config file is one document; list every app under `apps:`"),
        "{e}"
    );
    assert!(!e.contains("from_str_multiple"), "{e}");
    let each = parse_apps_each(
        r#"{"apps": [{"name": "a", "script": "x"}, null, 3]}"#,
        Format::Json,
    )
    .expect("the file reads");
    assert!(each[0].1.is_ok());
    let says = |i: usize| each[i].1.as_ref().expect_err("not an app").to_string();
    assert!(
        says(1).starts_with("apps[1]: is empty, not an app; each item of apps is a map"),
        "{}",
        says(1)
    );
    assert!(
        says(2).starts_with("apps[2]: is a single value, not an app"),
        "{}",
        says(2)
    );
    assert!(!says(1).contains("RawApp"), "{}", says(1));
}

/// Durations and sizes are written in the largest unit that holds them exactly, and read back
/// as the same value (a trial found "300000ms" and "209715200" in an export).
#[test]
fn durations_and_sizes_are_written_as_one_would_type_them() {
    use crate::placement::parse_memory;
    let durations = [
        (0, "0s"),
        (500, "500ms"),
        (1_500, "1500ms"),
        (15_000, "15s"),
        (90_000, "90s"),
        (300_000, "5m"),
        (3_600_000, "1h"),
        (86_400_000, "1d"),
        (90_061_001, "90061001ms"),
    ];
    for (ms, want) in durations {
        let d = Duration::from_millis(ms);
        let text = duration_text(d);
        assert_eq!(text, want);
        let back = parse_duration("x", &Scalar::Str(text.clone())).expect(&text);
        assert_eq!(back, d, "{text}");
    }
    let sizes = [
        (0, "0"),
        (1000, "1000"),
        (1536, "1536"),
        (2048, "2K"),
        (1536 << 10, "1536K"),
        (10 << 20, "10M"),
        (200 << 20, "200M"),
        (3 << 30, "3G"),
        (2 << 40, "2T"),
        (u64::MAX, "18446744073709551615"),
    ];
    for (bytes, want) in sizes {
        let text = size_text(bytes);
        assert_eq!(text, want);
        assert_eq!(parse_memory("x", &text).expect(&text), bytes, "{text}");
    }
}

/// TOML's nan and inf read as null through a JSON tree, that is as a field left out: they must
/// be refused by name instead. YAML's parser refuses them itself.
#[test]
fn non_finite_numbers_are_refused() {
    for (text, format, want) in [
        (
            "name = \"w\"\nscript = \"a\"\ninstances = nan\n",
            Format::Toml,
            "instances: is not a finite number (nan and inf have no meaning here); write a number \
             (line 3, column 13)",
        ),
        (
            "[[apps]]\nname = \"w\"\nscript = \"a\"\nmax_memory_restart = -inf\n",
            Format::Toml,
            "apps[0].max_memory_restart: is not a finite number",
        ),
        (
            "name = \"w\"\nscript = \"a\"\n[autoscale]\nmax = 4\ncpu_threshold = inf\n",
            Format::Toml,
            "autoscale.cpu_threshold: is not a finite number",
        ),
        (
            "name = \"w\"\nscript = \"a\"\n[env]\n\"a.b\" = nan\n",
            Format::Toml,
            "env.\"a.b\": is not a finite number",
        ),
        (
            "name: w\nscript: a\ninstances: .nan\n",
            Format::Yaml,
            "non-finite float `.nan` has no meaning here; write a number",
        ),
    ] {
        let e = parse_apps(text, format).expect_err(text);
        assert!(e.to_string().contains(want), "{text:?}: {e}");
    }
    // A field no app has is a typo before it is a bad number, in one app or in a list.
    for (text, want) in [
        (
            "name = \"w\"\nscript = \"a\"\ntypo = nan\n",
            "typo: unknown field `typo`",
        ),
        (
            "[[apps]]\nname = \"w\"\nscript = \"a\"\ninstancez = inf\n",
            "unknown field `instancez`",
        ),
    ] {
        let e = parse_apps(text, Format::Toml).expect_err(text);
        assert!(e.to_string().contains(want), "{text:?}: {e}");
        let e = parse_apps_each(text, Format::Toml).expect_err(text);
        assert!(e.to_string().contains(want), "{text:?}: {e}");
    }
    // A finite float where one is taken still reads.
    let ok = "name = \"w\"\nscript = \"a\"\n[autoscale]\nmax = 4\ncpu_threshold = 70.5\n";
    assert!(parse_apps(ok, Format::Toml).is_ok());
}
