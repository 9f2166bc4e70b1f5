//! Reliability regressions: see the module doc of `reliability`. Input that no program could use
//! (items 9-11): refused up front through the CLI and through gRPC, naming the field, with a
//! message that stays short whatever the size of the value.

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_client::ClusterClient;
use pmcluster_tests::Cluster;
use tonic::Code;

/// Longest refusal a test accepts, in bytes: a few lines, however big the input was.
const SHORT: usize = 2048;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Writes `text` as `name` in the cluster's directory; returns the path.
fn config(c: &Cluster, name: &str, text: &str) -> String {
    let dir = c.root().join("configs");
    std::fs::create_dir_all(&dir).expect("create the config dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a config file");
    path.display().to_string()
}

/// `ApplyApp` of `spec` must fail with `code`; returns the message.
async fn refused(
    client: &mut ClusterClient<tonic::transport::Channel>,
    spec: pb::AppSpec,
) -> tonic::Status {
    client
        .apply_app(pb::ApplyAppRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .expect_err("the spec is refused")
}

fn spec(name: &str) -> pb::AppSpec {
    pb::AppSpec {
        name: name.into(),
        script: "sleep".into(),
        args: vec!["600".into()],
        instances: 1,
        ..Default::default()
    }
}

/// No app was stored by the refused calls.
fn no_apps(c: &Cluster) {
    let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
    let apps = apps.expect("apps -o json is JSON");
    assert_eq!(apps.as_array().map(Vec::len), Some(0), "{apps}");
}

/// Issue 9, item 9: a NUL in an env value was accepted, and the agent then retried the start
/// forever; a NUL in the script was reported as `args`.
#[test]
fn issue9_nul_in_env_value_is_refused_naming_the_field() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let cases = [
        (r#""env": {"X": "a\u0000b"}"#, "env.X"),
        (r#""args": ["a", "b", "c\u0000"]"#, "args[2]"),
        (r#""cwd": "/tmp\u0000""#, "cwd"),
        (r#""env": {"A=B": "1"}"#, "env"),
    ];
    for (i, (field_json, field)) in cases.iter().enumerate() {
        let path = config(
            &c,
            &format!("nul-{i}.json"),
            &format!(r#"{{"name": "nul", "script": "sleep", {field_json}}}"#),
        );
        let out = c.try_cli(&["apply", "-f", &path]).expect("the cli runs");
        let stderr = out.assert_failed();
        assert!(stderr.contains(&format!("{field}: ")), "{field}: {out}");
    }
    let path = config(
        &c,
        "nul-script.json",
        r#"{"name": "nul", "script": "sle\u0000ep"}"#,
    );
    let out = c.try_cli(&["apply", "-f", &path]).expect("the cli runs");
    assert!(out.assert_failed().contains("script: "), "{out}");

    runtime().block_on(async {
        let mut client = ClusterClient::connect(c.url())
            .await
            .expect("connect to the coordinator");
        let mut nul_env = spec("nul");
        nul_env.env.insert("X".into(), "a\0b".into());
        let err = refused(&mut client, nul_env).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("env.X: "), "{err:?}");
        assert!(err.message().contains("NUL"), "{err:?}");
        let mut nul_script = spec("nul");
        nul_script.script = "sle\0ep".into();
        let err = refused(&mut client, nul_script).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("script: "), "{err:?}");
        let mut eq_key = spec("nul");
        eq_key.env.insert("A=B".into(), "1".into());
        let err = refused(&mut client, eq_key).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("contains '='"), "{err:?}");
    });
    no_apps(&c);
}

/// Issue 9, item 10: error messages repeated the whole invalid value, so a 1 MB name came back
/// as RESOURCE_EXHAUSTED (the message no longer fit in a header) instead of INVALID_ARGUMENT.
#[test]
fn issue9_huge_name_is_invalid_argument_with_a_short_message() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let huge = "n".repeat(1 << 20);
    runtime().block_on(async {
        let mut client = ClusterClient::connect(c.url())
            .await
            .expect("connect to the coordinator");
        let err = refused(&mut client, spec(&huge)).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < SHORT, "{} bytes", err.message().len());
        assert!(err.message().starts_with("name: "), "{}", err.message());
        assert!(
            err.message().contains("(1048576 bytes)"),
            "{}",
            err.message()
        );

        // A huge value in any field, and a lookup by a huge name.
        let mut big_key = spec("web");
        big_key.env.insert("K".repeat(1 << 20), "v".into());
        let err = refused(&mut client, big_key).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < SHORT, "{} bytes", err.message().len());
        let err = client
            .get_app(pb::GetAppRequest { name: huge.clone() })
            .await
            .expect_err("no app can have that name");
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().starts_with("app: \"nnn"), "{}", err.message());
        assert!(err.message().len() < SHORT, "{} bytes", err.message().len());
        let err = client
            .scale(pb::ScaleRequest {
                app: huge.clone(),
                instances: 2,
                relative: false,
            })
            .await
            .expect_err("no app can have that name");
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < SHORT, "{} bytes", err.message().len());
    });

    // The CLI's own checks cut the value too.
    let path = config(
        &c,
        "huge-name.json",
        &format!(r#"{{"name": "{huge}", "script": "sleep"}}"#),
    );
    let out = c.try_cli(&["apply", "-f", &path]).expect("the cli runs");
    let stderr = out.assert_failed();
    assert!(stderr.len() < SHORT, "{} bytes of stderr", stderr.len());
    assert!(stderr.contains("name: "), "{stderr}");
    no_apps(&c);
}

/// Issue 9, item 11: durations up to 2^64-1 ms were accepted, and shown as "restarting in
/// 5124095576030h".
#[test]
fn issue9_huge_durations_are_refused_naming_the_field() {
    let c = Cluster::start(0).expect("a coordinator starts");
    let path = config(
        &c,
        "huge-delay.json",
        r#"{"name": "slow", "script": "sleep", "restart_delay": "5124095576030h"}"#,
    );
    let out = c.try_cli(&["apply", "-f", &path]).expect("the cli runs");
    let stderr = out.assert_failed();
    assert!(
        stderr.contains("restart_delay: ") && stderr.contains("is more than the maximum of 1h"),
        "{out}"
    );
    let out = c
        .try_cli(&[
            "start",
            "sleep 600",
            "--name",
            "slow",
            "--kill-timeout",
            "9999h",
        ])
        .expect("the cli runs");
    let stderr = out.assert_failed();
    assert!(
        stderr.contains("--kill-timeout: ") && stderr.contains("maximum of 1h"),
        "{out}"
    );

    runtime().block_on(async {
        let mut client = ClusterClient::connect(c.url())
            .await
            .expect("connect to the coordinator");
        type Change = fn(&mut pb::AppSpec);
        let cases: [(Change, &str); 5] = [
            (|s| s.restart_delay_ms = u64::MAX, "restart_delay: "),
            (|s| s.kill_timeout_ms = Some(u64::MAX), "kill_timeout: "),
            (
                |s| s.reschedule_after_ms = Some(u64::MAX),
                "reschedule_after: ",
            ),
            (
                |s| s.restart_backoff_max_ms = Some(u64::MAX),
                "restart_backoff_max: ",
            ),
            (
                |s| {
                    s.update = Some(pb::UpdatePolicy {
                        shutdown_delay_ms: u64::MAX,
                        ..Default::default()
                    })
                },
                "update.shutdown_delay: ",
            ),
        ];
        for (change, field) in cases {
            let mut s = spec("slow");
            change(&mut s);
            let err = refused(&mut client, s).await;
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(err.message().starts_with(field), "{field}: {err:?}");
            assert!(err.message().contains("maximum"), "{field}: {err:?}");
        }
    });
    no_apps(&c);
}
