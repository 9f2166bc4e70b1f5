//! The pmcluster v1 gRPC API, generated from `proto/pmcluster/v1/*.proto` at build time.
//!
//! Owns the wire types, and the few readings of the wire every client needs (a standby's leader
//! hint, whether a server speaks TLS). Domain types live in `pmcluster-spec` and the
//! coordinator; the conversions between them sit at the service boundary, never here.

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

/// Whether the server at `authority` (HOST:PORT) answers the HTTP/2 preface with a TLS record,
/// within `timeout`: what tells a coordinator that serves TLS, dialled with `http://`, apart
/// from one that is down or died mid-call. tonic says only "transport error" or "h2 protocol
/// error" in both cases (it read the TLS alert as an oversized frame, or the server closed
/// first).
pub async fn serves_tls(authority: &str, timeout: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 3];
        let mut got = 0;
        while got < head.len() {
            match stream.read(&mut head[got..]).await.ok()? {
                0 => break,
                n => got += n,
            }
        }
        Some(is_tls_record(&head[..got]))
    };
    let answer = tokio::time::timeout(timeout, probe).await;
    answer.ok().flatten().unwrap_or(false)
}

/// Whether `head` starts a TLS record: a content type (change cipher spec, alert, handshake,
/// application data) and a 3.x version. An h2 server answers the preface with a SETTINGS frame,
/// whose first bytes are a length no bigger than this.
fn is_tls_record(head: &[u8]) -> bool {
    matches!(head, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records() {
        let cases: &[(&[u8], bool)] = &[
            (&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], true), // rustls: an alert
            (&[0x16, 0x03, 0x01], true),
            (&[0x00, 0x00, 0x12, 0x04], false), // an h2 SETTINGS frame
            (b"HTTP/1.1 400 Bad Request", false),
            (&[0x15, 0x03], false),
            (&[], false),
        ];
        for (head, want) in cases {
            assert_eq!(is_tls_record(head), *want, "{head:?}");
        }
    }

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
