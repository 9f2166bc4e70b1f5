//! The checks behind pmcluster's fuzz targets (`fuzz_targets/`), one module per target family.
//! Each `check` takes the fuzzer's bytes and panics (a libFuzzer crash) when the code under test
//! panics or breaks a property it promises:
//!
//! - [`config`]: `parse_apps` in each format; every spec it accepts survives the wire and its
//!   config form unchanged, and every refusal is a short message.
//! - [`wire`]: each conversion the coordinator's API makes of a request or agent message.
//! - [`desired`]: the agent's verdict, conversion, plan and local record of a desired set.
//!
//! [`seeds`] builds the starting corpus of the binary targets.

pub mod config;
pub mod desired;
pub mod seeds;
pub mod spec;
pub mod wire;
