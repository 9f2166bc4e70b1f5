//! Issue 12: the HA pair's connection to etcd over TLS with a client certificate. The harness's
//! etcd serves TLS with `--client-cert-auth`, its server certificate being one `pmcluster certs
//! issue coordinator --san 127.0.0.1` makes; the coordinators present the same kind of
//! certificate as etcd clients (`--etcd-ca --etcd-cert --etcd-key`).
//!
//! Without an `etcd` binary these report a skip.

use std::collections::BTreeMap;

use pmcluster_tests::{Etcd, EtcdTls, Pair, Pki, wait_until};

use crate::{DEADLINE, wait_online};

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn pids(pair: &Pair, app: &str, n: usize) -> BTreeMap<u32, u32> {
    wait_online(pair.cluster(), app, n)
        .iter()
        .filter_map(|i| i.pid.map(|p| (i.index, p)))
        .collect()
}

#[test]
fn ha_tls_pair_over_tls_etcd_elects_scales_and_fails_over() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pki = Pki::create(&dir.path().join("pki")).expect("a CA and certificates");
    let Some(etcd) = Etcd::single_tls_or_skip(EtcdTls::from_pki(&pki)) else {
        return;
    };
    let endpoints = etcd.endpoints();
    assert!(
        endpoints.iter().all(|e| e.starts_with("https://")),
        "{endpoints:?}"
    );
    let args = pki.etcd_args();
    let pair = Pair::start(etcd, 2, &refs(&args)).expect("the pair and two agents start");
    let leader = pair.wait_leader(DEADLINE).expect("a leader");

    let status = pair.status(None).expect("status answers");
    assert_eq!(status["store"]["kind"], "etcd", "{status}");
    assert_eq!(status["store"]["healthy"], true, "{status}");
    assert!(
        status["store"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("https://")),
        "{status}"
    );

    let c = pair.cluster();
    c.start_app("t", 2).ports(8).online().expect("t starts");
    c.cli(&["scale", "t", "3"]).assert_ok();
    let before = pids(&pair, "t", 3);

    // kill -9 of the leader: the standby takes over through the same TLS etcd.
    pair.kill(leader);
    pair.wait_leads(1 - leader, DEADLINE)
        .expect("the standby takes over");
    c.cli(&["scale", "t", "4"]).assert_ok();
    let after = pids(&pair, "t", 4);
    for (index, pid) in &before {
        assert_eq!(after.get(index), Some(pid), "t[{index}] was restarted");
    }
}

/// Starts coordinator `i` of `pair` again with `args`; it must exit 64 before listening, its
/// log saying `why`.
fn refused_at_start(pair: &mut Pair, i: usize, args: &[String], why: &str) {
    pair.kill(i);
    pair.set_args(i, &refs(args));
    let err = pair.spawn(i).expect_err("etcd's TLS refusal stops it");
    let log = pair.coordinator(i).map(|d| d.stderr()).unwrap_or_default();
    assert!(log.contains(why), "{err}\n{log}");
    let code = pair
        .coordinator(i)
        .and_then(|d| d.try_exit())
        .and_then(|s| s.code());
    assert_eq!(code, Some(64), "{log}");
}

#[test]
fn ha_tls_a_coordinator_with_a_certificate_of_another_ca_is_refused_by_etcd() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pki = Pki::create(&dir.path().join("pki")).expect("a CA and certificates");
    let other = Pki::create(&dir.path().join("other")).expect("another CA");
    let Some(etcd) = Etcd::single_tls_or_skip(EtcdTls::from_pki(&pki)) else {
        return;
    };
    let good = pki.etcd_args();
    let mut pair = Pair::start(etcd, 1, &refs(&good)).expect("the pair and one agent start");
    let leader = pair.wait_leader(DEADLINE).expect("a leader");
    let odd = 1 - leader;
    let flags = |ca: &Pki, client: &Pki| {
        let (cert, key) = client.pair("coordinator");
        vec![
            "--etcd-ca".to_string(),
            ca.ca().display().to_string(),
            "--etcd-cert".to_string(),
            cert.display().to_string(),
            "--etcd-key".to_string(),
            key.display().to_string(),
        ]
    };

    // The standby again, trusting etcd's CA but presenting another CA's certificate.
    refused_at_start(
        &mut pair,
        odd,
        &flags(&pki, &other),
        "etcd at https://127.0.0.1:",
    );
    let log = pair
        .coordinator(odd)
        .map(|d| d.stderr())
        .unwrap_or_default();
    assert!(
        log.contains("etcd refused this coordinator's client certificate (--etcd-cert)"),
        "{log}"
    );
    // The other way round: etcd's certificate checked against a CA that did not sign it.
    refused_at_start(
        &mut pair,
        odd,
        &flags(&other, &pki),
        "etcd's certificate is not trusted",
    );

    // Neither disturbed the leader; with the right certificate it is a standby again.
    assert_eq!(pair.leader(), Some(leader), "the leader changed");
    pair.cli(&["nodes"]).assert_ok();
    pair.set_args(odd, &refs(&good));
    pair.spawn(odd)
        .expect("it starts with the right certificate");
    wait_until(
        DEADLINE,
        "both coordinators listed, the store healthy",
        || {
            let status = pair.status(Some(odd)).map_err(|e| e.to_string())?;
            let listed = status["coordinators"].as_array().map_or(0, Vec::len);
            if listed == 2 && status["store"]["healthy"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    );
    assert_eq!(pair.leader(), Some(leader), "the leader changed");
}
