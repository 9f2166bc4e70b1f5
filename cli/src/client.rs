//! The connection to one coordinator: address normalisation, connecting with a deadline, and
//! unary calls with a deadline, so that no verb can hang on a silent coordinator. Verbs call
//! through [`crate::failover::Conn`], which uses these for each coordinator of the list.

use std::future::Future;
use std::time::Duration;

use pmcluster_proto::v1::cluster_client::ClusterClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::{ApiError, UsageError};
use crate::tls::Tls;

/// How long connecting may take before we say the coordinator cannot be reached.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a unary call may take. Streams (logs, events) have no deadline.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = ClusterClient<Authed>;

/// A channel that adds `authorization: Bearer TOKEN` to every call when the user gave a token
/// (`--token`, `PMCLUSTER_TOKEN`): every client of every service goes through one.
#[derive(Clone)]
pub struct Authed {
    channel: Channel,
    token: Option<tonic::codegen::http::HeaderValue>,
}

impl Authed {
    pub fn new(channel: Channel, token: Option<&Token>) -> Authed {
        Authed {
            channel,
            token: token.map(|t| t.0.clone()),
        }
    }
}

/// A bearer token, checked and ready to send.
#[derive(Clone)]
pub struct Token(tonic::codegen::http::HeaderValue);

impl Token {
    /// The value of `--token`; the error names the flag (and never echoes the token). The
    /// format is checked here as the coordinator checks it, so a malformed token is bad input
    /// (exit 2) rather than a refusal that reads like a wrong token.
    pub fn parse(text: &str) -> Result<Token, UsageError> {
        let text = text.trim();
        if pmcluster_pki::token::id(text).is_none() {
            return Err(UsageError::new(format!(
                "--token (or PMCLUSTER_TOKEN): {}",
                pmcluster_pki::token::MALFORMED
            )));
        }
        let mut value = tonic::codegen::http::HeaderValue::from_str(&format!("Bearer {text}"))
            .map_err(|_| UsageError::new("--token: not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Token(value))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Authed {
    type Response =
        <Channel as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Response;
    type Error =
        <Channel as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Error;
    type Future =
        <Channel as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(token) = &self.token {
            req.headers_mut().insert("authorization", token.clone());
        }
        tower::Service::call(&mut self.channel, req)
    }
}

/// Turns `host:port` or `http://host:port` into the URL we dial; the error names the flag.
/// An address that can never be dialled (no host, a port out of range) is bad input here:
/// dialled, it only came back as "cannot reach", which sent the user looking for a coordinator.
pub fn normalize_url(input: &str) -> Result<String, UsageError> {
    let trimmed = input.trim();
    // The scheme's own slashes are not a trailing '/': trimmed with the rest, `https://` became
    // `https:`, which read as the host `https`.
    let (scheme, rest) = trimmed.split_once("://").unwrap_or(("http", trimmed));
    let rest = rest.trim_end_matches('/');
    let bad = |why: &str| {
        UsageError::new(format!(
            "--coordinator: {input:?} {why}; use HOST:PORT, http://HOST:PORT or \
             https://HOST:PORT"
        ))
    };
    if rest.is_empty() {
        return Err(bad("has no host"));
    }
    let url = format!("{scheme}://{rest}");
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad("is not an address"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("is not an address"));
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("is not an address"));
    };
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if let Some(port) = port_text(authority.as_str()) {
        match port.parse::<u16>() {
            _ if port.is_empty() => return Err(bad("has no port after ':'")),
            Ok(1..) => {}
            _ => return Err(bad(&format!("has port {port}, not one of 1-65535"))),
        }
    }
    Ok(url)
}

/// The port as written after the host (`None` without one): the `Uri` parser takes any digits,
/// and its `port_u16` cannot tell a missing port from one out of range.
fn port_text(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // An IPv6 host's colons are inside its brackets.
    let after_host = host_port
        .rfind(']')
        .map_or(host_port, |i| &host_port[i + 1..]);
    after_host.rsplit_once(':').map(|(_, port)| port)
}

/// Connects to the coordinator at `url` (already normalised), failing within
/// [`CONNECT_TIMEOUT`] with a message that says what to do.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    connect_with(url, CONNECT_TIMEOUT).await
}

/// [`connect`] with another deadline; `up` polls with a short one while the coordinator starts.
pub async fn connect_with(url: &str, timeout: Duration) -> anyhow::Result<Client> {
    match dial(url, timeout).await {
        Ok(client) => Ok(client),
        Err(Dial::BadUrl(e)) => Err(e.into()),
        Err(Dial::Unreachable(why)) => Err(anyhow::anyhow!(unreachable(url, &why))),
        Err(Dial::Tls(why)) => Err(anyhow::anyhow!(why)),
    }
}

/// Why a dial failed.
pub(crate) enum Dial {
    BadUrl(UsageError),
    /// The innermost cause, or that nothing answered in time.
    Unreachable(String),
    /// It answered, but the TLS handshake failed for a reason [`crate::tls::explain`] names;
    /// the message is whole, as "is it running?" would send the user the wrong way.
    Tls(String),
}

pub(crate) fn unreachable(url: &str, why: &str) -> String {
    // `pmcluster up` only starts a coordinator on this machine: for a remote one the advice
    // would send the user to the wrong host.
    if crate::failover::is_loopback_url(url) {
        format!(
            "cannot reach the coordinator at {url}: {why}; is it running? start a local one \
             with 'pmcluster up'"
        )
    } else {
        format!(
            "cannot reach the coordinator at {url}: {why}; is it running there, and is \
             --coordinator (or PMCLUSTER_COORDINATOR) its address?"
        )
    }
}

pub(crate) async fn dial(url: &str, timeout: Duration) -> Result<Client, Dial> {
    Ok(cluster_client(Authed::new(
        dial_channel(url, timeout, None).await?,
        None,
    )))
}

/// How to reach and prove ourselves to coordinators: TLS (`--ca`, `--cert`, `--key`) and a token.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub tls: Option<Tls>,
    pub token: Option<Token>,
}

/// The `Cluster` client over `channel`, with the coordinator's limits: replies are paged or
/// budgeted below them, so a reply it sends is one we accept.
pub(crate) fn cluster_client(channel: Authed) -> Client {
    ClusterClient::new(channel)
        .max_decoding_message_size(pmcluster_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pmcluster_proto::MAX_MESSAGE_BYTES)
}

/// A connection to `url`, for any of the coordinator's services.
pub(crate) async fn dial_channel(
    url: &str,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Channel, Dial> {
    let bad = |e: String| Dial::BadUrl(UsageError::new(format!("--coordinator: {url:?}: {e}")));
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        // A leader hint can be https:// though the list was not.
        let tls = tls.ok_or_else(|| bad("https:// needs --ca (and --cert, --key)".into()))?;
        endpoint = endpoint
            .tls_config(tls.config().clone())
            .map_err(|e| bad(e.to_string()))?;
    }
    // The outer deadline also covers the HTTP/2 handshake, which connect_timeout does not.
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => Err(Dial::Unreachable(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err(match crate::tls::explain(&e, tls) {
            Some(why) => Dial::Tls(why),
            None => Dial::Unreachable(root_cause(&e)),
        }),
        Ok(Ok(channel)) => Ok(channel),
    }
}

/// How long the look at whether a server speaks TLS may take, on the way to an error.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What to say when a plaintext call to `url` broke at the transport level: if the server there
/// answers plaintext HTTP/2 with TLS, that it wants `https://`. tonic only says "transport
/// error" or "h2 protocol error" (it read the TLS alert as an oversized frame, or the server
/// closed first); the probe tells that case apart from a coordinator that died mid-call.
pub(crate) async fn tls_hint(url: &str) -> Option<String> {
    let at = url.strip_prefix("http://")?;
    if !pmcluster_proto::serves_tls(at, TLS_PROBE_TIMEOUT).await {
        return None;
    }
    Some(format!(
        "the coordinator at {url} serves TLS (it answered a plaintext call in TLS): use \
         https://{at} with --ca (and --cert/--key, or --token)"
    ))
}

/// The innermost cause: "Connection refused (os error 111)" rather than "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A request that tells the server our deadline, so it can give up when we do.
pub fn request<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Awaits a unary call with [`CALL_TIMEOUT`] (for `up`, which talks to the one coordinator it
/// started); the server-side deadline alone does not save us
/// from a coordinator that accepted the connection and then went silent.
pub async fn unary<T, F>(call: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<Response<T>, Status>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(ApiError {
            code: tonic::Code::DeadlineExceeded,
            message: format!(
                "the coordinator did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            ),
        }),
        Ok(Err(status)) => Err(status.into()),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_address_is_told_to_run_up() {
        for local in [
            "http://127.0.0.1:7450",
            "http://localhost:7450",
            "http://[::1]:7450",
        ] {
            let said = unreachable(local, "Connection refused (os error 111)");
            assert!(
                said.ends_with("start a local one with 'pmcluster up'"),
                "{said}"
            );
        }
        // A user trial: told to run `pmcluster up` about a coordinator on another host.
        let said = unreachable(
            "https://10.77.0.1:17710",
            "Connection refused (os error 111)",
        );
        assert_eq!(
            said,
            "cannot reach the coordinator at https://10.77.0.1:17710: Connection refused (os \
             error 111); is it running there, and is --coordinator (or PMCLUSTER_COORDINATOR) \
             its address?"
        );
    }

    #[test]
    fn tokens() {
        let good = format!("pmc_0123456789ab_{}", "0".repeat(64));
        assert!(Token::parse(&good).is_ok());
        assert!(
            Token::parse(&format!(" {good}\n")).is_ok(),
            "a pasted newline"
        );
        let want = "--token (or PMCLUSTER_TOKEN): malformed token: expected pmc_<id>_<secret> as \
                    printed by `pmcluster token create`";
        for bad in ["abc def", "pmc_bogus", "pmc_", "", &format!("{good}x")] {
            match Token::parse(bad) {
                Err(e) => assert_eq!(e.to_string(), want, "{bad:?}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
    }

    /// A server that answers whatever it is sent with `reply`, then closes; its address.
    async fn answering(reply: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
            }
        });
        at
    }

    #[tokio::test]
    async fn a_plaintext_call_to_a_tls_server_says_to_use_https() {
        let alert: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
        let at = answering(alert).await;
        let hint = tls_hint(&format!("http://{at}")).await.expect("a hint");
        assert_eq!(
            hint,
            format!(
                "the coordinator at http://{at} serves TLS (it answered a plaintext call in \
                 TLS): use https://{at} with --ca (and --cert/--key, or --token)"
            )
        );
        let settings: &[u8] = &[0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00];
        let at = answering(settings).await;
        assert_eq!(
            tls_hint(&format!("http://{at}")).await,
            None,
            "an h2 server"
        );
        let at = answering(b"").await;
        assert_eq!(
            tls_hint(&format!("http://{at}")).await,
            None,
            "closed at once"
        );
        assert_eq!(
            tls_hint(&format!("https://{at}")).await,
            None,
            "already https"
        );
    }

    #[test]
    fn urls() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("http://127.0.0.1:7450", Ok("http://127.0.0.1:7450")),
            ("127.0.0.1:7450", Ok("http://127.0.0.1:7450")),
            ("coord.internal:7450/", Ok("http://coord.internal:7450")),
            ("[::1]:7450", Ok("http://[::1]:7450")),
            ("https://c:7450", Ok("https://c:7450")),
            ("https://[::1]:7450/", Ok("https://[::1]:7450")),
            ("http://c", Ok("http://c")),
            ("http://c:65535", Ok("http://c:65535")),
            ("ftp://c:7450", Err("is not an address")),
            ("", Err("has no host")),
            ("a b:1", Err("is not an address")),
            // A user trial: both were dialled and reported as unreachable.
            ("https://", Err("\"https://\" has no host")),
            ("https:///", Err("has no host")),
            ("https://:7450", Err("has no host")),
            (
                "https://10.77.0.1:99999",
                Err("has port 99999, not one of 1-65535"),
            ),
            ("c:0", Err("has port 0, not one of 1-65535")),
            ("c:-1", Err("has port -1, not one of 1-65535")),
            ("c:", Err("has no port after ':'")),
            ("[::1]:", Err("has no port after ':'")),
        ];
        for (input, want) in cases {
            let got = normalize_url(input).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{input:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input:?}: {g}"),
                _ => panic!("{input:?}: got {got:?}"),
            }
        }
    }
}
