//! `parse_apps` on arbitrary toml text; see `pmcluster_fuzz::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmcluster_spec::config::Format;

fuzz_target!(|data: &[u8]| pmcluster_fuzz::config::check(data, Format::Toml));
