//! Every conversion between the wire (`pb`) and the control's domain types, and the one mapping
//! of control errors to gRPC statuses. Requests are validated here, naming the field at fault.

use pmcluster_proto::v1 as pb;
use tonic::{Code, Status};

use crate::control::ControlError;

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        let (code, message) = match e {
            ControlError::InvalidSpec(e) => (Code::InvalidArgument, e.to_string()),
            ControlError::InvalidArgument(m) => (Code::InvalidArgument, m),
            ControlError::NotFound(m) => (Code::NotFound, m),
            ControlError::AlreadyExists(m) => (Code::AlreadyExists, m),
            ControlError::Unavailable(m) => (Code::Unavailable, m),
            ControlError::FailedPrecondition(m) => (Code::FailedPrecondition, m),
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
pub(super) fn target(t: pb::InstanceTarget) -> (String, Option<u32>) {
    (t.app, t.index)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
