//! pmcluster's credentials: one cluster CA, and certificates for the coordinator, agents and
//! users whose identity is a URI SAN under `spiffe://pmcluster/`; and `token`, the format of
//! the bearer tokens the CLI and the coordinator both check.
//!
//! `issue` builds certificates and keys as PEM text (no files: the CLI writes them);
//! `identity` reads the identity back from a certificate, which is what the coordinator will
//! authorize on. Both live here so the coordinator never depends on the CLI.

pub mod grant;
pub mod identity;
pub mod issue;
pub mod token;

pub use grant::{UserGrant, user_grant_from_der};
pub use identity::{Identity, Validity, identity_from_der, identity_from_pem, validity_from_der};
pub use issue::{Ca, Issued, San, issue, issue_user, new_ca};

/// Everything this crate refuses, each naming what it refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PkiError {
    /// A node or user name outside the safe pattern.
    #[error("{what} {name:?}: {reason}")]
    Name {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// A `--san` value that is neither an IP address nor a DNS name.
    #[error("SAN {san:?}: {reason}")]
    San { san: String, reason: String },
    /// The CA certificate or key cannot sign (unreadable, not a CA, not a pair, expired).
    #[error("CA: {0}")]
    Ca(String),
    /// A certificate whose identity cannot be read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A user certificate's role or app glob that cannot be.
    #[error("{0}")]
    Grant(String),
    /// rcgen refused to build or sign.
    #[error("cannot build the certificate: {0}")]
    Build(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> PkiError {
        PkiError::Build(e.to_string())
    }
}
