//! Locating the workspace binaries a cluster runs.

use std::path::PathBuf;

use crate::error::{Error, io_err};

/// Overrides where the binaries are looked up.
pub const BIN_DIR_ENV: &str = "PMCLUSTER_BIN_DIR";

pub const COORDINATOR_BIN: &str = "pmcluster-coordinator";
pub const AGENT_BIN: &str = "pmcluster-agent";
pub const CLI_BIN: &str = "pmcluster";
pub const TESTAPP_BIN: &str = "pmcluster-testapp";

/// The dir holding the workspace binaries: `PMCLUSTER_BIN_DIR`, else the profile dir of the
/// running executable (`target/debug/deps/it-xxx` -> `target/debug`).
pub fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(io_err("locating the test executable"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::NoBinDir { exe: exe.clone() })?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| Error::NoBinDir { exe: exe.clone() })?;
    }
    Ok(dir.to_path_buf())
}

/// Path of one workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            binary: name.to_string(),
            dir,
        })
    }
}

/// The four binaries a cluster needs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub coordinator: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
    pub testapp: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Bins, Error> {
        Ok(Bins {
            coordinator: binary(COORDINATOR_BIN)?,
            agent: binary(AGENT_BIN)?,
            cli: binary(CLI_BIN)?,
            testapp: binary(TESTAPP_BIN)?,
        })
    }
}
