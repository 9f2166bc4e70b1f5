//! Issue 12, tokens and roles: one auth layer in front of every service decides by method and
//! caller; read sees state but no logs or env values, operate changes the apps its glob allows,
//! admin does everything; a revoked token is refused; every refusal is logged. And secret env
//! values reach the instance but never an output or a log of pmcluster's.

use std::fs;

use pmcluster_tests::{Cluster, wait_until};

use crate::{DEADLINE, wait_online};

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn coordinator_log(c: &Cluster) -> String {
    c.coordinator().map(|d| d.stderr()).unwrap_or_default()
}

/// The bearer value of a new token (`token create -o json` as the test's admin).
fn make_token(c: &Cluster, role: &str, app: Option<&str>) -> (String, String) {
    let mut args = vec!["token", "create", "--role", role, "-o", "json"];
    if let Some(app) = app {
        args.extend(["--app", app]);
    }
    let out = c.cli(&args);
    out.assert_ok();
    // With TLS, a call without credentials is refused: the token does restrict its holder.
    assert!(!out.stderr.contains("restricts nothing"), "{out}");
    let v = out.json().expect("token create -o json");
    let id = v["id"].as_str().expect("an id").to_string();
    let secret = v["secret"].as_str().expect("a secret").to_string();
    assert!(secret.starts_with("pmc_") && secret.contains(&id), "{v}");
    (id, secret)
}

/// Runs the CLI with `token` and the CA only: no client certificate.
fn as_token(c: &Cluster, token: &str, args: &[&str]) -> pmcluster_tests::CliOutput {
    let pki = c.pki().expect("a TLS cluster");
    let ca = s(&pki.ca());
    let mut all = vec!["--ca", ca.as_str(), "--token", token];
    all.extend_from_slice(args);
    c.cli(&all)
}

/// Waits until the coordinator has logged a refusal with every one of `want`.
#[track_caller]
fn wait_refusal_logged(c: &Cluster, want: &[&str]) {
    wait_until(DEADLINE, &format!("a logged refusal with {want:?}"), || {
        let log = coordinator_log(c);
        let found = log.lines().any(|l| {
            l.contains("WARN") && l.contains("call refused") && want.iter().all(|w| l.contains(w))
        });
        if found {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
}

#[test]
fn tokens_and_roles_decide_every_call_and_refusals_are_logged() {
    let c = Cluster::start_tls(1).expect("a mutual-TLS cluster starts");
    for app in ["web", "db"] {
        c.start_app(app, 1)
            .auto_ports(4)
            .online()
            .expect("the app starts");
    }
    c.cli(&[
        "start",
        "sleep 600",
        "--name",
        "envy",
        "--env",
        "PLAIN=visible-value",
    ])
    .assert_ok();
    let envy = wait_online(&c, "envy", 1);
    c.remember_pids(&envy.iter().filter_map(|i| i.pid).collect::<Vec<_>>());

    let (_, read) = make_token(&c, "read", None);
    let (operate_id, operate_web) = make_token(&c, "operate", Some("web*"));
    let (_, admin) = make_token(&c, "admin", None);

    // Who am I: each credential is told apart.
    let me = as_token(&c, &read, &["whoami"]);
    assert!(me.assert_ok().stdout.contains("(role read)"), "{me}");
    let me = c.cli(&["whoami"]);
    assert!(
        me.assert_ok().stdout.contains("user/tester (role admin)"),
        "{me}"
    );

    // read: sees state, but no env values and no logs, and changes nothing.
    let list = as_token(&c, &read, &["list", "-o", "json"]);
    list.assert_ok();
    let info = as_token(&c, &read, &["info", "envy", "-o", "json"]);
    let text = &info.assert_ok().stdout;
    assert!(
        !text.contains("visible-value") && text.contains("<hidden>"),
        "{info}"
    );
    let err = as_token(&c, &read, &["scale", "web", "2"]);
    assert!(err.assert_failed().contains("needs role operate"), "{err}");
    wait_refusal_logged(&c, &["Cluster/Scale", "needs role operate"]);
    let err = as_token(&c, &read, &["logs", "web", "--lines", "1"]);
    assert!(err.assert_failed().contains("needs role operate"), "{err}");
    // An admin sees the value.
    let info = as_token(&c, &admin, &["info", "envy", "-o", "json"]);
    assert!(info.assert_ok().stdout.contains("visible-value"), "{info}");
    // An export would be a backup with placeholders for values: refused, naming the keys.
    let err = as_token(&c, &read, &["export", "envy"]);
    let msg = err.assert_failed();
    assert!(msg.contains("hid the env values of envy (PLAIN)"), "{err}");
    // Such a file applied back (made before the refusal) keeps the stored values: the
    // placeholder is no value anyone set.
    let exported = as_token(&c, &admin, &["export", "envy"]);
    let hidden = exported
        .assert_ok()
        .stdout
        .replace("visible-value", "<hidden>");
    let file = c.root().join("hidden-export.json");
    std::fs::write(&file, hidden).expect("write the export");
    let applied = as_token(&c, &admin, &["apply", "-f", &s(&file)]);
    assert!(
        applied.assert_ok().stdout.contains("unchanged"),
        "{applied}"
    );
    let info = as_token(&c, &admin, &["info", "envy", "-o", "json"]);
    assert!(info.assert_ok().stdout.contains("visible-value"), "{info}");

    // operate for web*: web yes, db no, tokens no; outside web* it reads as the read role does.
    for verb in [
        &["info", "envy", "-o", "json"][..],
        &["apps", "-o", "json"][..],
    ] {
        let shown = as_token(&c, &operate_web, verb);
        let text = &shown.assert_ok().stdout;
        assert!(
            !text.contains("visible-value") && text.contains("<hidden>"),
            "{shown}"
        );
    }
    as_token(&c, &operate_web, &["scale", "web", "2"]).assert_ok();
    let err = as_token(&c, &operate_web, &["scale", "db", "2"]);
    let msg = err.assert_failed();
    assert!(msg.contains("\"db\"") && msg.contains("web*"), "{err}");
    wait_refusal_logged(&c, &["Cluster/Scale", "outside its apps"]);
    let err = as_token(&c, &operate_web, &["token", "list"]);
    assert!(err.assert_failed().contains("needs role admin"), "{err}");
    let err = as_token(&c, &operate_web, &["delete", "web"]);
    assert!(err.assert_failed().contains("needs role admin"), "{err}");
    let web = wait_online(&c, "web", 2);
    c.remember_pids(&web.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    let db = wait_online(&c, "db", 1);
    assert_eq!(db.len(), 1, "db was not scaled");
    // As kubectl apply: an app outside the token's apps is refused, the others are applied.
    let two = c.root().join("two-apps.json");
    let text = serde_json::json!({"apps": [
        {"name": "dbx", "script": "sleep", "args": ["600"]},
        {"name": "webx", "script": "sleep", "args": ["600"]},
    ]});
    std::fs::write(&two, text.to_string()).expect("write two-apps.json");
    let out = as_token(&c, &operate_web, &["apply", "-f", &s(&two)]);
    let msg = out.assert_failed();
    assert!(
        msg.contains("1 of 2 apps not applied (dbx)") && msg.contains("web*"),
        "{out}"
    );
    assert!(out.stdout.contains("webx: created"), "{out}");
    let webx = wait_online(&c, "webx", 1);
    c.remember_pids(&webx.iter().filter_map(|i| i.pid).collect::<Vec<_>>());

    // Tokens are listed without their secrets, and a revoked one is refused.
    let listed = c.cli(&["token", "list", "-o", "json"]);
    assert!(
        !listed.assert_ok().stdout.contains(&operate_web),
        "a secret in the list"
    );
    assert!(listed.stdout.contains(&operate_id), "{listed}");
    c.cli(&["token", "revoke", &operate_id]).assert_ok();
    let err = as_token(&c, &operate_web, &["scale", "web", "1"]);
    assert!(err.assert_failed().contains("unknown or revoked"), "{err}");
    wait_refusal_logged(&c, &["unknown or revoked"]);
    let web = wait_online(&c, "web", 2);
    assert_eq!(web.len(), 2, "the revoked token changed nothing");

    // A user certificate maps to its role too.
    let pki = c.pki().expect("a TLS cluster");
    let (cert, key) = pki
        .user_as("viewer", "read", None)
        .expect("a read certificate");
    let (ca, cert, key) = (s(&pki.ca()), s(&cert), s(&key));
    let as_viewer = |args: &[&str]| {
        let mut all = vec![
            "--ca",
            ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
        ];
        all.extend_from_slice(args);
        c.cli(&all)
    };
    as_viewer(&["list"]).assert_ok();
    let err = as_viewer(&["stop", "web"]);
    assert!(err.assert_failed().contains("user/viewer"), "{err}");
    wait_refusal_logged(&c, &["user/viewer", "Cluster/Stop"]);

    // A token that was never made, and garbage in place of one.
    let fake = format!("pmc_0123456789ab_{}", "0".repeat(64));
    let err = as_token(&c, &fake, &["list"]);
    assert!(err.assert_failed().contains("unknown or revoked"), "{err}");
    let err = c.cli(&["list", "--token", "not-a-token"]);
    assert_eq!(err.status.code(), Some(2), "{err}");
    // A user trial: `pmc_bogus` went to the coordinator and came back "not a pmcluster token
    // (pmc_...)", though it starts with pmc_; and a space made the message's own gap.
    let want = "--token (or PMCLUSTER_TOKEN): malformed token: expected pmc_<id>_<secret> as \
                printed by `pmcluster token create`";
    for bad in ["pmc_bogus", "abc def"] {
        let err = c.cli(&["list", "--token", bad]);
        assert_eq!(err.status.code(), Some(2), "{err}");
        assert!(err.stderr.contains(want), "{want:?} in {err}");
    }
}

#[test]
fn secret_env_values_reach_the_instance_and_no_output_or_log() {
    let c = Cluster::start(1).expect("a cluster starts");
    const SECRET: &str = "hunter2-7f3a9c";
    let dir = c.root().join("secret-out");
    fs::create_dir_all(&dir).expect("a dir for the instances to write in");
    let script = format!(
        "printf %s \"$DB_PASS\" > {}/pass-$PMCLUSTER_INSTANCE_ID-$$; exec sleep 600",
        s(&dir)
    );
    c.cli(&[
        "start",
        &script,
        "--shell",
        "--name",
        "vault",
        "--instances",
        "2",
        "--secret-env",
        &format!("DB_PASS={SECRET}"),
        "--env",
        "PLAIN=1",
    ])
    .assert_ok();
    let first = wait_online(&c, "vault", 2);
    c.remember_pids(&first.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    let written = |min: usize| {
        wait_until(DEADLINE, "the instances to write their DB_PASS", || {
            let files: Vec<String> = fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok())
                .filter_map(|e| fs::read_to_string(e.path()).ok())
                .collect();
            if files.len() >= min {
                Ok(files)
            } else {
                Err(format!("{} files", files.len()))
            }
        })
    };
    for got in written(2) {
        assert_eq!(got, SECRET, "the instance got another value");
    }

    // A rolling restart with a policy change fetches the spec (secret shown as <secret>), and
    // sends it back: the instances still get the real value.
    c.cli(&["restart", "vault", "--rolling", "--max-surge", "2"])
        .assert_ok();
    let files = written(4);
    assert!(files.iter().all(|f| f == SECRET), "{files:?}");
    let after = wait_online(&c, "vault", 2);
    c.remember_pids(&after.iter().filter_map(|i| i.pid).collect::<Vec<_>>());

    let mut seen = Vec::new();
    for args in [
        vec!["info", "vault"],
        vec!["info", "vault", "-o", "json"],
        vec!["list", "-o", "json"],
        vec!["list", "vault"],
        vec!["events", "vault", "--no-follow", "-o", "json"],
    ] {
        let out = c.cli(&args);
        out.assert_ok();
        seen.push((args.join(" "), out.stdout.clone()));
    }
    seen.push(("coordinator log".into(), coordinator_log(&c)));
    seen.push(("agent log".into(), c.agent(0).stderr()));
    for (what, text) in &seen {
        assert!(!text.contains(SECRET), "{what} shows the secret:\n{text}");
    }
    let info = &seen[1].1;
    assert!(info.contains("<secret>"), "{info}");
}
