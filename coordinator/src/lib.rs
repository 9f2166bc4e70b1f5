//! pmcluster coordinator: keeps desired state (apps, instance assignments) in a store, places
//! instances on nodes, and serves the public `Cluster` API and the `AgentLink` sessions.
//!
//! Layout: `model` (plain data), `core` (pure scheduler and reconciler), `store` (persistence
//! behind a trait), `wire` (model to and from the protocol), `control` (the shell that applies
//! core decisions, in domain types only), `api` (tonic adapters, converting through `wire`),
//! `server` (wiring and serving), `throttle` (the server's limits layer: write rate, request
//! timeout). The core's purity is clippy's to enforce: `disallowed-methods` and
//! `disallowed-types` in `clippy.toml`, denied at the top of `core`.

pub mod api;
pub mod auth;
pub mod clock;
pub mod control;
pub mod core;
pub mod lead;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The `.rs` files under `dir`, recursively.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                sources(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }

    /// Issue 10 item 1: `control`, `core` and `model` speak domain types only; every wire
    /// conversion is in `wire` and `api`. A file's test module (from its `#[cfg(test)]` on) may
    /// reach the protocol, for example to list every method it must classify.
    #[test]
    fn the_shell_and_the_core_never_name_a_wire_type() -> std::io::Result<()> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("model.rs")];
        for dir in ["control", "core", "model"] {
            sources(&src.join(dir), &mut files)?;
        }
        let mut found = Vec::new();
        for file in &files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "tests.rs" || name.ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(file)?;
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break;
                }
                let code = line.split("//").next().unwrap_or("");
                for wire in ["pmcluster_proto", "pb::", "prost::", "tonic::"] {
                    if code.contains(wire) {
                        found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            files.len() > 20,
            "the walk found only {} files",
            files.len()
        );
        assert!(
            found.is_empty(),
            "wire types outside wire/api:\n{}",
            found.join("\n")
        );
        Ok(())
    }
}
