//! The `--metrics-listen` HTTP server: `GET /metrics` and nothing else, HTTP/1.1, plaintext.
//! It runs beside the gRPC server and ends with it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Metrics, to_prometheus_text};
use crate::lead::Seat;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until `cancel`; each connection is a task in `tasks`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    seat: Arc<Seat>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: the next accept may do.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, seat, cancel) = (metrics.clone(), seat.clone(), cancel.clone());
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(request, metrics.clone(), seat.clone())
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                r = connection.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, "metrics connection: {e}");
                },
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
    seat: Arc<Seat>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n",
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    // Prometheus asks for OpenMetrics first; anything else (curl, older scrapers, parsers of
    // the classic format) gets the Prometheus text format.
    let openmetrics = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // The snapshot takes the control's lock, which a commit may hold through an fsync.
    let rendered = tokio::task::spawn_blocking(move || metrics.render(&seat)).await;
    let text = match rendered {
        Ok(text) => text,
        Err(e) => {
            tracing::error!("rendering the metrics failed: {e}");
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering failed\n",
            ));
        }
    };
    let (body, content_type) = if openmetrics {
        (text, OPENMETRICS_TEXT)
    } else {
        (to_prometheus_text(&text), PROMETHEUS_TEXT)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
