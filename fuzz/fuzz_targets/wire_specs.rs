//! Every request conversion of the coordinator's API on arbitrary protobuf bytes; see
//! `pmcluster_fuzz::wire`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pmcluster_fuzz::wire::check(data));
