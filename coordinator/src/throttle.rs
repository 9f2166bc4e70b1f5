//! The server's limits layer: the write rate limit (`--write-rate`, `--write-burst`) and the
//! request timeout of unary calls (`--request-timeout`), in front of every service. The policy
//! (which calls are writes, the token bucket) is `core::quota`'s; this layer feeds it the clock
//! and answers a refusal as a gRPC status.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tonic::Status;
use tonic::codegen::http;

use crate::core::quota::{self, Call, TokenBucket, WriteRate};

/// `--request-timeout` when not given: well above what any unary call takes (a write commits
/// in milliseconds; the CLI gives up on a call after 10 s anyway).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `--max-streams-per-connection` when not given: a CLI or load balancer needs a handful (one
/// per `logs -f`, `events` or endpoints watch, plus its calls); 128 leaves room for a tool that
/// multiplexes many, and bounds what one connection can hold open.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// The server's limits, as the flags give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: calls open at once on one connection. A
    /// well-behaved client queues more until one ends; the server refuses the stream otherwise.
    pub max_streams_per_connection: u32,
    /// How long a unary call may take to be answered. Streams are not held to it.
    pub request_timeout: Duration,
    /// The token bucket of writes; `None`: writes are not limited (`--write-rate 0`).
    pub write_rate: Option<WriteRate>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_rate: Some(WriteRate::default()),
        }
    }
}

/// The layer; one bucket for the whole server, shared by every connection: the write path and
/// the store behind it are one resource, whoever writes.
#[derive(Clone)]
pub struct LimitsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    bucket: Option<Mutex<TokenBucket>>,
    timeout: Duration,
    /// The bucket's clock: monotonic, from when the server started.
    epoch: Instant,
}

impl LimitsLayer {
    pub fn new(limits: &Limits) -> LimitsLayer {
        LimitsLayer {
            shared: Arc::new(Shared {
                bucket: limits
                    .write_rate
                    .map(|rate| Mutex::new(TokenBucket::new(rate, Duration::ZERO))),
                timeout: limits.request_timeout,
                epoch: Instant::now(),
            }),
        }
    }
}

impl Shared {
    /// Takes a write token, or the refusal to answer with.
    fn admit_write(&self) -> Result<(), Status> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        // The bucket's state is two numbers, consistent after any panic: keep using it.
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(self.epoch.elapsed()).map_err(|retry_in| {
            Status::resource_exhausted(quota::rate_limited(bucket.rate(), retry_in))
        })
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service behind [`LimitsLayer`].
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Limited<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = quota::classify(request.uri().path());
        if call == Call::Write
            && let Err(status) = self.shared.admit_write()
        {
            tracing::debug!(
                path = request.uri().path(),
                "write refused: {}",
                status.message()
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // The service that was made ready serves this call; its clone waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let answer = inner.call(request);
        if call == Call::Stream {
            return Box::pin(answer);
        }
        let timeout = self.shared.timeout;
        // Bounds the answer (the handler), not the body after it: a unary reply is already
        // encoded by then, and a stream that the list above misses still runs once it started.
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(answered) => answered.map(oversize_as_exhausted),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call took longer than the coordinator's --request-timeout ({}); a \
                     write may still have been applied: look before retrying",
                    humantime::format_duration(timeout)
                ))
                .into_http()),
            }
        })
    }
}

/// tonic refuses a request over the services' decoding limit with OUT_OF_RANGE and its own
/// words; gRPC's own servers say RESOURCE_EXHAUSTED, and so does every other limit here. The
/// sizes tonic names are kept.
fn oversize_as_exhausted<B: Default>(answer: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(answer.headers()) else {
        return answer;
    };
    let words = "decoded message length too large: ";
    let Some(at) = status.message().find(words) else {
        return answer;
    };
    if status.code() != tonic::Code::OutOfRange {
        return answer;
    }
    let sizes = &status.message()[at + words.len()..];
    Status::resource_exhausted(format!(
        "request too large: {sizes} (the largest message the coordinator accepts is {})",
        crate::limits::human(pmcluster_proto::MAX_MESSAGE_BYTES)
    ))
    .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    /// A handler that answers at once, or never.
    #[derive(Clone)]
    struct Handler {
        answers: bool,
    }

    impl Service<http::Request<()>> for Handler {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<http::Response<String>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let answers = self.answers;
            Box::pin(async move {
                if !answers {
                    std::future::pending::<()>().await;
                }
                Ok(http::Response::new("ok".to_string()))
            })
        }
    }

    fn request(method: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(format!("http://coordinator/pmcluster.v1.Cluster/{method}"))
            .body(())
            .unwrap_or_default()
    }

    /// The gRPC code and message of an answer (`Ok` and the body when it is not an error).
    fn outcome(answer: &http::Response<String>) -> (tonic::Code, String) {
        match Status::from_header_map(answer.headers()) {
            Some(s) => (s.code(), s.message().to_string()),
            None => (tonic::Code::Ok, answer.body().clone()),
        }
    }

    async fn send(svc: &mut Limited<Handler>, method: &str) -> (tonic::Code, String) {
        match svc.ready().await {
            Ok(ready) => match ready.call(request(method)).await {
                Ok(answer) => outcome(&answer),
                Err(never) => match never {},
            },
            Err(never) => match never {},
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_past_the_burst_are_refused_and_reads_pass() {
        let limits = Limits {
            write_rate: Some(WriteRate {
                per_sec: 1,
                burst: 2,
            }),
            ..Limits::default()
        };
        let mut svc = LimitsLayer::new(&limits).layer(Handler { answers: true });
        let ok = (tonic::Code::Ok, "ok".to_string());
        assert_eq!(send(&mut svc, "Scale").await, ok);
        assert_eq!(send(&mut svc, "ApplyApp").await, ok);
        let (code, message) = send(&mut svc, "Scale").await;
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert_eq!(
            message,
            "write rate limit (--write-rate 1/s, --write-burst 2) reached; retry in 1000 ms"
        );
        for read in ["ListApps", "GetApp", "WatchEvents", "StreamLogs"] {
            assert_eq!(send(&mut svc, read).await, ok, "{read}");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(send(&mut svc, "Scale").await, ok);

        let unlimited = Limits {
            write_rate: None,
            ..limits
        };
        let mut svc = LimitsLayer::new(&unlimited).layer(Handler { answers: true });
        for _ in 0..100 {
            assert_eq!(send(&mut svc, "Scale").await, ok);
        }
    }

    #[test]
    fn an_oversize_request_is_resource_exhausted() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 17825792 bytes, the limit is: \
             16777216 bytes",
        );
        let answer = oversize_as_exhausted(tonic_says.into_http::<String>());
        assert_eq!(
            outcome(&answer),
            (
                tonic::Code::ResourceExhausted,
                "request too large: found 17825792 bytes, the limit is: 16777216 bytes (the \
                 largest message the coordinator accepts is 16 MiB)"
                    .to_string()
            )
        );
        for other in [Status::out_of_range("index 7"), Status::not_found("x")] {
            let answer = oversize_as_exhausted(other.clone().into_http::<String>());
            assert_eq!(
                outcome(&answer),
                (other.code(), other.message().to_string())
            );
        }
        let ok = http::Response::new("ok".to_string());
        assert_eq!(outcome(&oversize_as_exhausted(ok)).0, tonic::Code::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_call_times_out_and_a_stream_does_not() {
        let limits = Limits {
            request_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let mut svc = LimitsLayer::new(&limits).layer(Handler { answers: false });
        let (code, message) = send(&mut svc, "ListApps").await;
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        assert!(message.contains("--request-timeout (5s)"), "{message}");
        // With the clock paused, the timeout would fire as soon as nothing else is runnable:
        // an hour later, the stream's handler is still waited for.
        let stream = send(&mut svc, "WatchEvents");
        let waited = tokio::time::timeout(Duration::from_secs(3600), stream).await;
        assert!(waited.is_err(), "a stream was cut: {waited:?}");
    }
}
