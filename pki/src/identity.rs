//! Who a certificate speaks for, and reading that back from a certificate.
//!
//! The identity is the one URI SAN under `spiffe://pmcluster/`: `coordinator`,
//! `agent/NODE` or `user/NAME`. Names follow the agent's `--node-name` rule (1-253 letters,
//! digits, `.`, `_`, `-`), so a name is also safe in a file name and a URI path.

use std::fmt;
use std::time::SystemTime;

use time::OffsetDateTime;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;
use crate::issue::date;

/// The scheme and trust domain every identity URI starts with.
pub const PREFIX: &str = "spiffe://pmcluster/";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    Coordinator,
    Agent(String),
    User(String),
}

impl Identity {
    /// An agent's identity; the node name is checked like the agent's `--node-name`.
    pub fn agent(node: &str) -> Result<Identity, PkiError> {
        check_name("node name", node)?;
        Ok(Identity::Agent(node.to_string()))
    }

    /// A user's identity, under the same rule as node names.
    pub fn user(name: &str) -> Result<Identity, PkiError> {
        check_name("user name", name)?;
        Ok(Identity::User(name.to_string()))
    }

    /// `spiffe://pmcluster/...`.
    pub fn uri(&self) -> String {
        match self {
            Identity::Coordinator => format!("{PREFIX}coordinator"),
            Identity::Agent(node) => format!("{PREFIX}agent/{node}"),
            Identity::User(name) => format!("{PREFIX}user/{name}"),
        }
    }

    /// The file name without `.pem`: `coordinator`, `agent-NODE`, `user-NAME`.
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Coordinator => "coordinator".to_string(),
            Identity::Agent(node) => format!("agent-{node}"),
            Identity::User(name) => format!("user-{name}"),
        }
    }

    /// Reads an identity URI; anything but the three shapes, or a bad name, is refused.
    pub fn from_uri(uri: &str) -> Result<Identity, PkiError> {
        let bad = |reason: &str| PkiError::Certificate(format!("URI SAN {uri:?}: {reason}"));
        let Some(path) = uri.strip_prefix(PREFIX) else {
            return Err(bad(&format!("does not start with {PREFIX}")));
        };
        let identity = match path.split_once('/') {
            None if path == "coordinator" => Ok(Identity::Coordinator),
            Some(("agent", node)) => Identity::agent(node),
            Some(("user", name)) => Identity::user(name),
            _ => return Err(bad("not coordinator, agent/NODE or user/NAME")),
        }
        .map_err(|e| bad(&e.to_string()))?;
        Ok(identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The agent's `--node-name` rule, plus no `.` or `..`: those are dot segments in a URI path,
/// which SPIFFE forbids and a normalizing reader would fold into the parent.
fn check_name(what: &'static str, name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Name {
            what,
            name: name.to_string(),
            reason: "use 1-253 letters, digits, '.', '_' or '-' (not '.' or '..')".to_string(),
        })
    }
}

/// The identity of a DER certificate (as a TLS peer presents it). Exactly one URI SAN under
/// [`PREFIX`] is accepted: with two, which one speaks would be a guess. Other URIs are not ours
/// and are ignored. Does not check the signature or validity: the TLS handshake does.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Certificate(format!("unreadable subject alternative names: {e}")))?;
    let ours: Vec<&str> = sans
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match ours.as_slice() {
        [uri] => Identity::from_uri(uri),
        [] => Err(PkiError::Certificate(format!(
            "no URI SAN starting with {PREFIX}; was it issued by pmcluster certs?"
        ))),
        several => Err(PkiError::Certificate(format!(
            "{} URI SANs start with {PREFIX}; exactly one is allowed",
            several.len()
        ))),
    }
}

/// The identity of the first certificate in PEM text (a certificate file: the leaf comes
/// first).
pub fn identity_from_pem(pem: &[u8]) -> Result<Identity, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| PkiError::Certificate(format!("not PEM: {e}")))?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::Certificate(format!(
            "the first PEM block is {:?}, not CERTIFICATE",
            block.label
        )));
    }
    identity_from_der(&block.contents)
}

/// Where `now` falls in a certificate's validity, with the bound it is past as a date, so a
/// client can say that its own certificate expired before a peer refuses it with no reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// Past its notAfter: that date.
    Expired(String),
    /// Before its notBefore: that date (the clock of one side is off, or it was issued ahead).
    NotYet(String),
}

/// The [`Validity`] of a DER certificate at `now`. Checks nothing else (not the signature).
pub fn validity_from_der(der: &[u8], now: SystemTime) -> Result<Validity, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let now = OffsetDateTime::from(now);
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    Ok(if now > not_after {
        Validity::Expired(date(not_after))
    } else if now < not_before {
        Validity::NotYet(date(not_before))
    } else {
        Validity::Valid
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let cases = [
            Identity::Coordinator,
            Identity::Agent("host-a.example_1".into()),
            Identity::User("alice".into()),
        ];
        for id in cases {
            assert_eq!(Identity::from_uri(&id.uri()), Ok(id.clone()), "{id}");
        }
        assert_eq!(
            Identity::Agent("n1".into()).uri(),
            "spiffe://pmcluster/agent/n1"
        );
        assert_eq!(Identity::User("bob".into()).file_stem(), "user-bob");
    }

    #[test]
    fn bad_names_and_uris_are_refused() {
        for name in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(254)] {
            let err = Identity::agent(name).expect_err(name).to_string();
            assert!(err.starts_with("node name "), "{err}");
        }
        let err = Identity::user("a/b").expect_err("slash").to_string();
        assert!(err.starts_with("user name \"a/b\""), "{err}");
        for uri in [
            "spiffe://other/agent/a",
            "spiffe://pmcluster/agent",
            "spiffe://pmcluster/agent/a/b",
            "spiffe://pmcluster/agent/..",
            "spiffe://pmcluster/admin/a",
            "spiffe://pmcluster/coordinator/x",
        ] {
            assert!(Identity::from_uri(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(identity_from_der(b"nope").is_err());
        assert!(identity_from_pem(b"nope").is_err());
        assert!(validity_from_der(b"nope", SystemTime::now()).is_err());
    }

    #[test]
    fn validity_names_the_bound_passed() {
        use std::time::Duration;
        let day = Duration::from_secs(24 * 3600);
        let issued_at = SystemTime::UNIX_EPOCH + 20_000 * day;
        let made = crate::new_ca(10, issued_at).expect("a CA");
        let (_, block) = x509_parser::pem::parse_x509_pem(made.cert_pem.as_bytes()).expect("PEM");
        let at = |t| validity_from_der(&block.contents, t).expect("a certificate");
        assert_eq!(at(issued_at + day), Validity::Valid);
        assert_eq!(
            at(issued_at + 11 * day),
            Validity::Expired(date(made.not_after))
        );
        assert!(matches!(at(issued_at - 2 * day), Validity::NotYet(_)));
    }
}
