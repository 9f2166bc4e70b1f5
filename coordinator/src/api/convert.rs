//! The requests of the public API read into the control's typed commands (validated here, naming
//! the field at fault), the replies of those commands, and the one mapping of control errors to
//! gRPC statuses. The conversions of plain data (views, events, agent messages) are `wire`'s.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::wire::new_spec_from_wire;
use tonic::{Code, Status};

use crate::control::{ApplyCmd, ControlError, RolloutAction, ScaleCmd, Scaled};
use crate::model::Handout;
use crate::store::StoreError;

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        let (code, message) = match e {
            ControlError::InvalidSpec(e) => (Code::InvalidArgument, e.to_string()),
            ControlError::InvalidArgument(m) => (Code::InvalidArgument, m),
            ControlError::NotFound(m) => (Code::NotFound, m),
            ControlError::AlreadyExists(m) => (Code::AlreadyExists, m),
            ControlError::Unavailable(m) => (Code::Unavailable, m),
            ControlError::FailedPrecondition(m) => (Code::FailedPrecondition, m),
            ControlError::ResourceExhausted(m) => (Code::ResourceExhausted, m),
            // Nothing was written in these: the message says why and what to do, and a client
            // may retry elsewhere (a fenced-off leader's successor) or later (etcd's quorum).
            ControlError::Store(
                e @ (StoreError::Fenced | StoreError::NotLeader | StoreError::Unavailable(_)),
            ) => {
                tracing::warn!(error = %e, "write refused by the store");
                (Code::Unavailable, e.to_string())
            }
            ControlError::Store(e @ StoreError::TooLarge { .. }) => {
                (Code::InvalidArgument, e.to_string())
            }
            ControlError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                return Status::unavailable("the coordinator cannot write its state; see its log");
            }
        };
        // The message travels in a header: one that echoes a huge request (a 1 MB app name)
        // would fail the call with RESOURCE_EXHAUSTED instead of this code.
        Status::new(
            code,
            pmcluster_spec::cut(&message, pmcluster_spec::MESSAGE_MAX_BYTES),
        )
    }
}

/// The app and optional index an instance command targets.
pub fn target(t: pb::InstanceTarget) -> (String, Option<u32>) {
    (t.app, t.index)
}

/// The app, optional index and signal of a `Signal` request (INVALID_ARGUMENT names `signal`).
pub fn signal(r: pb::SignalRequest) -> Result<(String, Option<u32>, Handout), ControlError> {
    let name = pmcluster_spec::signal::parse(&r.signal)
        .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
    Ok((r.app, r.index, Handout::Signal(name)))
}

/// The app, optional index and message of a `SendMessage` request (INVALID_ARGUMENT names
/// `message`).
pub fn message(r: pb::SendMessageRequest) -> Result<(String, Option<u32>, Handout), ControlError> {
    pmcluster_spec::signal::check_message(&r.message)
        .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
    Ok((r.app, r.index, Handout::Message(r.message)))
}

impl TryFrom<pb::ApplyAppRequest> for ApplyCmd {
    type Error = ControlError;

    fn try_from(r: pb::ApplyAppRequest) -> Result<ApplyCmd, ControlError> {
        let wire = r
            .spec
            .ok_or_else(|| ControlError::InvalidArgument("spec: missing".into()))?;
        Ok(ApplyCmd {
            spec: new_spec_from_wire(wire)?,
            keep_instances: r.keep_instances,
        })
    }
}

impl TryFrom<pb::ScaleRequest> for ScaleCmd {
    type Error = ControlError;

    fn try_from(r: pb::ScaleRequest) -> Result<ScaleCmd, ControlError> {
        match r.relative {
            false => ScaleCmd::new(&r.app, r.instances),
            true => ScaleCmd::by(&r.app, r.instances),
        }
    }
}

impl From<Scaled> for pb::ScaleReply {
    fn from(s: Scaled) -> pb::ScaleReply {
        pb::ScaleReply {
            previous: s.previous,
            instances: s.instances,
        }
    }
}

/// The app and action of a `ControlRollout` request.
pub fn rollout_action(r: &pb::ControlRolloutRequest) -> Result<RolloutAction, ControlError> {
    RolloutAction::parse(&r.action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Count;

    /// Whatever a control error echoes, its status keeps the code and a message that fits in a
    /// header.
    #[test]
    fn status_messages_are_bounded() {
        let huge = "n".repeat(1 << 20);
        let cases = [
            (
                ControlError::NotFound(format!("app {huge:?} not found")),
                Code::NotFound,
            ),
            (
                ControlError::InvalidArgument(huge.clone()),
                Code::InvalidArgument,
            ),
            (
                ControlError::AlreadyExists("app \"web\" exists".into()),
                Code::AlreadyExists,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert!(
                status.message().len() <= pmcluster_spec::MESSAGE_MAX_BYTES,
                "{}",
                status.message().len()
            );
        }
        let short = Status::from(ControlError::NotFound("app \"web\" not found".into()));
        assert_eq!(short.message(), "app \"web\" not found");
    }

    /// `Signal` takes a name or number and refuses anything else as INVALID_ARGUMENT naming
    /// `signal`; `SendMessage` refuses a message that is not one line, naming `message`.
    #[test]
    fn signals_and_messages_are_checked_at_the_boundary() {
        let sig = |s: &str| {
            signal(pb::SignalRequest {
                app: "web".into(),
                index: Some(1),
                signal: s.into(),
            })
            .map_err(Status::from)
        };
        assert_eq!(
            sig("usr2").ok(),
            Some(("web".into(), Some(1), Handout::Signal("SIGUSR2".into())))
        );
        assert_eq!(
            sig("15").ok().map(|(_, _, h)| h),
            Some(Handout::Signal("SIGTERM".into()))
        );
        for bad in ["", "USR9", "64", "SIGNOPE"] {
            let e = sig(bad).err();
            assert_eq!(
                e.as_ref().map(Status::code),
                Some(Code::InvalidArgument),
                "{bad}"
            );
            assert!(
                e.is_some_and(|s| s.message().starts_with("signal: ")),
                "{bad}"
            );
        }
        let msg = |m: &str| {
            message(pb::SendMessageRequest {
                app: "web".into(),
                index: None,
                message: m.into(),
            })
            .map_err(Status::from)
        };
        assert_eq!(
            msg("hi").ok(),
            Some(("web".into(), None, Handout::Message("hi".into())))
        );
        for bad in ["", "a\nb"] {
            let e = msg(bad).err();
            assert_eq!(
                e.as_ref().map(Status::code),
                Some(Code::InvalidArgument),
                "{bad}"
            );
            assert!(
                e.is_some_and(|s| s.message().starts_with("message: ")),
                "{bad}"
            );
        }
    }

    /// Typed commands refuse bad wire input naming the field, before the control sees it.
    #[test]
    fn commands_are_checked_at_the_boundary() {
        let scale = |instances: i64, relative: bool| {
            ScaleCmd::try_from(pb::ScaleRequest {
                app: "web".into(),
                instances,
                relative,
            })
            .map(|c| c.count)
            .map_err(|e| Status::from(e).message().to_string())
        };
        assert_eq!(scale(3, false), Ok(Count::To(3)));
        assert_eq!(scale(-2, true), Ok(Count::By(-2)));
        assert_eq!(scale(2, true), Ok(Count::By(2)));
        assert!(scale(-1, false).is_err_and(|m| m.starts_with("instances: -1 is negative")));
        for relative in [false, true] {
            assert!(
                scale(1 << 40, relative)
                    .is_err_and(|m| m.starts_with("instances: 1099511627776 is too large"))
            );
        }
        for (word, want) in [
            ("pause", Some(RolloutAction::Pause)),
            ("resume", Some(RolloutAction::Resume)),
            ("promote", Some(RolloutAction::Promote)),
            ("Pause", None),
            ("", None),
        ] {
            let r = pb::ControlRolloutRequest {
                app: "web".into(),
                action: word.into(),
            };
            assert_eq!(rollout_action(&r).ok(), want, "{word:?}");
            if let Some(a) = want {
                assert_eq!(a.as_str(), word);
            }
        }
        let missing = ApplyCmd::try_from(pb::ApplyAppRequest::default())
            .map_err(|e| Status::from(e).message().to_string());
        assert!(missing.is_err_and(|m| m == "spec: missing"));
    }

    /// A user trial found these accepted, each leaving its app pending for ever. An apply refuses
    /// them; a spec read back (from this coordinator, or an agent) with one still loads.
    #[test]
    fn an_apply_with_a_malformed_constraint_is_invalid_argument() {
        let apply = |constraints: &[&str], affinity: &str| pb::ApplyAppRequest {
            spec: Some(pb::AppSpec {
                name: "web".into(),
                script: "sleep".into(),
                instances: 1,
                placement: Some(pb::Placement {
                    constraints: constraints.iter().map(|c| c.to_string()).collect(),
                    affinities: vec![pb::Affinity {
                        expr: affinity.into(),
                        weight: 10,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            keep_instances: false,
        };
        assert!(ApplyCmd::try_from(apply(&["zone=n1", "disk in (ssd,nvme)"], "rack=r1")).is_ok());
        let cases = [
            (
                apply(&["zone in (a,b"], "rack=r1"),
                "placement.constraints: \"zone in (a,b\"",
            ),
            (
                apply(&["zone=a", "zone=="], "rack=r1"),
                "placement.constraints: \"zone==\"",
            ),
            (apply(&["zone=a b"], "rack=r1"), "whitespace"),
            (apply(&["zone=n1,zone=n2"], "rack=r1"), "key in (a,b)"),
            (apply(&["zone != "], "rack=r1"), "no value after"),
            (
                apply(&["zone=a"], "rack=r1 r2"),
                "placement.affinities: \"rack=r1 r2\"",
            ),
        ];
        for (request, want) in cases {
            let wire = request.spec.clone().unwrap_or_default();
            let status = Status::from(ApplyCmd::try_from(request).expect_err(want));
            assert_eq!(status.code(), Code::InvalidArgument, "{want}");
            assert!(status.message().contains(want), "{}", status.message());
            assert!(pmcluster_spec::AppSpec::try_from(wire).is_ok(), "{want}");
        }
    }
}
