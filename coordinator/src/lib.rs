//! pmcluster coordinator: keeps desired state (apps, instance assignments) in a store, places
//! instances on nodes, and serves the public `Cluster` API and the `AgentLink` sessions.
//!
//! Layout: `model` (plain data), `core` (pure scheduler and reconciler), `store` (persistence
//! behind a trait), `control` (the shell that applies core decisions), `api` (tonic adapters),
//! `server` (wiring and serving).

pub mod api;
pub mod clock;
pub mod control;
pub mod core;
pub mod limits;
pub mod model;
pub mod server;
pub mod store;

#[cfg(test)]
mod tidy {
    /// The core must stay pure: no runtime, clocks, randomness, env or files.
    #[test]
    fn core_is_pure() -> Result<(), Box<dyn std::error::Error>> {
        let forbidden = [
            "tokio",
            "tonic",
            "Instant",
            "SystemTime",
            "std::env",
            "std::fs",
            "rand",
            "thread_rng",
            "new_v4",
            "HashMap",
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            for (n, line) in code.enumerate() {
                for word in forbidden {
                    assert!(
                        !line.contains(word),
                        "{}: {word} in {line:?} ({n})",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }
}
