//! The agent's local state on disk: one small JSON file per instance in `DATA_DIR/instances/`,
//! holding its assignment (so the agent can run its last desired set without the coordinator)
//! and its process (pid plus start time, so a restarted agent can adopt it and never start a
//! duplicate), or how it ended for good (so a restarted agent does not start it again).
//!
//! Why one file per instance: each supervisor writes its own file at each change (start, exit,
//! new assignment) with no coordination, in tens of microseconds, and a write stays small however
//! many instances the host runs. Writes are atomic (a scratch file, then a rename). They are not
//! fsynced: the file matters while the processes it names run, and a crash that loses the page
//! cache (power loss) ends those processes too.
//!
//! Why files are reused ([`Records`]): a write that created its temporary file, and a removal
//! that deleted the record, made and freed an inode per start, restart and delete. On ext4
//! without a journal, each new inode skips over every inode freed in the last minutes (ext4's
//! `recently_deleted`), so under churn this one `open` took about a quarter of the agent
//! workers' samples in a profile of repeated starts of 50. A removed record is now emptied and kept as a spare (`.spare-N`, up to
//! [`MAX_SPARES`]), a write fills a spare and swaps it with the record (`RENAME_EXCHANGE`), and
//! the previous version, emptied, becomes the next spare.
//!
//! Encoding and decoding are pure; only [`Records`] and [`load`] touch files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::model::{Assignment, InstanceId};

/// Version of the file layout; files of another version are ignored with a warning.
pub const FORMAT: u32 = 1;

/// What the agent keeps of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub format: u32,
    pub instance_id: String,
    pub app: String,
    pub index: u32,
    pub app_version: u64,
    /// The spec in its wire form (protobuf, hex): protobuf reads across versions, so an agent
    /// upgraded in place still adopts what the previous version started, and the spec read back
    /// is converted exactly as the coordinator's next desired set will be (no spurious restart).
    pub spec_wire: String,
    /// The same spec for people reading the file; never read back.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Port the coordinator resolved (fixed ranges).
    pub assigned_port: Option<u16>,
    pub run: bool,
    pub restart_epoch: u64,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    /// The process running now, if any.
    pub process: Option<SavedProcess>,
    /// How it ended for good, when its restart policy starts no other process (exited with
    /// autorestart off, errored after `max_restarts`): a restarted agent keeps it so, with this
    /// state and message, rather than take it for one that died while no agent watched and
    /// start it again. Only a start its assignment asks for (see [`crate::desired`]) runs it
    /// again. Missing in older files: such an instance is started, as those agents did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<SavedEnd>,
}

/// How an instance ended for good (see [`Saved::ended`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEnd {
    pub state: EndState,
    /// The status message the user saw ("crashed 4 times within 60s ...").
    pub message: String,
}

/// The states an instance stays in once its restart policy gave up on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndState {
    /// It exited and autorestart is off.
    Exited,
    /// It crashed more than `max_restarts` times within the restart window.
    Errored,
}

/// A running process, as the agent must find it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProcess {
    pub pid: u32,
    /// `/proc/PID/stat` field 22: with the pid, identifies the process across pid reuse.
    pub start_ticks: u64,
    /// The port it was started with (picked by the agent for `auto:` ranges).
    pub port: Option<u16>,
    pub started_at_ms: i64,
    /// The log pumps reading its output pipes (instances with `log_timestamps`). Missing in the
    /// files of agents that pumped in-process; older agents ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pumps: Vec<SavedPump>,
    /// Its cgroup (see [`crate::cgroup`]), when it runs in one. Missing in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// A log pump process (see [`crate::logs`]), so that the next agent knows whether an adopted
/// instance's pipe is still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPump {
    pub pid: u32,
    pub start_ticks: u64,
    /// The instance's file descriptor whose pipe it reads: 1 (stdout, also stderr with
    /// `merge_logs`) or 2.
    pub fd: u32,
}

impl Saved {
    /// The record of an assignment with a valid spec (an invalid one never runs: nothing to keep).
    pub fn of(a: &Assignment) -> Option<Saved> {
        let spec = a.spec.as_ref().ok()?;
        Some(Saved {
            format: FORMAT,
            instance_id: a.instance_id.as_str().to_string(),
            app: a.app.clone(),
            index: a.index,
            app_version: a.app_version,
            spec_wire: hex(&pb::AppSpec::from(spec.as_ref()).encode_to_vec()),
            spec: serde_json::to_value(spec.as_ref()).unwrap_or_default(),
            assigned_port: a.port,
            run: a.run,
            restart_epoch: a.restart_epoch,
            restarts: 0,
            last_exit_code: None,
            process: None,
            ended: None,
        })
    }

    /// The assignment read back, or why its spec cannot be read.
    pub fn assignment(&self) -> Result<Assignment, String> {
        let bytes = unhex(&self.spec_wire).ok_or("spec_wire is not hex")?;
        let wire = pb::AppSpec::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
        let spec = AppSpec::try_from(wire).map_err(|e| e.to_string())?;
        Ok(Assignment {
            instance_id: InstanceId::new(&self.instance_id),
            app: self.app.clone(),
            index: self.index,
            app_version: self.app_version,
            spec: Ok(Arc::new(spec)),
            port: self.assigned_port,
            run: self.run,
            restart_epoch: self.restart_epoch,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn encode(saved: &Saved) -> Vec<u8> {
    // Plain data of strings, numbers and maps with string keys: serialising cannot fail, and if
    // it ever did, an empty file is read back as "nothing saved", which is safe.
    serde_json::to_vec_pretty(saved).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Saved, String> {
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if saved.format != FORMAT {
        return Err(format!(
            "format {} (this agent reads {FORMAT})",
            saved.format
        ));
    }
    Ok(saved)
}

/// File name for an instance id. Ids are UUIDs; anything else is hex-encoded so that no id can
/// name a path outside the directory.
pub fn file_name(id: &str) -> String {
    format!("{}.json", safe_name(id))
}

/// An instance id as a file or directory name: itself when it is plain (UUIDs), else `x-` and
/// its hex form, so that no id can name a path outside a directory. A plain id that starts with
/// `x-` is escaped too: [`id_of_safe_name`] would read it as an escape, and the orphans of its
/// cgroup as another instance's.
pub fn safe_name(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with("x-")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        id.to_string()
    } else {
        format!("x-{}", hex(id.as_bytes()))
    }
}

/// The instance id a [`safe_name`] was made from.
pub fn id_of_safe_name(name: &str) -> String {
    name.strip_prefix("x-")
        .and_then(unhex)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| name.to_string())
}

/// How many emptied record files [`Records`] keeps for reuse; a removal beyond that deletes.
pub const MAX_SPARES: usize = 256;

/// The instance records of one directory, written and removed without making or freeing an
/// inode once spares exist (see the module doc). Every scratch file is a `.spare-N` of its own,
/// taken from the pool under its lock, so no two writes share one.
pub struct Records {
    dir: PathBuf,
    spares: Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    /// Emptied files, ready to be written.
    free: Vec<PathBuf>,
    /// The last N used in a spare's name.
    last: u64,
}

/// What [`Records::open`] found in the directory besides records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Spares taken into the pool (emptied).
    pub kept: usize,
    /// Spares beyond [`MAX_SPARES`] and temporary files of older agents, deleted.
    pub deleted: usize,
}

impl Records {
    /// The records in `dir` (made if missing is the caller's job), with the spares a previous
    /// agent left there taken into the pool, emptied. Older agents' temporary files
    /// (`.ID.json.tmp`) were never records: they are deleted.
    pub fn open(dir: PathBuf) -> (Records, Leftovers) {
        let mut spares = Spares::default();
        let mut leftovers = Leftovers::default();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if let Some(n) = name
                .strip_prefix(".spare-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                spares.last = spares.last.max(n);
                // Spares are kept empty; only one a crash left mid-write needs emptying.
                let is_empty = entry.metadata().is_ok_and(|m| m.len() == 0);
                if spares.free.len() < MAX_SPARES && (is_empty || empty(&path).is_ok()) {
                    spares.free.push(path);
                    leftovers.kept += 1;
                    continue;
                }
            } else if !(name.starts_with('.') && name.ends_with(".json.tmp")) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                leftovers.deleted += 1;
            }
        }
        let records = Records {
            dir,
            spares: Mutex::new(spares),
        };
        (records, leftovers)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every saved instance (see [`load`]).
    pub fn load(&self) -> io::Result<(Vec<Saved>, Vec<Unreadable>)> {
        load(&self.dir)
    }

    /// Writes one instance's file atomically, readable by its owner only (it holds the app's
    /// environment).
    pub fn write(&self, saved: &Saved) -> io::Result<()> {
        let path = self.dir.join(file_name(&saved.instance_id));
        // A spare, or a new file under a spare's name when none is left.
        let scratch = {
            let mut spares = self.lock();
            match spares.free.pop() {
                Some(spare) => spare,
                None => self.spare_name(&mut spares),
            }
        };
        match fill(&scratch, &encode(saved), false).and_then(|()| swap(&scratch, &path)) {
            // Renamed into place: nothing is left under the scratch name.
            Ok(false) => Ok(()),
            // Swapped: the scratch file holds the previous version.
            Ok(true) => {
                self.keep_emptied(scratch);
                Ok(())
            }
            Err(e) => {
                self.keep_emptied(scratch);
                Err(e)
            }
        }
    }

    /// Forgets an instance: its record becomes a spare (emptied), or is deleted when the pool
    /// is full.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let path = self.dir.join(file_name(id));
        let spare = {
            let mut spares = self.lock();
            (spares.free.len() < MAX_SPARES).then(|| self.spare_name(&mut spares))
        };
        let gone = match spare {
            Some(spare) => std::fs::rename(&path, &spare).map(|()| self.keep_emptied(spare)),
            None => std::fs::remove_file(&path),
        };
        match gone {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// How many spares the pool holds (for tests).
    pub fn spares(&self) -> usize {
        self.lock().free.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spare_name(&self, spares: &mut Spares) -> PathBuf {
        spares.last += 1;
        self.dir.join(format!(".spare-{}", spares.last))
    }

    /// Empties `path` (what it held may be an app's environment) and pools it; a file that
    /// cannot be emptied, or one more than the pool keeps, is deleted.
    fn keep_emptied(&self, path: PathBuf) {
        if empty(&path).is_ok() {
            let mut spares = self.lock();
            if spares.free.len() < MAX_SPARES {
                spares.free.push(path);
                return;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Truncates a file to nothing (an error for a missing one). Through an open file: its close
/// then does the flush that ext4 arms on a truncation to nothing, while there is nothing to
/// write, instead of the close after the next write.
fn empty(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
}

/// Puts `from` at `to` atomically: swapped with an existing `to` (returns `true`: `from` then
/// holds what `to` held), or renamed to a missing one (`false`). Where the file system cannot
/// swap, a plain rename replaces `to`.
fn swap(from: &Path, to: &Path) -> io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(
            rustix::io::Errno::NOENT
            | rustix::io::Errno::INVAL
            | rustix::io::Errno::NOSYS
            | rustix::io::Errno::OPNOTSUPP,
        ) => std::fs::rename(from, to).map(|()| false),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `path` with `bytes` atomically: written to `tmp` (owner only), fsynced first when
/// `sync` is set, then swapped with `path` (see [`swap`]). `tmp` then holds the previous
/// contents, and the next replace writes over it: a rename over `path` made ext4 write the new
/// file out at once (`auto_da_alloc`, 0.7 ms on the link task of every desired set here), and
/// a new `tmp` cost an inode. Without `sync`, a power loss may leave the old contents or, on
/// some file systems, an empty or damaged file: its reader must take that for missing (as
/// `load` here and `identity::load` for `applied.json` do).
pub fn replace_private(tmp: &Path, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    fill(tmp, bytes, sync)?;
    swap(tmp, path).map(|_| ())
}

/// Writes `bytes` into `scratch` (made if missing, owner only), fsynced when `sync` is set.
/// Without `O_TRUNC`: on ext4 a truncation to nothing makes the next close write the file out
/// at once (`auto_da_alloc`); `set_len` cuts what it held before, without that effect.
fn fill(scratch: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::io::Write;
    let mut file = private_file()
        .write(true)
        .create(true)
        .truncate(false)
        .open(scratch)?;
    // A leftover file keeps the mode it was made with.
    tighten(scratch)?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Options that create a file readable and writable by its owner only; every file the agent
/// makes in its data dir (records, ids, logs) is opened through these.
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.mode(0o600);
    options
}

/// Creates a directory and any missing parents, each readable by its owner only.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Takes every permission of group and others away from `path` (not following a symlink),
/// returning the mode it had when that changed anything.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() || mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(Some(mode))
}

/// Tightens `data_dir` and everything in it, two levels deep (the files there and in `logs/`
/// and `instances/`), so that a data dir from an agent that wrote with wider modes is its
/// owner's only from this start on. Symlinks are left alone (and not followed). Returns what
/// was tightened, with the mode it had, and what could not be.
pub fn tighten_data_dir(data_dir: &Path) -> (Vec<(PathBuf, u32)>, Vec<Unreadable>) {
    let mut tightened = Vec::new();
    let mut failed = Vec::new();
    let mut visit = |path: &Path| match tighten(path) {
        Ok(Some(mode)) => tightened.push((path.to_path_buf(), mode)),
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => failed.push((path.to_path_buf(), e.to_string())),
    };
    visit(data_dir);
    let entries = |dir: &Path| -> Vec<(PathBuf, bool)> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
            .collect()
    };
    for (path, is_dir) in entries(data_dir) {
        visit(&path);
        if is_dir {
            for (inner, _) in entries(&path) {
                visit(&inner);
            }
        }
    }
    (tightened, failed)
}

/// A record file that could not be read, and why.
pub type Unreadable = (PathBuf, String);

/// Every saved instance, sorted by id, and the files that could not be read.
pub fn load(dir: &Path) -> io::Result<(Vec<Saved>, Vec<Unreadable>)> {
    let mut saved = Vec::new();
    let mut bad = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((saved, bad)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let is_record = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'));
        if !is_record {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Ok(s) => saved.push(s),
                Err(why) => bad.push((path, why)),
            },
            Err(e) => bad.push((path, e.to_string())),
        }
    }
    saved.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok((saved, bad))
}

#[cfg(test)]
mod tests;
