//! A cluster CA and certificates for mutual-TLS tests, made with `pmcluster-pki` in a
//! directory of the test (the same code `pmcluster certs` runs, plus what the CLI does not
//! offer: a certificate valid only in the past, and a second, untrusted CA).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pmcluster_pki::{Ca, Identity, San, UserGrant, issue, issue_user, new_ca};

use crate::error::{Error, io_err, unexpected};

/// The user the harness's CLI calls present a certificate for.
pub const TEST_USER: &str = "tester";

/// A CA in `dir` (`ca.pem`), with the coordinator's certificate for 127.0.0.1.
pub struct Pki {
    dir: PathBuf,
    ca: Ca,
}

fn pki_err(what: &str) -> impl FnOnce(pmcluster_pki::PkiError) -> Error + '_ {
    move |e| unexpected(what, e.to_string())
}

impl Pki {
    /// A new CA in `dir`, and `coordinator.pem` for 127.0.0.1 and `user-tester.pem`.
    pub fn create(dir: &Path) -> Result<Pki, Error> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let now = SystemTime::now();
        let made = new_ca(30, now).map_err(pki_err("making a CA"))?;
        let ca =
            Ca::from_pem(&made.cert_pem, &made.key_pem, now).map_err(pki_err("loading the CA"))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
        };
        pki.write("ca", &made.cert_pem, &made.key_pem)?;
        let local = San::Ip(std::net::Ipv4Addr::LOCALHOST.into());
        pki.issue_at(&Identity::Coordinator, &[local], 30, now)?;
        pki.user(TEST_USER)?;
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate and key files of `stem` (`coordinator`, `agent-NODE`, `user-NAME`).
    pub fn pair(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        )
    }

    /// `agent-NODE.pem`, issued now unless it exists.
    pub fn agent(&self, node: &str) -> Result<(PathBuf, PathBuf), Error> {
        let id = Identity::agent(node).map_err(pki_err("an agent identity"))?;
        self.issue_once(&id)
    }

    /// `user-NAME.pem` with role admin, issued now unless it exists.
    pub fn user(&self, name: &str) -> Result<(PathBuf, PathBuf), Error> {
        self.user_as(name, "admin", None)
    }

    /// `user-NAME.pem` granting `role` (and for operate, `apps`), issued now unless it exists.
    pub fn user_as(
        &self,
        name: &str,
        role: &str,
        apps: Option<&str>,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let id = Identity::user(name).map_err(pki_err("a user identity"))?;
        let (cert, key) = self.pair(&id.file_stem());
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        let grant = UserGrant {
            role: role.to_string(),
            apps: apps.map(str::to_string),
        };
        let issued = issue_user(&self.ca, name, &grant, 30, SystemTime::now())
            .map_err(pki_err("issuing"))?;
        self.write(&id.file_stem(), &issued.cert_pem, &issued.key_pem)
    }

    /// A certificate for `identity` that expired a day ago, as `expired-STEM.pem`.
    pub fn expired(&self, identity: &Identity) -> Result<(PathBuf, PathBuf), Error> {
        let past = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
        let issued = issue(&self.ca, identity, &[], 2, past).map_err(pki_err("issuing"))?;
        self.write(
            &format!("expired-{}", identity.file_stem()),
            &issued.cert_pem,
            &issued.key_pem,
        )
    }

    fn issue_once(&self, identity: &Identity) -> Result<(PathBuf, PathBuf), Error> {
        let (cert, key) = self.pair(&identity.file_stem());
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        self.issue_at(identity, &[], 30, SystemTime::now())
    }

    fn issue_at(
        &self,
        identity: &Identity,
        sans: &[San],
        days: u32,
        now: SystemTime,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let issued = issue(&self.ca, identity, sans, days, now).map_err(pki_err("issuing"))?;
        self.write(&identity.file_stem(), &issued.cert_pem, &issued.key_pem)
    }

    fn write(
        &self,
        stem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let (cert, key) = self.pair(stem);
        fs::write(&cert, cert_pem).map_err(io_err(format!("writing {}", cert.display())))?;
        fs::write(&key, key_pem).map_err(io_err(format!("writing {}", key.display())))?;
        Ok((cert, key))
    }

    /// The coordinator flags that serve mutual TLS with this CA.
    pub fn coordinator_args(&self) -> Vec<String> {
        let (cert, key) = self.pair("coordinator");
        vec![
            "--tls-cert".into(),
            path(&cert),
            "--tls-key".into(),
            path(&key),
            "--client-ca".into(),
            path(&self.ca()),
        ]
    }

    /// The coordinator flags that connect to an etcd serving TLS for this CA (see
    /// `EtcdTls::from_pki`), with the coordinator's certificate as the client certificate.
    pub fn etcd_args(&self) -> Vec<String> {
        let (cert, key) = self.pair("coordinator");
        vec![
            "--etcd-ca".into(),
            path(&self.ca()),
            "--etcd-cert".into(),
            path(&cert),
            "--etcd-key".into(),
            path(&key),
        ]
    }

    /// The agent flags for `node`'s certificate (issued now if needed).
    pub fn agent_args(&self, node: &str) -> Result<Vec<String>, Error> {
        let (cert, key) = self.agent(node)?;
        Ok(vec![
            "--tls-cert".into(),
            path(&cert),
            "--tls-key".into(),
            path(&key),
            "--ca".into(),
            path(&self.ca()),
        ])
    }

    /// The CLI flags of [`TEST_USER`]'s certificate.
    pub fn cli_args(&self) -> Vec<String> {
        let (cert, key) = self.pair(&format!("user-{TEST_USER}"));
        vec![
            "--ca".into(),
            path(&self.ca()),
            "--cert".into(),
            path(&cert),
            "--key".into(),
            path(&key),
        ]
    }
}

/// A path as a flag value.
pub fn path(p: &Path) -> String {
    p.display().to_string()
}
