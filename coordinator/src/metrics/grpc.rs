//! The tower layer that times every gRPC call the server admits, by method.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::Metrics;

/// Times each call from its arrival to its response headers into
/// `pmcluster_grpc_request_duration_seconds{method}`. It sits behind the auth layer, so the
/// methods it labels are the ones the method table names (a path a caller makes up is refused
/// before it and cannot grow the label set); without `--metrics-listen` it passes calls through.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service behind [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Timed<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = method_of(request.uri().path()).to_string();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            metrics.observe_call(&method, started.elapsed().as_secs_f64());
            response
        })
    }
}

/// `pmcluster.v1.Cluster/Apply` of the path `/pmcluster.v1.Cluster/Apply`.
fn method_of(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn each_call_is_timed_under_its_method() {
        let metrics = Arc::new(Metrics::default());
        let echo = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut timed = GrpcMetricsLayer::new(Some(metrics.clone())).layer(echo);
        for method in ["Apply", "Apply", "ListApps"] {
            let request = http::Request::builder()
                .uri(format!("http://c/pmcluster.v1.Cluster/{method}"))
                .body(())
                .unwrap_or_default();
            let ready = timed.ready().await.map_err(|e| e.to_string());
            assert!(ready.is_ok());
            assert!(timed.call(request).await.is_ok());
        }
        let seat = crate::lead::Seat::standby(
            "http://c".into(),
            crate::lead::StoreInfo {
                kind: "memory".into(),
                location: String::new(),
            },
        );
        let text = metrics.render(&seat);
        let count = |m: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!(
                    "pmcluster_grpc_request_duration_seconds_count{{method=\"pmcluster.v1.Cluster/{m}\"}}"
                )))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        };
        assert_eq!(count("Apply").as_deref(), Some("2"), "{text}");
        assert_eq!(count("ListApps").as_deref(), Some("1"), "{text}");
        assert!(text.contains("pmcluster_coordinator_leader 0\n"), "{text}");
        assert!(
            !text.contains("pmcluster_instance_up"),
            "a standby has no cluster figures: {text}"
        );
    }
}
