use std::collections::HashMap;

use uuid::Uuid;

use super::*;

/// Every state and health survives the trip out and back; what the wire may carry but this
/// coordinator does not know reads as the documented fallback.
#[test]
fn states_and_health_round_trip() {
    use InstanceState as S;
    for s in [
        S::Unspecified,
        S::Pending,
        S::Launching,
        S::Online,
        S::Stopped,
        S::Exited,
        S::Errored,
        S::Stopping,
        S::Unknown,
        S::Draining,
    ] {
        assert_eq!(state_from_wire(state_to_wire(s) as i32), s);
    }
    assert_eq!(state_from_wire(99), S::Launching);
    for h in [
        Health::Unspecified,
        Health::Healthy,
        Health::Unhealthy,
        Health::Unknown,
    ] {
        assert_eq!(health_from_wire(health_to_wire(h) as i32), h);
    }
    assert_eq!(health_from_wire(99), Health::Unspecified);
}

fn wire_assignment(id: &str, spec: Option<pb::AppSpec>) -> pb::Assignment {
    pb::Assignment {
        instance_id: id.into(),
        index: 2,
        app_version: 3,
        spec,
        port: 4100,
        run: true,
        restart_epoch: 1,
    }
}

/// A registration keeps what can be read, drops what cannot (and counts the held part of it),
/// and what it reads goes back out unchanged.
#[test]
fn a_registration_reads_what_it_can() {
    let id = Uuid::from_u128(7);
    let spec = AppSpec::new("web", "app", &[]);
    let good = wire_assignment(&id.to_string(), Some(pb::AppSpec::from(&spec)));
    let status = pb::InstanceStatus {
        instance_id: id.to_string(),
        state: pb::InstanceState::Online as i32,
        health: pb::HealthState::Healthy as i32,
        port: 4100,
        last_exit_code: Some(1),
        cpu_time_ms: 1234,
        ..pb::InstanceStatus::default()
    };
    let reg = Registration::from(pb::Register {
        node_name: "a".into(),
        labels: HashMap::from([("zone".to_string(), "1".to_string())]),
        instances: vec![
            status.clone(),
            pb::InstanceStatus {
                instance_id: "not-a-uuid".into(),
                ..pb::InstanceStatus::default()
            },
        ],
        held: vec![
            good.clone(),
            wire_assignment("not-a-uuid", Some(pb::AppSpec::from(&spec))),
            wire_assignment(&id.to_string(), None),
        ],
        ..pb::Register::default()
    });
    assert_eq!(reg.labels.get("zone").map(String::as_str), Some("1"));
    assert_eq!(reg.instances.len(), 1);
    assert_eq!(reg.instances[0].state, InstanceState::Online);
    assert_eq!(observed_to_wire(&reg.instances[0]), status);
    assert_eq!(reg.held.len(), 1);
    assert_eq!(reg.held_unreadable, 2);
    assert_eq!(pb::Assignment::from(&reg.held[0]), good);
}

/// A desired set goes out with its assignments in the order the control made, ids as text.
#[test]
fn desired_sets_and_log_requests_go_out_as_the_agent_reads_them() {
    let a = Assignment {
        id: Uuid::from_u128(1),
        index: 0,
        app_version: 1,
        spec: Arc::new(AppSpec::new("web", "app", &[])),
        port: 0,
        run: false,
        restart_epoch: 2,
    };
    let set = pb::DesiredSet::from(&DesiredSet {
        generation: 9,
        assignments: vec![a.clone()],
        cluster_id: "c".into(),
        adopt: true,
    });
    assert_eq!(set.generation, 9);
    assert!(set.adopt);
    assert_eq!(set.cluster_id, "c");
    assert_eq!(set.assignments.len(), 1);
    assert_eq!(assignment(set.assignments[0].clone()), Some(a));
    let req = pb::LogRequest::from(LogRequest {
        request_id: 5,
        instance_ids: vec![Uuid::from_u128(1)],
        lines: 20,
        follow: true,
        no_history: true,
    });
    assert_eq!(req.instance_ids, vec![Uuid::from_u128(1).to_string()]);
    assert!(req.no_history);
}

/// Log lines keep their stream both ways; a stream this coordinator does not know is its own.
#[test]
fn log_lines_keep_their_stream() {
    for (stream, unread) in [
        (LogStream::Unspecified, true),
        (LogStream::Unspecified, false),
        (LogStream::Stdout, false),
        (LogStream::Stderr, false),
    ] {
        let line = LogLine {
            app: "web".into(),
            index: 1,
            node: "a".into(),
            stream,
            line: "hello".into(),
            unread,
        };
        assert_eq!(LogLine::from(pb::LogLine::from(line.clone())), line);
    }
    let odd = pb::LogLine {
        stream: 7,
        ..pb::LogLine::default()
    };
    assert_eq!(LogLine::from(odd).stream, LogStream::Unspecified);
}

/// An event goes out with its kind's wire string; an autoscale status always carries a policy.
#[test]
fn events_and_autoscale_status_read_as_before() {
    let event = Event {
        at_ms: 3,
        kind: crate::model::EventKind::NodeDrain,
        app: String::new(),
        node: "a".into(),
        index: None,
        message: "node a draining".into(),
    };
    assert_eq!(pb::Event::from(event.clone()).kind, "node.drain");
    let status = pb::AutoscaleStatus::from(AutoscaleView {
        app: "web".into(),
        policy: None,
        instances: 2,
        online: 1,
        cpu_avg: None,
        memory_avg_bytes: None,
        state: String::new(),
        decisions: vec![event],
    });
    assert_eq!(status.policy, Some(pb::Autoscale::default()));
    assert_eq!(status.decisions.len(), 1);
}

/// A delta carries what changed since the session's previous set: new and changed assignments,
/// and the ids gone. An assignment whose spec is an equal copy, not the shared one, is unchanged.
#[test]
fn a_delta_carries_what_changed_since_the_previous_set() {
    let spec = Arc::new(AppSpec::new("web", "app", &[]));
    let a = |n: u128, epoch: u64| Assignment {
        id: Uuid::from_u128(n),
        index: n as u32,
        app_version: 1,
        spec: Arc::clone(&spec),
        port: 0,
        run: true,
        restart_epoch: epoch,
    };
    let set = |generation, assignments| DesiredSet {
        generation,
        assignments,
        cluster_id: "c".into(),
        adopt: false,
    };
    let mut copied = a(4, 0);
    copied.spec = Arc::new(AppSpec::new("web", "app", &[]));
    let prev = set(3, vec![a(1, 0), a(2, 0), a(4, 0), a(5, 0)]);
    let next = set(4, vec![a(2, 1), a(3, 0), copied, a(6, 0)]);
    let delta = desired_delta(&prev, &next);
    assert!(delta.delta);
    assert_eq!((delta.generation, delta.base_generation), (4, 3));
    assert_eq!(delta.cluster_id, "c");
    let ids =
        |v: &[pb::Assignment]| -> Vec<String> { v.iter().map(|a| a.instance_id.clone()).collect() };
    let id = |n: u128| Uuid::from_u128(n).to_string();
    assert_eq!(ids(&delta.assignments), vec![id(2), id(3), id(6)]);
    assert_eq!(delta.assignments[0].restart_epoch, 1);
    assert_eq!(delta.removed, vec![id(1), id(5)]);
    // Nothing changed: an empty delta that still moves the generation on.
    let same = desired_delta(&next, &set(5, next.assignments.clone()));
    assert!(same.assignments.is_empty() && same.removed.is_empty());
    assert_eq!((same.generation, same.base_generation), (5, 4));
    // The first set of a session, or one to an agent that reads no deltas, is whole.
    let whole = pb::DesiredSet::from(&next);
    assert!(!whole.delta);
    assert_eq!(whole.assignments.len(), 4);
}
