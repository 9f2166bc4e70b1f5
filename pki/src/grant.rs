//! What a user certificate lets its holder do: a role, and for `operate` the apps it covers.
//! They ride in one organizational unit of the subject, `role=ROLE` or `role=ROLE;apps=GLOB`,
//! the way Kubernetes reads a client certificate's organizations as its groups. This crate only carries
//! the words; the coordinator decides what a role may do.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

const ROLE_UNIT: &str = "role=";
const APPS_UNIT: &str = "apps=";

/// The roles a certificate may name.
pub const ROLES: [&str; 3] = ["read", "operate", "admin"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    /// `read`, `operate` or `admin`.
    pub role: String,
    /// For `operate`: a glob of app names; `None` is every app.
    pub apps: Option<String>,
}

impl UserGrant {
    /// A known role; `apps` with operate only, app-name characters and wildcards only.
    pub fn check(&self) -> Result<(), PkiError> {
        let bad = |reason: String| PkiError::Grant(reason);
        if !ROLES.contains(&self.role.as_str()) {
            return Err(bad(format!(
                "role {:?} is not one of read, operate, admin",
                self.role
            )));
        }
        if let Some(apps) = &self.apps {
            if self.role != "operate" {
                return Err(bad(format!(
                    "only an operate certificate is limited to some apps; a {} one covers every \
                     app (leave out --app)",
                    self.role
                )));
            }
            let ok = !apps.is_empty()
                && apps.len() <= 128
                && apps
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-*?[]!".contains(c));
            if !ok {
                return Err(bad(format!(
                    "apps {apps:?}: use 1-128 letters, digits, '.', '_', '-' and the wildcards \
                     *, ? and [...]"
                )));
            }
        }
        Ok(())
    }

    /// The organizational unit that carries it (rcgen keeps one value per attribute type).
    pub(crate) fn unit(&self) -> String {
        match &self.apps {
            None => format!("{ROLE_UNIT}{}", self.role),
            Some(apps) => format!("{ROLE_UNIT}{};{APPS_UNIT}{apps}", self.role),
        }
    }
}

/// The grant a DER certificate carries; `None` when it names no role (then it grants nothing).
pub fn user_grant_from_der(der: &[u8]) -> Result<Option<UserGrant>, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let mut found = None;
    for unit in cert.subject().iter_organizational_unit() {
        let text = unit
            .as_str()
            .map_err(|e| PkiError::Certificate(format!("unreadable organizational unit: {e}")))?;
        if !text.starts_with(ROLE_UNIT) {
            continue;
        }
        if found.replace(text.to_string()).is_some() {
            return Err(PkiError::Certificate(
                "two organizational units name a role: a certificate grants one".into(),
            ));
        }
    }
    let Some(found) = found else {
        return Ok(None);
    };
    let (role, apps) = match found.split_once(';') {
        None => (found.as_str(), None),
        Some((role, apps)) => (role, Some(apps)),
    };
    let role = role.strip_prefix(ROLE_UNIT).map(str::to_string);
    let apps = match apps {
        None => None,
        Some(a) => Some(
            a.strip_prefix(APPS_UNIT)
                .map(str::to_string)
                .ok_or_else(|| {
                    PkiError::Certificate(format!(
                        "organizational unit {found:?}: expected ;apps=GLOB"
                    ))
                })?,
        ),
    };
    let Some(role) = role else {
        return Ok(None);
    };
    let grant = UserGrant { role, apps };
    grant
        .check()
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    Ok(Some(grant))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{Ca, Identity, issue, issue_user, new_ca};

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map(|(_, block)| block.contents)
            .unwrap_or_default()
    }

    fn ca() -> Ca {
        let now = SystemTime::now();
        let made = new_ca(10, now).expect("a CA");
        Ca::from_pem(&made.cert_pem, &made.key_pem, now).expect("loads")
    }

    #[test]
    fn a_user_certificate_carries_its_grant() {
        let ca = ca();
        let now = SystemTime::now();
        for grant in [
            UserGrant {
                role: "read".into(),
                apps: None,
            },
            UserGrant {
                role: "operate".into(),
                apps: Some("web*".into()),
            },
            UserGrant {
                role: "admin".into(),
                apps: None,
            },
        ] {
            let issued = issue_user(&ca, "alice", &grant, 5, now).expect("issued");
            let got = user_grant_from_der(&der(&issued.cert_pem)).expect("readable");
            assert_eq!(got, Some(grant));
        }
        // Certificates without a role grant nothing.
        let agent = issue(&ca, &Identity::Agent("a".into()), &[], 5, now).expect("issued");
        assert_eq!(user_grant_from_der(&der(&agent.cert_pem)), Ok(None));
    }

    #[test]
    fn bad_grants_are_refused_naming_why() {
        let ca = ca();
        let now = SystemTime::now();
        for (role, apps) in [
            ("owner", None),
            ("admin", Some("web*")),
            ("operate", Some("web/x")),
            ("operate", Some("")),
        ] {
            let grant = UserGrant {
                role: role.into(),
                apps: apps.map(str::to_string),
            };
            let got = issue_user(&ca, "bob", &grant, 5, now);
            assert!(
                matches!(got, Err(PkiError::Grant(_))),
                "{role} {apps:?}: {got:?}"
            );
        }
    }
}
