//! Wiring: opens the store, builds the gRPC server (Cluster, AgentLink, health, reflection) on any
//! listener, and runs the housekeeping tick until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{AgentLinkApi, ClusterApi};
use crate::control::{Control, ControlConfig};
use crate::store::{EmbeddedStore, Store};

/// Validated coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub control: ControlConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {error}; create it, or give another --data-dir")]
    DataDir { path: String, error: std::io::Error },
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the embedded store in `config.data_dir`.
pub fn open_control(config: &Config) -> Result<Arc<Control>, ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        error,
    })?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&config.data_dir.join("state.redb"))?);
    Ok(Arc::new(Control::open(store, config.control.clone())?))
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves every service on `listener` until `shutdown` completes.
pub async fn serve(
    control: Arc<Control>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::cluster_server::ClusterServer<ClusterApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pmcluster_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    // Older grpcurl and some language clients only speak the v1alpha reflection protocol.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pmcluster_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let ticker = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                control.tick();
            }
        })
    };
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(pb::cluster_server::ClusterServer::new(ClusterApi {
            control: control.clone(),
        }))
        .add_service(pb::agent_link_server::AgentLinkServer::new(AgentLinkApi {
            control,
        }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    ticker.abort();
    Ok(result?)
}
