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
