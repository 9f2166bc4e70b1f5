//! `/metrics`: the coordinator's figures in the Prometheus text format, on a listener of its own
//! (`--metrics-listen`).
//!
//! Two kinds of figures. The coordinator's own (gRPC call durations by method, store commit
//! durations) are histograms updated as calls and commits happen: [`GrpcMetricsLayer`] on the
//! server and [`TimedStore`] around the store. The cluster's (instances, apps, nodes, the
//! autoscaler's counts, leadership) are read at scrape time: one [`Control::metrics_view`] copy
//! under the state lock, then written out after it is released, so 10,000 instances cost
//! nothing between scrapes and reports update no metric. Agents have no port: their figures are
//! those of their status reports. Nothing here reads an app's spec beyond names and counts, so
//! no environment value or secret can reach a scrape.

mod grpc;
mod http;
mod text;

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::control::Control;
use crate::lead::Seat;
use crate::model::view::MetricsView;
use crate::model::{Batch, NodeStatus, Persisted};
use crate::store::{Store, StoreError};

pub use grpc::GrpcMetricsLayer;
pub use http::serve;
pub use text::to_prometheus_text;

/// A label set: names are fixed, values come from the cluster (app and node names, methods).
type Labels = Vec<(&'static str, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// gRPC calls: from 0.25 ms to about 8 s.
fn grpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// The coordinator's own metrics and the registry they are written from. One per process: it
/// outlives the leader's controls (each term of an HA pair opens a new one).
pub struct Metrics {
    registry: Registry,
    grpc: HistogramFamily,
    commit: Histogram,
    fenced: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let grpc = HistogramFamily::new_with_constructor(grpc_histogram);
        // Commits: from 50 µs (redb in memory) to about 3 s (etcd under load).
        let commit = Histogram::new(exponential_buckets(0.00005, 2.0, 17));
        let mut registry = Registry::default();
        registry.register(
            "pmcluster_grpc_request_duration_seconds",
            "Time from a gRPC call's arrival to its response headers, by method (a stream's \
             is the time to open it)",
            grpc.clone(),
        );
        registry.register(
            "pmcluster_store_commit_duration_seconds",
            "Time of each store commit of the write path (redb fsync or etcd transaction)",
            commit.clone(),
        );
        // The proof that a deposed leader's writes did not land: each one etcd refused on the
        // leader key's revision. Counted per transaction; a group commit refuses all its writers.
        let fenced = Counter::default();
        registry.register(
            "pmcluster_store_commits_fenced",
            "Store commits etcd refused because this coordinator's leader key was gone or \
             another coordinator's (nothing of them was written)",
            fenced.clone(),
        );
        Metrics {
            registry,
            grpc,
            commit,
            fenced,
        }
    }
}

impl Metrics {
    /// Records one gRPC call of `method` (`pmcluster.v1.Cluster/Apply`).
    pub fn observe_call(&self, method: &str, seconds: f64) {
        self.grpc
            .get_or_create(&vec![("method", method.to_string())])
            .observe(seconds);
    }

    /// Wraps `store` so that every commit is timed.
    pub fn timed(self: &Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(TimedStore {
            inner: store,
            metrics: self.clone(),
        })
    }

    /// Everything, in the OpenMetrics text format (`# EOF` at the end). The cluster's figures
    /// come from the leader's control, read once; a standby has none but its leader gauge.
    /// Blocks on the control's lock: call it off the async workers.
    pub fn render(&self, seat: &Seat) -> String {
        let control = seat.control().ok();
        let cluster = ClusterCollector {
            leader: seat.is_leader(),
            view: control.as_deref().map(Control::metrics_view),
        };
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(cluster));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a name.
        let written = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &scrape))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if let Err(e) = written {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// A [`Store`] whose commits feed `pmcluster_store_commit_duration_seconds`. The control's
/// write path is the only caller of `commit`, so this times exactly its commits.
struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Store for TimedStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.inner.load()
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.commit(batch);
        self.metrics.commit.observe(started.elapsed().as_secs_f64());
        if matches!(result, Err(StoreError::Fenced)) {
            self.metrics.fenced.inc();
        }
        result
    }
}

/// The figures read at scrape time.
#[derive(Debug)]
struct ClusterCollector {
    leader: bool,
    /// `None` on a standby.
    view: Option<MetricsView>,
}

/// One metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        single(
            e,
            "pmcluster_coordinator_leader",
            "1 while this coordinator leads (a single coordinator always does), 0 as a standby",
            gauge(i64::from(self.leader)),
        )?;
        let Some(view) = &self.view else {
            return Ok(());
        };
        let instance = |i: &crate::model::view::InstanceFigures| -> Labels {
            vec![
                ("app", i.app.clone()),
                ("index", i.index.to_string()),
                ("node", i.node.clone()),
            ]
        };
        let instances = &view.instances;
        family(
            e,
            "pmcluster_instance_up",
            "1 while the instance is online, else 0 (pending, starting, stopped, crashed, or \
             its node down)",
            MetricType::Gauge,
            instances
                .iter()
                .map(|i| (instance(i), gauge(i64::from(i.online)))),
        )?;
        // Registered without `_total`: the encoder adds it to a counter's samples.
        family(
            e,
            "pmcluster_instance_cpu_seconds",
            "CPU time (user + system) of the instance's process tree, as its agent summed it",
            MetricType::Counter,
            instances.iter().map(|i| {
                (
                    instance(i),
                    ConstCounter::new(i.cpu_time_ms as f64 / 1000.0),
                )
            }),
        )?;
        family(
            e,
            "pmcluster_instance_memory_rss_bytes",
            "Resident memory of the instance's process tree",
            MetricType::Gauge,
            instances
                .iter()
                .map(|i| (instance(i), gauge(saturating_i64(i.memory_bytes)))),
        )?;
        family(
            e,
            "pmcluster_instance_restarts",
            "Restarts of the instance by its agent",
            MetricType::Counter,
            instances
                .iter()
                .map(|i| (instance(i), ConstCounter::new(i.restarts))),
        )?;
        let app = |name: &str| -> Labels { vec![("app", name.to_string())] };
        let apps = &view.apps;
        for (name, help, value) in [
            (
                "pmcluster_app_instances_desired",
                "Instances the app asks for",
                (|a| a.desired) as fn(&crate::model::view::AppFigures) -> u32,
            ),
            (
                "pmcluster_app_instances_online",
                "Instances of the app online",
                |a| a.online,
            ),
            (
                "pmcluster_app_instances_pending",
                "Instances of the app waiting for a node",
                |a| a.pending,
            ),
        ] {
            family(
                e,
                name,
                help,
                MetricType::Gauge,
                apps.iter()
                    .map(|a| (app(&a.app), gauge(i64::from(value(a))))),
            )?;
        }
        let rollouts: Vec<_> = apps
            .iter()
            .filter_map(|a| a.rollout.map(|r| (a.app.as_str(), r)))
            .collect();
        family(
            e,
            "pmcluster_app_rollout_updated",
            "Indices the app's current (or last) rollout has finished",
            MetricType::Gauge,
            rollouts
                .iter()
                .map(|(a, (_, done, _))| (app(a), gauge(i64::from(*done)))),
        )?;
        family(
            e,
            "pmcluster_app_rollout_desired",
            "Indices the app's current (or last) rollout must finish",
            MetricType::Gauge,
            rollouts
                .iter()
                .map(|(a, (_, _, total))| (app(a), gauge(i64::from(*total)))),
        )?;
        family(
            e,
            "pmcluster_app_rollout_state",
            "1 for the state of the app's current (or last) rollout",
            MetricType::Gauge,
            rollouts.iter().map(|(a, (state, _, _))| {
                let mut labels = app(a);
                labels.push(("state", state.replace(' ', "_")));
                (labels, gauge(1))
            }),
        )?;
        family(
            e,
            "pmcluster_autoscale_decisions",
            "Scale decisions of the autoscaler by direction and outcome (scaled, capped by \
             --max-instances-per-app, refused, failed) since this leader started",
            MetricType::Counter,
            view.autoscale.iter().map(|c| {
                let mut labels = app(&c.app);
                labels.push(("direction", c.direction.to_string()));
                labels.push(("outcome", c.outcome.to_string()));
                (labels, ConstCounter::new(c.count))
            }),
        )?;
        let node = |name: &str| -> Labels { vec![("node", name.to_string())] };
        let nodes = &view.nodes;
        family(
            e,
            "pmcluster_node_state",
            "1 for the node's state (ready, down, draining, ineligible, quarantined), 0 for \
             the others",
            MetricType::Gauge,
            nodes.iter().flat_map(|n| {
                NodeStatus::ALL.into_iter().map(move |s| {
                    let mut labels = node(&n.name);
                    labels.push(("state", s.name().to_string()));
                    (labels, gauge(i64::from(n.status == s)))
                })
            }),
        )?;
        family(
            e,
            "pmcluster_node_cpu_cores",
            "CPU cores the node's agent reported",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|n| (node(&n.name), gauge(i64::from(n.cores)))),
        )?;
        family(
            e,
            "pmcluster_node_memory_bytes",
            "Memory the node's agent reported",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|n| (node(&n.name), gauge(saturating_i64(n.memory_bytes)))),
        )?;
        family(
            e,
            "pmcluster_node_allocated_cpu_cores",
            "CPU the instances placed on the node reserve (their apps' resources.cpu)",
            MetricType::Gauge,
            nodes.iter().map(|n| {
                let cores = n.allocated_cpu_millis as f64 / 1000.0;
                (node(&n.name), ConstGauge::new(cores))
            }),
        )?;
        family(
            e,
            "pmcluster_node_allocated_memory_bytes",
            "Memory the instances placed on the node reserve (their apps' resources.memory)",
            MetricType::Gauge,
            nodes.iter().map(|n| {
                (
                    node(&n.name),
                    gauge(saturating_i64(n.allocated_memory_bytes)),
                )
            }),
        )?;
        family(
            e,
            "pmcluster_node_instances",
            "Instances placed on the node",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|n| (node(&n.name), gauge(i64::from(n.instances)))),
        )?;
        Ok(())
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
