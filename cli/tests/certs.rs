//! `pmcluster certs` as a user runs it: the files it writes, their modes, the identity in each
//! certificate, and the refusals (exit code 2, naming the argument).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use pmcluster_pki::{Identity, identity_from_pem};

const BIN: &str = env!("CARGO_BIN_EXE_pmcluster");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        // certs must work whatever coordinator the environment names, even a bad one.
        .env("PMCLUSTER_COORDINATOR", "not a url")
        .output()
        .expect("runs pmcluster")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must be refused as bad input; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn identity(path: &Path) -> Identity {
    let pem = std::fs::read(path).expect("reads the certificate");
    identity_from_pem(&pem).expect("has an identity")
}

#[test]
fn init_and_issue_every_kind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let d = dir.to_str().expect("utf-8 path");
    let out = ok(&["certs", "init", "--dir", d]);
    assert!(out.contains("ca.pem"), "{out}");
    ok(&[
        "certs",
        "issue",
        "coordinator",
        "--dir",
        d,
        "--san",
        "coord.example,127.0.0.1",
        "--san",
        "::1",
    ]);
    let out = ok(&[
        "certs", "issue", "agent", "host-a", "--dir", d, "--days", "30",
    ]);
    assert!(out.contains("spiffe://pmcluster/agent/host-a"), "{out}");
    let json = ok(&[
        "-o", "json", "certs", "issue", "user", "alice", "--role", "operate", "--app", "web*",
        "--dir", d,
    ]);
    let json: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    assert_eq!(
        json["subject"],
        "spiffe://pmcluster/user/alice (role operate, apps web*)"
    );

    assert_eq!(mode(&dir), 0o700, "the directory");
    let pairs = [
        ("ca", None),
        ("coordinator", Some(Identity::Coordinator)),
        ("agent-host-a", Some(Identity::Agent("host-a".into()))),
        ("user-alice", Some(Identity::User("alice".into()))),
    ];
    for (stem, id) in pairs {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        // The umask may take bits away from a certificate, never add any.
        assert_eq!(mode(&cert) & !0o644, 0, "{}", cert.display());
        assert_eq!(mode(&cert) & 0o600, 0o600, "{}", cert.display());
        if let Some(id) = id {
            assert_eq!(identity(&cert), id, "{}", cert.display());
        }
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("lists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".pem"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

#[test]
fn nothing_is_replaced_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().to_str().expect("utf-8 path");
    ok(&["certs", "init", "--dir", d]);
    let ca = std::fs::read(tmp.path().join("ca.pem")).expect("reads");
    let err = refused(&["certs", "init", "--dir", d]);
    assert!(
        err.contains("ca.pem exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).expect("reads"), ca);

    ok(&["certs", "issue", "agent", "n1", "--dir", d]);
    let err = refused(&["certs", "issue", "agent", "n1", "--dir", d]);
    assert!(err.contains("agent-n1.pem exists"), "{err}");
    ok(&["certs", "issue", "agent", "n1", "--dir", d, "--force"]);
    assert_eq!(mode(&tmp.path().join("agent-n1-key.pem")), 0o600);

    ok(&["certs", "init", "--dir", d, "--force"]);
    assert_ne!(std::fs::read(tmp.path().join("ca.pem")).expect("reads"), ca);
    assert_eq!(mode(&tmp.path().join("ca-key.pem")), 0o600);
}

#[test]
fn bad_input_is_refused_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().to_str().expect("utf-8 path");
    let err = refused(&["certs", "issue", "agent", "n1", "--dir", d]);
    assert!(
        err.contains(&format!("run pmcluster certs init --dir {d} first")),
        "{err}"
    );
    ok(&["certs", "init", "--dir", d]);
    for bad in ["a/b", "a b", "..", ""] {
        let err = refused(&["certs", "issue", "agent", bad, "--dir", d]);
        assert!(
            err.contains(&format!("NODE: node name {bad:?}")),
            "{bad}: {err}"
        );
    }
    let err = refused(&[
        "certs", "issue", "user", "x/../y", "--role", "read", "--dir", d,
    ]);
    assert!(err.contains("NAME: user name \"x/../y\""), "{err}");
    let err = refused(&[
        "certs", "issue", "user", "u", "--role", "admin", "--app", "web*", "--dir", d,
    ]);
    assert!(err.contains("--app: only an operate certificate"), "{err}");
    let err = refused(&["certs", "issue", "coordinator", "--dir", d, "--san", "a_b"]);
    assert!(err.contains("--san: SAN \"a_b\""), "{err}");
    let err = refused(&["certs", "issue", "coordinator", "--dir", d]);
    assert!(err.contains("--san"), "{err}");
    let err = refused(&[
        "certs", "issue", "user", "u", "--role", "read", "--dir", d, "--days", "0",
    ]);
    assert!(err.contains("--days"), "{err}");
    // Nothing but the CA was written.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("lists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca-key.pem", "ca.pem"]);
}
