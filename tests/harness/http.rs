//! HTTP to instances and balancers on loopback, through `ureq` (a real client: chunked bodies,
//! keep-alive framing and errors are its problem, not the harness's).

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, unexpected};

/// The bound of each step of a request: connecting, sending it, awaiting the answer's head,
/// reading its body (as the socket timeouts of the harness's earlier hand-written client).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_str(&self.body).map_err(|e| {
            unexpected(
                "parsing an HTTP body as JSON",
                format!("{e}: {}", self.body),
            )
        })
    }
}

/// `GET path` on 127.0.0.1:port; any status is an answer (tests check it); 2 s per step.
///
/// A new connection per request, as before: through a balancer, every request must be free to
/// go to another backend, and a pooled connection would pin it.
pub fn http_get(port: u16, path: &str) -> Result<HttpReply, Error> {
    http_get_within(port, path, HTTP_TIMEOUT)
}

/// [`http_get`] with `step` per step, for a request the app takes long to answer by design
/// (touching memory, burning CPU), which a loaded CI machine slows further.
pub fn http_get_within(port: u16, path: &str, step: Duration) -> Result<HttpReply, Error> {
    http_get_url(&format!("http://127.0.0.1:{port}{path}"), step)
}

/// `GET url` with `step` per step, any status an answer: for addresses other than loopback
/// (test hosts, from a thread that entered one with [`crate::enter_netns`]).
pub fn http_get_url(url: &str, step: Duration) -> Result<HttpReply, Error> {
    let what = format!("GET {url}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(step))
        .timeout_send_request(Some(step))
        .timeout_recv_response(Some(step))
        .timeout_recv_body(Some(step))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into();
    let http = |source| Error::Http {
        what: what.clone(),
        source,
    };
    let mut reply = agent.get(url).call().map_err(http)?;
    let status = reply.status().as_u16();
    let body = reply.body_mut().read_to_string().map_err(http)?;
    Ok(HttpReply { status, body })
}

/// `GET /health` of a testapp instance, as JSON, expecting status 200.
pub fn health(port: u16) -> Result<Value, Error> {
    let reply = http_get(port, "/health")?;
    if reply.status != 200 {
        return Err(unexpected(
            format!("GET /health on port {port}"),
            format!("status {}: {}", reply.status, reply.body),
        ));
    }
    reply.json()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Serves one canned answer to one request on a loopback port; returns the port.
    fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let handle = std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_read_timeout(Some(HTTP_TIMEOUT));
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(answer);
            }
        });
        (port, handle)
    }

    #[test]
    fn answers_of_any_status_and_framing() {
        let cases: [(&[u8], u16, &str); 3] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 200, "{}"),
            (
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                503,
                "",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                200,
                "abcde",
            ),
        ];
        for (raw, status, body) in cases {
            let (port, server) = serve_once(raw);
            let reply = http_get(port, "/x").expect("an answer");
            assert_eq!((reply.status, reply.body.as_str()), (status, body));
            let _ = server.join();
        }
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        let (port, server) = serve_once(b"HTTP/1.1 200 OK\r\n");
        assert!(http_get(port, "/").is_err());
        let _ = server.join();
    }
}
