//! `parse_apps` on arbitrary text in one format.

use pmcluster_spec::config::{Format, parse_apps};

use crate::spec::{check_error, check_spec};

pub fn check(data: &[u8], format: Format) {
    // The CLI reads a config file into a `String`: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_apps(text, format) {
        Ok(specs) => {
            assert!(!specs.is_empty(), "parse_apps accepted a file with no app");
            for spec in &specs {
                check_spec(spec);
            }
        }
        Err(e) => check_error(&e),
    }
}
