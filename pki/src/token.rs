//! The bearer token format, the one contract between `pmcluster token create` (which prints
//! it), the CLI (which checks it before sending) and the coordinator (which refuses anything
//! else): one definition, so the two sides cannot disagree on what "malformed" means.

/// Every token starts so; a glance tells a pmcluster token from other secrets.
pub const PREFIX: &str = "pmc_";
/// Hex characters of a token's id.
pub const ID_LEN: usize = 12;
/// Hex characters of a token's secret part (256 bits).
pub const SECRET_LEN: usize = 64;
/// What either side says of a value that is not of that format. It never echoes the value:
/// a typo'd secret is still mostly a secret.
pub const MALFORMED: &str =
    "malformed token: expected pmc_<id>_<secret> as printed by `pmcluster token create`";

/// The id of a well-formed bearer value (`pmc_<id>_<secret>`, both hex); `None` for
/// anything else.
pub fn id(bearer: &str) -> Option<&str> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_LEN) && hex(secret, SECRET_LEN)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format() {
        let secret = "f".repeat(SECRET_LEN);
        assert_eq!(
            id(&format!("pmc_0123456789ab_{secret}")),
            Some("0123456789ab")
        );
        for bad in [
            "",
            "pmc_",
            "pmc_bogus",
            "pmc_0123456789ab",
            "pmc_0123456789ab_short",
            &format!("xyz_0123456789ab_{secret}"),
            &format!("pmc_0123456789aZ_{secret}"),
            &format!("pmc_0123456789ab_{secret}_"),
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }
}
