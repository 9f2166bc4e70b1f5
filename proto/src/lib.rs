//! The pmcluster v1 gRPC API, generated from `proto/pmcluster/v1/*.proto` at build time.
//!
//! Owns the wire types only. Domain types live in `pmcluster-spec` and the coordinator; the
//! conversions between them sit at the service boundary, never here.

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("pmcluster.v1");
}

/// Encoded `FileDescriptorSet` of every pmcluster proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pmcluster_descriptor.bin"));

/// Largest gRPC message either side of any pmcluster link accepts or sends. tonic's defaults (4
/// MiB to decode, unbounded to encode) let one side send what the other refuses; every server
/// and client sets both limits from this constant instead. The coordinator keeps what it sends
/// well below it: desired sets and one app spec are budgeted, list replies are paged.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Metadata key of a standby coordinator's refusal (gRPC `UNAVAILABLE`): the advertise URL of
/// the leader, absent when the standby knows none. A refused call was not executed, so clients
/// dial that URL at once and retry the call there.
pub const LEADER_METADATA: &str = "pmcluster-leader";

/// The leader a refusal points at: the [`LEADER_METADATA`] value of an `UNAVAILABLE` status,
/// trimmed. `None` for any other status, and for a missing, empty or non-text value (a client
/// then tries the next coordinator of its list instead).
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let value = status
        .metadata()
        .get(LEADER_METADATA)?
        .to_str()
        .ok()?
        .trim();
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(hint: Option<&str>) -> tonic::Status {
        let mut status = tonic::Status::unavailable("this coordinator is a standby");
        if let Some(h) = hint {
            let value = h.parse().expect("test value is ASCII");
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }

    #[test]
    fn leader_hints() {
        assert_eq!(
            leader_hint(&refusal(Some(" http://10.0.0.2:7450 "))),
            Some("http://10.0.0.2:7450".to_string())
        );
        assert_eq!(leader_hint(&refusal(None)), None);
        assert_eq!(leader_hint(&refusal(Some(""))), None);
        // Only a refusal carries a hint: the same key on another code means nothing.
        let mut other = tonic::Status::internal("boom");
        let value = "http://x:1".parse().expect("ASCII");
        other.metadata_mut().insert(LEADER_METADATA, value);
        assert_eq!(leader_hint(&other), None);
    }
}
