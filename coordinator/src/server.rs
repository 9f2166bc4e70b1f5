//! Wiring: opens the store, builds the gRPC server (Cluster, AgentLink, health, reflection) on any
//! listener, and runs the housekeeping tick until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AgentLinkApi, ClusterApi, Lifecycle};
use crate::control::{Control, ControlConfig};
use crate::lead::status::CoordinationApi;
use crate::lead::{Directory, Role, Seat};
use crate::store::{EmbeddedStore, Store};
use crate::throttle::{Limits, LimitsLayer};

/// The least time between two ticks of the control loop: a burst of changes (reports of many
/// instances coming online) costs one tick, not one each.
const MIN_TICK_GAP: Duration = Duration::from_millis(20);

/// Validated coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    /// The URL clients should dial; `None`: http:// and the bound address.
    pub advertise: Option<String>,
    pub control: ControlConfig,
    /// How long a shutdown may take to finish in-flight calls before the process exits anyway.
    pub shutdown_grace: Duration,
    /// `--tls-cert`, `--tls-key`, `--client-ca`: serve mutual TLS. `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--max-streams-per-connection`, `--request-timeout`, `--write-rate`, `--write-burst`.
    pub limits: Limits,
    /// `--metrics-listen`: where `/metrics` is served. `None`: no metrics are kept.
    pub metrics_listen: Option<SocketAddr>,
}

/// How [`serve_tls`] serves, besides its listener.
pub struct ServeOptions {
    /// How long in-flight calls may take to finish after the shutdown future completes.
    pub grace: Duration,
    pub limits: Limits,
    /// The metrics and the listener of `/metrics` (`--metrics-listen`), bound by the caller.
    pub metrics: Option<(Arc<crate::metrics::Metrics>, TcpListener)>,
}

impl ServeOptions {
    /// The default limits and no metrics.
    pub fn with_grace(grace: Duration) -> ServeOptions {
        ServeOptions {
            grace,
            limits: Limits::default(),
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {error}; create it, or give another --data-dir")]
    DataDir { path: String, error: std::io::Error },
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The OS error is part of the message, not a source: printed with its causes (`{:#}`), it
    /// would be said twice.
    #[error("cannot listen on {addr}: {}", bind_advice(.flag, .addr, .error))]
    Bind {
        addr: SocketAddr,
        /// The flag that gave the address, for the advice.
        flag: &'static str,
        error: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// One redb file in the data dir: a single coordinator.
    Embedded { data_dir: PathBuf },
    /// etcd, shared by an HA pair that elects its leader there.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        lease_ttl: Duration,
        /// `--etcd-ca`, `--etcd-cert`, `--etcd-key`: TLS with a client certificate to etcd
        /// (`https://` endpoints). `None`: plaintext (`http://`).
        tls: Option<crate::tls::EtcdTlsFiles>,
    },
}

/// Opens the embedded store in `data_dir`; with `metrics`, its commits are timed.
pub fn open_control(
    data_dir: &Path,
    control: &ControlConfig,
    metrics: Option<&Arc<crate::metrics::Metrics>>,
) -> Result<Arc<Control>, ServeError> {
    std::fs::create_dir_all(data_dir).map_err(|error| ServeError::DataDir {
        path: data_dir.display().to_string(),
        error,
    })?;
    let mut store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&data_dir.join("state.redb"))?);
    if let Some(metrics) = metrics {
        store = metrics.timed(store);
    }
    Ok(Arc::new(Control::open(store, control.clone())?))
}

/// Binds `addr`, which `flag` gave (`--listen`).
pub async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind { addr, flag, error })
}

/// Why `addr` could not be bound, and what to do about it.
fn bind_advice(flag: &str, addr: &SocketAddr, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::AddrInUse => format!(
            "{error}; another process holds port {}: stop it, or give {flag} another address",
            addr.port()
        ),
        ErrorKind::AddrNotAvailable => format!(
            "{error}; no interface of this host has {}: give {flag} one of its addresses, or \
             0.0.0.0 for all of them",
            addr.ip()
        ),
        ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "{error}; ports below 1024 need privileges: give {flag} a port of 1024 or above"
        ),
        _ => error.to_string(),
    }
}

/// With `addr` (`--metrics-listen`): fresh metrics and their bound listener. Bound before the
/// gRPC listener, like it, so a taken port is an error at startup.
pub async fn bind_metrics(
    addr: Option<SocketAddr>,
) -> Result<Option<(Arc<crate::metrics::Metrics>, TcpListener)>, ServeError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let flag = "--metrics-listen";
    let listener = bind(addr, flag).await?;
    let bound = listener
        .local_addr()
        .map_err(|error| ServeError::Bind { addr, flag, error })?;
    // Like the gRPC listener's line: with port 0 this is how a caller learns the port.
    announce(&format!(
        "pmcluster-coordinator metrics on http://{bound}/metrics"
    ));
    tracing::info!(%bound, "serving /metrics");
    Ok(Some((
        Arc::new(crate::metrics::Metrics::default()),
        listener,
    )))
}

/// Largest gRPC message, either way, on every link (agent sessions and the public API). tonic's
/// default decode limit is 4 MiB and its encode limit is unbounded, so a reply or desired set
/// could be sent that the peer then refuses. Set on both sides from one constant, with the
/// coordinator keeping desired sets and replies well below it (see `control`'s budgets).
pub const MAX_MESSAGE_BYTES: usize = pmcluster_proto::MAX_MESSAGE_BYTES;

/// Serves every service on `listener` until `shutdown` completes, then shuts down within
/// `grace`: agent sessions are closed at once (agents keep their instances and reconnect to the
/// next coordinator), in-flight calls may finish, and every task the server spawned is awaited.
/// When the grace expires the call returns anyway, so a stuck client cannot hold the process
/// (and with it the store) past it.
pub async fn serve(
    seat: Arc<Seat>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    serve_with(seat, None, listener, shutdown, grace).await
}

/// [`serve`], with `directory` telling `pmcluster status` about the other coordinators.
pub async fn serve_with(
    seat: Arc<Seat>,
    directory: Option<Arc<dyn Directory>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let options = ServeOptions::with_grace(grace);
    serve_tls(seat, directory, None, listener, shutdown, options).await
}

/// [`serve_with`], serving mutual TLS when `tls` is given (see [`crate::tls::server_config`]):
/// every connection then carries a client certificate from the cluster CA, and an agent
/// session must carry the certificate of the node it registers as. The options' limits bound
/// streams per connection, unary call time and the write rate (see [`crate::throttle`]); with
/// metrics, calls are timed and `/metrics` is served on its listener until shutdown.
pub async fn serve_tls(
    seat: Arc<Seat>,
    directory: Option<Arc<dyn Directory>>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let ServeOptions {
        grace,
        limits,
        metrics,
    } = options;
    let limits = &limits;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pmcluster_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // Older grpcurl and some language clients only speak the v1alpha reflection protocol.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pmcluster_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let life = Lifecycle {
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
    };
    life.tasks
        .spawn(drive(seat.clone(), health, life.cancel.clone()));
    let metrics = metrics.map(|(metrics, listener)| {
        life.tasks.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            seat.clone(),
            life.cancel.clone(),
            life.tasks.clone(),
        ));
        metrics
    });
    let stopping = life.cancel.clone();
    let require_agent_cert = tls.is_some();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        // Authentication first: a refused caller uses up no write tokens.
        .layer(crate::auth::AuthLayer::new(seat.clone(), tls.is_some()))
        // Behind auth: only methods the table names are timed (a made-up path cannot add a
        // label value); in front of the limits, so a refused write is timed too.
        .layer(crate::metrics::GrpcMetricsLayer::new(metrics))
        .layer(LimitsLayer::new(limits))
        .add_service(health_service)
        .add_service(pb::coordination_server::CoordinationServer::new(
            CoordinationApi {
                seat: seat.clone(),
                directory,
            },
        ))
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(pb::access_server::AccessServer::new(
            crate::api::access::AccessApi {
                seat: seat.clone(),
                life: life.clone(),
            },
        ))
        .add_service(
            pb::cluster_server::ClusterServer::new(ClusterApi {
                seat: seat.clone(),
                life: life.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::agent_link_server::AgentLinkServer::new(AgentLinkApi {
                seat: seat.clone(),
                life: life.clone(),
                require_agent_cert,
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    let stopped = async move { stopping.cancelled().await };
    // The two listeners yield different stream types, hence the box.
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(config) => {
            let incoming = crate::tls::incoming(listener, config, life.cancel.clone(), &life.tasks);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            // No Nagle: a small reply must not wait for the client's delayed ACK (40 ms on
            // Linux), as the TLS path's accept loop also sets.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    let mut server = server;
    let failed = tokio::select! {
        r = &mut server => Some(r),
        () = shutdown => None,
    };
    // From here on: no new connections, sessions end, streams end, the ticker stops.
    life.cancel.cancel();
    life.tasks.close();
    if let Some(result) = failed {
        life.tasks.wait().await;
        return Ok(result?);
    }
    tracing::info!(
        ?grace,
        "shutting down: closing agent sessions, finishing in-flight calls"
    );
    let drained = tokio::time::timeout(grace, async {
        let result = server.await;
        life.tasks.wait().await;
        result
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            ?grace,
            "shutdown grace expired with calls still open; exiting anyway"
        ),
    }
    Ok(())
}

/// Runs the control loop of whichever control leads, and keeps the health service in step: a
/// standby is `NOT_SERVING` for `pmcluster.v1.Cluster` and runs no loop (it neither schedules,
/// reconciles, rolls out nor autoscales).
async fn drive(
    seat: Arc<Seat>,
    health: tonic_health::server::HealthReporter,
    cancel: CancellationToken,
) {
    let mut roles = seat.subscribe();
    loop {
        let role = roles.borrow_and_update().clone();
        match role {
            Role::Leader { control, .. } => {
                health
                    .set_serving::<pb::cluster_server::ClusterServer<ClusterApi>>()
                    .await;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = control_loop(control.clone()) => {}
                    () = control.retired() => {}
                    changed = roles.changed() => if changed.is_err() { return },
                }
            }
            Role::Standby { .. } => {
                health
                    .set_not_serving::<pb::cluster_server::ClusterServer<ClusterApi>>()
                    .await;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = roles.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// Ticks when something changed or something becomes due (a follow-up, a heartbeat that may
/// lapse, an autoscale sample, a rollout step), never more often than MIN_TICK_GAP and never
/// less often than the control's safety tick. Runs until dropped.
async fn control_loop(control: Arc<Control>) {
    loop {
        // A tick may commit (rollout steps, autoscaling, reschedules): off the workers.
        // The next tick's time too: it takes the state lock, which a long write may hold.
        let ticking = control.clone();
        let next = match tokio::task::spawn_blocking(move || {
            ticking.tick();
            ticking.next_tick_at()
        })
        .await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "control tick failed");
                control.next_tick_at()
            }
        };
        let wait_ms = next - control.now_ms();
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        tokio::select! {
            () = control.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(MIN_TICK_GAP).await;
    }
}

/// Prints a line that a caller reads to learn an address (`pmcluster up`, tests), ignoring a
/// stdout that nobody reads any more: `println!` would panic on the closed pipe.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed as `main` prints errors (`{:#}`, with causes), the OS error comes once, with what
    /// to do.
    #[tokio::test]
    async fn a_taken_port_is_said_once_with_what_to_do() {
        let held = bind("127.0.0.1:0".parse().expect("an address"), "--listen")
            .await
            .expect("a free port");
        let addr = held.local_addr().expect("its address");
        let err = bind(addr, "--listen").await.expect_err("the port is taken");
        let text = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(
            text,
            format!(
                "cannot listen on {addr}: Address already in use (os error 98); another \
                 process holds port {}: stop it, or give --listen another address",
                addr.port()
            )
        );
    }

    #[test]
    fn bind_advice_names_the_flag() {
        use std::io::{Error, ErrorKind};
        let addr: SocketAddr = "10.9.8.7:80".parse().expect("an address");
        let not_here = bind_advice("--listen", &addr, &Error::from(ErrorKind::AddrNotAvailable));
        assert!(
            not_here.ends_with(
                "; no interface of this host has 10.9.8.7: give --listen one of its \
                 addresses, or 0.0.0.0 for all of them"
            ),
            "{not_here}"
        );
        let low = bind_advice(
            "--metrics-listen",
            &addr,
            &Error::from(ErrorKind::PermissionDenied),
        );
        assert!(
            low.ends_with(
                "; ports below 1024 need privileges: give --metrics-listen a port of 1024 or above"
            ),
            "{low}"
        );
        let other = Error::other("boom");
        assert_eq!(bind_advice("--listen", &addr, &other), "boom");
    }
}
