//! Error kinds the CLI tells apart, and the exit code each one maps to.
//!
//! Everything else is an `anyhow::Error` with context. The exit code is derived from the error
//! chain in one place ([`exit_code`]) so scripts can trust it: 0 ok, 1 failed, 2 bad input,
//! 3 answered but not ready (`status` without a leader that answers, or with a store in
//! trouble).

use std::io;

/// The user gave input we refuse before asking anyone (a bad flag value, an unreadable config).
/// Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }
}

/// The coordinators answered, and what they said means the cluster cannot serve now: none
/// leads, the leader did not answer, or the store is unhealthy. Exit code 3, as `systemctl status` and `supervisorctl
/// status` say "answered, not running", so that a script can wait for a cluster that serves.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// A gRPC call the coordinator answered with an error. The message is the coordinator's own,
/// prefixed with what the code means when the message alone would not say it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: tonic::Code,
    pub message: String,
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        let code = status.code();
        let detail = if status.message().is_empty() {
            code.description().to_string()
        } else {
            status.message().to_string()
        };
        let message = match code {
            // tonic's words for an HTTP answer without gRPC: something else holds the address.
            _ if detail.contains("grpc-status header missing") => format!(
                "the server does not speak gRPC ({detail}); does --coordinator point at a \
                 pmcluster coordinator?"
            ),
            // These messages name the field or object at fault by contract; print them as they are.
            tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted => detail,
            tonic::Code::Unavailable => format!("the coordinator is unavailable: {detail}"),
            tonic::Code::DeadlineExceeded => {
                format!("the coordinator did not answer in time: {detail}")
            }
            tonic::Code::Unimplemented => format!(
                "the coordinator does not support this call (is it older than this pmcluster?): \
                 {detail}"
            ),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                format!("the coordinator refused the call: {detail}")
            }
            _ => format!("the coordinator failed: {detail}"),
        };
        ApiError { code, message }
    }
}

/// What an error comes to, read from the first cause in its chain the CLI tells apart: the exit
/// code ([`exit_code`]) and whether `apply` goes on to the next app ([`Class::refusal`]) both
/// follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// stdout closed under us: the reader went away, as with `pmcluster logs web | head`.
    ClosedStdout,
    /// Input refused before asking anyone, or the coordinator's `INVALID_ARGUMENT`.
    BadInput,
    /// The coordinator refused the call for what it asked of that one object: a token's app
    /// patterns, a precondition, no such object, one that exists, a limit.
    Refused,
    /// Everything else: a coordinator gone or late, its own failure, a local error.
    Failed,
    /// Coordinators answered that the cluster cannot serve now ([`NotReady`]).
    NotReady,
}

impl Class {
    pub fn of(err: &anyhow::Error) -> Class {
        for cause in err.chain() {
            if let Some(io) = cause.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::BrokenPipe
            {
                return Class::ClosedStdout;
            }
            if cause.downcast_ref::<UsageError>().is_some() {
                return Class::BadInput;
            }
            if cause.downcast_ref::<NotReady>().is_some() {
                return Class::NotReady;
            }
            if let Some(api) = cause.downcast_ref::<ApiError>() {
                return match api.code {
                    tonic::Code::InvalidArgument => Class::BadInput,
                    tonic::Code::PermissionDenied
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::OutOfRange => Class::Refused,
                    _ => Class::Failed,
                };
            }
        }
        Class::Failed
    }

    /// 2 for bad input, 0 for a closed stdout, 3 for a cluster that cannot serve, 1 for
    /// everything else.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::ClosedStdout => 0,
            Class::BadInput => 2,
            Class::Refused | Class::Failed => 1,
            Class::NotReady => 3,
        }
    }

    /// Whether the error refuses the one thing asked, which the next one may not meet (a bad
    /// value, a token's app patterns, a limit), rather than ending everything after it.
    pub fn refusal(self) -> bool {
        matches!(self, Class::BadInput | Class::Refused)
    }
}

/// Maps an error to the process exit code: 2 for bad input, 0 for a closed stdout (the reader
/// went away, as with `pmcluster logs web | head`), 3 for a cluster that answered that it cannot
/// serve, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    Class::of(err).exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_codes() {
        let broken: anyhow::Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (anyhow::anyhow!("boom"), 1),
            (UsageError::new("bad").into(), 2),
            (
                anyhow::Error::from(UsageError::new("bad")).context("reading apps.json"),
                2,
            ),
            (
                ApiError::from(tonic::Status::invalid_argument("port: x")).into(),
                2,
            ),
            (ApiError::from(tonic::Status::not_found("no app")).into(), 1),
            (ApiError::from(tonic::Status::unavailable("down")).into(), 1),
            (broken.context("writing the table"), 0),
            (io::Error::from(io::ErrorKind::NotFound).into(), 1),
            (NotReady("no coordinator leads".into()).into(), 3),
        ];
        for (err, want) in cases {
            assert_eq!(exit_code(&err), want, "{err:#}");
        }
    }

    #[test]
    fn classes() {
        use tonic::Code;
        let api = |code: Code| -> anyhow::Error {
            anyhow::Error::from(ApiError::from(tonic::Status::new(code, "x")))
                .context("applying app \"web\"")
        };
        let refused = [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::OutOfRange,
        ];
        for code in refused {
            assert_eq!(Class::of(&api(code)), Class::Refused, "{code:?}");
            assert!(Class::of(&api(code)).refusal());
            assert_eq!(exit_code(&api(code)), 1, "{code:?}");
        }
        let failed = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
            Code::Unauthenticated,
            Code::Aborted,
        ];
        for code in failed {
            assert_eq!(Class::of(&api(code)), Class::Failed, "{code:?}");
            assert!(!Class::of(&api(code)).refusal());
        }
        assert_eq!(Class::of(&api(Code::InvalidArgument)), Class::BadInput);
        assert!(Class::of(&api(Code::InvalidArgument)).refusal());
        assert!(Class::of(&UsageError::new("bad").into()).refusal());
        assert!(!Class::of(&anyhow::anyhow!("boom")).refusal());
    }

    #[test]
    fn status_messages() {
        let cases = [
            (
                tonic::Status::not_found("app \"web\" not found"),
                "app \"web\" not found",
            ),
            (tonic::Status::invalid_argument("port: bad"), "port: bad"),
            (
                tonic::Status::unavailable("no leader"),
                "the coordinator is unavailable: no leader",
            ),
            (
                tonic::Status::unimplemented(
                    "grpc-status header missing, mapped from HTTP status code 404",
                ),
                "the server does not speak gRPC (grpc-status header missing, mapped from HTTP \
                 status code 404); does --coordinator point at a pmcluster coordinator?",
            ),
            (
                tonic::Status::internal(""),
                "the coordinator failed: Internal error",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(ApiError::from(status).to_string(), want);
        }
        // Sanity: a Result with context keeps the code reachable.
        let r: Result<(), ApiError> = Err(tonic::Status::invalid_argument("x").into());
        let err = r.context("applying web").expect_err("is an error");
        assert_eq!(exit_code(&err), 2);
    }
}
