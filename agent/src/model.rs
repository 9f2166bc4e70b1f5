//! Plain data the agent works on: instance ids, assignments and desired sets in domain form, and
//! the observed status of one instance.
//!
//! The conversions from and to the wire types (`pmcluster_proto::v1`) live here, at the boundary,
//! so the rest of the crate never matches on prost types. No I/O, no clocks.

use std::fmt;
use std::sync::Arc;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;

/// Instance id as the coordinator minted it (a UUID, kept as text: the agent only compares it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn new(id: impl Into<String>) -> InstanceId {
        InstanceId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one instance on this node must be, as the agent understands it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub instance_id: InstanceId,
    /// App name as sent, kept apart from `spec` so an instance with an invalid spec can still be
    /// named in reports and logs.
    pub app: String,
    pub index: u32,
    pub app_version: u64,
    /// The validated spec, or why it was rejected. A rejected spec is not dropped: the instance
    /// is reported ERRORED with this message so the user sees why it does not run.
    pub spec: Result<Arc<AppSpec>, String>,
    /// Port the coordinator resolved from a fixed range; `None` for no port or `auto:`.
    pub port: Option<u16>,
    /// False: keep the instance stopped (a user stopped it).
    pub run: bool,
    pub restart_epoch: u64,
}

/// The full set of instances this node must run.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DesiredSet {
    pub generation: u64,
    pub assignments: Vec<Assignment>,
}

impl From<pb::Assignment> for Assignment {
    fn from(a: pb::Assignment) -> Assignment {
        let wire_spec = a.spec.unwrap_or_default();
        let app = wire_spec.name.clone();
        let spec = if a.port > u32::from(u16::MAX) {
            Err(format!("port {} is not a port number (1-65535)", a.port))
        } else {
            AppSpec::try_from(wire_spec)
                .map(Arc::new)
                .map_err(|e| format!("invalid spec: {e}"))
        };
        Assignment {
            instance_id: InstanceId::new(a.instance_id),
            app,
            index: a.index,
            app_version: a.app_version,
            spec,
            port: u16::try_from(a.port).ok().filter(|p| *p != 0),
            run: a.run,
            restart_epoch: a.restart_epoch,
        }
    }
}

impl From<pb::DesiredSet> for DesiredSet {
    /// Assignments without an instance id are dropped: nothing could ever report on them.
    fn from(set: pb::DesiredSet) -> DesiredSet {
        DesiredSet {
            generation: set.generation,
            assignments: set
                .assignments
                .into_iter()
                .filter(|a| !a.instance_id.is_empty())
                .map(Assignment::from)
                .collect(),
        }
    }
}

/// Lifecycle state of an instance as the agent observes it (a subset of `pb::InstanceState`:
/// PENDING and UNKNOWN are coordinator-side states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Launching,
    Online,
    /// Exited, and started again once its restart delay and backoff have passed.
    Restarting,
    Exited,
    Errored,
    Stopping,
    Stopped,
}

impl From<InstanceState> for pb::InstanceState {
    fn from(s: InstanceState) -> pb::InstanceState {
        match s {
            InstanceState::Launching => pb::InstanceState::Launching,
            InstanceState::Online => pb::InstanceState::Online,
            InstanceState::Restarting => pb::InstanceState::Restarting,
            InstanceState::Exited => pb::InstanceState::Exited,
            InstanceState::Errored => pb::InstanceState::Errored,
            InstanceState::Stopping => pb::InstanceState::Stopping,
            InstanceState::Stopped => pb::InstanceState::Stopped,
        }
    }
}

/// Health as reported to the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Health {
    /// No health check.
    #[default]
    None,
    /// Configured, no result yet for this process.
    Unknown,
    Healthy,
    Unhealthy,
}

impl From<Health> for pb::HealthState {
    fn from(h: Health) -> pb::HealthState {
        match h {
            Health::None => pb::HealthState::Unspecified,
            Health::Unknown => pb::HealthState::Unknown,
            Health::Healthy => pb::HealthState::Healthy,
            Health::Unhealthy => pb::HealthState::Unhealthy,
        }
    }
}

/// Observed status of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Percent of one core over the last sample period.
    pub cpu_percent: f64,
    /// CPU time of the process tree while this agent watched it (see `metrics::aggregate`):
    /// never goes down, whatever restarts, so Prometheus can take its rate.
    pub cpu_time_ms: u64,
    pub memory_bytes: u64,
    pub restarts: u32,
    /// Unix milliseconds when the current process started; 0 when none runs.
    pub started_at_ms: i64,
    pub last_exit_code: Option<i32>,
    pub message: String,
    pub restart_epoch: u64,
    pub health: Health,
    /// Failed attempts in a row to spawn its process; 0 once one runs.
    pub start_failures: u32,
}

impl Status {
    pub fn new(state: InstanceState, restart_epoch: u64) -> Status {
        Status {
            state,
            pid: None,
            port: None,
            cpu_percent: 0.0,
            cpu_time_ms: 0,
            memory_bytes: 0,
            restarts: 0,
            started_at_ms: 0,
            last_exit_code: None,
            message: String::new(),
            restart_epoch,
            health: Health::None,
            start_failures: 0,
        }
    }

    pub fn to_pb(&self, id: &InstanceId) -> pb::InstanceStatus {
        pb::InstanceStatus {
            instance_id: id.as_str().to_string(),
            state: pb::InstanceState::from(self.state).into(),
            pid: self.pid.unwrap_or(0),
            port: self.port.map(u32::from).unwrap_or(0),
            cpu_percent: self.cpu_percent,
            memory_bytes: self.memory_bytes,
            restarts: self.restarts,
            started_at_ms: self.started_at_ms,
            last_exit_code: self.last_exit_code,
            message: self.message.clone(),
            restart_epoch: self.restart_epoch,
            health: pb::HealthState::from(self.health).into(),
            start_failures: self.start_failures,
            cpu_time_ms: self.cpu_time_ms,
        }
    }
}

/// Host-wide numbers for the heartbeat.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HostSample {
    /// Percent of all cores.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub load1: f64,
    pub cores: u32,
}

impl From<&HostSample> for pb::HostMetrics {
    fn from(h: &HostSample) -> pb::HostMetrics {
        pb::HostMetrics {
            cpu_percent: h.cpu_percent,
            memory_used_bytes: h.memory_used_bytes,
            memory_total_bytes: h.memory_total_bytes,
            load1: h.load1,
            cores: h.cores,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_assignment_conversion() {
        let wire = pb::Assignment {
            instance_id: "i1".into(),
            index: 2,
            app_version: 3,
            spec: Some(pb::AppSpec {
                name: "web".into(),
                script: "node".into(),
                instances: 3,
                ..Default::default()
            }),
            port: 4102,
            run: true,
            restart_epoch: 1,
        };
        let a = Assignment::from(wire.clone());
        assert_eq!(a.app, "web");
        assert_eq!(a.port, Some(4102));
        assert!(a.spec.is_ok());

        let bad = Assignment::from(pb::Assignment {
            spec: Some(pb::AppSpec {
                name: "web".into(),
                ..Default::default()
            }),
            ..wire.clone()
        });
        assert!(
            matches!(&bad.spec, Err(m) if m.contains("script")),
            "{bad:?}"
        );

        let bad_port = Assignment::from(pb::Assignment {
            port: 70_000,
            ..wire
        });
        assert!(bad_port.spec.is_err());
        assert_eq!(bad_port.port, None);
    }

    #[test]
    fn set_drops_assignments_without_id() {
        let set = DesiredSet::from(pb::DesiredSet {
            generation: 4,
            assignments: vec![pb::Assignment::default()],
            ..Default::default()
        });
        assert_eq!(set.generation, 4);
        assert!(set.assignments.is_empty());
    }
}
