//! What `down` ends after the environment sweep ([`super::sweep`]) once the agent is gone: what
//! is left in the agent's instance cgroups, and the cgroups themselves, which the agent's own
//! exit (its `Cgroups::tidy`) would have removed. A process that cleared its environment
//! (`env -i`, a daemon that scrubs it) carries no key for the sweep to find, but it stays in its
//! instance's cgroup.
//!
//! The agent records where those cgroups are in its data dir
//! ([`CGROUP_RECORD_FILE`](pmcluster_spec::instance::CGROUP_RECORD_FILE)): once it is killed,
//! nothing else knows which cgroup it ran in (it runs in whatever cgroup `up` was run from).
//! Before anything is touched, the recorded directory must be named
//! [`cgroup_name`](pmcluster_spec::instance::cgroup_name) for this agent's node and key, be
//! reached through no symlink, and be a directory of a mounted cgroup2 file system; and no agent
//! may hold the data dir's lock (one started there by hand owns its cgroups). Only that
//! directory and what is under it are touched.
//!
//! Each instance cgroup that holds processes gets `cgroup.kill` (SIGKILL to each pid of
//! `cgroup.procs` before Linux 5.14), is waited on (bounded) until it is empty, and is removed;
//! then the agent's directory, and then its record.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;
use pmcluster_spec::instance::cgroup_name;

/// How long a cgroup gets to empty after SIGKILL: a process stuck in the kernel cannot be
/// killed, and `down` must not hang on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// The agent whose cgroups are ended: its data dir's files, and whose they must be.
#[derive(Debug, Clone, Copy)]
pub struct Agent<'a> {
    /// The record of its cgroups' directory.
    pub record: &'a Path,
    /// The lock a running agent holds on its data dir.
    pub lock: &'a Path,
    /// Its node name, if `down` can tell it.
    pub node: Option<&'a str>,
    pub key: &'a str,
}

/// What [`end_left`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// No record: the agent ran without cgroups, or its own exit removed them.
    Nothing,
    /// Nothing touched, and why.
    Refused(String),
    Tidied(Tidied),
}

impl Ended {
    /// The processes still running in the agent's cgroups.
    pub fn surviving(&self) -> Vec<u32> {
        match self {
            Ended::Tidied(t) => t.left.iter().flat_map(|l| l.pids.iter().copied()).collect(),
            _ => Vec::new(),
        }
    }
}

/// What was done under the agent's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tidied {
    /// The agent's directory.
    pub base: PathBuf,
    /// Processes that were in the instance cgroups and ended.
    pub killed: usize,
    /// Instance cgroups removed.
    pub removed: usize,
    /// Whether the agent's directory itself was removed.
    pub base_removed: bool,
    /// The cgroups left in place.
    pub left: Vec<Left>,
}

/// A cgroup left in place: the pids that did not die, or else why it could not be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub path: PathBuf,
    pub pids: Vec<u32>,
    pub error: Option<String>,
}

/// Ends what is left in the cgroups of `agent`, which must be gone, and removes them.
pub fn end_left(agent: &Agent) -> Ended {
    let base = match read_record(agent.record) {
        Ok(Some(base)) => base,
        Ok(None) => return Ended::Nothing,
        Err(why) => return Ended::Refused(why),
    };
    let _lock = match hold_lock(agent.lock) {
        Ok(lock) => lock,
        Err(why) => return Ended::Refused(why),
    };
    let Some(node) = agent.node else {
        return Ended::Refused(format!(
            "{} is recorded, but down cannot tell the agent's node name",
            base.display()
        ));
    };
    if let Err(why) = check_name(&base, node, agent.key) {
        return Ended::Refused(why);
    }
    match check_mounted(&base) {
        Ok(true) => {}
        // Gone already (a reboot): only the record is left to remove.
        Ok(false) => {
            forget(agent.record);
            return Ended::Nothing;
        }
        Err(why) => return Ended::Refused(why),
    }
    let tidied = tidy(&base);
    if tidied.base_removed {
        forget(agent.record);
    }
    Ended::Tidied(tidied)
}

/// Takes the lock a running agent holds on its data dir, for as long as the result lives, so
/// that no agent starts there meanwhile. No lock file: no agent ever ran there.
fn hold_lock(path: &Path) -> Result<Option<Flock<File>>, String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Err(format!(
            "an agent still runs on its data dir (it holds {})",
            path.display()
        )),
        Err((_, e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

fn read_record(path: &Path) -> Result<Option<PathBuf>, String> {
    match fs::read(path) {
        Ok(bytes) => parse_record(&bytes).map_err(|why| format!("{}: {why}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The path a record holds (one line). An empty one, which a power loss can leave, names none.
pub fn parse_record(bytes: &[u8]) -> Result<Option<PathBuf>, String> {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if line.is_empty() {
        return Ok(None);
    }
    if line.contains(&b'\n') || line.contains(&0) {
        return Err("it holds more than one path".to_string());
    }
    Ok(Some(PathBuf::from(OsStr::from_bytes(line))))
}

/// Whether `base`, by its text alone, may be the cgroup directory of the agent with `node` and
/// `key`: an absolute path that does not climb (`..`), named for that agent.
pub fn check_name(base: &Path, node: &str, key: &str) -> Result<(), String> {
    let shown = base.display();
    if !base.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    let plain = |c: Component| matches!(c, Component::RootDir | Component::Normal(_));
    if !base.components().all(plain) {
        return Err(format!("{shown} is not a plain path"));
    }
    let want = cgroup_name(node, key);
    if base.file_name() != Some(OsStr::new(&want)) {
        return Err(format!(
            "{shown} is not named {want}, as this agent's cgroups are"
        ));
    }
    Ok(())
}

/// Whether `base` is a cgroup2 directory (`true`) or gone (`false`). One reached through a
/// symlink is refused: the name checked would not be the directory's.
fn check_mounted(base: &Path) -> Result<bool, String> {
    let shown = base.display();
    match fs::symlink_metadata(base) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{shown} is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot look at {shown}: {e}")),
    }
    match fs::canonicalize(base) {
        Ok(real) if real == base => {}
        Ok(real) => return Err(format!("{shown} leads to {}", real.display())),
        Err(e) => return Err(format!("cannot resolve {shown}: {e}")),
    }
    let on_cgroup2 = statfs(base).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if !on_cgroup2 || !base.join("cgroup.procs").is_file() {
        return Err(format!("{shown} is not a cgroup2 directory"));
    }
    Ok(true)
}

/// Removes the record and the scratch file the agent writes it through.
fn forget(record: &Path) {
    let _ = fs::remove_file(record);
    let _ = fs::remove_file(record.with_extension("tmp"));
}

/// Ends every instance cgroup under `base`, then removes `base`.
fn tidy(base: &Path) -> Tidied {
    let mut tidied = Tidied {
        base: base.to_path_buf(),
        killed: 0,
        removed: 0,
        base_removed: false,
        left: Vec::new(),
    };
    for dir in subdirs(base) {
        end_one(&dir, &mut tidied);
    }
    match fs::remove_dir(base) {
        Ok(()) => tidied.base_removed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => tidied.base_removed = true,
        // What is left under it says why already.
        Err(_) if !tidied.left.is_empty() => {}
        Err(e) => tidied.left.push(Left {
            path: base.to_path_buf(),
            pids: Vec::new(),
            error: Some(format!("cannot remove it: {e}")),
        }),
    }
    tidied
}

fn end_one(dir: &Path, tidied: &mut Tidied) {
    let left = |pids, error| Left {
        path: dir.to_path_buf(),
        pids,
        error,
    };
    let before = members(dir);
    // `cgroup.kill` would end this `down` too (run from an instance's shell): it must finish.
    if before.contains(&std::process::id()) {
        let why = "this pmcluster runs in it".to_string();
        tidied.left.push(left(Vec::new(), Some(why)));
        return;
    }
    let survivors = match before.is_empty() {
        true => Vec::new(),
        false => kill_and_wait(dir),
    };
    tidied.killed += before.iter().filter(|p| !survivors.contains(p)).count();
    if !survivors.is_empty() {
        tidied.left.push(left(survivors, None));
        return;
    }
    match remove_tree(dir) {
        Ok(()) => tidied.removed += 1,
        Err(e) => tidied
            .left
            .push(left(Vec::new(), Some(format!("cannot remove it: {e}")))),
    }
}

/// Kills everything in the cgroup `dir` until it is empty or [`KILL_WAIT`] has passed; returns
/// the pids left.
fn kill_and_wait(dir: &Path) -> Vec<u32> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        // Again each round: a process forked while the kill went out.
        kill_all(dir);
        std::thread::sleep(POLL);
        let left = members(dir);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
    }
}

/// SIGKILL to everything in the cgroup `dir` and under it.
fn kill_all(dir: &Path) {
    // Opened without O_CREAT: where `cgroup.kill` is missing (before Linux 5.14) that fails as
    // not found, where creating it would fail as not permitted.
    let written = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            for pid in members(dir) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        // What it leaves alive is reported as left.
        Err(_) => {}
    }
}

/// The pids in the cgroup `dir` and in the cgroups under it.
fn members(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = tree(dir).iter().flat_map(|d| procs(d)).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The pids of one cgroup's `cgroup.procs`; none when it cannot be read (the `rmdir` that
/// follows then fails, and says so).
fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `dir` and every directory under it, each before those under it. An instance may make
/// cgroups of its own in its cgroup; its cgroup cannot be removed before them.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut next = 0;
    while let Some(d) = all.get(next) {
        let under = subdirs(d);
        all.extend(under);
        next += 1;
    }
    all
}

/// The directories in `dir` (not followed through symlinks), sorted.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Removes the cgroup `dir` and those under it, deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for d in tree(dir).iter().rev() {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What `down` says of the agent's cgroups: what it ended and removed, what it left and why.
pub fn lines(ended: &Ended) -> Vec<String> {
    match ended {
        Ended::Nothing => Vec::new(),
        Ended::Refused(why) => vec![format!("left the agent's cgroups alone: {why}")],
        Ended::Tidied(t) => tidied_line(t)
            .into_iter()
            .chain(t.left.iter().map(left_cgroup_line))
            .collect(),
    }
}

fn tidied_line(t: &Tidied) -> Option<String> {
    let count = |n: usize, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let base = t.base.display();
    let instances = count(t.removed, "instance cgroup", "instance cgroups");
    let removed = match (t.base_removed, t.removed) {
        (true, 0) => Some(format!("removed the agent's cgroup {base}")),
        (true, _) => Some(format!(
            "removed the agent's cgroup {base} and {instances} in it"
        )),
        (false, 0) => None,
        (false, _) => Some(format!("removed {instances} under {base}")),
    };
    let killed = count(t.killed, "process", "processes");
    match (removed, t.killed) {
        (None, 0) => None,
        (Some(removed), 0) => Some(removed),
        (Some(removed), _) => Some(format!(
            "{removed}, killing {killed} left in them (SIGKILL)"
        )),
        (None, _) => Some(format!(
            "killed {killed} left in the agent's instance cgroups under {base} (SIGKILL)"
        )),
    }
}

fn left_cgroup_line(l: &Left) -> String {
    let why = match &l.error {
        _ if !l.pids.is_empty() => {
            let pids: Vec<String> = l.pids.iter().map(u32::to_string).collect();
            format!("pid {} did not die even after SIGKILL", pids.join(", "))
        }
        Some(error) => error.clone(),
        None => "it could not be emptied".to_string(),
    };
    format!("left cgroup {}: {why}", l.path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        type Read = Result<Option<PathBuf>, String>;
        let path = |p: &str| Ok(Some(PathBuf::from(p)));
        let cases: &[(&[u8], Read)] = &[
            (
                b"/sys/fs/cgroup/pmcluster-n-k\n",
                path("/sys/fs/cgroup/pmcluster-n-k"),
            ),
            (
                b"/sys/fs/cgroup/pmcluster-n-k",
                path("/sys/fs/cgroup/pmcluster-n-k"),
            ),
            (
                b"/a b/\xffc\n",
                Ok(Some(PathBuf::from(OsStr::from_bytes(b"/a b/\xffc")))),
            ),
            (b"", Ok(None)),
            (b"\n", Ok(None)),
            (b"/a\n/b\n", Err("it holds more than one path".to_string())),
            (b"/a\0/b", Err("it holds more than one path".to_string())),
        ];
        for (bytes, want) in cases {
            assert_eq!(&parse_record(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn only_this_agents_name_passes() {
        let (node, key) = ("web-1", "00aa00aa00aa00aa");
        let cases: &[(&str, Option<&str>)] = &[
            ("/sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00aa", None),
            (
                "/sys/fs/cgroup/user.slice/session-3.scope/pmcluster-web-1-00aa00aa00aa00aa/",
                None,
            ),
            (
                "/sys/fs/cgroup/pmcluster-web-2-00aa00aa00aa00aa",
                Some("is not named pmcluster-web-1-00aa00aa00aa00aa"),
            ),
            (
                "/sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00ab",
                Some("is not named"),
            ),
            (
                "/sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00aa/x",
                Some("is not named"),
            ),
            (
                "/sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00aa0",
                Some("is not named"),
            ),
            (
                "/sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00aa/..",
                Some("is not a plain path"),
            ),
            (
                "/sys/fs/cgroup/../pmcluster-web-1-00aa00aa00aa00aa",
                Some("is not a plain path"),
            ),
            (
                "sys/fs/cgroup/pmcluster-web-1-00aa00aa00aa00aa",
                Some("is not an absolute path"),
            ),
            ("/", Some("is not named")),
            ("", Some("is not an absolute path")),
        ];
        for (base, want) in cases {
            let got = check_name(Path::new(base), node, key);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => assert!(e.contains(w), "{base}: {e}"),
                _ => panic!("{base}: {got:?}"),
            }
        }
    }

    /// Whatever the record says, a directory that is not a cgroup2 one is refused, and one
    /// reached through a symlink too; nothing under either is touched.
    #[test]
    fn only_a_cgroup2_directory_is_touched() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let real = fs::canonicalize(dir.path())?;
        let (node, key) = ("n", "00aa00aa00aa00aa");
        let name = cgroup_name(node, key);
        let base = real.join(&name);
        fs::create_dir(&base)?;
        // Looks like a cgroup to a reader of file names.
        fs::write(base.join("cgroup.procs"), "")?;
        fs::create_dir(base.join("instance"))?;
        let record = real.join("cgroup-base");
        let lock = real.join("agent.lock");
        let agent = Agent {
            record: &record,
            lock: &lock,
            node: Some(node),
            key,
        };
        let refused = |ended: Ended, want: &str| match ended {
            Ended::Refused(why) => assert!(why.contains(want), "{want:?} in {why}"),
            other => panic!("{other:?}"),
        };

        assert_eq!(end_left(&agent), Ended::Nothing);
        fs::write(&record, format!("{}\n", base.display()))?;
        refused(end_left(&agent), "is not a cgroup2 directory");

        let link = real.join("link");
        std::os::unix::fs::symlink(&real, &link)?;
        fs::write(&record, format!("{}\n", link.join(&name).display()))?;
        refused(end_left(&agent), "leads to");
        let elsewhere = real.join("elsewhere");
        fs::create_dir(&elsewhere)?;
        std::os::unix::fs::symlink(&base, elsewhere.join(&name))?;
        fs::write(&record, format!("{}\n", elsewhere.join(&name).display()))?;
        refused(end_left(&agent), "is not a directory");

        refused(
            end_left(&Agent {
                node: Some("other"),
                ..agent
            }),
            "is not named pmcluster-other-",
        );
        refused(
            end_left(&Agent {
                node: None,
                ..agent
            }),
            "node name",
        );
        assert!(base.join("instance").is_dir() && record.exists());

        // A record of a directory that is gone (a reboot) is dropped.
        fs::write(
            &record,
            format!("{}\n", real.join("gone").join(&name).display()),
        )?;
        assert_eq!(end_left(&agent), Ended::Nothing);
        assert!(!record.exists());
        Ok(())
    }

    /// A running agent holds its lock: its cgroups are its own.
    #[test]
    fn a_held_lock_refuses() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lock = dir.path().join("agent.lock");
        let record = dir.path().join("cgroup-base");
        fs::write(&record, "/no/such/dir/pmcluster-n-k\n")?;
        let held = Flock::lock(File::create(&lock)?, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)?;
        let agent = Agent {
            record: &record,
            lock: &lock,
            node: Some("n"),
            key: "k",
        };
        match end_left(&agent) {
            Ended::Refused(why) => assert!(why.contains("an agent still runs"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(record.exists());
        drop(held);
        assert_eq!(end_left(&agent), Ended::Nothing);
        assert!(
            !record.exists(),
            "the record of a directory that is gone is dropped"
        );
        Ok(())
    }
}
