//! The pure core: deterministic functions over plain data. No tokio, tonic, clocks, randomness,
//! environment or files here (a test in `lib.rs` enforces it); the control loop feeds them
//! snapshots and applies what they return.

pub mod autoscale;
pub mod placement;
pub mod reconcile;
pub mod rollout;
pub mod scheduler;
pub mod status;
pub mod versions;
