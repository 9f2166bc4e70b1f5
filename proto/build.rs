//! Compiles `pmcluster/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "pmcluster/v1/types.proto",
        "pmcluster/v1/cluster.proto",
        "pmcluster/v1/agent.proto",
        "pmcluster/v1/coordination.proto",
        "pmcluster/v1/access.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pmcluster_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
