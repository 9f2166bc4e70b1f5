use super::*;

#[test]
fn port_spec_parse() {
    let cases: &[(&str, Result<PortSpec, &str>)] = &[
        ("", Ok(PortSpec::None)),
        ("3000", Ok(PortSpec::Single(3000))),
        (" 3000-3003 ", Ok(PortSpec::Range(3000, 3003))),
        ("auto:3000-3100", Ok(PortSpec::Auto(3000, 3100))),
        ("3003-3000", Err("ends before it starts")),
        ("abc", Err("not a port number")),
        ("0", Err("not a port number")),
        ("70000", Err("not a port number")),
        ("3000-", Err("not a port number")),
        ("auto:3000", Err("not a port range")),
        ("3000-x", Err("not a port number")),
    ];
    for (input, want) in cases {
        let got = PortSpec::parse(input);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "input {input:?}"),
            (Err(w), Err(e)) => {
                assert_eq!(e.field, "port");
                assert!(e.to_string().contains(w), "input {input:?}: {e}");
            }
            _ => panic!("input {input:?}: got {got:?}"),
        }
    }
}

#[test]
fn port_for_index() {
    let cases = [
        (PortSpec::Range(4100, 4199), 0, Some(4100)),
        (PortSpec::Range(4100, 4199), 2, Some(4102)),
        (PortSpec::Range(4100, 4101), 2, None),
        (PortSpec::Single(80), 0, Some(80)),
        (PortSpec::Single(80), 1, None),
        (PortSpec::Auto(1, 9), 0, None),
        (PortSpec::None, 0, None),
    ];
    for (spec, index, want) in cases {
        assert_eq!(spec.port_for(index), want, "{spec:?} index {index}");
    }
}

#[test]
fn range_smaller_than_count_is_an_error() {
    let spec = AppSpec {
        instances: 5,
        port: PortSpec::Range(3000, 3003),
        ..AppSpec::new("web", "node", &["server.js"])
    };
    let err = spec.clone().validate().unwrap_err();
    assert_eq!(err.field, "port");
    assert!(err.to_string().contains("3000-3004"), "{err}");
    assert!(spec.with_instances(4).is_ok());
    let single = AppSpec {
        port: PortSpec::Single(3000),
        ..AppSpec::new("web", "node", &[])
    };
    assert!(single.with_instances(2).is_err());
}

#[test]
fn memory_percent_needs_a_memory_limit() {
    use crate::autoscale::{AutoscalePolicy, MemoryThreshold};
    let with = |threshold, limit: Option<u64>, request: u64| {
        let mut spec = AppSpec::new("web", "node", &[]);
        spec.supervision.max_memory_restart = limit;
        spec.resources.memory_bytes = request;
        spec.autoscale = Some(AutoscalePolicy {
            memory_threshold: Some(threshold),
            cpu_threshold: None,
            ..AutoscalePolicy::new(1, 4, 70.0)
        });
        spec.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    let cases = [
        (
            MemoryThreshold::Percent(80.0),
            None,
            0,
            Some("no memory limit"),
        ),
        (MemoryThreshold::Percent(80.0), Some(600 << 20), 0, None),
        (MemoryThreshold::Percent(80.0), None, 512 << 20, None),
        (MemoryThreshold::Bytes(512 << 20), None, 0, None),
    ];
    for (threshold, limit, request, want) in cases {
        let got = with(threshold, limit, request);
        match want {
            Some(w) => assert!(
                got.as_ref()
                    .is_err_and(|e| e.contains(w) && e.contains("memory_threshold")),
                "{threshold:?}: {got:?}"
            ),
            None => assert!(got.is_ok(), "{threshold:?}: {got:?}"),
        }
    }
}

#[test]
fn requests_and_affinity_stay_within_what_a_machine_can_have() {
    let with = |f: &dyn Fn(&mut AppSpec)| {
        let mut spec = AppSpec::new("web", "node", &[]);
        f(&mut spec);
        spec.validate()
            .map(|_| ())
            .map_err(|e| (e.field.clone(), e.to_string()))
    };
    type Change<'a> = &'a dyn Fn(&mut AppSpec);
    let cases: [(Change<'_>, Option<&str>); 8] = [
        (&|s| s.resources.memory_bytes = MAX_MEMORY_BYTES, None),
        (
            &|s| s.resources.memory_bytes = MAX_MEMORY_BYTES + 1,
            Some("resources.memory"),
        ),
        // Read as -1 by a signed sum, it once passed every capacity check.
        (
            &|s| s.resources.memory_bytes = u64::MAX,
            Some("resources.memory"),
        ),
        (&|s| s.resources.cpu_millis = MAX_CPU_MILLIS, None),
        (
            &|s| s.resources.cpu_millis = u32::MAX,
            Some("resources.cpu"),
        ),
        (&|s| s.supervision.cpu_affinity = vec![0, 1023], None),
        (
            &|s| s.supervision.cpu_affinity = vec![0, 1024],
            Some("cpu_affinity"),
        ),
        (
            &|s| s.supervision.cpu_affinity = vec![u32::MAX],
            Some("cpu_affinity"),
        ),
    ];
    for (i, (change, want)) in cases.into_iter().enumerate() {
        let got = with(change);
        match want {
            None => assert!(got.is_ok(), "case {i}: {got:?}"),
            Some(field) => {
                assert!(
                    got.as_ref().is_err_and(|(f, _)| f == field),
                    "case {i}: {got:?}"
                )
            }
        }
    }
}

#[test]
fn same_process_ignores_count_and_placement() {
    let a = AppSpec::new("web", "node", &["s.js"]);
    let mut b = a.clone();
    b.instances = 12;
    b.resources.memory_bytes = 1 << 20;
    b.placement.max_per_node = Some(1);
    assert!(a.same_process(&b));
    b.args.push("--x".into());
    assert!(!a.same_process(&b));
}

#[test]
fn names() {
    for ok in [
        "web",
        "web-cluster",
        "a.b_c",
        "9lives",
        "v1.2",
        &"x".repeat(64),
    ] {
        assert!(validate_name(ok).is_ok(), "{ok}");
        assert!(validate_node_name(ok).is_ok(), "{ok}");
    }
    let bad = [
        "",
        "-web",
        ".web",
        ".",
        "..",
        "a..b",
        "web..",
        "web cluster",
        "web/1",
        "../etc",
        "web\0",
        "web\n",
        "web\u{7f}",
        "wéb",
        &"x".repeat(65),
    ];
    for bad in bad {
        let e = validate_name(bad).expect_err(bad);
        assert_eq!(e.field, "name");
        let e = validate_node_name(bad).expect_err(bad);
        assert_eq!(e.field, "node_name");
        assert!(e.message.contains("not a valid node name"), "{}", e.message);
    }
}

/// `check(change, field, words)`: the error a change to a valid spec gives, by field.
#[test]
fn field_errors() {
    type Change = fn(&mut AppSpec);
    let cases: Vec<(Change, &str, &str)> = vec![
        (
            |s| s.script = "no\0de".into(),
            "script",
            "contains a NUL byte",
        ),
        (
            |s| s.args = vec!["a".into(), "b".into(), "c\0".into()],
            "args[2]",
            "NUL",
        ),
        (
            |s| {
                s.env.insert("FOO".into(), "a\0b".into());
            },
            "env.FOO",
            "\"a\\0b\" contains a NUL byte",
        ),
        (
            |s| {
                s.env.insert("A=B".into(), "x".into());
            },
            "env",
            "contains '='",
        ),
        (
            |s| {
                s.env.insert("A\0".into(), "x".into());
            },
            "env",
            "NUL",
        ),
        (
            |s| {
                s.env.insert("K".repeat(300), "x".into());
            },
            "env",
            "is too long",
        ),
        (
            |s| {
                s.env.insert("BIG".into(), "v".repeat(MAX_ARG_BYTES));
            },
            "env.BIG",
            "more than the limit of 131067",
        ),
        (|s| s.cwd = Some("/tmp\0".into()), "cwd", "NUL"),
        (
            |s| s.instance_var = Some("I\0D".into()),
            "instance_var",
            "NUL",
        ),
        (
            |s| s.supervision.user = Some("ro\0ot".into()),
            "user",
            "NUL",
        ),
        (
            |s| s.supervision.group = Some("a:b".into()),
            "group",
            "not a user or group",
        ),
        (
            |s| s.args = vec!["a".repeat(MAX_ARG_BYTES + 1)],
            "args[0]",
            "bytes, more than",
        ),
        (
            |s| {
                s.shell = true;
                s.args = vec!["a".repeat(MAX_ARG_BYTES / 2), "b".repeat(MAX_ARG_BYTES / 2)];
            },
            "args",
            "shell command line",
        ),
        (
            |s| s.restart_delay = Duration::from_millis(u64::MAX),
            "restart_delay",
            "maximum of 1h",
        ),
        (
            |s| s.kill_timeout = Duration::from_secs(3601),
            "kill_timeout",
            "maximum of 1h",
        ),
        (
            |s| s.reschedule = Reschedule::After(Duration::from_secs(90_000)),
            "reschedule_after",
            "never",
        ),
        (
            |s| s.supervision.min_uptime = Duration::MAX,
            "min_uptime",
            "maximum",
        ),
        (
            |s| s.supervision.restart_window = Duration::MAX,
            "restart_window",
            "maximum",
        ),
        (
            |s| s.supervision.restart_backoff_max = Duration::MAX,
            "restart_backoff_max",
            "maximum",
        ),
        (
            |s| s.supervision.listen_timeout = Duration::MAX,
            "listen_timeout",
            "maximum",
        ),
        (
            |s| {
                s.supervision.health_check = Some(crate::supervise::HealthCheck {
                    probe: crate::supervise::Probe::Tcp,
                    interval: Duration::from_secs(7200),
                    timeout: Duration::from_secs(1),
                    retries: 1,
                    restart_unhealthy: true,
                });
            },
            "health_check.interval",
            "maximum of 1h",
        ),
        (
            |s| {
                s.supervision.health_check = Some(crate::supervise::HealthCheck {
                    probe: crate::supervise::Probe::Exec {
                        command: "true\0".into(),
                    },
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                    retries: 1,
                    restart_unhealthy: true,
                });
            },
            "health_check.command",
            "NUL",
        ),
        (
            |s| s.update.shutdown_delay = Duration::from_secs(7200),
            "update.shutdown_delay",
            "maximum of 1h",
        ),
        (
            |s| {
                s.update.healthy_deadline = Duration::MAX;
                s.update.progress_deadline = Duration::MAX;
            },
            "update.healthy_deadline",
            "maximum of 1day",
        ),
        (
            |s| {
                let mut a = crate::autoscale::AutoscalePolicy::new(1, 2, 50.0);
                a.down_stabilization = Duration::from_millis(u64::MAX);
                s.autoscale = Some(a);
            },
            "autoscale.down_stabilization",
            "maximum of 1day",
        ),
        (
            |s| s.placement.constraints = vec![Constraint::Eq("zone".into(), "v".repeat(300))],
            "placement.constraints",
            "more than the limit of 256",
        ),
        (
            |s| s.name = "n".repeat(1 << 20),
            "name",
            "… (1048576 bytes) is not a valid app name",
        ),
    ];
    for (change, field, words) in cases {
        let mut spec = AppSpec::new("web", "node", &["server.js"]);
        change(&mut spec);
        let err = spec.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(words), "{field}: {}", err.message);
        // However big the value, the message stays short.
        assert!(
            err.to_string().len() < 400,
            "{field}: {} bytes",
            err.to_string().len()
        );
    }
}
