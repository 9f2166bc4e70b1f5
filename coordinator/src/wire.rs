//! Every conversion between the coordinator's domain types (`model`) and the protocol
//! (`pmcluster_proto::v1`), both ways: the public API's replies, and the messages of an agent
//! session. A pure layer below `control`: it imports `model` and the wire types, nothing of
//! `control`, `api` or `server`. `api` converts here at the boundary; below it nothing sees a wire
//! type, except `limits`, which weighs messages as they will travel.
//!
//! Reading from the wire never fails as a whole: a part that cannot be read (an instance id that
//! is not a UUID, a held spec that does not validate) is dropped, as the control always ignored
//! such parts, and a state this coordinator does not know reads as `Launching`.

use std::sync::Arc;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use pmcluster_spec::wire::autoscale_to_wire;

use crate::model::{
    AppView, Assignment, AutoscaleView, CommandResult, Delivery, Deployment, DesiredSet,
    EndpointsView, Event, Handout, Health, HostMetrics, InstanceCommand, InstanceObserved,
    InstanceState, InstanceView, Kind, LogChunk, LogLine, LogRequest, LogStream, LogsQuery,
    NodeStatus, NodeView, Registration, Report, Rollouts,
};

/// A reported state; one this coordinator does not know counts as launching.
pub fn state_from_wire(state: i32) -> InstanceState {
    use InstanceState as S;
    use pb::InstanceState as W;
    match W::try_from(state) {
        Ok(W::Unspecified) => S::Unspecified,
        Ok(W::Pending) => S::Pending,
        Ok(W::Launching) | Err(_) => S::Launching,
        Ok(W::Online) => S::Online,
        Ok(W::Stopped) => S::Stopped,
        Ok(W::Exited) => S::Exited,
        Ok(W::Errored) => S::Errored,
        Ok(W::Stopping) => S::Stopping,
        Ok(W::Unknown) => S::Unknown,
        Ok(W::Draining) => S::Draining,
        Ok(W::Restarting) => S::Restarting,
    }
}

pub fn state_to_wire(state: InstanceState) -> pb::InstanceState {
    use InstanceState as S;
    use pb::InstanceState as W;
    match state {
        S::Unspecified => W::Unspecified,
        S::Pending => W::Pending,
        S::Launching => W::Launching,
        S::Online => W::Online,
        S::Stopped => W::Stopped,
        S::Exited => W::Exited,
        S::Errored => W::Errored,
        S::Stopping => W::Stopping,
        S::Unknown => W::Unknown,
        S::Draining => W::Draining,
        S::Restarting => W::Restarting,
    }
}

/// A reported health; one this coordinator does not know counts as no check.
pub fn health_from_wire(health: i32) -> Health {
    match pb::HealthState::try_from(health) {
        Ok(pb::HealthState::Healthy) => Health::Healthy,
        Ok(pb::HealthState::Unhealthy) => Health::Unhealthy,
        Ok(pb::HealthState::Unknown) => Health::Unknown,
        Ok(pb::HealthState::Unspecified) | Err(_) => Health::Unspecified,
    }
}

pub fn health_to_wire(health: Health) -> pb::HealthState {
    match health {
        Health::Unspecified => pb::HealthState::Unspecified,
        Health::Healthy => pb::HealthState::Healthy,
        Health::Unhealthy => pb::HealthState::Unhealthy,
        Health::Unknown => pb::HealthState::Unknown,
    }
}

// --- The agent session, up: registration, reports, log lines.

/// An instance status; `None` when its id is not a UUID (no record can have it).
pub fn observed(s: pb::InstanceStatus) -> Option<InstanceObserved> {
    Some(InstanceObserved {
        id: s.instance_id.parse().ok()?,
        state: state_from_wire(s.state),
        pid: s.pid,
        port: s.port,
        cpu_percent: s.cpu_percent,
        cpu_time_ms: s.cpu_time_ms,
        memory_bytes: s.memory_bytes,
        restarts: s.restarts,
        started_at_ms: s.started_at_ms,
        last_exit_code: s.last_exit_code,
        message: s.message,
        restart_epoch: s.restart_epoch,
        health: health_from_wire(s.health),
        start_failures: s.start_failures,
    })
}

pub fn observed_to_wire(o: &InstanceObserved) -> pb::InstanceStatus {
    pb::InstanceStatus {
        instance_id: o.id.to_string(),
        state: state_to_wire(o.state) as i32,
        pid: o.pid,
        port: o.port,
        cpu_percent: o.cpu_percent,
        cpu_time_ms: o.cpu_time_ms,
        memory_bytes: o.memory_bytes,
        restarts: o.restarts,
        started_at_ms: o.started_at_ms,
        last_exit_code: o.last_exit_code,
        message: o.message.clone(),
        restart_epoch: o.restart_epoch,
        health: health_to_wire(o.health) as i32,
        start_failures: o.start_failures,
    }
}

/// An assignment an agent sent (what it holds); `None` when its id or spec cannot be read.
pub fn assignment(a: pb::Assignment) -> Option<Assignment> {
    Some(Assignment {
        id: a.instance_id.parse().ok()?,
        spec: Arc::new(AppSpec::try_from(a.spec?).ok()?),
        index: a.index,
        port: a.port,
        app_version: a.app_version,
        restart_epoch: a.restart_epoch,
        run: a.run,
    })
}

impl From<pb::Register> for Registration {
    fn from(r: pb::Register) -> Registration {
        let held_sent = r.held.len();
        let held: Vec<Assignment> = r.held.into_iter().filter_map(assignment).collect();
        Registration {
            held_unreadable: held_sent - held.len(),
            held,
            node_name: r.node_name,
            labels: r.labels.into_iter().collect(),
            cores: r.cores,
            memory_bytes: r.memory_bytes,
            hostname: r.hostname,
            agent_version: r.agent_version,
            generation: r.generation,
            instances: r.instances.into_iter().filter_map(observed).collect(),
            advertise_address: r.advertise_address,
            agent_id: r.agent_id,
            cluster_id: r.cluster_id,
            renamed_from: r.renamed_from,
            takes_deltas: r.takes_deltas,
        }
    }
}

impl From<pb::HostMetrics> for HostMetrics {
    fn from(h: pb::HostMetrics) -> HostMetrics {
        HostMetrics {
            cpu_percent: h.cpu_percent,
            memory_used_bytes: h.memory_used_bytes,
            memory_total_bytes: h.memory_total_bytes,
            load1: h.load1,
            cores: h.cores,
        }
    }
}

impl From<pb::StatusReport> for Report {
    fn from(r: pb::StatusReport) -> Report {
        Report {
            generation: r.generation,
            instances: r.instances.into_iter().filter_map(observed).collect(),
            host: r.host.map(HostMetrics::from),
        }
    }
}

fn stream_from_wire(stream: i32) -> LogStream {
    match pb::LogStream::try_from(stream) {
        Ok(pb::LogStream::Stdout) => LogStream::Stdout,
        Ok(pb::LogStream::Stderr) => LogStream::Stderr,
        Ok(pb::LogStream::Unspecified) | Err(_) => LogStream::Unspecified,
    }
}

impl From<pb::LogLine> for LogLine {
    fn from(l: pb::LogLine) -> LogLine {
        LogLine {
            stream: stream_from_wire(l.stream),
            app: l.app,
            index: l.index,
            node: l.node,
            line: l.line,
            unread: l.unread,
        }
    }
}

impl From<pb::LogChunk> for LogChunk {
    fn from(c: pb::LogChunk) -> LogChunk {
        LogChunk {
            request_id: c.request_id,
            lines: c.lines.into_iter().map(LogLine::from).collect(),
            eof: c.eof,
            error: c.error,
        }
    }
}

impl From<pb::CommandResult> for CommandResult {
    fn from(r: pb::CommandResult) -> CommandResult {
        CommandResult {
            request_id: r.request_id,
            outcomes: r
                .outcomes
                .into_iter()
                .map(|o| {
                    let outcome = if o.delivered { Ok(()) } else { Err(o.error) };
                    (o.instance_id, outcome)
                })
                .collect(),
        }
    }
}

// --- The agent session, down: desired sets and log requests.

impl From<InstanceCommand> for pb::InstanceCommand {
    fn from(c: InstanceCommand) -> pb::InstanceCommand {
        use pb::instance_command::Action;
        pb::InstanceCommand {
            request_id: c.request_id,
            instance_ids: c.instance_ids.iter().map(ToString::to_string).collect(),
            action: Some(match c.handout {
                Handout::Signal(s) => Action::Signal(s),
                Handout::Message(m) => Action::Message(m),
            }),
        }
    }
}

impl From<Delivery> for pb::Delivery {
    fn from(d: Delivery) -> pb::Delivery {
        pb::Delivery {
            index: d.index,
            instance_id: d.instance_id.to_string(),
            node: d.node.unwrap_or_default(),
            delivered: d.outcome.is_ok(),
            error: d.outcome.err().unwrap_or_default(),
            unconfirmed: d.unconfirmed,
        }
    }
}

impl From<&Assignment> for pb::Assignment {
    fn from(a: &Assignment) -> pb::Assignment {
        pb::Assignment {
            instance_id: a.id.to_string(),
            index: a.index,
            app_version: a.app_version,
            spec: Some(pb::AppSpec::from(a.spec.as_ref())),
            port: a.port,
            run: a.run,
            restart_epoch: a.restart_epoch,
        }
    }
}

impl From<&DesiredSet> for pb::DesiredSet {
    fn from(s: &DesiredSet) -> pb::DesiredSet {
        pb::DesiredSet {
            generation: s.generation,
            assignments: s.assignments.iter().map(pb::Assignment::from).collect(),
            cluster_id: s.cluster_id.clone(),
            adopt: s.adopt,
            ..Default::default()
        }
    }
}

/// `next` as a delta on `prev`, the set the same session sent before it: the assignments that
/// are new or changed, and the ids that are gone. Both sets are in id order, as `publish` makes
/// them, so one merge walk finds the difference; an assignment whose spec is the same shared
/// spec is unchanged without comparing the spec.
pub fn desired_delta(prev: &DesiredSet, next: &DesiredSet) -> pb::DesiredSet {
    debug_assert!(prev.assignments.is_sorted_by_key(|a| a.id));
    debug_assert!(next.assignments.is_sorted_by_key(|a| a.id));
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let (mut old, mut new) = (
        prev.assignments.iter().peekable(),
        next.assignments.iter().peekable(),
    );
    loop {
        match (old.peek(), new.peek()) {
            (Some(o), Some(n)) if o.id == n.id => {
                if !same_assignment(o, n) {
                    changed.push(pb::Assignment::from(*n));
                }
                old.next();
                new.next();
            }
            (Some(o), Some(n)) if o.id < n.id => {
                removed.push(o.id.to_string());
                old.next();
            }
            (_, Some(n)) => {
                changed.push(pb::Assignment::from(*n));
                new.next();
            }
            (Some(o), None) => {
                removed.push(o.id.to_string());
                old.next();
            }
            (None, None) => break,
        }
    }
    pb::DesiredSet {
        generation: next.generation,
        assignments: changed,
        cluster_id: next.cluster_id.clone(),
        adopt: next.adopt,
        delta: true,
        base_generation: prev.generation,
        removed,
    }
}

fn same_assignment(a: &Assignment, b: &Assignment) -> bool {
    a.id == b.id
        && a.index == b.index
        && a.app_version == b.app_version
        && a.port == b.port
        && a.run == b.run
        && a.restart_epoch == b.restart_epoch
        && (Arc::ptr_eq(&a.spec, &b.spec) || a.spec == b.spec)
}

impl From<LogRequest> for pb::LogRequest {
    fn from(r: LogRequest) -> pb::LogRequest {
        pb::LogRequest {
            request_id: r.request_id,
            instance_ids: r.instance_ids.iter().map(ToString::to_string).collect(),
            lines: r.lines,
            follow: r.follow,
            no_history: r.no_history,
        }
    }
}

// --- The public API: requests read here, replies written here.

impl From<pb::StreamLogsRequest> for LogsQuery {
    fn from(r: pb::StreamLogsRequest) -> LogsQuery {
        LogsQuery {
            app: r.app,
            index: r.index,
            lines: r.lines,
            follow: r.follow,
            no_history: r.no_history,
        }
    }
}

impl From<LogLine> for pb::LogLine {
    fn from(l: LogLine) -> pb::LogLine {
        pb::LogLine {
            app: l.app,
            index: l.index,
            node: l.node,
            stream: match l.stream {
                LogStream::Unspecified => pb::LogStream::Unspecified,
                LogStream::Stdout => pb::LogStream::Stdout,
                LogStream::Stderr => pb::LogStream::Stderr,
            } as i32,
            line: l.line,
            unread: l.unread,
        }
    }
}

/// An app as the API shows it: secret env values never leave (only agents get them, in their
/// desired sets), and with `env_values` false no env value does.
pub fn app_shown(a: &AppView, env_values: bool) -> pb::App {
    pb::App {
        spec: Some(pb::AppSpec::from(&a.spec.shown(env_values))),
        ..pb::App::from(a)
    }
}

/// The app without its secret values (see [`app_shown`]).
impl From<&AppView> for pb::App {
    fn from(a: &AppView) -> pb::App {
        pb::App {
            spec: Some(pb::AppSpec::from(&a.spec.shown(true))),
            version: a.version,
            updated_at_ms: a.updated_at_ms,
            online: a.online,
            pending: a.pending,
            stopped: a.stopped,
            errored: a.errored,
            restarting: a.restarting,
            exited: a.exited,
        }
    }
}

impl From<&InstanceView> for pb::Instance {
    fn from(i: &InstanceView) -> pb::Instance {
        pb::Instance {
            id: i.id.clone(),
            app: i.app.clone(),
            index: i.index,
            node: i.node.clone(),
            state: state_to_wire(i.state) as i32,
            pid: i.pid,
            port: i.port,
            cpu_percent: i.cpu_percent,
            memory_bytes: i.memory_bytes,
            restarts: i.restarts,
            started_at_ms: i.started_at_ms,
            app_version: i.app_version,
            last_exit_code: i.last_exit_code,
            message: i.message.clone(),
            stopped: i.stopped,
            health: health_to_wire(i.health) as i32,
            host: i.host.clone(),
            disabled: i.disabled,
            leak: i.leak.clone(),
            removed: i.removed,
            unmanaged: i.unmanaged,
        }
    }
}

impl From<NodeView> for pb::Node {
    fn from(n: NodeView) -> pb::Node {
        let status = match n.status {
            NodeStatus::Ready => pb::NodeStatus::Ready,
            NodeStatus::Down => pb::NodeStatus::Down,
            NodeStatus::Draining => pb::NodeStatus::Draining,
            NodeStatus::Ineligible => pb::NodeStatus::Ineligible,
            NodeStatus::Quarantined => pb::NodeStatus::Quarantined,
            NodeStatus::Reconnecting => pb::NodeStatus::Reconnecting,
        };
        pb::Node {
            name: n.name,
            status: status as i32,
            labels: n.labels.into_iter().collect(),
            cores: n.cores,
            memory_bytes: n.memory_bytes,
            instances: n.instances,
            last_heartbeat_ms: n.last_heartbeat_ms,
            hostname: n.hostname,
            agent_version: n.agent_version,
            cpu_percent: n.cpu_percent,
            memory_used_bytes: n.memory_used_bytes,
            allocated_cpu_millis: n.allocated_cpu_millis,
            allocated_memory_bytes: n.allocated_memory_bytes,
            down_since_ms: n.down_since_ms,
            address: n.address,
            message: n.message,
        }
    }
}

impl From<EndpointsView> for pb::Endpoints {
    fn from(e: EndpointsView) -> pb::Endpoints {
        pb::Endpoints {
            app: e.app,
            endpoints: e
                .endpoints
                .into_iter()
                .map(|e| pb::Endpoint {
                    host: e.host,
                    port: e.port,
                    index: e.index,
                    node: e.node,
                    version: e.version,
                    instance_id: e.instance_id,
                })
                .collect(),
        }
    }
}

impl From<Event> for pb::Event {
    fn from(e: Event) -> pb::Event {
        pb::Event {
            at_ms: e.at_ms,
            kind: e.kind.as_str().to_string(),
            app: e.app,
            node: e.node,
            index: e.index,
            message: e.message,
        }
    }
}

impl From<AutoscaleView> for pb::AutoscaleStatus {
    fn from(a: AutoscaleView) -> pb::AutoscaleStatus {
        pb::AutoscaleStatus {
            app: a.app,
            // Always present: a disabled policy is the default one (`enabled` false).
            policy: Some(a.policy.as_ref().map(autoscale_to_wire).unwrap_or_default()),
            instances: a.instances,
            online: a.online,
            cpu_avg: a.cpu_avg,
            memory_avg_bytes: a.memory_avg_bytes,
            state: a.state,
            decisions: a.decisions.into_iter().map(pb::Event::from).collect(),
        }
    }
}

/// A deployment of `app` as the wire shows it.
pub fn deployment(app: &str, d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        app: app.to_string(),
        kind: match d.kind {
            Kind::Update => "update",
            Kind::Restart => "restart",
            Kind::Rollback => "rollback",
        }
        .to_string(),
        from_version: d.from_version,
        to_version: d.to_version,
        state: d.state.name().to_string(),
        started_ms: d.started_ms,
        updated_ms: d.updated_ms,
        message: d.message.clone(),
        done: d.done,
        total: d.total,
    }
}

/// The rollouts of `app` as the wire shows them.
pub fn rollout_status(app: &str, r: &Rollouts) -> pb::RolloutStatus {
    pb::RolloutStatus {
        current: r.current.as_ref().map(|d| deployment(app, d)),
        history: r.history.iter().map(|d| deployment(app, d)).collect(),
        versions: r.versions.clone(),
        version: r.version,
    }
}

#[cfg(test)]
mod tests;
