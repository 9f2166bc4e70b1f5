//! The address a node's instances are reached at (an agent's `--advertise-address`): an IP
//! address or a DNS host name, checked the same way by the agent and the coordinator.

use crate::{SpecError, echo};

/// The longest DNS name (RFC 1035), without the trailing dot.
const MAX_HOST_NAME: usize = 253;
/// The longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// Checks `value` as an IP address (v4 or v6) or a host name (dot-separated labels of letters,
/// digits and '-', none starting or ending with '-'); `field` names the flag or field at fault.
pub fn validate_address(field: &str, value: &str) -> Result<(), SpecError> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    let why = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_HOST_NAME {
        Some(format!("is longer than {MAX_HOST_NAME} bytes"))
    } else {
        name.split('.').find_map(|label| {
            if label.is_empty() {
                Some("has an empty label (\"..\")".to_string())
            } else if label.len() > MAX_LABEL {
                Some(format!("has a label longer than {MAX_LABEL} bytes"))
            } else if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                Some("holds a character other than letters, digits, '-' and '.'".to_string())
            } else if label.starts_with('-') || label.ends_with('-') {
                Some("has a label that starts or ends with '-'".to_string())
            } else {
                None
            }
        })
    };
    match why {
        None => Ok(()),
        Some(why) => Err(SpecError::new(
            field,
            format!("{} {why}: give an IP address or a host name", echo(value)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let good = [
            "10.0.0.7",
            "::1",
            "fd00::7",
            "node-a",
            "node-a.example.com",
            "node-a.example.com.",
            "1host",
        ];
        for a in good {
            assert!(validate_address("advertise_address", a).is_ok(), "{a}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["abc"; 70].join(".");
        let bad = [
            "",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "10.0.0.7:80",
            "http://a",
            "a b",
            long_label.as_str(),
            long_name.as_str(),
        ];
        for a in bad {
            let e = validate_address("advertise_address", a).expect_err(a);
            assert_eq!(e.field, "advertise_address");
        }
    }
}
