//! Building the CA and the certificates it signs, as PEM text. No files and no clock: the
//! caller passes `now`, so tests can make certificates that expire.
//!
//! Keys are ECDSA P-256 (small, fast, accepted by rustls and etcd). Serial numbers come from
//! rcgen (a hash of the fresh public key), so two certificates never share one.

use std::net::IpAddr;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Identity, PkiError, UserGrant};

/// How far back `not_before` goes: hosts' clocks differ a little, and a certificate made on
/// one host is used on another at once.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// When it expires (for telling the user).
    pub not_after: OffsetDateTime,
}

// The key stays out of logs and panics.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A DNS name or IP address the coordinator is reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP address (IPv6 also in brackets), else a DNS name: labels of letters, digits and
    /// `-`, 1-63 characters each, 253 in all. No wildcards: a coordinator has a few names.
    pub fn parse(value: &str) -> Result<San, PkiError> {
        let bad = |reason: &str| PkiError::San {
            san: value.to_string(),
            reason: reason.to_string(),
        };
        let unbracketed = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let name = value.strip_suffix('.').unwrap_or(value);
        if name.is_empty() || name.len() > 253 {
            return Err(bad("a DNS name has 1-253 characters"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(bad(
                    "not an IP address, nor a DNS name (labels of 1-63 letters, digits or '-', \
                     not starting or ending with '-')",
                ));
            }
        }
        Ok(San::Dns(name.to_ascii_lowercase()))
    }
}

/// The cluster CA, ready to sign: its certificate's subject and key usages, and its key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a CA from `ca.pem` and `ca-key.pem` text. Refuses a certificate that is not a CA,
    /// a key that is not its key, and a CA that has expired at `now`.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: SystemTime) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::Ca(format!("the key is not a PEM private key: {e}")))?;
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| PkiError::Ca(format!("the certificate is not PEM: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&block.contents)
            .map_err(|e| PkiError::Ca(format!("the certificate is not X.509: {e}")))?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(PkiError::Ca(
                "the certificate is not a CA certificate".into(),
            ));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Ca(
                "the key does not belong to the certificate".into(),
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::from(now) {
            return Err(PkiError::Ca(format!(
                "the CA expired on {}; make a new one with --force",
                date(not_after)
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&block.contents.clone().into(), key)?;
        Ok(Ca { issuer, not_after })
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// A new self-signed CA valid for `days` from `now`. It may sign only end certificates
/// (path length 0): pmcluster has no intermediates.
pub fn new_ca(days: u32, now: SystemTime) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pmcluster");
    dn.push(DnType::CommonName, "pmcluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_after = set_validity(&mut params, days, now, None);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A certificate for `identity`, signed by `ca`, valid for `days` from `now` but never past
/// the CA's own expiry (a chain is only as valid as its CA). `sans` are the DNS names and IP
/// addresses a coordinator is reached by; the identity URI SAN is always added.
///
/// Extended key usages: agents and users are TLS clients; the coordinator is a server, and
/// also a client of etcd with the same certificate in an HA pair.
pub fn issue(
    ca: &Ca,
    identity: &Identity,
    sans: &[San],
    days: u32,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    build(ca, identity, sans, None, days, now)
}

/// A user's certificate that grants `grant` (see [`UserGrant`]), otherwise as [`issue`].
pub fn issue_user(
    ca: &Ca,
    name: &str,
    grant: &UserGrant,
    days: u32,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    grant.check()?;
    build(ca, &Identity::user(name)?, &[], Some(grant), days, now)
}

fn build(
    ca: &Ca,
    identity: &Identity,
    sans: &[San],
    grant: Option<&UserGrant>,
    days: u32,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pmcluster");
    if let Some(grant) = grant {
        dn.push(DnType::OrganizationalUnitName, grant.unit());
    }
    dn.push(
        DnType::CommonName,
        match identity {
            Identity::Coordinator => "coordinator",
            Identity::Agent(name) | Identity::User(name) => name.as_str(),
        },
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Identity::Coordinator => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Identity::Agent(_) | Identity::User(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e| PkiError::Build(format!("URI SAN {}: {e}", identity.uri())))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for san in sans {
        params.subject_alt_names.push(match san {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => {
                SanType::DnsName(name.as_str().try_into().map_err(|e| PkiError::San {
                    san: name.clone(),
                    reason: format!("{e}"),
                })?)
            }
        });
    }
    let not_after = set_validity(&mut params, days, now, Some(ca.not_after));
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

fn set_validity(
    params: &mut CertificateParams,
    days: u32,
    now: SystemTime,
    cap: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let now = OffsetDateTime::from(now);
    let wanted = now.saturating_add(time::Duration::days(i64::from(days)));
    let not_after = cap.map_or(wanted, |cap| wanted.min(cap));
    params.not_before = now.saturating_sub(BACKDATE);
    params.not_after = not_after;
    not_after
}

/// `2026-05-01`, for messages.
pub fn date(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use webpki::{EndEntityCert, Error as WebPkiError, KeyUsage, anchor_from_trusted_cert};

    use super::*;
    use crate::identity_from_pem;

    const DAY: Duration = Duration::from_secs(86_400);

    fn der(pem: &str) -> CertificateDer<'static> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        CertificateDer::from(block.contents)
    }

    fn at(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("after 1970"))
    }

    /// Verifies `leaf` against `ca` the way rustls does: signature, validity at `when`, EKU.
    fn verify(
        ca: &Issued,
        leaf: &Issued,
        when: SystemTime,
        usage: KeyUsage,
    ) -> Result<(), WebPkiError> {
        let ca_der = der(&ca.cert_pem);
        let anchor = anchor_from_trusted_cert(&ca_der)?;
        let leaf_der = der(&leaf.cert_pem);
        let ee = EndEntityCert::try_from(&leaf_der)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at(when),
            usage,
            None,
            None,
        )
        .map(|_| ())
    }

    fn ca(days: u32, now: SystemTime) -> (Issued, Ca) {
        let made = new_ca(days, now).expect("CA");
        let loaded = Ca::from_pem(&made.cert_pem, &made.key_pem, now).expect("loads");
        (made, loaded)
    }

    fn sans_of(pem: &str) -> Vec<String> {
        let d = der(pem);
        let (_, cert) = X509Certificate::from_der(&d).expect("X.509");
        let sans = cert
            .subject_alternative_name()
            .expect("SANs")
            .expect("present");
        sans.value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    fn ekus_of(pem: &str) -> (bool, bool) {
        let d = der(pem);
        let (_, cert) = X509Certificate::from_der(&d).expect("X.509");
        let eku = cert.extended_key_usage().expect("EKU").expect("present");
        (eku.value.server_auth, eku.value.client_auth)
    }

    #[test]
    fn coordinator_certificate_serves_its_names() {
        let now = SystemTime::now();
        let (ca_pem, ca) = ca(3650, now);
        let sans = [
            San::parse("coord.example").expect("dns"),
            San::parse("127.0.0.1").expect("ip"),
            San::parse("[::1]").expect("ip6"),
        ];
        let leaf = issue(&ca, &Identity::Coordinator, &sans, 365, now).expect("issues");
        assert_eq!(verify(&ca_pem, &leaf, now, KeyUsage::server_auth()), Ok(()));
        let leaf_der = der(&leaf.cert_pem);
        let ee = EndEntityCert::try_from(&leaf_der).expect("parses");
        for name in ["coord.example", "127.0.0.1", "::1"] {
            let name = ServerName::try_from(name).expect("server name");
            assert_eq!(
                ee.verify_is_valid_for_subject_name(&name),
                Ok(()),
                "{name:?}"
            );
        }
        let other = ServerName::try_from("other.example").expect("server name");
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
        let all = sans_of(&leaf.cert_pem);
        assert!(
            all.iter()
                .any(|s| s.contains("spiffe://pmcluster/coordinator")),
            "{all:?}"
        );
        assert_eq!(ekus_of(&leaf.cert_pem), (true, true));
        assert_eq!(
            identity_from_pem(leaf.cert_pem.as_bytes()),
            Ok(Identity::Coordinator)
        );
        let days = (leaf.not_after - OffsetDateTime::from(now)).whole_days();
        assert_eq!(days, 365);
    }

    /// In an HA pair the coordinator's certificate is also its TLS client certificate towards
    /// etcd, which requires the clientAuth usage of it (and may serve etcd itself in a test).
    #[test]
    fn coordinator_certificate_is_also_a_client() {
        let now = SystemTime::now();
        let (ca_pem, ca) = ca(3650, now);
        let local = [San::parse("127.0.0.1").expect("ip")];
        let leaf = issue(&ca, &Identity::Coordinator, &local, 30, now).expect("issues");
        assert_eq!(verify(&ca_pem, &leaf, now, KeyUsage::client_auth()), Ok(()));
        assert_eq!(verify(&ca_pem, &leaf, now, KeyUsage::server_auth()), Ok(()));
    }

    #[test]
    fn agent_and_user_certificates_are_clients_only() {
        let now = SystemTime::now();
        let (ca_pem, ca) = ca(3650, now);
        for identity in [
            Identity::agent("host-a").expect("name"),
            Identity::user("alice").expect("name"),
        ] {
            let leaf = issue(&ca, &identity, &[], 30, now).expect("issues");
            assert_eq!(
                verify(&ca_pem, &leaf, now, KeyUsage::client_auth()),
                Ok(()),
                "{identity}"
            );
            assert!(
                matches!(
                    verify(&ca_pem, &leaf, now, KeyUsage::server_auth()),
                    Err(WebPkiError::RequiredEkuNotFoundContext(_))
                ),
                "{identity} must not serve"
            );
            assert_eq!(ekus_of(&leaf.cert_pem), (false, true));
            assert_eq!(
                sans_of(&leaf.cert_pem),
                vec![format!("URI({})", identity.uri())]
            );
            assert_eq!(identity_from_pem(leaf.cert_pem.as_bytes()), Ok(identity));
        }
    }

    #[test]
    fn another_ca_and_expiry_are_refused() {
        let now = SystemTime::now();
        let (ca_pem, ca) = ca(3650, now);
        let (other_pem, _) = self::ca(3650, now);
        let agent = Identity::agent("a").expect("name");
        let leaf = issue(&ca, &agent, &[], 1, now).expect("issues");
        // Every pmcluster CA has the same subject, so the other CA is found and its
        // signature check fails.
        assert!(matches!(
            verify(&other_pem, &leaf, now, KeyUsage::client_auth()),
            Err(WebPkiError::InvalidSignatureForPublicKey | WebPkiError::UnknownIssuer)
        ));
        assert!(matches!(
            verify(&ca_pem, &leaf, now + 2 * DAY, KeyUsage::client_auth()),
            Err(WebPkiError::CertExpired { .. })
        ));
        // Backdated a little for clock skew, not more.
        assert_eq!(
            verify(
                &ca_pem,
                &leaf,
                now - Duration::from_secs(60),
                KeyUsage::client_auth()
            ),
            Ok(())
        );
        assert!(matches!(
            verify(&ca_pem, &leaf, now - DAY, KeyUsage::client_auth()),
            Err(WebPkiError::CertNotValidYet { .. })
        ));
    }

    #[test]
    fn certificates_never_outlive_their_ca() {
        let now = SystemTime::now();
        let (_, ca) = ca(10, now);
        let leaf = issue(&ca, &Identity::Coordinator, &[], 365, now).expect("issues");
        assert_eq!(leaf.not_after, ca.not_after());
    }

    #[test]
    fn a_ca_must_be_a_ca_with_its_own_key_and_alive() {
        let now = SystemTime::now();
        let (ca_pem, ca) = ca(3650, now);
        let (other_pem, _) = self::ca(3650, now);
        let err = Ca::from_pem(&ca_pem.cert_pem, &other_pem.key_pem, now).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");
        let leaf = issue(&ca, &Identity::Coordinator, &[], 1, now).expect("issues");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem, now).expect_err("not a CA");
        assert!(err.to_string().contains("not a CA"), "{err}");
        let err =
            Ca::from_pem(&ca_pem.cert_pem, &ca_pem.key_pem, now + 3651 * DAY).expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        let err = Ca::from_pem("junk", &ca_pem.key_pem, now).expect_err("junk");
        assert!(err.to_string().starts_with("CA: "), "{err}");
    }

    #[test]
    fn sans_parse() {
        assert_eq!(
            San::parse("Coord.Example."),
            Ok(San::Dns("coord.example".into()))
        );
        assert_eq!(
            San::parse("10.0.0.1"),
            Ok(San::Ip(IpAddr::from([10, 0, 0, 1])))
        );
        assert!(matches!(San::parse("[fe80::1]"), Ok(San::Ip(_))));
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a_b",
            "*.example",
            "a b",
            "http://x",
            &"a".repeat(64),
        ] {
            let err = San::parse(bad).expect_err(bad).to_string();
            assert!(err.starts_with("SAN "), "{err}");
        }
    }
}
