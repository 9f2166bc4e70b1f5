//! The `pmcluster` binary against a fake in-memory `Cluster` server: what each verb prints and
//! which exit code it gives, for successes, coordinator errors and bad input.
//!
//! The fake implements just enough of the contract (apps, instances derived from them, one node,
//! canned logs and events) to exercise the client; the real coordinator has its own tests.

mod fake;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use fake::*;
use pmcluster_proto::v1 as pb;

/// A stop or restart that reaches a quarantined node says so beside its count: nothing happens
/// there until the node is adopted.
#[tokio::test]
async fn an_action_on_a_quarantined_node_says_it_waits_for_adoption() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    check(a, &["start", "app", "--name", "web", "-i", "2"], 0, "", "").await?;
    fake.lock().quarantined_nodes = vec!["node-b".into()];
    check(
        a,
        &["restart", "web"],
        0,
        "restarted 2 instances of web\nnode node-b is quarantined: its instances restart once it \
         is adopted (`pmcluster nodes adopt node-b`; `pmcluster nodes` says why)\n",
        "",
    )
    .await?;
    let stopped = check(a, &["stop", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&stopped.stdout)?;
    assert_eq!(json["quarantined_nodes"][0], "node-b", "{json}");
    check(
        a,
        &["start", "web"],
        0,
        "node node-b is quarantined: its instances start once it is adopted",
        "",
    )
    .await?;
    fake.lock().quarantined_nodes.clear();
    let started = check(
        a,
        &["restart", "web"],
        0,
        "restarted 2 instances of web\n",
        "",
    )
    .await?;
    assert!(
        !started.stdout.contains("quarantined"),
        "{}",
        started.stdout
    );
    Ok(())
}

#[tokio::test]
async fn app_lifecycle() -> anyhow::Result<()> {
    let a = &serve().await?;
    let start = [
        "start",
        "node server.js",
        "--name",
        "web",
        "-i",
        "2",
        "--port",
        "3000-3001",
    ];
    check(
        a,
        &start,
        0,
        "started app web: 2 instances (version 1)\n",
        "",
    )
    .await?;
    // Running with this very spec: said so, rather than "started".
    let again = check(
        a,
        &start,
        0,
        "web is already running (2 instances, version 1); nothing changed\n",
        "",
    )
    .await?;
    assert!(!again.stdout.contains("started"), "{}", again.stdout);
    check(a, &["list"], 0, "APP  INDEX  NODE", "").await?;
    let listed = check(a, &["ls", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json[1]["port"], 3001);
    assert_eq!(json[1]["status"], "online");
    assert_eq!(json[1]["index"], 1);
    // The coordinator refuses the count: INVALID_ARGUMENT is bad input, exit 2.
    check(
        a,
        &["scale", "web", "4"],
        2,
        "",
        "error: port: 3000-3001 holds 2 ports",
    )
    .await?;
    check(a, &["scale", "web", "1"], 0, "scaled web: 2 -> 1\n", "").await?;
    check(
        a,
        &["stop", "web", "--instance", "0"],
        0,
        "stopped web[0]\n",
        "",
    )
    .await?;
    check(a, &["ps"], 0, "stopped", "").await?;
    // The command line again (its count was scaled since): what was stopped is started.
    check(
        a,
        &start,
        0,
        "started app web: 1 instance (version 1, its count and policies as they are",
        "",
    )
    .await?;
    check(
        a,
        &start,
        0,
        "web is already running (1 instance, version 1); nothing changed: it keeps its count and \
         policies",
        "",
    )
    .await?;
    check(
        a,
        &["stop", "web", "--wait"],
        0,
        "stopped 1 instance of web\nweb: 1 stopped after ",
        "",
    )
    .await?;
    let json = check(a, &["stop", "web", "--wait", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["wait"]["stopped"], 1, "{json}");
    check(a, &["start", "web"], 0, "started 1 instance of web\n", "").await?;
    check(
        a,
        &["start", "web"],
        0,
        "web is already running (1 instance); nothing changed\n",
        "",
    )
    .await?;
    check(
        a,
        &["start", "web", "--instance", "0"],
        0,
        "web[0] is already running; nothing changed\n",
        "",
    )
    .await?;
    let json = check(a, &["start", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["already_running"], true, "{json}");
    assert_eq!(json["action"], "none", "{json}");
    check(
        a,
        &["restart", "web"],
        0,
        "restarted 1 instance of web\n",
        "",
    )
    .await?;
    check(a, &["info", "web"], 0, "version:        1", "").await?;
    let info = check(a, &["describe", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&info.stdout)?;
    assert_eq!(json["app"]["spec"]["port"], "3000-3001", "{json}");
    assert_eq!(json["instances"][0]["app"], "web", "{json}");
    check(a, &["apps"], 0, "web        1     1/1", "").await?;
    check(a, &["nodes"], 0, "node-a  ready", "").await?;
    check(
        a,
        &["logs", "web"],
        0,
        "web[0] | hello 0\nweb[0] err| oops 0\n",
        "",
    )
    .await?;
    check(a, &["logs", "web", "--raw"], 0, "hello 0\noops 0\n", "").await?;
    // A partial answer prints all it got, then fails: an instance's logs were not read.
    check(
        a,
        &["logs", "half"],
        1,
        "half[0] | hello 0\nhalf[1] | [pmcluster] node node-b is not connected: no logs of \
         half[1]\n",
        "error: some logs of half were not read: see the notice above\n",
    )
    .await?;
    let json = check(a, &["logs", "half", "-o", "json"], 1, "", "").await?;
    assert!(
        json.stdout.contains(r#""unread":true"#) && json.stdout.contains(r#""unread":false"#),
        "{}",
        json.stdout
    );
    check(a, &["events"], 0, "instance.state   web[1]", "").await?;
    // A derived name must not replace an unrelated app of that name.
    check(
        a,
        &["start", "web --other"],
        2,
        "",
        "an app named \"web\" already exists",
    )
    .await?;
    check(
        a,
        &["delete", "web"],
        0,
        "deleted web: 1 instance removed\n",
        "",
    )
    .await?;
    check(a, &["list"], 0, "no instances; start one with", "").await?;
    check(a, &["list", "-o", "json"], 0, "[]", "").await?;
    Ok(())
}

#[tokio::test]
async fn coordinator_errors() -> anyhow::Result<()> {
    let a = &serve().await?;
    check(
        a,
        &["stop", "nope"],
        1,
        "",
        "error: app \"nope\" not found\n",
    )
    .await?;
    check(a, &["info", "nope"], 1, "", "app \"nope\" not found").await?;
    check(
        a,
        &["start", "nope"],
        1,
        "",
        "give it a name: pmcluster start nope --name NAME",
    )
    .await?;
    check(a, &["logs", "nope"], 1, "", "app \"nope\" not found").await?;
    // Not a watch of nothing: the error and exit code `info` gives. A deleted app's events are
    // still there to read.
    check(
        a,
        &["events", "nope"],
        1,
        "",
        "error: app \"nope\" not found\n",
    )
    .await?;
    check(
        a,
        &["monit", "nope"],
        1,
        "",
        "error: app \"nope\" not found\n",
    )
    .await?;
    check(a, &["events", "gone", "--no-follow"], 0, "gone[1]", "").await?;
    // Bad input never reaches the coordinator.
    check(
        a,
        &["scale", "web", "-1.5"],
        2,
        "",
        "invalid instance count \"-1.5\"",
    )
    .await?;
    Ok(())
}

#[tokio::test]
/// Every app of a file is validated before any is sent; one with a bad value is refused by name
/// and field while the others are applied, and the command fails at the end.
async fn apply_validates_everything_before_sending() -> anyhow::Result<()> {
    let a = &serve().await?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("apps.yaml");
    std::fs::write(
        &good,
        "apps:\n  - name: web\n    script: node\n    args: [server.js]\n    instances: 4\n    port: 3000-3003\n  - name: worker\n    script: python\n",
    )?;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"apps": [{"name": "api", "script": "node"}, {"name": "w2", "script": "x", "port": "30x0"}]}"#,
    )?;
    let bad_path = bad.to_string_lossy().into_owned();
    let refused = check(
        a,
        &["apply", "-f", &bad_path],
        2,
        "api: created (version 1, 1 instance)\n",
        "app \"w2\": port: \"30x0\" is not a port number",
    )
    .await?;
    assert!(
        refused
            .stderr
            .contains("1 of 2 apps not applied (w2), the others applied"),
        "{}",
        refused.stderr
    );
    let listed = check(a, &["apps"], 0, "api", "").await?;
    assert!(!listed.stdout.contains("w2"), "{}", listed.stdout);
    // With no app valid, nothing is sent.
    std::fs::write(
        &bad,
        r#"{"apps": [{"name": "w3", "script": "x", "port": "30x0"}, {"name": "w4", "script": "x", "instances": "max5"}]}"#,
    )?;
    let none = check(a, &["apply", "-f", &bad_path], 2, "", "app \"w3\": port:").await?;
    assert!(
        none.stderr.contains("app \"w4\": instances:"),
        "{}",
        none.stderr
    );
    assert!(none.stdout.is_empty(), "{}", none.stdout);
    let good_path = good.to_string_lossy().into_owned();
    check(
        a,
        &["apply", "-f", &good_path],
        0,
        "web: created (version 1, 4 instances)\nworker: created (version 1, 1 instance)\n",
        "",
    )
    .await?;
    check(
        a,
        &["apply", "-f", &good_path],
        0,
        "web: unchanged (version 1)\n",
        "",
    )
    .await?;
    let from_stdin = run(
        a,
        &["apply", "-f", "-", "--format", "toml"],
        Some("name = \"web\"\nscript = \"node\"\nargs = [\"server.js\"]\ninstances = 2\nport = \"3000-3003\"\n"),
    )
    .await?;
    assert_eq!(from_stdin.code, 0, "{}", from_stdin.stderr);
    assert_eq!(
        from_stdin.stdout,
        "web: configured (version 2, 2 instances)\n"
    );
    check(
        a,
        &["apply", "-f", "/no/such/file.json"],
        2,
        "",
        "cannot read /no/such/file.json",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn closed_stdout_exits_zero() -> anyhow::Result<()> {
    let a = serve().await?;
    let bin = BIN.to_string();
    // Blocking I/O on purpose: read one line, then close the pipe under a writing client.
    let code = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i32>> {
        let mut child = std::process::Command::new(bin)
            .args(["--coordinator", &a, "logs", "chatty", "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        assert_eq!(first, "chatty[0] | hello 0\n");
        // The reader is dropped here, closing the pipe.
        Ok(child.wait()?.code())
    })
    .await??;
    assert_eq!(code, Some(0));
    Ok(())
}

#[tokio::test]
async fn unreachable_coordinator() -> anyhow::Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let got = check(
        &addr,
        &["list"],
        1,
        "",
        "cannot reach the coordinator at http://",
    )
    .await?;
    assert!(
        got.stderr.contains("start a local one with 'pmcluster up'"),
        "{}",
        got.stderr
    );
    Ok(())
}

/// The update-policy flags of `start`, `reload` and `restart --rolling`: what the coordinator
/// receives, and that a refused flag sends nothing.
#[tokio::test]
async fn update_policy_flags() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    let calls = |fake: &Fake| std::mem::take(&mut fake.lock().calls);
    let last_spec = |fake: &Fake| fake.lock().applied.last().cloned().unwrap_or_default();

    check(
        a,
        &[
            "start",
            "node s.js --a --b --c",
            "--name",
            "web",
            "-i",
            "2",
            "--max-surge",
            "2",
            "--max-unavailable",
            "1",
            "--min-healthy-time",
            "2s",
            "--healthy-deadline",
            "1m",
            "--progress-deadline",
            "3m",
            "--no-auto-rollback",
            "--canary",
            "1",
            "--shutdown-delay",
            "500ms",
        ],
        0,
        "started app web: 2 instances (version 1)",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    let started = last_spec(&fake);
    assert_eq!(
        started.update,
        Some(pb::UpdatePolicy {
            max_surge: Some(2),
            max_unavailable: Some(1),
            min_healthy_time_ms: Some(2_000),
            healthy_deadline_ms: Some(60_000),
            progress_deadline_ms: Some(180_000),
            auto_rollback: Some(false),
            canary: 1,
            shutdown_delay_ms: 500,
        })
    );

    // restart --rolling with flags: the policy first (the same spec otherwise), then the restart.
    let out = check(
        a,
        &[
            "restart",
            "web",
            "--rolling",
            "--max-surge",
            "3",
            "--auto-rollback",
            "true",
            "--shutdown-delay",
            "2s",
        ],
        0,
        "web: update policy changed: max_surge 2 -> 3, auto_rollback false -> true, \
         shutdown_delay 500ms -> 2s (kept for later rollouts; to go back: pmcluster reload web \
         --max-surge 2 --auto-rollback false --shutdown-delay 500ms)\nrolling restart of web: 2 \
         instances",
        "",
    )
    .await?;
    assert!(!out.stdout.contains("version"), "{}", out.stdout);
    assert_eq!(calls(&fake), ["ApplyApp web", "Restart web rolling"]);
    let restarted = last_spec(&fake);
    let policy = restarted.update.unwrap_or_default();
    assert_eq!(
        (
            policy.max_surge,
            policy.auto_rollback,
            policy.shutdown_delay_ms
        ),
        (Some(3), Some(true), 2_000)
    );
    assert_eq!(
        pb::AppSpec {
            update: None,
            ..restarted
        },
        pb::AppSpec {
            update: None,
            ..started
        },
        "only the policy changes"
    );

    // The same values again, or no flags: no ApplyApp.
    check(
        a,
        &["restart", "web", "--rolling", "--max-surge", "3"],
        0,
        "rolling restart of web",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["Restart web rolling"]);
    let json = check(a, &["restart", "web", "--rolling", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["update"], serde_json::Value::Null, "{json}");
    assert_eq!(calls(&fake), ["Restart web rolling"]);
    let json = check(
        a,
        &["restart", "web", "--rolling", "--canary", "0", "-o", "json"],
        0,
        "",
        "",
    )
    .await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(json["update"]["canary"], 0, "{json}");
    assert_eq!(json["update"]["shutdown_delay_ms"], 2_000, "{json}");
    assert_eq!(calls(&fake), ["ApplyApp web", "Restart web rolling"]);

    // reload with flags only: a policy change, shown in the diff, restarting nothing.
    let out = check(
        a,
        &["reload", "web", "--canary", "2", "--yes"],
        0,
        "-     \"canary\": 0,\n  +     \"canary\": 2,",
        "",
    )
    .await?;
    // A trial's one-off canary was kept unsaid, and a later plain `reload` waited for promote.
    assert!(
        out.stdout.contains(
            "web: update policy changed: canary 0 -> 2 (kept for later rollouts; to go back: \
             pmcluster reload web --canary 0)"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    assert_eq!(last_spec(&fake).update.map(|u| u.canary), Some(2));

    // reload with a new spec and flags: one ApplyApp with both.
    check(
        a,
        &[
            "reload",
            "web",
            "--set",
            "env.V=2",
            "--max-unavailable",
            "0",
            "--yes",
        ],
        0,
        "+     \"V\": \"2\"",
        "",
    )
    .await?;
    assert_eq!(calls(&fake), ["ApplyApp web"]);
    let spec = last_spec(&fake);
    assert_eq!(spec.env.get("V").map(String::as_str), Some("2"));
    assert_eq!(spec.update.and_then(|u| u.max_unavailable), Some(0));

    // Refused: exit 2, the flag named, nothing applied or restarted.
    let refused: &[(&[&str], &str)] = &[
        (
            &["restart", "web", "--rolling", "--max-surge", "-1"],
            "error: --max-surge: \"-1\" is negative",
        ),
        (
            &["restart", "web", "--rolling", "--max-unavailable", "x"],
            "error: --max-unavailable: \"x\" is not a whole number",
        ),
        (
            &["restart", "web", "--rolling", "--min-healthy-time", "soon"],
            "error: --min-healthy-time: \"soon\" is not a duration",
        ),
        (
            &["restart", "web", "--rolling", "--max-surge", "0"],
            "error: --max-surge: max_surge and max_unavailable would both be 0",
        ),
        (
            &[
                "reload",
                "web",
                "--max-surge",
                "0",
                "--max-unavailable",
                "0",
                "--yes",
            ],
            "error: --max-surge, --max-unavailable: max_surge and max_unavailable would both be 0",
        ),
        (
            &["reload", "web", "--healthy-deadline", "1s", "--yes"],
            "error: --healthy-deadline: healthy_deadline (1s) must be longer than \
             min_healthy_time (2s)",
        ),
        (
            &["reload", "web", "--auto-rollback", "maybe", "--yes"],
            "error: --auto-rollback: \"maybe\" is not true or false",
        ),
        (
            &[
                "reload",
                "web",
                "--set",
                "update.canary=1",
                "--canary",
                "3",
                "--yes",
            ],
            "error: --canary: also given as --set update.canary",
        ),
        (
            &["restart", "web", "--shutdown-delay", "1s"],
            "error: --shutdown-delay: only with --rolling",
        ),
        (
            &[
                "start",
                "node s.js",
                "--name",
                "w2",
                "--progress-deadline",
                "1m",
            ],
            "error: --progress-deadline: progress_deadline (1m) must be at least \
             healthy_deadline (5m)",
        ),
        (
            &[
                "restart",
                "web",
                "--rolling",
                "--auto-rollback",
                "false",
                "--no-auto-rollback",
            ],
            "cannot be used with",
        ),
    ];
    for (args, stderr) in refused {
        check(a, args, 2, "", stderr).await?;
        assert!(calls(&fake).is_empty(), "pmcluster {}", args.join(" "));
    }
    Ok(())
}

/// `restart --rolling --wait` follows the rollout the restart's reply names. One that failed
/// before the CLI first asked is no longer running, yet it fails the wait at once.
#[tokio::test]
async fn rolling_restart_waits_on_its_own_rollout() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    check(
        a,
        &["start", "node s.js", "--name", "web", "-i", "2"],
        0,
        "",
        "",
    )
    .await?;
    fake.lock().rolling_restart_fails = Some("instance web[0] did not become healthy".into());
    // Not a timeout: that would take 10 s and say "not up after 10s".
    check(
        a,
        &[
            "restart",
            "web",
            "--rolling",
            "--wait",
            "--wait-timeout",
            "10s",
        ],
        1,
        "",
        "the rollout of version 1 failed: instance web[0] did not become healthy",
    )
    .await?;
    Ok(())
}

/// A reordering of `args` is a change: the diff shows it and the reload applies it.
#[tokio::test]
async fn reload_sees_reordered_args() -> anyhow::Result<()> {
    let (a, fake) = serve_fake().await?;
    let a = &a;
    check(
        a,
        &["start", "node s.js --a --b --c", "--name", "web"],
        0,
        "started app web",
        "",
    )
    .await?;
    let out = check(
        a,
        &[
            "reload",
            "web",
            "--set",
            r#"args=["s.js","--b","--a","--c"]"#,
            "--yes",
        ],
        0,
        "web version 1 -> changes:\n",
        "",
    )
    .await?;
    assert!(
        out.stdout.contains("\n  -     \"--a\",\n") && out.stdout.contains("\n  +     \"--a\",\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("nothing to change"), "{}", out.stdout);
    let args = fake.lock().applied.last().map(|s| s.args.clone());
    assert_eq!(
        args,
        Some(vec![
            "s.js".into(),
            "--b".into(),
            "--a".into(),
            "--c".into()
        ])
    );
    // The same order again: nothing to change, nothing sent.
    check(
        a,
        &[
            "reload",
            "web",
            "--set",
            r#"args=["s.js","--b","--a","--c"]"#,
            "--yes",
        ],
        0,
        "web: nothing to change (version 2)",
        "",
    )
    .await?;
    assert_eq!(fake.lock().applied.len(), 2);
    Ok(())
}

/// `stop` and `start` count only the instances they changed, and say when they changed none.
#[tokio::test]
async fn actions_count_what_they_changed() -> anyhow::Result<()> {
    let a = &serve().await?;
    check(a, &["start", "app", "--name", "web", "-i", "3"], 0, "", "").await?;
    check(
        a,
        &["stop", "web", "--instance", "1"],
        0,
        "stopped web[1]\n",
        "",
    )
    .await?;
    check(
        a,
        &["stop", "web", "--instance", "1"],
        0,
        "web[1] was already stopped; nothing changed\n",
        "",
    )
    .await?;
    check(
        a,
        &["stop", "web"],
        0,
        "stopped 2 instances of web (1 was already stopped)\n",
        "",
    )
    .await?;
    check(
        a,
        &["stop", "web"],
        0,
        "3 instances of web were already stopped; nothing changed\n",
        "",
    )
    .await?;
    check(
        a,
        &["start", "web", "--instance", "2"],
        0,
        "started web[2]\n",
        "",
    )
    .await?;
    let json = check(a, &["start", "web", "-o", "json"], 0, "", "").await?;
    let json: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(
        (json["affected"].clone(), json["changed"].clone()),
        (3.into(), 2.into())
    );
    Ok(())
}

/// YAML piped to `apply -f -` is read as JSON, and the error says how to give another format
/// (a trial's read "expected ident" and nothing more).
#[tokio::test]
async fn apply_from_stdin_names_format_when_it_cannot_read_it() -> anyhow::Result<()> {
    let a = serve().await?;
    let bin = BIN.to_string();
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<std::process::Output> {
        let mut child = std::process::Command::new(bin)
            .args(["--coordinator", &a, "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"apps:\n  - name: a\n    script: sleep\n")?;
        }
        Ok(child.wait_with_output()?)
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give --format yaml"), "{stderr}");
    Ok(())
}
