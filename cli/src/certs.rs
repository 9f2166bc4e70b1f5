//! `pmcluster certs`: the cluster's CA and the certificates it signs, as files in one
//! directory. Building them is `pmcluster_pki`'s (pure, tested there); this module names the
//! files, refuses to replace them without `--force`, and writes them with the right modes.
//!
//! Every file is written to a temporary name in the same directory, created with its final
//! mode (a key is never readable by others, not even for a moment), then moved into place:
//! with `--force` by a rename, otherwise by a hard link, which fails if the name was taken
//! meanwhile. A reader never sees half a file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use pmcluster_pki::issue::date;
use pmcluster_pki::{Ca, Identity, Issued, PkiError, San, UserGrant};

use crate::args::{CertsAction, CertsArgs, CertsInitArgs, IssueArgs, IssueKind, OutputFormat};
use crate::error::UsageError;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Runs `certs init` or `certs issue ...`.
pub fn run(args: CertsArgs, output: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let written = match args.action {
        CertsAction::Init(a) => init(&a, now)?,
        CertsAction::Issue(kind) => issue(kind, now)?,
    };
    report(&written, output, out)
}

/// What was written, for the report.
#[derive(Debug)]
pub struct Written {
    pub subject: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub not_after: String,
}

/// The file names of a certificate and its key: `STEM.pem`, `STEM-key.pem`.
pub fn file_names(stem: &str) -> (String, String) {
    (format!("{stem}.pem"), format!("{stem}-key.pem"))
}

fn init(args: &CertsInitArgs, now: SystemTime) -> anyhow::Result<Written> {
    let dir = &args.dir;
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !args.force {
        for path in [&cert, &key] {
            if exists(path)? {
                return Err(UsageError::new(format!(
                    "{} exists: the CA is already made; pass --force to replace it (every \
                     certificate it signed then stops being trusted)",
                    path.display()
                ))
                .into());
            }
        }
    }
    let issued = pmcluster_pki::new_ca(args.days, now)?;
    make_dir(dir)?;
    place(&issued, &cert, &key, args.force)?;
    Ok(Written {
        subject: "pmcluster CA".to_string(),
        cert,
        key,
        not_after: date(issued.not_after),
    })
}

fn issue(kind: IssueKind, now: SystemTime) -> anyhow::Result<Written> {
    let (identity, sans, common, grant) = match kind {
        IssueKind::Coordinator { common, san } => {
            let sans = san
                .iter()
                .map(|s| San::parse(s.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage("--san", e))?;
            (Identity::Coordinator, sans, common, None)
        }
        IssueKind::Agent { node, common } => {
            let id = Identity::agent(&node).map_err(|e| usage("NODE", e))?;
            (id, Vec::new(), common, None)
        }
        IssueKind::User {
            name,
            role,
            app,
            common,
        } => {
            let id = Identity::user(&name).map_err(|e| usage("NAME", e))?;
            let grant = UserGrant { role, apps: app };
            grant.check().map_err(|e| usage("--app", e))?;
            (id, Vec::new(), common, Some(grant))
        }
    };
    let IssueArgs { dir, days, force } = common;
    let (cert_name, key_name) = file_names(&identity.file_stem());
    let (cert, key) = (dir.join(cert_name), dir.join(key_name));
    if !force {
        for path in [&cert, &key] {
            if exists(path)? {
                return Err(UsageError::new(format!(
                    "{} exists; pass --force to replace it",
                    path.display()
                ))
                .into());
            }
        }
    }
    let ca = load_ca(&dir, now)?;
    let issued = match (&identity, &grant) {
        (Identity::User(name), Some(grant)) => {
            pmcluster_pki::issue_user(&ca, name, grant, days, now)?
        }
        _ => pmcluster_pki::issue(&ca, &identity, &sans, days, now)?,
    };
    place(&issued, &cert, &key, force)?;
    let subject = match &grant {
        Some(g) => match &g.apps {
            Some(apps) => format!("{} (role {}, apps {apps})", identity.uri(), g.role),
            None => format!("{} (role {})", identity.uri(), g.role),
        },
        None => identity.uri(),
    };
    Ok(Written {
        subject,
        cert,
        key,
        not_after: date(issued.not_after),
    })
}

/// A bad argument: exit code 2, the message naming the argument.
fn usage(arg: &str, err: PkiError) -> anyhow::Error {
    UsageError::new(format!("{arg}: {err}")).into()
}

fn load_ca(dir: &Path, now: SystemTime) -> anyhow::Result<Ca> {
    let read = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UsageError::new(format!(
                "--dir: {} not found; run pmcluster certs init --dir {} first",
                path.display(),
                dir.display()
            ))
            .into()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let (cert, key) = (read(CA_CERT)?, read(CA_KEY)?);
    Ca::from_pem(&cert, &key, now).with_context(|| {
        format!(
            "--dir: cannot sign with {} and {}",
            dir.join(CA_CERT).display(),
            dir.join(CA_KEY).display()
        )
    })
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    path.try_exists()
        .with_context(|| format!("cannot look at {}", path.display()))
}

/// Creates the directory (and missing parents) with mode 0700; an existing one is left as
/// it is, since it may be shared on purpose.
fn make_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("--dir: cannot create {}", dir.display()))
}

/// Writes both files to temporary names, then moves the key and then the certificate into
/// place, so a certificate never sits next to a key that is not its own for long.
fn place(issued: &Issued, cert: &Path, key: &Path, force: bool) -> anyhow::Result<()> {
    let key_tmp = write_temp(key, issued.key_pem.as_bytes(), KEY_MODE)?;
    let cert_tmp = match write_temp(cert, issued.cert_pem.as_bytes(), CERT_MODE) {
        Ok(tmp) => tmp,
        Err(e) => {
            let _ = std::fs::remove_file(&key_tmp);
            return Err(e);
        }
    };
    let placed = settle(&key_tmp, key, force).and_then(|()| settle(&cert_tmp, cert, force));
    for tmp in [&key_tmp, &cert_tmp] {
        // Gone already after a rename; after a link, or a failure, this removes it.
        let _ = std::fs::remove_file(tmp);
    }
    placed
}

fn write_temp(target: &Path, contents: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let write = |file: &mut File| -> io::Result<()> {
        file.write_all(contents)?;
        file.sync_all()
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = write(&mut file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    Ok(tmp)
}

fn settle(tmp: &Path, target: &Path, force: bool) -> anyhow::Result<()> {
    let result = if force {
        std::fs::rename(tmp, target)
    } else {
        std::fs::hard_link(tmp, target)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(UsageError::new(format!(
            "{} exists; pass --force to replace it",
            target.display()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", target.display())),
    }
}

fn report(written: &Written, output: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    let value = || {
        serde_json::json!({
            "subject": written.subject,
            "cert": written.cert.display().to_string(),
            "key": written.key.display().to_string(),
            "not_after": written.not_after,
        })
    };
    if output == OutputFormat::Json {
        writeln!(out, "{}", value())?;
    } else if output == OutputFormat::Yaml {
        out.write_all(crate::output::document(&value(), output)?.as_bytes())?;
    } else {
        writeln!(
            out,
            "{}: {} and {} (valid until {})",
            written.subject,
            written.cert.display(),
            written.key.display(),
            written.not_after
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn sample() -> Issued {
        Issued {
            cert_pem: "cert\n".into(),
            key_pem: "key\n".into(),
            not_after: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn places_with_modes_and_refuses_to_replace_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        make_dir(&sub).expect("makes");
        assert_eq!(mode(&sub), DIR_MODE);
        let (cert, key) = (sub.join("x.pem"), sub.join("x-key.pem"));
        place(&sample(), &cert, &key, false).expect("places");
        assert_eq!(mode(&key), KEY_MODE);
        // The umask may take bits away from a certificate, never add them.
        assert_eq!(mode(&cert) & !CERT_MODE, 0);
        let err = place(&sample(), &cert, &key, false).expect_err("exists");
        assert!(err.to_string().contains("pass --force"), "{err}");
        let newer = Issued {
            key_pem: "key2\n".into(),
            ..sample()
        };
        place(&newer, &cert, &key, true).expect("replaces");
        assert_eq!(std::fs::read_to_string(&key).expect("reads"), "key2\n");
        assert_eq!(mode(&key), KEY_MODE);
        let left: Vec<_> = std::fs::read_dir(&sub)
            .expect("lists")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn names() {
        assert_eq!(
            file_names(&Identity::Agent("n1".into()).file_stem()),
            ("agent-n1.pem".to_string(), "agent-n1-key.pem".to_string())
        );
    }
}
