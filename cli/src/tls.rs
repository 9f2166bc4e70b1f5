//! The client's TLS: `--ca`, `--cert` and `--key` read and checked once, before any dial, and
//! the handshake failures tonic reports only as "transport error" said in words.
//!
//! tonic builds its rustls config when a URL is dialled, so a file it cannot use came back as a
//! `--coordinator` error; and a coordinator that refuses our certificate can only send a TLS
//! alert, which the call reports as "transport error". Both are caught here: the files at load
//! (exit 2, naming the flag), the alerts by reading tonic's error chain down to rustls.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pmcluster_pki::Validity;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, InconsistentKeys};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::UsageError;

/// The TLS settings a dial uses, and the files they came from, for messages.
#[derive(Clone, Debug)]
pub struct Tls {
    config: ClientTlsConfig,
    ca: PathBuf,
    cert: Option<PathBuf>,
    /// The same trust and certificate for [`refusal`]'s own handshake; `None` without
    /// `--cert` (then there is no certificate of ours to be refused).
    probe: Option<Arc<rustls::ClientConfig>>,
}

impl Tls {
    pub fn config(&self) -> &ClientTlsConfig {
        &self.config
    }
}

/// The TLS settings from `--ca`, `--cert` and `--key`, read once. `--ca` is needed when any
/// URL is `https://`; `--cert` and `--key` go together. `None` when no URL is `https://` (a
/// local `pmcluster up` cluster is plaintext on loopback, whatever the environment says).
pub fn load(
    urls: &[String],
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Tls>, UsageError> {
    load_at(urls, ca, cert, key, SystemTime::now())
}

fn load_at(
    urls: &[String],
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    now: SystemTime,
) -> Result<Option<Tls>, UsageError> {
    if !urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(UsageError::new(
            "--ca is needed for an https:// --coordinator: the cluster CA (ca.pem) that signed \
             the coordinator's certificate",
        ));
    };
    let ca_pem = read("--ca", ca)?;
    let roots = check_ca(ca, &ca_pem)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let mut probe = None;
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = (read("--cert", cert)?, read("--key", key)?);
            let (chain, key_der) = check_pair(cert, &cert_pem, key, &key_pem, now)?;
            probe = probe_config(roots, chain, key_der);
            config = config.identity(Identity::from_pem(cert_pem, key_pem));
        }
        (None, None) => {}
        (Some(_), None) => return Err(UsageError::new("--key is missing: --cert needs it")),
        (None, Some(_)) => return Err(UsageError::new("--cert is missing: --key needs it")),
    }
    Ok(Some(Tls {
        config,
        ca: ca.to_path_buf(),
        cert: cert.map(Path::to_path_buf),
        probe,
    }))
}

/// A rustls config as tonic builds one from the same files (ring, h2). `None` if rustls
/// refuses it: the dial then says why, as before.
fn probe_config(
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Option<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(Arc::new(config))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError::new(format!("{flag} {}: {e}", path.display())))
}

/// rustls skips what it cannot parse and would then trust nothing, which reads as the
/// coordinator's certificate being refused (UnknownIssuer) rather than as a wrong file.
fn check_ca(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, UsageError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UsageError::new(format!(
            "--ca {} holds no PEM certificate; give the cluster CA's certificate (ca.pem, as \
             `pmcluster certs init` writes it)",
            path.display()
        )));
    }
    Ok(roots)
}

/// A key that is not the certificate's fails only when tonic builds its config at the dial,
/// where it read as a bad `--coordinator`; an expired certificate is refused by the coordinator
/// with nothing but an alert. Both are known from the files alone.
fn check_pair(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    now: SystemTime,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), UsageError> {
    let (cert_name, key_name) = (cert.display(), key.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| UsageError::new(format!("--cert {cert_name}: not PEM ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(UsageError::new(format!(
            "--cert {cert_name} holds no PEM certificate; give the certificate `pmcluster certs \
             issue user` wrote (user-NAME.pem)"
        )));
    };
    match pmcluster_pki::validity_from_der(leaf, now) {
        Ok(Validity::Valid) => {}
        Ok(Validity::Expired(date)) => {
            return Err(UsageError::new(format!(
                "--cert {cert_name} expired on {date}; ask for a new one (`pmcluster certs \
                 issue user NAME`)"
            )));
        }
        Ok(Validity::NotYet(date)) => {
            return Err(UsageError::new(format!(
                "--cert {cert_name} is not valid before {date}; is this machine's clock right?"
            )));
        }
        Err(e) => return Err(UsageError::new(format!("--cert {cert_name}: {e}"))),
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| UsageError::new(format!("--key {key_name} holds no PEM private key ({e})")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| UsageError::new(format!("--key {key_name}: not a usable key ({e})")))?;
    match CertifiedKey::new(chain.clone(), signing).keys_match() {
        // A key type that cannot say its public key: the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Ok((chain, key_der))
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(UsageError::new(format!(
                "--cert {cert_name} and --key {key_name} do not match: the key is not the \
                 certificate's; give the -key.pem file written with that certificate"
            )))
        }
        Err(e) => Err(UsageError::new(format!("--cert {cert_name}: {e}"))),
    }
}

/// What a failed dial or call means, when a TLS handshake failure is in `err`'s chain: the
/// coordinator's certificate refused here, or ours refused there. `None` for anything else.
pub fn explain(err: &(dyn StdError + 'static), tls: Option<&Tls>) -> Option<String> {
    let tls = tls?;
    match find(err)? {
        Failure::ServerCert(problem) => Some(server_refused(&problem, &tls.ca)),
        Failure::Alert(alert) => client_refused(alert, tls.cert.as_deref()),
    }
}

/// Why a call whose connection broke at `url` failed, when the coordinator refused our
/// certificate (or we its): said in the error chain, else asked with a handshake of our own.
/// Not asked when nothing answered at all (refused, unreachable, timed out): no TLS refusal
/// has that shape, and a failover to the other coordinator must not wait on a dead host.
pub async fn why_refused(
    err: &(dyn StdError + 'static),
    url: &str,
    tls: Option<&Tls>,
) -> Option<String> {
    if let Some(why) = explain(err, tls) {
        return Some(why);
    }
    if never_connected(err) {
        return None;
    }
    refusal(url, tls).await
}

/// Whether the error chain says the connection was never made.
fn never_connected(err: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut at = Some(err);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                K::ConnectionRefused | K::TimedOut | K::HostUnreachable | K::NetworkUnreachable
            )
        {
            return true;
        }
        at = e.source();
    }
    false
}

/// How long [`refusal`]'s own handshake may wait for the coordinator's verdict.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the coordinator at `url` refuses our certificate, asked with a handshake of our own:
/// a call's connection that broke may have carried its alert, or only its close (hyper then
/// says "connection closed", whichever it read first). A TLS 1.3 server judges the client's
/// certificate after the client's side of the handshake is done, so the answer is read after
/// it. `None` when it does not refuse it (or says nothing in time).
async fn refusal(url: &str, tls: Option<&Tls>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let tls = tls?;
    let config = tls.probe.clone()?;
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let host = uri.host()?;
    let host = (host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))).unwrap_or(host);
    let name = ServerName::try_from(host.to_string()).ok()?;
    let port = uri.port_u16().unwrap_or(443);
    let failure = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut stream = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(stream) => stream,
            Err(e) => return find(&e),
        };
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Err(e) => find(&e),
            Ok(_) => None,
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, failure).await.ok()?? {
        Failure::Alert(alert) => client_refused(alert, tls.cert.as_deref()),
        Failure::ServerCert(problem) => Some(server_refused(&problem, &tls.ca)),
    }
}

/// A handshake failure, as read from the error chain.
#[derive(Debug, PartialEq)]
enum Failure {
    /// rustls refused the coordinator's certificate.
    ServerCert(CertProblem),
    /// The coordinator ended the handshake with this alert.
    Alert(AlertDescription),
}

#[derive(Debug, PartialEq)]
enum CertProblem {
    /// Not signed by a CA of `--ca`: rustls's name for how (BadSignature, UnknownIssuer).
    NotSigned(String),
    Expired,
    NotYetValid,
    WrongName,
    Revoked,
    /// rustls's own words.
    Other(String),
}

impl From<&CertificateError> for CertProblem {
    fn from(e: &CertificateError) -> CertProblem {
        match e {
            CertificateError::BadSignature | CertificateError::UnknownIssuer => {
                CertProblem::NotSigned(format!("{e:?}"))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertProblem::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertProblem::WrongName
            }
            CertificateError::Revoked => CertProblem::Revoked,
            other => CertProblem::Other(other.to_string()),
        }
    }
}

/// The handshake failure in `err`'s chain. tonic and hyper wrap rustls's error in an
/// `io::Error`, whose `source()` skips the error it carries, so each one is opened; and on the
/// way to a call, something turns it into its text, so that is read too.
fn find(err: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return from_rustls(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find(inner).or_else(|| from_text(&inner.to_string()))
        {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

fn from_rustls(e: &rustls::Error) -> Option<Failure> {
    match e {
        rustls::Error::InvalidCertificate(e) => Some(Failure::ServerCert(e.into())),
        rustls::Error::AlertReceived(alert) => Some(Failure::Alert(*alert)),
        _ => None,
    }
}

/// rustls's error from its `Display` text, which is all that is left of it after a
/// `to_string`.
fn from_text(text: &str) -> Option<Failure> {
    if let Some(name) = text.strip_prefix("received fatal alert: ") {
        // An alert's text is its Debug name; only a code can make one.
        return (0..=u8::MAX)
            .map(AlertDescription::from)
            .find(|a| format!("{a:?}") == name)
            .map(Failure::Alert);
    }
    let what = text.strip_prefix("invalid peer certificate: ")?;
    let problem = match what {
        "BadSignature" | "UnknownIssuer" => CertProblem::NotSigned(what.to_string()),
        "Expired" => CertProblem::Expired,
        "NotValidYet" => CertProblem::NotYetValid,
        "NotValidForName" => CertProblem::WrongName,
        "Revoked" => CertProblem::Revoked,
        _ if what.starts_with("certificate expired") => CertProblem::Expired,
        _ if what.starts_with("certificate not valid yet") => CertProblem::NotYetValid,
        _ if what.starts_with("certificate not valid for name") => CertProblem::WrongName,
        _ => CertProblem::Other(what.to_string()),
    };
    Some(Failure::ServerCert(problem))
}

fn server_refused(problem: &CertProblem, ca: &Path) -> String {
    match problem {
        CertProblem::NotSigned(how) => format!(
            "the coordinator's certificate is not signed by --ca {} ({how}); give the CA that \
             signed it (the cluster's ca.pem, or PMCLUSTER_CA)",
            ca.display()
        ),
        CertProblem::Expired => "the coordinator's certificate has expired (its admin renews \
                                 it with `pmcluster certs issue coordinator`)"
            .to_string(),
        CertProblem::NotYetValid => {
            "the coordinator's certificate is not valid yet; is this machine's clock right?"
                .to_string()
        }
        CertProblem::WrongName => "the coordinator's certificate is not for the address in \
                                   --coordinator; use a name or IP address it was issued for \
                                   (its --san)"
            .to_string(),
        CertProblem::Revoked => "the coordinator's certificate is revoked".to_string(),
        CertProblem::Other(why) => format!("the coordinator's certificate was refused: {why}"),
    }
}

/// `None` for an alert that says nothing about certificates (the caller keeps its own words).
fn client_refused(alert: AlertDescription, cert: Option<&Path>) -> Option<String> {
    let refused = matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    );
    Some(match (cert, alert) {
        (_, AlertDescription::CertificateRequired) => {
            "the coordinator requires a client certificate: give --cert and --key (or \
             PMCLUSTER_CERT and PMCLUSTER_KEY)"
                .to_string()
        }
        (Some(cert), _) if refused => format!(
            "the coordinator refused this client's certificate (--cert {}): not signed by the \
             CA it trusts, expired, revoked, or not a client certificate (a coordinator's is \
             not) ({alert:?}); check --cert/--key or PMCLUSTER_CERT",
            cert.display()
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
