//! Issue 12, mutual TLS: the coordinator refuses (and logs) every connection without a client
//! certificate of the cluster CA, and every agent session whose certificate is not that of the
//! node it registers as; a whole cluster works through it; and a plaintext coordinator on a
//! non-loopback address does not start without `--insecure`.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};

use pmcluster_pki::Identity;
use pmcluster_tests::{Cluster, Pki, STARTUP_TIMEOUT, TEST_USER, pid_alive, wait_for, wait_until};

use crate::{DEADLINE, wait_online};

fn tls_cluster(n_agents: usize) -> Cluster {
    Cluster::start_tls(n_agents).expect("a mutual-TLS cluster starts")
}

fn coordinator_log(c: &Cluster) -> String {
    c.coordinator().map(|d| d.stderr()).unwrap_or_default()
}

/// Waits until the coordinator's log has one more line with all of `want` than it had.
#[track_caller]
fn wait_logged(c: &Cluster, before: usize, want: &[&str]) {
    let count = |log: &str| {
        log.lines()
            .filter(|l| want.iter().all(|w| l.contains(w)))
            .count()
    };
    wait_until(
        DEADLINE,
        &format!("the coordinator to log {want:?}"),
        || {
            let log = coordinator_log(c);
            if count(&log) > before {
                Ok(())
            } else {
                Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
            }
        },
    );
}

fn lines_with(c: &Cluster, want: &[&str]) -> usize {
    coordinator_log(c)
        .lines()
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .count()
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn tls_refuses_and_logs_every_untrusted_peer() {
    let mut c = tls_cluster(1);
    let pki = c.pki().expect("a TLS cluster has its pki");
    let ca = s(&pki.ca());
    let expired = pki
        .expired(&Identity::user(TEST_USER).expect("a user name"))
        .expect("an expired certificate");
    let expired_agent = pki
        .expired(&Identity::agent("node-old").expect("a node name"))
        .expect("an expired agent certificate");
    let node_a = pki.agent("node-a").expect("node-a's certificate");
    let user = pki.pair(&format!("user-{TEST_USER}"));
    let url = c.url();
    assert!(url.starts_with("https://"), "{url}");

    // The test user's certificate works (the harness adds it).
    c.cli(&["nodes"]).assert_ok();

    // 1. No client certificate (and no token): the handshake lets it through, as it may carry
    // a token, and the auth layer refuses it.
    let want = ["WARN", "call refused", "no client certificate and no token"];
    let before = lines_with(&c, &want);
    let out = c.cli(&["nodes", "--ca", &ca]);
    let err = out.assert_failed();
    assert!(err.contains("no client certificate and no token"), "{err}");
    wait_logged(&c, before, &want);

    // 2. A certificate from another CA.
    let other_dir = c.root().join("other-pki");
    let other = Pki::create(&other_dir).expect("a second CA");
    let (cert, key) = other.pair(&format!("user-{TEST_USER}"));
    // Both CAs have the same name, so rustls finds the issuer and refuses its signature.
    let want = [
        "WARN",
        "TLS connection refused",
        "invalid peer certificate: BadSignature",
    ];
    let before = lines_with(&c, &want);
    let out = c.cli(&["nodes", "--ca", &ca, "--cert", &s(&cert), "--key", &s(&key)]);
    // A user trial: the CLI said only "transport error"; the reason was in this log alone.
    let said = format!(
        "the coordinator refused this client's certificate (--cert {}): not signed by the CA \
         it trusts, expired, revoked, or not a client certificate",
        s(&cert)
    );
    assert!(out.assert_failed().contains(&said), "{said:?} in {out}");
    assert_eq!(out.status.code(), Some(1), "{out}");
    wait_logged(&c, before, &want);

    // 3. A certificate of this CA that has expired: the CLI reads the date itself and does
    // not dial; the coordinator still refuses and logs one, presented by an agent.
    let (cert, key) = expired;
    let out = c.cli(&["nodes", "--ca", &ca, "--cert", &s(&cert), "--key", &s(&key)]);
    let said = format!("--cert {} expired on ", s(&cert));
    assert!(out.assert_failed().contains(&said), "{said:?} in {out}");
    assert_eq!(out.status.code(), Some(2), "{out}");
    let (cert, key) = expired_agent;
    let want = ["WARN", "TLS connection refused", "certificate expired"];
    let before = lines_with(&c, &want);
    let flags = ["--tls-cert", &s(&cert), "--tls-key", &s(&key), "--ca", &ca];
    c.add_agent_with("node-old", &flags)
        .expect("the agent starts");
    wait_logged(&c, before, &want);

    // 4. Plaintext to the TLS port: the CLI says to use https://, rather than "transport
    // error".
    let plain = url.replacen("https://", "http://", 1);
    let want = ["WARN", "TLS connection refused", "corrupt message"];
    let before = lines_with(&c, &want);
    let out = c
        .try_cli_at(&plain, &["nodes"], DEADLINE)
        .expect("the CLI runs");
    let err = out.assert_failed();
    let hint = format!(
        "the coordinator at {plain} serves TLS (it answered a plaintext call in TLS): use {url} \
         with --ca (and --cert/--key, or --token)"
    );
    assert!(err.contains(&hint), "{hint:?} in {err}");
    wait_logged(&c, before, &want);

    // An agent given the plaintext URL says the same, rather than "transport error", and
    // keeps retrying (the operator may fix either side). Started by hand: the harness gives a
    // TLS cluster's agents --tls-cert, which an http:// URL refuses.
    let dir = c.root().join("agent-plain");
    fs::create_dir_all(&dir).expect("a data dir");
    let stderr = dir.join("stderr.log");
    let mut agent = Command::new(&c.bins().agent)
        .args(["--coordinator", &plain, "--node-name", "d", "--data-dir"])
        .arg(dir.join("data"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).expect("a stderr file"))
        .spawn()
        .expect("the agent runs");
    let hint = format!(
        "the coordinator at {plain} serves TLS (it answered a plaintext call in TLS): use {url} \
         with --ca, --tls-cert and --tls-key; retrying"
    );
    let said = || fs::read_to_string(&stderr).unwrap_or_default();
    let seen = pmcluster_tests::poll_until(DEADLINE, "agent d to say it", || {
        match agent.try_wait() {
            Ok(None) if said().contains(&hint) => Ok(()),
            Ok(None) => Err("not yet".to_string()),
            // Exited: said below.
            _ => Ok(()),
        }
    });
    let running = matches!(agent.try_wait(), Ok(None));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(seen.is_ok() && running, "{hint:?} in {}", said());

    // 5. node-a's certificate registering as node b: PERMISSION_DENIED, logged by both sides.
    let (cert, key) = node_a;
    let node_a_key = key.clone();
    let flags = ["--tls-cert", &s(&cert), "--tls-key", &s(&key), "--ca", &ca];
    let want = [
        "WARN",
        "agent session refused",
        "the certificate is for agent \"node-a\" but the session registers as node \"b\"",
    ];
    let before = lines_with(&c, &want);
    let b = c.add_agent_with("b", &flags).expect("agent b starts");
    wait_logged(&c, before, &want);
    wait_for(DEADLINE, "agent b to log PERMISSION_DENIED", || {
        let log = c.agent(b).stderr();
        log.contains("refused this agent (PERMISSION_DENIED")
            && log.contains("registers as node \"b\"")
    });

    // 6. A user certificate on AgentLink.
    let (cert, key) = user.clone();
    let flags = ["--tls-cert", &s(&cert), "--tls-key", &s(&key), "--ca", &ca];
    let want = [
        "call refused",
        "only an agent's certificate opens an agent session",
    ];
    let before = lines_with(&c, &want);
    c.add_agent_with("c", &flags).expect("agent c starts");
    wait_logged(&c, before, &want);

    // 7. A key that is not the certificate's: said at load, naming both flags, not blamed on
    // --coordinator as a user trial saw.
    let cert = user.0.clone();
    let other_key = node_a_key;
    let out = c.cli(&[
        "nodes",
        "--ca",
        &ca,
        "--cert",
        &s(&cert),
        "--key",
        &s(&other_key),
    ]);
    let said = format!(
        "--cert {} and --key {} do not match",
        s(&cert),
        s(&other_key)
    );
    assert!(out.assert_failed().contains(&said), "{said:?} in {out}");
    assert_eq!(out.status.code(), Some(2), "{out}");

    // 8. A --ca file with no certificate in it (a trial gave /etc/hostname, and every
    // coordinator was refused as UnknownIssuer).
    let not_a_ca = c.root().join("hostname");
    fs::write(&not_a_ca, "host-a\n").expect("a file that is no CA");
    let out = c.cli(&["nodes", "--ca", &s(&not_a_ca)]);
    let said = format!("--ca {} holds no PEM certificate", s(&not_a_ca));
    assert!(out.assert_failed().contains(&said), "{said:?} in {out}");
    assert_eq!(out.status.code(), Some(2), "{out}");

    // 9. The other CA as --ca: the coordinator's certificate is the one refused, here.
    let other_ca = s(&other.ca());
    let (cert, key) = other.pair(&format!("user-{TEST_USER}"));
    let out = c.cli(&[
        "nodes",
        "--ca",
        &other_ca,
        "--cert",
        &s(&cert),
        "--key",
        &s(&key),
    ]);
    let said =
        format!("the coordinator's certificate is not signed by --ca {other_ca} (BadSignature)");
    assert!(out.assert_failed().contains(&said), "{said:?} in {out}");
    assert!(!out.stderr.contains("pmcluster up"), "{out}");

    // Neither impostor became a node.
    let nodes = c.nodes_json().expect("nodes");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["node-a"], "{nodes:?}");
}

#[test]
fn tls_full_cluster_scale_rolling_restart_logs() {
    let c = tls_cluster(3);
    let web = c
        .start_app("web", 1)
        .auto_ports(12)
        .online()
        .expect("web starts over mTLS");
    assert_eq!(web.instances.len(), 1);
    c.cli(&["scale", "web", "6"]).assert_ok();
    let six = wait_online(&c, "web", 6);
    let nodes: BTreeMap<String, usize> = pmcluster_tests::per_node(&six);
    assert_eq!(nodes.len(), 3, "spread over the three agents: {nodes:?}");
    let before: BTreeMap<u32, Option<u32>> = six.iter().map(|i| (i.index, i.pid)).collect();

    c.cli(&["restart", "web", "--rolling"]).assert_ok();
    wait_until(
        DEADLINE * 2,
        "every instance of web replaced by the rolling restart",
        || {
            let now = c.instances("web").map_err(|e| e.to_string())?;
            let replaced = now.len() == 6
                && now
                    .iter()
                    .all(|i| i.live() && before.get(&i.index).is_some_and(|old| *old != i.pid));
            if replaced {
                Ok(())
            } else {
                Err(pmcluster_tests::render(&now))
            }
        },
    );
    let after = wait_online(&c, "web", 6);
    let pids: Vec<u32> = after.iter().filter_map(|i| i.pid).collect();
    c.remember_pids(&pids);

    c.cli(&[
        "start",
        "echo hello-tls-$PMCLUSTER_INSTANCE_ID; exec sleep 600",
        "--name",
        "echo",
        "--shell",
        "--instances",
        "2",
    ])
    .assert_ok();
    let echo = wait_online(&c, "echo", 2);
    c.remember_pids(&echo.iter().filter_map(|i| i.pid).collect::<Vec<_>>());
    wait_until(DEADLINE, "logs through mTLS", || {
        let out = c.try_cli(&["logs", "echo", "--lines", "5"])?;
        if out.success() && out.stdout.contains("hello-tls-0") && out.stdout.contains("hello-tls-1")
        {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    // Every agent's session went through the node check.
    assert_eq!(
        lines_with(&c, &["agent session refused"]),
        0,
        "{}",
        coordinator_log(&c)
    );
}

#[test]
fn non_loopback_plaintext_needs_insecure() {
    let bins = pmcluster_tests::Bins::locate().expect("binaries built");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run = |extra: &[&str], name: &str| {
        let stdout = dir.path().join(format!("{name}.out"));
        let stderr = dir.path().join(format!("{name}.err"));
        let child = Command::new(&bins.coordinator)
            .args(["--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path().join(name))
            .args(extra)
            .env_remove("PMCLUSTER_LISTEN")
            .env_remove("PMCLUSTER_DATA_DIR")
            .env_remove("PMCLUSTER_INSECURE")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("the coordinator runs");
        (child, stdout, stderr)
    };

    let (mut child, _, stderr) = run(&[], "refused");
    let status = wait_until(STARTUP_TIMEOUT, "the plaintext coordinator to exit", || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    let err = fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(
        err.contains("--insecure") && err.contains("--tls-cert"),
        "{err}"
    );

    let (mut child, stdout, stderr) = run(&["--insecure"], "insecure");
    let pid = child.id();
    wait_for(
        STARTUP_TIMEOUT,
        "the --insecure coordinator to listen",
        || {
            fs::read_to_string(&stdout)
                .unwrap_or_default()
                .contains("pmcluster-coordinator listening on 0.0.0.0:")
                || matches!(child.try_wait(), Ok(Some(_)))
        },
    );
    let err = fs::read_to_string(&stderr).unwrap_or_default();
    let running = matches!(child.try_wait(), Ok(None));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    assert!(running, "the --insecure coordinator exited: {err}");
    assert!(err.contains("WARN") && err.contains("INSECURE"), "{err}");
    assert!(!pid_alive(pid));
}
