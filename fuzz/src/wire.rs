//! Each conversion the coordinator's API makes on input, fed the same bytes decoded as each
//! request type (prost refuses most of them for most types; what decodes is converted). The
//! conversions must not panic, their refusals must be INVALID_ARGUMENT with a short message, and
//! what they accept must round-trip where the API relies on it.

use std::sync::{Arc, OnceLock};

use pmcluster_coordinator::api::convert::{message, rollout_action, signal, target};
use pmcluster_coordinator::auth::app_of;
use pmcluster_coordinator::control::{
    ApplyCmd, Control, ControlConfig, ControlError, Count, ScaleCmd,
};
use pmcluster_coordinator::core::access::{self, Role};
use pmcluster_coordinator::model::{
    CommandResult, Handout, LogChunk, LogsQuery, Registration, Report,
};
use pmcluster_coordinator::store::MemoryStore;
use pmcluster_coordinator::wire::assignment;
use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_spec::wire::{autoscale_from_wire, autoscale_to_wire};
use pmcluster_spec::{AppSpec, MESSAGE_MAX_BYTES};
use prost::Message;
use tonic::Code;

use crate::spec::{check_error, check_spec};

pub fn check(data: &[u8]) {
    if let Ok(spec) = pb::AppSpec::decode(data) {
        app_spec(spec);
    }
    if let Ok(r) = pb::ApplyAppRequest::decode(data) {
        apply(r);
    }
    if let Ok(r) = pb::ScaleRequest::decode(data) {
        scale(r);
    }
    if let Ok(t) = pb::InstanceTarget::decode(data) {
        let (app, index) = target(t.clone());
        assert_eq!((app, index), (t.app, t.index));
    }
    if let Ok(r) = pb::SetAutoscaleRequest::decode(data) {
        autoscale(r);
    }
    if let Ok(r) = pb::SignalRequest::decode(data) {
        match signal(r.clone()) {
            // A canonical name, and the same one whatever spelling was given.
            Ok((app, index, Handout::Signal(name))) => {
                assert_eq!((app, index), (r.app, r.index));
                assert!(name.starts_with("SIG"), "{name}");
                assert_eq!(pmcluster_spec::signal::parse(&name).ok(), Some(name));
            }
            Ok(other) => panic!("a signal request read as {other:?}"),
            Err(e) => refused(e),
        }
    }
    if let Ok(r) = pb::SendMessageRequest::decode(data) {
        match message(r.clone()) {
            Ok((_, _, Handout::Message(m))) => {
                assert_eq!(m, r.message);
                assert!(!m.is_empty() && !m.contains('\n'));
            }
            Ok(other) => panic!("a message request read as {other:?}"),
            Err(e) => refused(e),
        }
    }
    if let Ok(r) = pb::ControlRolloutRequest::decode(data) {
        match rollout_action(&r) {
            Ok(a) => assert_eq!(a.as_str(), r.action),
            Err(e) => refused(e),
        }
    }
    if let Ok(r) = pb::StreamLogsRequest::decode(data) {
        let q = LogsQuery::from(r.clone());
        assert_eq!(
            (q.app, q.index, q.lines, q.follow),
            (r.app, r.index, r.lines, r.follow)
        );
    }
    if let Ok(r) = pb::ListAppsRequest::decode(data) {
        match listing().list_apps_page(r.page_size, &r.page_token) {
            Ok((apps, _next)) => assert!(r.page_size == 0 || apps.len() <= r.page_size as usize),
            Err(e) => refused(e),
        }
    }
    if let Ok(r) = pb::ListInstancesRequest::decode(data) {
        match listing().list_instances_page(&r.app, r.page_size, &r.page_token) {
            Ok((instances, _next)) => {
                assert!(r.page_size == 0 || instances.len() <= r.page_size as usize);
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                assert!(
                    matches!(status.code(), Code::InvalidArgument | Code::NotFound),
                    "{status:?}"
                );
                assert!(status.message().len() <= MESSAGE_MAX_BYTES);
            }
        }
    }
    if let Ok(r) = pb::CreateTokenRequest::decode(data) {
        token(r);
    }
    if let Ok(m) = pb::AgentMessage::decode(data) {
        agent_message(m);
    }
    // The auth layer reads the app off the raw body of each scoped method.
    for method in [
        "ApplyApp",
        "Scale",
        "Start",
        "Signal",
        "SendMessage",
        "Disable",
        "SetAutoscale",
        "ControlRollout",
        "UndoRollout",
        "StreamLogs",
        "ListApps",
    ] {
        let _ = app_of(&format!("/pmcluster.v1.Cluster/{method}"), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = access::need(text);
        if let Some(id) = access::token_id(text) {
            assert_eq!(id.len(), access::TOKEN_ID_LEN);
        }
    }
}

/// A refusal at the API boundary: the status the client gets.
fn refused(e: ControlError) {
    if let ControlError::InvalidSpec(spec) = &e {
        check_error(spec);
    }
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() <= MESSAGE_MAX_BYTES);
}

fn app_spec(wire: pb::AppSpec) {
    match AppSpec::try_from(wire) {
        Ok(spec) => check_spec(&spec),
        Err(e) => check_error(&e),
    }
}

fn apply(r: pb::ApplyAppRequest) {
    match ApplyCmd::try_from(r) {
        Ok(cmd) => check_spec(&cmd.spec),
        Err(e) => refused(e),
    }
}

fn scale(r: pb::ScaleRequest) {
    match ScaleCmd::try_from(r.clone()) {
        Ok(cmd) => match cmd.count {
            Count::To(n) => assert!(!r.relative && i64::from(n) == r.instances),
            Count::By(change) => assert!(r.relative && change == r.instances),
        },
        Err(e) => {
            let magnitude = r.instances.unsigned_abs();
            let too_large = magnitude > u64::from(u32::MAX);
            assert!(too_large || (!r.relative && r.instances < 0));
            refused(e);
        }
    }
}

fn autoscale(r: pb::SetAutoscaleRequest) {
    let Some(p) = r.policy.filter(|p| p.enabled) else {
        return;
    };
    match autoscale_from_wire(&p) {
        Ok(policy) => {
            let back = autoscale_from_wire(&autoscale_to_wire(&policy));
            assert_eq!(
                back.as_ref(),
                Ok(&policy),
                "policy -> wire -> policy changed it"
            );
        }
        Err(e) => refused(ControlError::from(e)),
    }
}

fn token(r: pb::CreateTokenRequest) {
    if let Ok(role) = Role::parse(&r.role) {
        assert_eq!(role.name(), r.role);
    }
    if !r.apps.is_empty() && access::check_glob(&r.apps).is_ok() {
        let grant = access::Grant {
            role: Role::Operate,
            apps: Some(r.apps.clone()),
        };
        let _ = access::decide(
            "/pmcluster.v1.Cluster/Scale",
            access::Need::Role {
                role: Role::Operate,
                scoped: true,
            },
            &access::Principal::Token("fuzz".into()),
            Some(&grant),
            Some(r.description.as_str()),
        );
    }
}

fn agent_message(m: pb::AgentMessage) {
    match m.msg {
        Some(Up::Register(reg)) => {
            for held in &reg.held {
                if let Some(a) = assignment(held.clone()) {
                    check_spec(&a.spec);
                }
            }
            let sent = reg.held.len();
            let r = Registration::from(reg);
            assert_eq!(r.held.len() + r.held_unreadable, sent);
        }
        Some(Up::Status(report)) => {
            let sent = report.instances.len();
            assert!(Report::from(report).instances.len() <= sent);
        }
        Some(Up::LogChunk(chunk)) => {
            let sent = chunk.lines.len();
            assert_eq!(LogChunk::from(chunk).lines.len(), sent);
        }
        Some(Up::CommandResult(result)) => {
            let sent = result.outcomes.len();
            assert_eq!(CommandResult::from(result).outcomes.len(), sent);
        }
        None => {}
    }
}

/// A control with two apps and their (pending) instances, for the page tokens of the list calls.
fn listing() -> &'static Control {
    static CONTROL: OnceLock<Control> = OnceLock::new();
    CONTROL.get_or_init(|| {
        let control = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())
            .unwrap_or_else(|e| panic!("a control on a memory store: {e}"));
        for (name, instances) in [("api", 2), ("web", 3)] {
            let mut spec = AppSpec::new(name, "sleep", &["60"]);
            spec.instances = instances;
            control
                .apply_app(ApplyCmd {
                    spec,
                    keep_instances: false,
                })
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        }
        control
    })
}
