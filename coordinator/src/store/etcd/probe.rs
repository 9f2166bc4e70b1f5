//! A check of one etcd endpoint's TLS before a coordinator of an HA pair serves: a handshake
//! with the coordinator's client certificate, then the start of an HTTP/2 exchange, waiting for
//! etcd's first answer.
//!
//! Why not just a call through etcd's client: with TLS 1.3 the server checks the client's
//! certificate after the client already counts the handshake as done, so a call often fails
//! with only "connection closed" and the alert that says why is lost. Waiting for etcd's first
//! bytes gets either its HTTP/2 settings (accepted) or that alert.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::codegen::http::Uri;

use super::tls_hint;

/// The HTTP/2 client preface, then an empty SETTINGS frame (length 0, type 4, no flags,
/// stream 0): what a gRPC server answers with its own SETTINGS.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// etcd accepted the certificate and answered.
    Accepted,
    /// The handshake was refused, by etcd (our certificate) or by us (etcd's): a configuration
    /// error. The text says which and why.
    Refused(String),
    /// Not reachable now (not started, down, not answering): nothing learned.
    Unreachable(String),
}

/// Checks `endpoint` (`https://HOST:PORT`) within `timeout`.
pub async fn probe(endpoint: &str, config: Arc<ClientConfig>, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, exchange(endpoint, config)).await {
        Ok(found) => found,
        Err(_) => Probe::Unreachable(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(endpoint: &str, config: Arc<ClientConfig>) -> Probe {
    let uri: Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(e) => return Probe::Refused(format!("not a URL: {e}")),
    };
    let Some(host) = uri.host() else {
        return Probe::Refused("the URL names no host".into());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // As etcd's client (tonic) does for an https:// URL without a port.
    let port = uri.port_u16().unwrap_or(443);
    let name = match ServerName::try_from(host.clone()) {
        Ok(name) => name,
        Err(e) => return Probe::Refused(format!("{host:?} is not a server name: {e}")),
    };
    let tcp = match TcpStream::connect((host.as_str(), port)).await {
        Ok(tcp) => tcp,
        Err(e) => return Probe::Unreachable(e.to_string()),
    };
    let mut tls = match TlsConnector::from(config).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return judge(&e),
    };
    let sent = async {
        tls.write_all(PREFACE).await?;
        tls.flush().await
    };
    if let Err(e) = sent.await {
        return judge(&e);
    }
    let mut first = [0u8; 64];
    match tls.read(&mut first).await {
        Ok(0) => Probe::Unreachable("etcd closed the connection without answering".into()),
        Ok(_) => Probe::Accepted,
        Err(e) => judge(&e),
    }
}

/// A refusal when the error is a TLS certificate alert or verdict, else "unreachable".
fn judge(e: &std::io::Error) -> Probe {
    let text = e.to_string();
    match tls_hint(&text) {
        Some(hint) => Probe::Refused(format!("{hint}: {text}")),
        None => Probe::Unreachable(text),
    }
}
