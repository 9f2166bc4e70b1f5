//! Calls to an HA pair of coordinators: the one place every unary call and every stream open of
//! a verb goes through.
//!
//! `--coordinator` is a list. A standby refuses every call with `UNAVAILABLE` and names the
//! leader in `pmcluster-leader` metadata; a refused call was not executed, so [`Conn`] dials the
//! leader at once and retries there (at most [`MAX_HOPS`] times per call, so two confused
//! standbys pointing at each other cannot bounce a call forever). A coordinator that cannot be
//! reached, or refuses without a hint, sends the call to the next URL of the list. When every
//! URL failed, the error names each one and what it said.
//!
//! A call that timed out is not retried anywhere: the coordinator may have executed it.

use std::collections::VecDeque;
use std::future::Future;
use tokio::time::Instant;

use pmcluster_proto::leader_hint;
use pmcluster_proto::v1::coordination_client::CoordinationClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use pmcluster_proto::v1::access_client::AccessClient;

use crate::client::{
    Authed, CALL_TIMEOUT, CONNECT_TIMEOUT, Client, Credentials, Dial, cluster_client, dial_channel,
    normalize_url, request,
};
use crate::error::{ApiError, UsageError};

/// Leader hints one call follows at most.
pub const MAX_HOPS: usize = 3;

/// Splits a `--coordinator` value into normalised URLs (see [`normalize_url`]), in the order
/// given, each once. An empty item or a bad URL is a usage error naming the flag and the item.
pub fn parse_urls(input: &str) -> Result<Vec<String>, UsageError> {
    let mut urls: Vec<String> = Vec::new();
    for (n, item) in input.split(',').enumerate() {
        if item.trim().is_empty() {
            return Err(UsageError::new(format!(
                "--coordinator: item {} of {input:?} is empty; give one URL or several separated \
                 by commas, e.g. http://10.0.0.1:7450,http://10.0.0.2:7450",
                n + 1
            )));
        }
        let url = normalize_url(item)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// One coordinator a call tried, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub url: String,
    pub why: String,
}

/// The order one call tries coordinators in: a leader a refusal named comes first, at once;
/// otherwise the list, starting at the URL in use and wrapping around, each URL once.
#[derive(Debug)]
pub struct Route {
    list: VecDeque<String>,
    hint: Option<String>,
    hops: usize,
    tried: Vec<Tried>,
}

impl Route {
    /// `first` is the URL in use (it stays first: it answered last time); `hint` a leader named
    /// before this call (by a stream's refusal), tried before anything else.
    pub fn new(urls: &[String], first: Option<&str>, hint: Option<String>) -> Route {
        let start = first
            .and_then(|f| urls.iter().position(|u| u == f))
            .unwrap_or(0);
        let list = urls[start..]
            .iter()
            .chain(&urls[..start])
            .cloned()
            .collect();
        Route {
            list,
            hint,
            hops: 0,
            tried: Vec::new(),
        }
    }

    /// Where to go next; `None` once every URL of the list was tried.
    pub fn next_url(&mut self) -> Option<String> {
        if let Some(hint) = self.hint.take() {
            return Some(hint);
        }
        while let Some(url) = self.list.pop_front() {
            if !self.tried.iter().any(|t| t.url == url) {
                return Some(url);
            }
        }
        None
    }

    /// `url` could not be reached, or refused without naming a leader.
    pub fn failed(&mut self, url: &str, why: String) {
        self.tried.push(Tried {
            url: url.to_string(),
            why,
        });
    }

    /// `url` refused the call; `hint` is the leader it named, if any.
    pub fn refused(&mut self, url: &str, why: String, hint: Option<&str>) {
        let mut why = why;
        match hint.map(normalize_url) {
            None => {}
            // A standby naming itself has nothing to offer; the list goes on.
            Some(Ok(leader)) if leader == url => {}
            Some(Ok(leader)) if self.hops < MAX_HOPS => {
                self.hops += 1;
                self.hint = Some(leader);
            }
            Some(Ok(_)) => why.push_str(&format!(" (not followed: {MAX_HOPS} hints already)")),
            Some(Err(_)) => why.push_str(" (its leader hint is not a URL)"),
        }
        self.failed(url, why);
    }

    pub fn tried(&self) -> &[Tried] {
        &self.tried
    }
}

/// The error when no coordinator took a call: with one attempt, that attempt's own error (so a
/// single `--coordinator` reads as before); with several, what each said, once per distinct
/// answer with the URLs that gave it.
fn give_up(tried: &[Tried], last: Option<ApiError>) -> ApiError {
    match (tried, last) {
        ([_], Some(last)) => last,
        _ => {
            // A standby that answered while no leader did: its leader is gone or out of reach,
            // and the election that replaces it takes the lease's time. Unless a refusal says
            // what to do itself (a standby cut off from etcd does): the advice would only
            // contradict it.
            let electing = tried.iter().any(|t| t.why.contains("is a standby"))
                && !tried.iter().any(|t| t.why.contains("`pmcluster status`"));
            ApiError {
                code: Code::Unavailable,
                message: format!(
                    "no coordinator took the call; {}{}",
                    said(tried),
                    if electing {
                        ". If the leader is gone, the standby takes over once its lease ends \
                         (--lease-ttl, 2s by default): retry in a few seconds, and see \
                         `pmcluster status`"
                    } else {
                        ""
                    }
                ),
            }
        }
    }
}

/// Each distinct answer once, after the URLs that gave it, in the order tried: "A: why; B and C
/// said: why". Coordinators cut off from the same etcd refuse in the same words, and a URL
/// can be tried twice in one call (a hint leads back to it); saying it per attempt made one
/// sentence into a paragraph.
fn said(tried: &[Tried]) -> String {
    let mut answers: Vec<(Vec<&str>, &str)> = Vec::new();
    for t in tried {
        match answers.iter_mut().find(|(_, why)| *why == t.why) {
            Some((urls, _)) if urls.contains(&t.url.as_str()) => {}
            Some((urls, _)) => urls.push(&t.url),
            None => answers.push((vec![&t.url], &t.why)),
        }
    }
    answers
        .iter()
        .map(|(urls, why)| match urls.as_slice() {
            [one] => format!("{one}: {why}"),
            [rest @ .., last] => format!("{} and {last} said: {why}", rest.join(", ")),
            [] => why.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a refusal or transport failure says, for the list of URLs tried.
fn status_why(status: &Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    }
}

/// How long a followed stream or a `--wait` poll keeps asking for a leader after losing one: a
/// takeover after a kill -9 takes the lease's TTL and a little (seconds), and a lease of a few
/// times the default still fits.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// The pause between two asks while no coordinator leads.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Whether `status` says the coordinator went away rather than answered: a refusal or an
/// unreachable one (`UNAVAILABLE`), or a connection that broke under the call (a leader killed
/// mid-stream). tonic reports the latter as `UNKNOWN` or `INTERNAL` built from a local h2/hyper
/// error, which it keeps as the source; a status the coordinator sent has none.
pub fn connection_lost(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal => connection_broke(status),
        _ => false,
    }
}

/// Whether `status` was built here from a local transport error (which tonic keeps as its
/// source) rather than sent by the coordinator: the connection under the call broke, and is not
/// asked again.
fn connection_broke(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A connection to whichever coordinator of the list takes calls. A clone shares its channel
/// (HTTP/2 carries many calls on one connection) until either side has to dial again.
#[derive(Clone)]
pub struct Conn {
    urls: Vec<String>,
    /// The coordinator calls go to now, and its client.
    current: Option<(String, Authed)>,
    /// A leader a stream's refusal named: the next call dials it first.
    hint: Option<String>,
    creds: Credentials,
}

impl Conn {
    /// Dials the URLs in order and keeps the first that answers. A standby answers too: its
    /// refusal of the first call leads to the leader.
    pub async fn open(urls: Vec<String>, creds: Credentials) -> Result<Conn, ApiError> {
        let mut conn = Conn {
            urls,
            current: None,
            hint: None,
            creds,
        };
        let mut route = Route::new(&conn.urls, None, None);
        let mut last = None;
        while let Some(url) = route.next_url() {
            if conn.client_for(&url, &mut route, &mut last).await.is_some() {
                return Ok(conn);
            }
        }
        Err(give_up(route.tried(), last))
    }

    /// The URL calls go to now.
    pub fn url(&self) -> &str {
        self.current.as_ref().map_or("", |(url, _)| url.as_str())
    }

    /// Whether every coordinator of the list is on this machine (loopback): its agents may then
    /// see this machine's files, as a local `pmcluster up` does.
    pub fn on_this_host(&self) -> bool {
        !self.urls.is_empty() && self.urls.iter().all(|u| is_loopback_url(u))
    }

    /// A stream from the coordinator ended with `status`: the next call dials the leader it
    /// named, if it named one.
    pub fn lost(&mut self, status: &Status) {
        self.hint = leader_hint(status).and_then(|h| normalize_url(&h).ok());
        // A connection that broke is not asked again: the next call dials afresh.
        if connection_broke(status) {
            self.current = None;
        }
    }

    /// A unary call with [`CALL_TIMEOUT`], as a grpc-timeout and as a local deadline (the
    /// server-side one alone does not save us from a coordinator that accepted the connection
    /// and then went silent). `call` issues it on the client it is given.
    pub async fn unary<Q, R, F, Fut>(&mut self, message: Q, call: F) -> Result<R, ApiError>
    where
        Q: Clone,
        F: FnMut(Client, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.call(message, request, cluster_client, call)
            .await
            .map_err(|(e, _)| e)
    }

    /// A unary read that a wait repeats anyway (`--wait`'s looks): retried, after
    /// [`RETRY_PAUSE`], while no coordinator takes it or its connection broke under it, until
    /// `until`. A failover then costs the wait a few seconds, not its outcome. Only for reads: a
    /// call that changes something and lost its connection may have been executed.
    pub async fn poll<Q, R, F, Fut>(
        &mut self,
        until: Instant,
        message: Q,
        mut call: F,
    ) -> Result<R, ApiError>
    where
        Q: Clone,
        F: FnMut(Client, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut told = false;
        loop {
            let e = match self
                .call(message.clone(), request, cluster_client, &mut call)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err((e, lost)) if lost || e.code == Code::Unavailable => e,
                Err((e, _)) => return Err(e),
            };
            if Instant::now() + RETRY_PAUSE >= until {
                return Err(e);
            }
            if !told {
                eprintln!("{e}; asking again until a coordinator leads");
                told = true;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// [`Conn::unary`] on the `Access` service (tokens, whoami).
    pub async fn access<Q, R, F, Fut>(&mut self, message: Q, call: F) -> Result<R, ApiError>
    where
        Q: Clone,
        F: FnMut(AccessClient<Authed>, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.call(message, request, AccessClient::new, call)
            .await
            .map_err(|(e, _)| e)
    }

    /// Opens a server stream: no grpc-timeout (a followed stream lives as long as the user
    /// wants), but its opening must answer within [`CALL_TIMEOUT`].
    pub async fn stream<Q, R, F, Fut>(&mut self, message: Q, call: F) -> Result<R, ApiError>
    where
        Q: Clone,
        F: FnMut(Client, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.stream_or_lost(message, call).await.map_err(|(e, _)| e)
    }

    /// [`Conn::stream`], whose error says too whether the connection broke under the opening (a
    /// coordinator killed as it was dialled): a follower opening its stream again waits that
    /// out as it waits out a refusal.
    pub async fn stream_or_lost<Q, R, F, Fut>(
        &mut self,
        message: Q,
        call: F,
    ) -> Result<R, (ApiError, bool)>
    where
        Q: Clone,
        F: FnMut(Client, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.call(message, Request::new, cluster_client, call).await
    }

    /// The call through the route; an error says too whether the connection broke under it
    /// (see [`connection_lost`]), when the call may or may not have been executed.
    async fn call<C, Q, R, F, Fut>(
        &mut self,
        message: Q,
        make: fn(Q) -> Request<Q>,
        client_of: fn(Authed) -> C,
        mut call: F,
    ) -> Result<R, (ApiError, bool)>
    where
        Q: Clone,
        F: FnMut(C, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let first = self.current.as_ref().map(|(url, _)| url.clone());
        let mut route = Route::new(&self.urls, first.as_deref(), self.hint.take());
        let mut last = None;
        while let Some(url) = route.next_url() {
            let Some(client) = self.client_for(&url, &mut route, &mut last).await else {
                continue;
            };
            let status = match tokio::time::timeout(
                CALL_TIMEOUT,
                call(client_of(client), make(message.clone())),
            )
            .await
            {
                Err(_) => {
                    let e = ApiError {
                        code: Code::DeadlineExceeded,
                        message: format!(
                            "the coordinator at {url} did not answer within {}s",
                            CALL_TIMEOUT.as_secs()
                        ),
                    };
                    return Err((e, false));
                }
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
            };
            // With TLS 1.3 the coordinator judges our certificate after our side of the
            // handshake is done, so its refusal breaks the call ("transport error", or
            // "operation was canceled" when hyper read the close before the alert).
            // The call did not run: the other coordinator of a pair (one that trusts another
            // CA mid-rotation, say) may take it, as after a refused dial.
            if connection_broke(&status)
                && let Some(why) =
                    crate::tls::why_refused(&status, &url, self.creds.tls.as_ref()).await
            {
                self.current = None;
                route.failed(&url, why.clone());
                last = Some(ApiError {
                    code: status.code(),
                    message: why,
                });
                continue;
            }
            if status.code() != Code::Unavailable {
                let mut lost = connection_lost(&status);
                let mut e = ApiError::from(status);
                if lost {
                    // The next call dials afresh rather than reuse a broken connection.
                    self.current = None;
                    if let Some(hint) = crate::client::tls_hint(&url).await {
                        // Not a connection that broke: a TLS server refused plaintext, so the
                        // call did not run, and asking again cannot help.
                        e.message = hint;
                        lost = false;
                    }
                }
                return Err((e, lost));
            }
            // Whatever comes next, it is not this connection.
            self.current = None;
            route.refused(&url, status_why(&status), leader_hint(&status).as_deref());
            last = Some(ApiError::from(status));
        }
        Err((give_up(route.tried(), last), false))
    }

    /// The client for `url`: the one in use, or a new dial (which becomes the one in use). A
    /// failed dial is noted in `route` and `last`.
    async fn client_for(
        &mut self,
        url: &str,
        route: &mut Route,
        last: &mut Option<ApiError>,
    ) -> Option<Authed> {
        if let Some((current, client)) = &self.current
            && current == url
        {
            return Some(client.clone());
        }
        let dialled = dial_channel(url, CONNECT_TIMEOUT, self.creds.tls.as_ref()).await;
        match dialled {
            Ok(channel) if self.urls.len() > 1 && !answers(&channel).await => {
                let why = format!(
                    "it accepted the connection but did not answer within {PROBE_TIMEOUT:?} \
                     (stopped or overloaded)"
                );
                *last = Some(ApiError {
                    code: Code::Unavailable,
                    message: crate::client::unreachable(url, &why),
                });
                route.failed(url, why);
                None
            }
            Ok(channel) => {
                let client = Authed::new(channel, self.creds.token.as_ref());
                self.current = Some((url.to_string(), client.clone()));
                Some(client)
            }
            Err(Dial::Unreachable(why)) => {
                *last = Some(ApiError {
                    code: Code::Unavailable,
                    message: crate::client::unreachable(url, &why),
                });
                route.failed(url, format!("cannot reach it: {why}"));
                None
            }
            Err(Dial::Tls(why)) => {
                *last = Some(ApiError {
                    code: Code::Unavailable,
                    message: why.clone(),
                });
                route.failed(url, why);
                None
            }
            Err(Dial::BadUrl(e)) => {
                route.failed(url, e.to_string());
                *last = Some(ApiError {
                    code: Code::InvalidArgument,
                    message: e.to_string(),
                });
                None
            }
        }
    }
}

/// How long a coordinator of a list may take to answer its first request before the next one
/// is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a freshly dialled coordinator answers at all. A stopped process (SIGSTOP, a frozen
/// host) still has the kernel accept connections, so a dial succeeds and only the call would
/// hang; with several coordinators to choose from, one cheap read decides first. Any answer
/// counts, a refusal or an older coordinator's UNIMPLEMENTED too: only silence moves on.
async fn answers(channel: &Channel) -> bool {
    let mut probe = CoordinationClient::new(channel.clone());
    let ask = probe.get_status(pmcluster_proto::v1::GetStatusRequest {});
    tokio::time::timeout(PROBE_TIMEOUT, ask).await.is_ok()
}

/// One unary call through a [`Conn`]: `call!(conn, scale, request_message)`.
macro_rules! call {
    ($conn:expr, $method:ident, $message:expr) => {
        $conn.unary($message, |mut client, req| async move {
            client.$method(req).await
        })
    };
}

/// One `--wait` look through a [`Conn`], asked again through a failover until `until`:
/// `poll!(conn, until, get_rollout, request_message)`.
macro_rules! poll {
    ($conn:expr, $until:expr, $method:ident, $message:expr) => {
        $conn.poll($until, $message, |mut client, req| async move {
            client.$method(req).await
        })
    };
}

/// One stream opened through a [`Conn`]: `open!(conn, stream_logs, request_message)`.
macro_rules! open {
    ($conn:expr, $method:ident, $message:expr) => {
        $conn.stream($message, |mut client, req| async move {
            client.$method(req).await
        })
    };
}

pub(crate) use {call, open, poll};

/// Whether a coordinator URL names this machine: `localhost` or a loopback address. The host is
/// read by the `Uri` parser that [`normalize_url`] checked the URL with; what it cannot read is
/// not this machine.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    // An IPv6 host comes in its brackets: `[::1]`.
    let host = uri.host().unwrap_or_default();
    let host = (host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn loopback_urls() {
        let cases = [
            ("http://127.0.0.1:7450", true),
            ("https://localhost:7450", true),
            ("http://[::1]:7450", true),
            ("http://127.0.0.2:7450/", true),
            ("http://10.0.0.1:7450", false),
            ("http://[fe80::1]:7450", false),
            ("https://coord.example:7450", false),
            ("https://[::1]:7450/", true),
            ("http://LocalHost:7450", true),
            ("https://127.255.0.9:7450", true),
            ("http://127.0.0.1", true),
            ("http://localhost.example:7450", false),
            ("https://192.168.1.5:7450", false),
            ("http://[::2]:7450", false),
            // No scheme: the host of HOST:PORT all the same.
            ("127.0.0.1:7450", true),
            ("not a url", false),
        ];
        for (url, want) in cases {
            assert_eq!(is_loopback_url(url), want, "{url}");
        }
    }

    #[test]
    fn url_lists() {
        let ok = parse_urls("10.0.0.1:7450, http://10.0.0.2:7450/ ,10.0.0.1:7450");
        assert_eq!(
            ok.map_err(|e| e.to_string()),
            Ok(urls(&["http://10.0.0.1:7450", "http://10.0.0.2:7450"]))
        );
        assert_eq!(
            parse_urls("c1:7450").map_err(|e| e.to_string()),
            Ok(urls(&["http://c1:7450"]))
        );
        let cases = [
            ("a:1,,b:2", "--coordinator: item 2 of \"a:1,,b:2\" is empty"),
            ("a:1,", "item 2 of \"a:1,\" is empty"),
            ("", "item 1 of \"\" is empty"),
            ("a:1, ,b:2", "item 2"),
            (
                "a:1,ftp://b:2",
                "--coordinator: \"ftp://b:2\" is not an address",
            ),
        ];
        for (input, want) in cases {
            match parse_urls(input) {
                Err(e) => assert!(e.to_string().contains(want), "{input:?}: {e}"),
                Ok(u) => panic!("{input:?}: accepted as {u:?}"),
            }
        }
    }

    /// Drives a route with scripted answers: `Some(hint)` a refusal (hint `""` for none),
    /// `None` unreachable. Returns the URLs in the order tried.
    fn drive(route: &mut Route, answer: impl Fn(&str) -> Option<&'static str>) -> Vec<String> {
        let mut order = Vec::new();
        while let Some(url) = route.next_url() {
            order.push(url.clone());
            match answer(&url) {
                None => route.failed(&url, "refused".into()),
                Some("") => route.refused(&url, "standby".into(), None),
                Some(hint) => route.refused(&url, "standby".into(), Some(hint)),
            }
            assert!(order.len() < 20, "route does not end: {order:?}");
        }
        order
    }

    #[test]
    fn routes() {
        let list = urls(&["http://a:1", "http://b:1", "http://c:1"]);
        // The list in order, starting at the one in use.
        let mut r = Route::new(&list, Some("http://b:1"), None);
        assert_eq!(
            drive(&mut r, |_| None),
            urls(&["http://b:1", "http://c:1", "http://a:1"])
        );
        assert_eq!(r.tried().len(), 3);
        // A hint is followed at once, ahead of the list, and not tried again from the list.
        let mut r = Route::new(&list, None, None);
        let order = drive(&mut r, |u| (u == "http://a:1").then_some("c:1"));
        assert_eq!(order, urls(&["http://a:1", "http://c:1", "http://b:1"]));
        // A hint outside the list is followed too.
        let mut r = Route::new(&list, None, None);
        let order = drive(&mut r, |u| match u {
            "http://a:1" => Some("http://leader:9"),
            _ => None,
        });
        assert_eq!(order[..2], urls(&["http://a:1", "http://leader:9"]));
        // Two standbys naming each other: at most MAX_HOPS hops, then the list goes on.
        let mut r = Route::new(&list, None, None);
        let order = drive(&mut r, |u| match u {
            "http://a:1" => Some("b:1"),
            "http://b:1" => Some("a:1"),
            _ => None,
        });
        assert_eq!(
            order,
            urls(&[
                "http://a:1",
                "http://b:1",
                "http://a:1",
                "http://b:1",
                "http://c:1"
            ])
        );
        assert!(r.tried()[3].why.contains("not followed"), "{:?}", r.tried());
        // A standby naming itself, a bad hint, no hint: the list goes on.
        let mut r = Route::new(&list, None, None);
        let order = drive(&mut r, |u| match u {
            "http://a:1" => Some("a:1"),
            "http://b:1" => Some("ftp://x"),
            _ => Some(""),
        });
        assert_eq!(order, list);
        assert!(r.tried()[1].why.contains("not a URL"), "{:?}", r.tried());
        // A hint given before the call (a stream's refusal) comes first.
        let mut r = Route::new(&list, Some("http://a:1"), Some("http://c:1".into()));
        assert_eq!(r.next_url().as_deref(), Some("http://c:1"));
    }

    #[test]
    fn lost_connections() {
        // What a coordinator sends: only its refusal means it is gone.
        assert!(connection_lost(&Status::unavailable("a standby")));
        assert!(!connection_lost(&Status::internal(
            "the coordinator failed"
        )));
        assert!(!connection_lost(&Status::unknown("boom")));
        assert!(!connection_lost(&Status::not_found("no app")));
        // What tonic makes of a connection that broke under a call: a status built here, from
        // the local error it keeps as its source.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let broken = Status::from_error(Box::new(reset));
        assert!(connection_lost(&broken));
        assert!(connection_broke(&broken));
        assert!(!connection_broke(&Status::unavailable("a standby")));
    }

    #[test]
    fn giving_up() {
        let one = [Tried {
            url: "http://a:1".into(),
            why: "cannot reach it: refused".into(),
        }];
        let own = ApiError {
            code: Code::Unavailable,
            message: "cannot reach the coordinator at http://a:1: refused".into(),
        };
        assert_eq!(
            give_up(&one, Some(own)).message,
            "cannot reach the coordinator at http://a:1: refused"
        );
        let two = [
            one[0].clone(),
            Tried {
                url: "http://b:1".into(),
                why: "this coordinator is a standby".into(),
            },
        ];
        let err = give_up(&two, None);
        assert_eq!(err.code, Code::Unavailable);
        assert_eq!(
            err.message,
            "no coordinator took the call; http://a:1: cannot reach it: refused; \
             http://b:1: this coordinator is a standby. If the leader is gone, the standby \
             takes over once its lease ends (--lease-ttl, 2s by default): retry in a few \
             seconds, and see `pmcluster status`"
        );
        let neither = [one[0].clone(), one[0].clone()];
        assert!(!give_up(&neither, None).message.contains("lease"));
    }

    #[test]
    fn one_answer_is_said_once() {
        let cut_off = "this coordinator is a standby and sees no leader: etcd at http://e:2379 \
                       did not answer (connection refused). No coordinator can lead until etcd \
                       answers with quorum: check etcd; `pmcluster status` shows who leads";
        let refusal = |url: &str| Tried {
            url: url.into(),
            why: cut_off.into(),
        };
        // Both coordinators of a pair cut off from etcd, the first asked twice (a stale hint
        // led back to it).
        let tried = [
            refusal("http://a:1"),
            refusal("http://b:1"),
            refusal("http://a:1"),
        ];
        let err = give_up(&tried, None);
        assert_eq!(err.code, Code::Unavailable);
        assert_eq!(
            err.message,
            format!("no coordinator took the call; http://a:1 and http://b:1 said: {cut_off}")
        );
        // The refusal says what to do: no advice about leases beside it.
        assert!(!err.message.contains("--lease-ttl"), "{}", err.message);
        assert_eq!(err.message.matches("etcd at").count(), 1, "{}", err.message);

        // Different answers each keep their URLs, in the order tried.
        let mixed = [
            refusal("http://a:1"),
            Tried {
                url: "http://b:1".into(),
                why: "cannot reach it: connection refused".into(),
            },
            refusal("http://c:1"),
        ];
        assert_eq!(
            said(&mixed),
            format!(
                "http://a:1 and http://c:1 said: {cut_off}; http://b:1: cannot reach it: \
                 connection refused"
            )
        );
        let three = [
            refusal("http://a:1"),
            refusal("http://b:1"),
            refusal("http://c:1"),
        ];
        assert!(said(&three).starts_with("http://a:1, http://b:1 and http://c:1 said: "));
    }
}
