//! Bad input is refused with a message that names the problem, and nothing is half-applied.

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_client::ClusterClient;
use pmcluster_tests::{Cluster, free_port_range, render};
use serde_json::{Value, json};
use tonic::Code;

/// A refused command: the args, the exit code it must give (`None`: any non-zero) and words its
/// stderr must contain.
struct Refused<'a> {
    args: Vec<&'a str>,
    code: Option<i32>,
    says: &'a [&'a str],
}

fn refused<'a>(args: &[&'a str], code: Option<i32>, says: &'a [&'a str]) -> Refused<'a> {
    Refused {
        args: args.to_vec(),
        code,
        says,
    }
}

/// Every app as `apps -o json` shows it, without the instance counts that change as instances
/// come and go.
fn stored_apps(c: &Cluster) -> Vec<Value> {
    let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
    let apps = apps.expect("apps -o json is JSON");
    apps.as_array()
        .expect("apps -o json is an array")
        .iter()
        .map(|a| {
            json!({
                "name": a["name"], "version": a["version"],
                "updated_at_ms": a["updated_at_ms"], "spec": a["spec"],
            })
        })
        .collect()
}

#[test]
fn bad_input() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let web = c
        .start_app("web", 2)
        .online()
        .expect("web starts")
        .instances;
    let testapp = c.testapp().display().to_string();
    let apps_before = stored_apps(&c);
    assert_eq!(apps_before.len(), 1, "{apps_before:?}");

    let dir = c.root().join("bad-input");
    std::fs::create_dir_all(&dir).expect("create the config dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a config file");
        path.display().to_string()
    };
    let unknown_field = write(
        "unknown-field.json",
        r#"{"apps": [{"name": "typo", "script": "sleep", "args": ["600"], "instancez": 2}]}"#,
    );
    let malformed = write(
        "malformed.json",
        r#"{"apps": [{"name": "broken", "script": "sleep""#,
    );
    // Two apps, each with a bad value: each is refused, naming it (an app of the file that is
    // fine would be applied: `apply` refuses an app alone, as `kubectl apply` does).
    let second_bad = write(
        "second-bad.json",
        r#"{"apps": [
            {"name": "first-bad", "script": "sleep", "instances": -1},
            {"name": "second-bad", "script": "sleep", "instances": 3, "port": "30000-30001"}
        ]}"#,
    );
    // A user trial found these constraints accepted, each leaving its app pending for ever, and
    // `instances = 1e3` refused as "1000 is neither a whole number ...".
    let bad_constraints = write(
        "bad-constraints.yaml",
        "apps:\n  - name: placed\n    script: sleep\n    args: [\"600\"]\n    placement:\n      \
         constraints: [\"zone=n1\", \"zone=n1,zone=n2\"]\n",
    );
    let float_count = write(
        "float-count.toml",
        "name = \"floaty\"\nscript = \"sleep\"\nargs = [\"600\"]\ninstances = 1e3\n",
    );
    let small_base = free_port_range(2).expect("two free ports");
    let small_range = format!("{small_base}-{}", small_base + 1);

    let cases = [
        // web has 2: a change below 0 is refused by the coordinator, naming what is left.
        refused(
            &["scale", "web", "-5"],
            Some(2),
            &["web has 2; -5 would leave -3"],
        ),
        refused(&["scale", "web", "-1.5"], Some(2), &["\"-1.5\"", "+N / -N"]),
        refused(&["scale", "web", "abc"], Some(2), &["abc"]),
        refused(
            &["scale", "web", "99999999999"],
            Some(2),
            &["\"99999999999\": too large, the limit is 100000"],
        ),
        refused(&["scale", "nosuchapp", "3"], None, &["nosuchapp"]),
        // The range of web holds two ports.
        refused(&["scale", "web", "3"], Some(2), &["port"]),
        refused(&["apply", "-f", &unknown_field], Some(2), &["instancez"]),
        refused(&["apply", "-f", &malformed], Some(2), &["malformed.json"]),
        refused(
            &["apply", "-f", &second_bad],
            Some(2),
            &["port", "second-bad", "instances", "first-bad"],
        ),
        refused(&["start", ""], Some(2), &["command"]),
        refused(
            &["start", "x", "--name", "w", "--port", "30x0"],
            Some(2),
            &["port", "30x0"],
        ),
        refused(
            &[
                "start",
                &testapp,
                "--name",
                "small",
                "--instances",
                "3",
                "--port",
                &small_range,
            ],
            Some(2),
            &["port", "instances"],
        ),
        // `start` of a command line never changes an app that exists: it would reset every flag
        // left out (web's instances and ports here).
        refused(
            &["start", "sleep", "--name", "web", "--", "100"],
            Some(2),
            &[
                "--name web: an app of that name already exists with another spec",
                "args, instances, port, script",
                "pmcluster reload web",
                "pmcluster apply -f FILE",
                "pmcluster start web",
                "pmcluster delete web",
            ],
        ),
        refused(
            &["start", &testapp, "--name", "web", "--instances", "2"],
            Some(2),
            &["already exists", "(it differs in port)"],
        ),
        refused(
            &[
                "start",
                "sleep 1",
                "--name",
                "x",
                "--constraint",
                "zone in (a,b",
            ],
            Some(2),
            &[
                "--constraint: \"zone in (a,b\" has a \"(\" without a \")\"",
                "key in (a,b)",
            ],
        ),
        refused(
            &["start", "sleep 1", "--name", "x", "--constraint", "zone=="],
            Some(2),
            &["--constraint: \"zone==\"", "\"==\" is not an operator"],
        ),
        refused(
            &[
                "start",
                "sleep 1",
                "--name",
                "x",
                "--constraint",
                "zone=a b",
            ],
            Some(2),
            &["--constraint: \"zone=a b\" has whitespace in its value"],
        ),
        refused(
            &[
                "start",
                "sleep 1",
                "--name",
                "x",
                "--constraint",
                "zone=n1,zone=n2",
            ],
            Some(2),
            &[
                "--constraint: \"zone=n1,zone=n2\" has ','",
                "write key in (a,b)",
            ],
        ),
        refused(
            &[
                "start",
                "sleep 1",
                "--name",
                "x",
                "--constraint",
                "zone != ",
            ],
            Some(2),
            &["--constraint: \"zone !=\" has no value after \"!=\""],
        ),
        refused(
            &["apply", "-f", &bad_constraints],
            Some(2),
            &[
                "placed",
                "placement.constraints",
                "\"zone=n1,zone=n2\" has ','",
            ],
        ),
        refused(
            &["apply", "-f", &float_count],
            Some(2),
            &["instances: 1000.0 is a float; write the whole number 1000, or \"max\""],
        ),
        refused(&["stop", "nosuchapp"], None, &["nosuchapp"]),
        refused(&["delete", "nosuchapp"], None, &["nosuchapp"]),
        refused(&["logs", "nosuchapp"], None, &["nosuchapp"]),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let out = c.cli(&case.args);
        let code_ok = match case.code {
            Some(want) => out.code() == Some(want),
            None => !out.success(),
        };
        let missing: Vec<&str> = case
            .says
            .iter()
            .filter(|w| !out.stderr.contains(**w))
            .copied()
            .collect();
        if !code_ok || !missing.is_empty() {
            failures.push(format!(
                "want exit {:?} and stderr naming {:?}, got {out}",
                case.code.map_or("non-zero".to_string(), |c| c.to_string()),
                case.says
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));

    // Nothing was half-applied: only web, with the same version and spec, and the same processes.
    assert_eq!(stored_apps(&c), apps_before);
    let now = c.instances("").expect("list");
    assert_eq!(now.len(), 2, "{}", render(&now));
    for (a, b) in web.iter().zip(&now) {
        assert_eq!(
            (a.index, a.pid, a.port),
            (b.index, b.pid, b.port),
            "{}",
            render(&now)
        );
    }

    // The API itself, without the CLI's own checks.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let mut client = ClusterClient::connect(c.url())
            .await
            .expect("connect to the coordinator");
        let scale = |app: &str, instances: i64| pb::ScaleRequest {
            app: app.to_string(),
            instances,
            relative: false,
        };
        let err = client
            .scale(scale("web", -1))
            .await
            .expect_err("scale to -1 is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("instances"), "{err:?}");
        let err = client
            .scale(scale("nosuchapp", 1))
            .await
            .expect_err("scaling an unknown app is refused");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains("nosuchapp"), "{err:?}");
        // Only a restart rolls: a start or stop asked to roll is refused, not done plainly.
        let rolling = pb::InstanceTarget {
            app: "web".into(),
            index: None,
            rolling: true,
        };
        let err = client
            .start(rolling.clone())
            .await
            .expect_err("a rolling start is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("rolling:"), "{err:?}");
        let err = client
            .stop(rolling)
            .await
            .expect_err("a rolling stop is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = client
            .get_app(pb::GetAppRequest {
                name: "nosuchapp".into(),
            })
            .await
            .expect_err("an unknown app is not found");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains("nosuchapp"), "{err:?}");
        // A name no app can have is bad input, not a missing app.
        let err = client
            .get_app(pb::GetAppRequest { name: "a/b".into() })
            .await
            .expect_err("no app can be named a/b");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("app: \"a/b\" is not a valid app name"),
            "{err:?}"
        );
        let err = client
            .apply_app(pb::ApplyAppRequest {
                spec: Some(pb::AppSpec {
                    name: "bad name!".into(),
                    script: "sleep".into(),
                    instances: 1,
                    ..Default::default()
                }),
                keep_instances: false,
            })
            .await
            .expect_err("a bad app name is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("name"), "{err:?}");
        // The coordinator refuses a malformed constraint itself, as the CLI does.
        let err = client
            .apply_app(pb::ApplyAppRequest {
                spec: Some(pb::AppSpec {
                    name: "placed".into(),
                    script: "sleep".into(),
                    instances: 1,
                    placement: Some(pb::Placement {
                        constraints: vec!["zone=n1,zone=n2".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                keep_instances: false,
            })
            .await
            .expect_err("a malformed constraint is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("placement.constraints: \"zone=n1,zone=n2\" has ','"),
            "{err:?}"
        );
        let err = client
            .apply_app(pb::ApplyAppRequest {
                spec: None,
                keep_instances: false,
            })
            .await
            .expect_err("a missing spec is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        // A new autoscaling policy keeps one instance at least: none would report nothing to
        // scale up from again. Checked before the app is looked up.
        let err = client
            .set_autoscale(pb::SetAutoscaleRequest {
                app: "placed".into(),
                policy: Some(pb::Autoscale {
                    enabled: true,
                    min: 0,
                    max: 4,
                    cpu_threshold: 70.0,
                    ..Default::default()
                }),
            })
            .await
            .expect_err("an autoscale min of 0 is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("autoscale.min: must be at least 1"),
            "{err:?}"
        );
        // A page token is one a reply gave: a made-up one is refused, not read as a position.
        for token in ["web", "not a token", "app/bad name"] {
            let err = client
                .list_apps(pb::ListAppsRequest {
                    page_size: 0,
                    page_token: token.into(),
                })
                .await
                .expect_err("a made-up app page token is refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{token}: {err:?}");
            assert!(err.message().starts_with("page_token:"), "{err:?}");
            let err = client
                .list_instances(pb::ListInstancesRequest {
                    app: String::new(),
                    page_size: 0,
                    page_token: token.into(),
                })
                .await
                .expect_err("a made-up instance page token is refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{token}: {err:?}");
            assert!(err.message().starts_with("page_token:"), "{err:?}");
        }
        // One of a reply's form is taken, whether or not its app is still there.
        for (token, apps) in [("app/web", 0), ("app/a-deleted-app", 1)] {
            let reply = client
                .list_apps(pb::ListAppsRequest {
                    page_size: 0,
                    page_token: token.into(),
                })
                .await
                .expect("a token of a reply's form is taken")
                .into_inner();
            assert_eq!(reply.apps.len(), apps, "{token}: {reply:?}");
        }
    });
    assert_eq!(stored_apps(&c), apps_before);
}

/// `start` of a command line with `--name` of an app that has that very spec starts it as it is
/// (one a user stopped comes back), as `start APP` does; neither changes its version. One that
/// runs already is said to, rather than "started".
#[test]
fn start_of_the_same_spec_starts_the_app_as_it_is() {
    let c = Cluster::start(1).expect("coordinator and one agent start");
    let line = ["start", "sleep 600", "--name", "idle", "--instances", "2"];
    c.cli(&line).assert_ok();
    let first = c.wait_online("idle", 2).expect("idle starts");
    c.remember_pids(&first.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    let version = || stored_apps(&c)[0]["version"].clone();
    let before = version();

    let out = c.cli(&line);
    out.assert_ok();
    assert!(
        out.stdout
            .contains("idle is already running (2 instances, version ")
            && out.stdout.contains("); nothing changed"),
        "{out}"
    );
    assert!(!out.stdout.contains("started"), "{out}");
    let out = c.cli(&["start", "idle"]);
    out.assert_ok();
    assert!(
        out.stdout
            .contains("idle is already running (2 instances); nothing changed"),
        "{out}"
    );
    c.cli(&["stop", "idle"]).assert_ok();
    let out = c.cli(&[&line[..], &["--wait"]].concat());
    out.assert_ok();
    assert!(out.stdout.contains("spec unchanged"), "{out}");
    assert!(out.stdout.contains("idle: 2 up after"), "{out}");
    c.cli(&["stop", "idle"]).assert_ok();
    let out = c.cli(&["start", "idle", "--wait"]);
    out.assert_ok();
    assert!(out.stdout.contains("started 2 instances of idle"), "{out}");
    let now = c.wait_online("idle", 2).expect("idle runs");
    c.remember_pids(&now.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    assert_eq!(version(), before);
    // Scaled since: the same line starts it with the count it has (a script that runs `start`
    // then `scale` runs again).
    c.cli(&["scale", "idle", "3", "--wait"]).assert_ok();
    let out = c.cli(&line);
    out.assert_ok();
    assert!(
        out.stdout
            .contains("idle is already running (3 instances, version ")
            && out
                .stdout
                .contains("nothing changed: it keeps its count and policies"),
        "{out}"
    );
    let now = c.wait_online("idle", 3).expect("idle keeps 3");
    c.remember_pids(&now.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    assert_eq!(version(), before);
}

/// `PMCLUSTER_INSECURE` set empty or to a no is off, as the agent's switches are: the
/// coordinator refuses a plaintext non-loopback address for the usual reason (exit 64, naming
/// --insecure), where clap used to refuse the variable itself and no value but "true" started it.
/// Nothing is bound: the refusal comes before the listener.
#[test]
fn an_insecure_variable_set_empty_or_no_is_off() {
    let coordinator = pmcluster_tests::binary(pmcluster_tests::COORDINATOR_BIN).expect("built");
    let root = tempfile::tempdir().expect("a temporary directory");
    for value in ["", "0", "no", "off"] {
        let out = pmcluster_tests::run_bounded(
            std::process::Command::new(&coordinator)
                .args(["--listen", "0.0.0.0:0", "--data-dir"])
                .arg(root.path().join("data"))
                .env("PMCLUSTER_INSECURE", value),
            root.path(),
            "coordinator",
            &["--listen", "0.0.0.0:0"],
            crate::DEADLINE,
        )
        .expect("the coordinator runs");
        assert_eq!(out.code(), Some(64), "PMCLUSTER_INSECURE={value:?}: {out}");
        assert!(
            out.stderr
                .contains("or --insecure to serve plaintext anyway"),
            "PMCLUSTER_INSECURE={value:?}: {out}"
        );
    }
}

/// Startup flags the operator must fix exit 64 with the flag named, before anything is served:
/// a coordinator's `--tls-cert` that holds no certificate exited 1, like a crash, and `--metrics-listen` on
/// the `--listen` address said another process held the port (the coordinator's own metrics
/// listener did).
#[test]
fn daemons_with_unusable_tls_files_or_one_address_twice_exit_64() {
    let coordinator = pmcluster_tests::binary(pmcluster_tests::COORDINATOR_BIN).expect("built");
    let root = tempfile::tempdir().expect("a temporary directory");
    let not_pem = root.path().join("not.pem");
    std::fs::write(&not_pem, "root:x:0:0:root:/root:/bin/bash\n").expect("write not.pem");
    let not_pem = not_pem.display().to_string();
    let port = pmcluster_tests::free_port_range(1).expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                &not_pem,
                "--tls-key",
                &not_pem,
                "--client-ca",
                &not_pem,
            ],
            "--tls-cert",
        ),
        (
            &["--listen", &addr, "--metrics-listen", &addr],
            "is the --listen address too",
        ),
    ];
    for (args, said) in cases {
        let out = pmcluster_tests::run_bounded(
            std::process::Command::new(&coordinator)
                .args(args)
                .arg("--data-dir")
                .arg(root.path().join("data")),
            root.path(),
            "coordinator",
            args,
            crate::DEADLINE,
        )
        .expect("the coordinator runs");
        assert_eq!(out.code(), Some(64), "{args:?}: {out}");
        assert!(out.stderr.contains(said), "{args:?}: {out}");
    }
    // The agent read the files but left their contents to its first dial, which failed as a
    // "transport error" on every retry, forever.
    let agent = pmcluster_tests::binary(pmcluster_tests::AGENT_BIN).expect("built");
    let coordinator_url = format!("https://{addr}");
    let args = [
        "--coordinator",
        &coordinator_url,
        "--node-name",
        "n1",
        "--tls-cert",
        &not_pem,
        "--tls-key",
        &not_pem,
        "--ca",
        &not_pem,
        "--no-cgroups",
    ];
    let out = pmcluster_tests::run_bounded(
        std::process::Command::new(&agent)
            .args(args)
            .arg("--data-dir")
            .arg(root.path().join("agent")),
        root.path(),
        "agent",
        &args,
        crate::DEADLINE,
    )
    .expect("the agent runs");
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(
        out.stderr.contains("--tls-cert") && out.stderr.contains("holds no PEM certificate"),
        "{out}"
    );
}
