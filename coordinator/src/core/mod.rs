//! The pure core: deterministic functions over plain data. No tokio, tonic, clocks, randomness,
//! environment or files here (clippy denies the clock, random ids, env reads and hash maps, see
//! `clippy.toml`); the control loop feeds them snapshots and applies what they return.

// Pure: no wall clock, random ids, environment or hash order (see clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod access;
pub mod adoption;
pub mod autoscale;
pub mod leak;
pub mod placement;
pub mod quota;
pub mod reconcile;
pub mod rollout;
pub mod scheduler;
pub mod status;
pub mod versions;
