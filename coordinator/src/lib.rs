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
