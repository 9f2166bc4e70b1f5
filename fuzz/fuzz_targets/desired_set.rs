//! The agent's handling of an arbitrary `pb::DesiredSet`; see `pmcluster_fuzz::desired`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pmcluster_fuzz::desired::check(data));
