use std::time::Duration;

use pmcluster_pki::{Ca, UserGrant, issue_user, new_ca};

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA and two users' certificates in a temporary directory: `ca.pem`, `a.pem`/`a-key.pem`,
/// `b.pem`/`b-key.pem`, and `old.pem`/`old-key.pem` that expired a day ago.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let now = SystemTime::now();
    let made = new_ca(30, now).expect("a CA");
    let ca = Ca::from_pem(&made.cert_pem, &made.key_pem, now).expect("the CA loads");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("written");
    };
    write("ca.pem", &made.cert_pem);
    let grant = UserGrant {
        role: "admin".into(),
        apps: None,
    };
    for (name, at, days) in [("a", now, 30), ("b", now, 30), ("old", now - 3 * DAY, 2)] {
        let user = issue_user(&ca, name, &grant, days, at).expect("a user certificate");
        write(&format!("{name}.pem"), &user.cert_pem);
        write(&format!("{name}-key.pem"), &user.key_pem);
    }
    write("hostname", "host-a\n");
    dir
}

fn https() -> Vec<String> {
    vec!["https://c:1".to_string()]
}

fn refused(r: Result<Option<Tls>, UsageError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn flags() {
    let http = vec!["http://c:1".to_string()];
    let p = Path::new("/nonexistent/pmcluster-test.pem");
    // Plaintext URLs ignore the flags (a PMCLUSTER_CA in the environment must not break `up`).
    assert!(matches!(load(&http, Some(p), None, None), Ok(None)));
    assert!(refused(load(&https(), None, None, None)).starts_with("--ca is needed"));
    assert!(refused(load(&https(), Some(p), None, None)).starts_with("--ca /nonexistent"));
    let dir = files();
    let f = |name: &str| dir.path().join(name);
    let ca = f("ca.pem");
    let got = load(&https(), Some(&ca), Some(&f("a.pem")), None);
    assert_eq!(refused(got), "--key is missing: --cert needs it");
    let got = load(
        &https(),
        Some(&ca),
        Some(&f("a.pem")),
        Some(&f("a-key.pem")),
    );
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
    assert!(matches!(load(&https(), Some(&ca), None, None), Ok(Some(_))));
}

/// A user trial: a file with no certificate in it was taken, and every coordinator's
/// certificate was then refused as UnknownIssuer.
#[test]
fn a_ca_file_without_a_certificate_is_bad_input() {
    let dir = files();
    let f = |name: &str| dir.path().join(name);
    for not_a_ca in ["hostname", "a-key.pem"] {
        let err = refused(load(&https(), Some(&f(not_a_ca)), None, None));
        assert_eq!(
            err,
            format!(
                "--ca {} holds no PEM certificate; give the cluster CA's certificate (ca.pem, \
                 as `pmcluster certs init` writes it)",
                f(not_a_ca).display()
            )
        );
    }
}

/// A user trial: the mismatch came out of the dial, as a bad `--coordinator`.
#[test]
fn a_key_of_another_certificate_is_bad_input() {
    let dir = files();
    let f = |name: &str| dir.path().join(name);
    let (cert, key) = (f("a.pem"), f("b-key.pem"));
    let err = refused(load(&https(), Some(&f("ca.pem")), Some(&cert), Some(&key)));
    assert!(
        err.starts_with(&format!(
            "--cert {} and --key {} do not match",
            cert.display(),
            key.display()
        )),
        "{err}"
    );
    // The files swapped: a key is no certificate, a certificate no key.
    let err = refused(load(&https(), Some(&f("ca.pem")), Some(&key), Some(&cert)));
    assert!(err.contains("holds no PEM certificate"), "{err}");
    let err = refused(load(&https(), Some(&f("ca.pem")), Some(&cert), Some(&cert)));
    assert!(
        err.starts_with(&format!(
            "--key {} holds no PEM private key",
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn an_expired_certificate_says_when() {
    let dir = files();
    let f = |name: &str| dir.path().join(name);
    let (cert, key) = (f("old.pem"), f("old-key.pem"));
    let err = refused(load(&https(), Some(&f("ca.pem")), Some(&cert), Some(&key)));
    let yesterday = pmcluster_pki::issue::date((SystemTime::now() - DAY).into());
    assert!(
        err.starts_with(&format!(
            "--cert {} expired on {yesterday};",
            cert.display()
        )),
        "{err}"
    );
    // And one whose time has not come: a clock behind.
    let (cert, key) = (f("a.pem"), f("a-key.pem"));
    let past = SystemTime::now() - 2 * DAY;
    let err = refused(load_at(
        &https(),
        Some(&f("ca.pem")),
        Some(&cert),
        Some(&key),
        past,
    ));
    assert!(err.contains("is not valid before"), "{err}");
}

/// tonic's transport error over hyper's over the `io::Error` that carries rustls's: the
/// shape a handshake failure reaches the CLI in.
#[derive(Debug)]
struct Wrapped(std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("transport error")
    }
}

impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

fn wrapped(e: rustls::Error) -> Wrapped {
    Wrapped(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn tls(cert: Option<&str>) -> Tls {
    Tls {
        config: ClientTlsConfig::new(),
        ca: PathBuf::from("/etc/pmcluster/ca.pem"),
        cert: cert.map(PathBuf::from),
        probe: None,
    }
}

#[test]
fn handshake_failures_say_whose_certificate() {
    let mine = tls(Some("/home/u/user-u.pem"));
    let explain = |e: rustls::Error, tls: &Tls| explain(&wrapped(e), Some(tls));
    for alert in [
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
        AlertDescription::CertificateExpired,
    ] {
        assert_eq!(
            explain(rustls::Error::AlertReceived(alert), &mine).as_deref(),
            Some(
                format!(
                    "the coordinator refused this client's certificate (--cert \
                     /home/u/user-u.pem): not signed by the CA it trusts, expired, revoked, or \
                     not a client certificate (a coordinator's is not) ({alert:?}); check \
                     --cert/--key or PMCLUSTER_CERT"
                )
                .as_str()
            )
        );
    }
    // Without a certificate of ours, a certificate alert is not about it.
    let none = tls(None);
    let bad = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
    assert_eq!(explain(bad, &none), None);
    let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
    assert!(explain(required, &none).is_some_and(|m| m.contains("requires a client certificate")));
    for e in [
        CertificateError::BadSignature,
        CertificateError::UnknownIssuer,
    ] {
        let want = format!(
            "the coordinator's certificate is not signed by --ca /etc/pmcluster/ca.pem ({e:?}); \
             give the CA that signed it (the cluster's ca.pem, or PMCLUSTER_CA)"
        );
        let got = explain(rustls::Error::InvalidCertificate(e), &none);
        assert_eq!(got, Some(want));
    }
    // The same, turned into text on the way (as it reaches a call).
    let text = |t: &str| Wrapped(std::io::Error::new(std::io::ErrorKind::InvalidData, t));
    let alert = text("received fatal alert: DecryptError");
    assert!(super::explain(&alert, Some(&mine)).is_some_and(|m| {
        m.contains("refused this client's certificate") && m.contains("(DecryptError)")
    }));
    let peer = text("invalid peer certificate: BadSignature");
    assert!(
        super::explain(&peer, Some(&none)).is_some_and(
            |m| m.contains("is not signed by --ca /etc/pmcluster/ca.pem (BadSignature)")
        )
    );
    let peer = text("invalid peer certificate: certificate expired: verification time 2 (UNIX)");
    assert!(super::explain(&peer, Some(&none)).is_some_and(|m| m.contains("has expired")));
    assert_eq!(
        super::explain(&text("received fatal alert: Nonsense"), Some(&mine)),
        None
    );
    let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
    assert!(explain(name, &none).is_some_and(|m| m.contains("not for the address")));
    // Not TLS, or no TLS configured: the caller keeps its own words.
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(super::explain(&Wrapped(refused), Some(&mine)), None);
    let other = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
    assert_eq!(explain(other, &mine), None);
    let bad = wrapped(rustls::Error::AlertReceived(
        AlertDescription::BadCertificate,
    ));
    assert_eq!(super::explain(&bad, None), None);
}
