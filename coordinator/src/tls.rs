//! The coordinator's mutual TLS: its own certificate, a client CA that every connection's
//! certificate must chain to, and reading the identity a peer's certificate speaks for.
//!
//! The handshake is done here rather than by tonic's TLS listener because tonic logs a refused
//! handshake only at debug level; a client refused for having no certificate, one from another
//! CA, or an expired one must show in the coordinator's log at warn. tonic still reads the peer
//! certificates off the `TlsStream` (`Request::peer_certs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pmcluster_pki::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client that opens a connection and never finishes the handshake must not hold a task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three files of `--tls-cert`, `--tls-key` and `--client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A TLS handshake with etcd was refused, by etcd or by this coordinator.
    #[error("etcd at {endpoint}: {why}")]
    EtcdRefused { endpoint: String, why: String },
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads the files into a server config that refuses every connection whose client certificate
/// is not signed by the client CA (or not valid now). A connection without one is let through
/// to the auth layer, which wants a token from it.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("--tls-key", &files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs("--client-ca", &files.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| file_error("--client-ca", &files.client_ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A client without a certificate gets through the handshake (it may carry a token); the
    // auth layer refuses it unless it does. A certificate it does present must verify here.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| file_error("--client-ca", &files.client_ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_error(
                "--tls-key",
                &files.key,
                format!("does not go with --tls-cert: {e}"),
            )
        })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The three files of `--etcd-ca`, `--etcd-cert` and `--etcd-key`: the HA pair's TLS client
/// identity towards etcd.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA that signed etcd's server certificate.
    pub ca: PathBuf,
    /// The client certificate etcd checks (`--client-cert-auth`), e.g. the coordinator's own.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The PEM text of [`EtcdTlsFiles`], checked: what etcd's client is given.
#[derive(Clone)]
pub struct EtcdTlsPem {
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The same as a rustls client config, for checking a handshake with etcd before serving.
    pub client: Arc<rustls::ClientConfig>,
}

// The key stays out of logs.
impl std::fmt::Debug for EtcdTlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTlsPem")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Reads the files and checks them the way the TLS client will use them (certificates that
/// parse, a key that goes with the certificate), so that a wrong file is an error naming its
/// flag at startup rather than a failing connection later.
pub fn read_etcd_tls(files: &EtcdTlsFiles) -> Result<EtcdTlsPem, TlsError> {
    let text = |flag: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| file_error(flag, path, e))
    };
    let certs_in = |flag: &'static str, path: &Path, pem: &str| {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(flag, path, e))?;
        if certs.is_empty() {
            return Err(file_error(flag, path, "holds no PEM certificate"));
        }
        Ok(certs)
    };
    let (ca, cert, key) = (
        text("--etcd-ca", &files.ca)?,
        text("--etcd-cert", &files.cert)?,
        text("--etcd-key", &files.key)?,
    );
    let mut roots = RootCertStore::empty();
    for der in certs_in("--etcd-ca", &files.ca, &ca)? {
        roots
            .add(der)
            .map_err(|e| file_error("--etcd-ca", &files.ca, e))?;
    }
    let chain = certs_in("--etcd-cert", &files.cert, &cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| file_error("--etcd-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| {
            file_error(
                "--etcd-key",
                &files.key,
                format!("does not go with --etcd-cert: {e}"),
            )
        })?;
    // etcd serves gRPC, which is HTTP/2 only.
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(EtcdTlsPem {
        ca,
        cert,
        key,
        client: Arc::new(client),
    })
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeded; each
/// refused one is logged at warn with the peer address and rustls' reason. Stops on `cancel`;
/// every task it starts is on `tasks`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, cancel) = (acceptor.clone(), tx.clone(), cancel.clone());
            spawner.spawn(async move {
                let handshake = tokio::select! {
                    () = cancel.cancelled() => return,
                    h = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => h,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            _ = tx.send(Ok(tls)) => {}
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS connection refused"),
                    Err(_) => tracing::warn!(
                        %peer,
                        "TLS connection refused: no handshake within {HANDSHAKE_TIMEOUT:?}"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The identity of the peer's leaf certificate (the handshake already verified its chain).
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Result<Identity, String> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| "no client certificate".to_string())?;
    pmcluster_pki::identity_from_der(leaf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use pmcluster_pki::{Ca, San, issue, new_ca};

    use super::*;

    /// `ca.pem`, `c.pem`, `c-key.pem` of a fresh CA in `dir`, and a key of another certificate.
    fn files(dir: &Path) -> (EtcdTlsFiles, PathBuf) {
        let now = SystemTime::now();
        let made = new_ca(30, now).expect("a CA");
        let ca = Ca::from_pem(&made.cert_pem, &made.key_pem, now).expect("loads");
        let local = [San::parse("127.0.0.1").expect("ip")];
        let leaf = issue(&ca, &Identity::Coordinator, &local, 30, now).expect("issues");
        let other = issue(&ca, &Identity::Coordinator, &local, 30, now).expect("issues");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("writes");
            path
        };
        let files = EtcdTlsFiles {
            ca: write("ca.pem", &made.cert_pem),
            cert: write("c.pem", &leaf.cert_pem),
            key: write("c-key.pem", &leaf.key_pem),
        };
        (files, write("other-key.pem", &other.key_pem))
    }

    #[test]
    fn etcd_tls_files_are_checked_naming_their_flag() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (good, other_key) = files(dir.path());
        let pem = read_etcd_tls(&good).expect("good files");
        assert!(pem.ca.contains("BEGIN CERTIFICATE"));
        assert!(!format!("{pem:?}").contains("PRIVATE KEY"), "the key leaks");

        let err = |files: EtcdTlsFiles| read_etcd_tls(&files).expect_err("refused").to_string();
        let e = err(EtcdTlsFiles {
            key: other_key,
            ..good.clone()
        });
        assert!(e.starts_with("--etcd-key ") && e.contains("does not go with --etcd-cert"));
        let e = err(EtcdTlsFiles {
            ca: dir.path().join("missing.pem"),
            ..good.clone()
        });
        assert!(e.starts_with("--etcd-ca "), "{e}");
        let e = err(EtcdTlsFiles {
            cert: good.key.clone(),
            ..good.clone()
        });
        assert!(
            e.starts_with("--etcd-cert ") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(EtcdTlsFiles {
            key: good.cert.clone(),
            ..good
        });
        assert!(e.starts_with("--etcd-key "), "{e}");
    }
}
