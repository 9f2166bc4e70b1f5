//! cgroup v2 membership for instances: every instance runs in a cgroup of its own, so a stop or a
//! crash ends everything it started, including processes that left its process group and its
//! family (a double fork plus `setsid` between two `/proc` scans).
//!
//! Layout: `<cgroup2 mount><agent's own cgroup>/pmcluster-<node>-<key>/<instance>`, where `key`
//! is the agent key (a hash of its data dir path, see [`crate::orphans::Marker`]). Under the
//! agent's own cgroup, so that a service manager that delegates it (systemd's `Delegate=yes`)
//! lets the agent manage the subtree. Named after the node and the key so that the agent owns
//! everything in it: two agents never share it (not even two of the same node name on one host,
//! as in tests), and the same agent finds it again after its data dir was wiped (see
//! [`crate::orphans`] for what it does with cgroups no record names). Membership only: no controller is enabled, so the "no internal
//! processes" rule does not apply and the agent may stay in its own cgroup.
//!
//! While that directory may exist, the agent's data dir records its path
//! ([`CGROUP_RECORD_FILE`]): once the agent is killed, nothing else knows which cgroup it ran
//! in, and `pmcluster down` ends what it left there.
//!
//! Best effort everywhere: without a writable cgroup2 hierarchy (no cgroup2, read-only, not
//! privileged) the agent says so once at info level and works as before (process groups plus
//! `/proc` families). Nothing here ever fails a start.
//!
//! The child joins its cgroup between fork and exec (see [`crate::process::set_in_child`]), so
//! that it is in it before it can fork. Ending a cgroup writes `cgroup.kill` (Linux 5.14+; before,
//! SIGKILL to every pid of `cgroup.procs`), waits (polling, bounded) until `cgroup.procs` is
//! empty, and removes the directory.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_spec::instance::{CGROUP_RECORD_FILE, cgroup_name};
use tokio::time::Instant;

use crate::model::InstanceId;
use crate::process::to_pid;

/// How often an ending cgroup is checked for members left.
const POLL: Duration = Duration::from_millis(20);
/// How long an ending cgroup may take to empty after SIGKILL (a process stuck in the kernel
/// cannot be killed; the agent must not hang on it).
const END_WAIT: Duration = Duration::from_secs(10);

/// Where the agent puts its instances' cgroups, if anywhere.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// `<mount><own>/pmcluster-<node>-<key>`; `None`: cgroups are off or unavailable.
    base: Option<PathBuf>,
    /// The data dir's file that records `base`, for `pmcluster down`.
    record: Option<PathBuf>,
    /// Whether the failure to create an instance's cgroup was logged already.
    told: AtomicBool,
}

impl Cgroups {
    /// No cgroups (`--no-cgroups`).
    pub fn off() -> Cgroups {
        Cgroups::default()
    }

    /// Finds the cgroup2 hierarchy and the agent's own cgroup, creates the agent's directory
    /// under it and records its path in `data_dir`. Logs (info) and turns cgroups off when any
    /// of that but the record fails.
    pub fn detect(node: &str, key: &str, data_dir: &Path) -> Cgroups {
        match base_dir(&cgroup_name(node, key)) {
            Ok(base) => {
                tracing::info!(
                    "each instance runs in a cgroup of its own under {}",
                    base.display()
                );
                let record = data_dir.join(CGROUP_RECORD_FILE);
                record_base(&record, &base);
                Cgroups {
                    base: Some(base),
                    record: Some(record),
                    told: AtomicBool::new(false),
                }
            }
            Err(why) => {
                tracing::info!(
                    "instances run without cgroups ({why}); stops rely on process groups and \
                     /proc scans"
                );
                Cgroups::off()
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.base.is_some()
    }

    /// The cgroup an instance gets (whether or not it exists).
    pub fn path_for(&self, id: &InstanceId) -> Option<PathBuf> {
        Some(
            self.base
                .as_ref()?
                .join(crate::persist::safe_name(id.as_str())),
        )
    }

    /// Makes the instance's cgroup (or finds it: anything left in it is what remained of an
    /// earlier process of this instance, and is killed) and opens its `cgroup.procs` for the
    /// child to join. `None` (logged once) when that fails: the instance runs without one.
    /// The flag says whether the cgroup is new (see [`make`]).
    pub fn create(&self, id: &InstanceId) -> Option<(PathBuf, OwnedFd, bool)> {
        let path = self.path_for(id)?;
        match make(&path) {
            Ok((fd, fresh)) => Some((path, fd, fresh)),
            Err(e) => {
                if !self.told.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        instance = %id,
                        "cannot use cgroup {}: {e}; instances that cannot get one run without",
                        path.display()
                    );
                }
                None
            }
        }
    }

    /// At startup: removes the agent's cgroups that no instance of the local state owns (empty
    /// ones), and kills what is left in the cgroups of instances in `dead` (their process ended
    /// while no agent ran) before removing them. Never waits: a cgroup still busy is killed
    /// again when its instance next starts. Returns the cgroups that no record names and that
    /// hold processes: orphans (see [`crate::orphans`]), for the coordinator's first desired
    /// set to settle.
    pub fn sweep_at_start(
        &self,
        keep: &BTreeSet<PathBuf>,
        dead: &BTreeSet<PathBuf>,
    ) -> Vec<PathBuf> {
        let mut unknown = Vec::new();
        let Some(base) = &self.base else {
            return unknown;
        };
        let Ok(entries) = std::fs::read_dir(base) else {
            return unknown;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || keep.contains(&path) {
                continue;
            }
            let members = procs(&path).unwrap_or_default();
            if !members.is_empty() {
                if dead.contains(&path) {
                    tracing::info!(
                        cgroup = %path.display(),
                        "killing {} process(es) left by an instance that ended while the agent \
                         was down",
                        members.len()
                    );
                    kill(&path);
                } else {
                    unknown.push(path);
                    continue;
                }
            }
            match std::fs::remove_dir(&path) {
                Ok(()) => tracing::debug!(cgroup = %path.display(), "removed a stale cgroup"),
                Err(e) => tracing::debug!(cgroup = %path.display(), "cannot remove it yet: {e}"),
            }
        }
        unknown.sort();
        unknown
    }
}

impl Cgroups {
    /// At the agent's exit: removes the empty instance cgroups (an instance that never started,
    /// or one stopped for good; instances left running keep theirs, with their processes), then
    /// its own directory when nothing is left in it, and then its record.
    pub fn tidy(&self) {
        let Some(base) = &self.base else { return };
        for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && procs(&path).is_ok_and(|p| p.is_empty())
            {
                let _ = std::fs::remove_dir(&path);
            }
        }
        let gone = match std::fs::remove_dir(base) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        // Kept while the directory stays: instances left running for the next agent are still
        // in it, and a `down` after this agent may have to end them.
        if gone && let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
            let _ = std::fs::remove_file(record_scratch(record));
        }
    }
}

/// Writes `base` to `record` (its path and a newline), atomically. A failure costs only the
/// clean-up after a kill, so it is logged and the agent goes on. Not fsynced: no cgroup outlives
/// a reboot, and a record damaged by a power loss names none.
fn record_base(record: &Path, base: &Path) {
    let mut line = base.as_os_str().as_encoded_bytes().to_vec();
    line.push(b'\n');
    if let Err(e) = crate::persist::replace_private(&record_scratch(record), record, &line, false) {
        tracing::warn!(
            "cannot record the cgroup path in {}: {e}; if this agent is killed, `pmcluster down` \
             cannot end what its instances leave in their cgroups",
            record.display()
        );
    }
}

/// The scratch file [`crate::persist::replace_private`] writes the record through.
fn record_scratch(record: &Path) -> PathBuf {
    record.with_extension("tmp")
}

fn base_dir(name: &str) -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = parse_mountinfo(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = parse_own_cgroup(&own).ok_or("/proc/self/cgroup has no cgroup2 entry")?;
    let base = join_base(&mount, &own, name)
        .ok_or_else(|| format!("the agent's cgroup {own:?} is outside the visible hierarchy"))?;
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    // Creating a directory may succeed where joining is refused (a cgroup1 directory tree that
    // looks alike, a read-only interface file): the kernel's files must be there.
    if !base.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup2 directory", base.display()));
    }
    Ok(base)
}

/// `<mount><own>/<name>`; `None` for an own path that climbs out (`/../..`, a cgroup namespace
/// that hides the agent's cgroup).
pub fn join_base(mount: &Path, own: &str, name: &str) -> Option<PathBuf> {
    let mut base = mount.to_path_buf();
    for part in own.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return None;
        }
        base.push(part);
    }
    base.push(name);
    Some(base)
}

/// The mount point of the cgroup2 file system in `/proc/self/mountinfo` text (the first one,
/// preferring one mounted at its root).
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mount = PathBuf::from(unescape(mount));
        if *root == "/" {
            return Some(mount);
        }
        found.get_or_insert(mount);
    }
    found
}

/// Undoes the octal escapes of mountinfo (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 path in `/proc/self/cgroup` text (the `0::/path` line).
pub fn parse_own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/'))
}

///
/// An empty one left by the instance's previous process (kept for the restart, see [`empty`]) is
/// made anew, so that the returned flag is true: a cgroup that `cgroup.kill` has been written to
/// kills every process later cloned into it (`CLONE_INTO_CGROUP`, seen on Linux 6.18), while
/// one made after the kill does not. Where that fails, the child joins the old one through
/// `cgroup.procs`, which works either way.
fn make(path: &Path) -> io::Result<(OwnedFd, bool)> {
    let mut fresh = true;
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Left over (an earlier process of this instance that did not die, or an agent
            // that went down): nothing in it belongs to the process about to start.
            if procs(path).is_ok_and(|p| !p.is_empty()) {
                tracing::info!(cgroup = %path.display(), "killing what is left in it");
                kill(path);
                fresh = false;
            } else {
                fresh = std::fs::remove_dir(path).is_ok() && std::fs::create_dir(path).is_ok();
                if !fresh && !path.exists() {
                    std::fs::create_dir(path)?;
                }
            }
        }
        Err(e) => return Err(e),
    }
    // std opens with O_CLOEXEC: the program never inherits it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.procs"))?;
    Ok((OwnedFd::from(file), fresh))
}

/// The pids in a cgroup.
pub fn procs(path: &Path) -> io::Result<Vec<u32>> {
    let text = crate::process::read_pseudo_file(&path.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// SIGKILL for everything in the cgroup: `cgroup.kill`, or each pid of `cgroup.procs` on
/// kernels before 5.14.
pub fn kill(path: &Path) {
    // Opened without create: creating a file in a cgroup directory fails with EACCES, which
    // would hide the NotFound of a kernel without `cgroup.kill` and skip the fallback.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut f| io::Write::write_all(&mut f, b"1"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && path.exists() => {
            for pid in procs(path).unwrap_or_default() {
                let _ = nix::sys::signal::kill(to_pid(pid), Signal::SIGKILL);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(cgroup = %path.display(), "cannot write cgroup.kill: {e}"),
    }
}

/// Whether anything runs in the cgroup (a cgroup that cannot be read counts as empty).
pub fn populated(path: &Path) -> bool {
    procs(path).is_ok_and(|p| !p.is_empty())
}

/// Kills everything in the cgroup, waits (bounded, polling) until it is empty and removes it.
/// Returns whether it is gone.
pub async fn end(path: &Path) -> bool {
    if !empty(path).await {
        return false;
    }
    match std::fs::remove_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(cgroup = %path.display(), "cannot remove the cgroup: {e}");
            false
        }
    }
}

/// Kills everything in the cgroup and waits (bounded, polling) until it is empty, keeping the
/// cgroup itself: a restart reuses it, since removing and making a cgroup costs the kernel
/// milliseconds (an RCU grace period) that a crash-to-restart should not pay. Returns whether it
/// is empty (or gone).
pub async fn empty(path: &Path) -> bool {
    let deadline = Instant::now() + END_WAIT;
    // Killed processes are usually gone within a millisecond, and a crashed instance's restart
    // waits on this: look again soon, then less often.
    let mut pause = Duration::from_millis(1);
    loop {
        let members = match procs(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::warn!(cgroup = %path.display(), "cannot read cgroup.procs: {e}");
                Vec::new()
            }
        };
        if members.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                cgroup = %path.display(),
                pids = ?members,
                "processes do not die even after SIGKILL; leaving the cgroup"
            );
            return false;
        }
        kill(path);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL);
    }
    true
}

/// Removes an empty cgroup that no process will use: one made for a process that never
/// started, or one kept for a restart that will not come. The kernel refuses a populated one,
/// which then stays.
pub fn discard(path: &Path) {
    let _ = std::fs::remove_dir(path);
}

/// Whether `pid` is a member of the cgroup at `path` (for checks in logs and tests).
pub fn contains(path: &Path, pid: u32) -> bool {
    procs(path).is_ok_and(|p| p.contains(&pid))
}

/// The cgroup directory `path`, open for `clone3(CLONE_INTO_CGROUP)`; `None` when it cannot be
/// opened (the child then joins through `cgroup.procs`).
pub fn open_dir(path: &Path) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
25 18 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn mounts() {
        assert_eq!(
            parse_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mountinfo(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let none = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_mountinfo(none), None);
        assert_eq!(parse_mountinfo(""), None);
        // A bind mount of a subtree is only used when nothing better is mounted.
        let bound = "50 1 0:22 /sub /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(bound), Some(PathBuf::from("/mnt/my cg")));
        let both = format!("{bound}{UNIFIED}");
        assert_eq!(
            parse_mountinfo(&both),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn own_cgroups() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n1:cpu:/\n0::/\n";
        assert_eq!(parse_own_cgroup(hybrid), Some("/".to_string()));
        let systemd = "0::/system.slice/pmcluster-agent.service\n";
        assert_eq!(
            parse_own_cgroup(systemd).as_deref(),
            Some("/system.slice/pmcluster-agent.service")
        );
        assert_eq!(parse_own_cgroup("1:cpu:/\n"), None);
        assert_eq!(parse_own_cgroup(""), None);
    }

    #[test]
    fn bases() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            join_base(
                mount,
                "/system.slice/pmcluster-agent.service",
                "pmcluster-n1-00aa"
            ),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/pmcluster-agent.service/pmcluster-n1-00aa"
            ))
        );
        assert_eq!(
            join_base(Path::new("/sys/fs/cgroup/unified"), "/", "pmcluster-web-1"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/pmcluster-web-1"))
        );
        assert_eq!(join_base(mount, "/../../user.slice", "pmcluster-n1"), None);
    }

    /// The record names the directory while it is there: a tidy that cannot remove the
    /// directory (instances left running in it) keeps the record, one that can removes both.
    /// A plain directory stands in for the cgroup: tidy only reads and removes.
    #[test]
    fn the_record_lives_as_long_as_the_directory() -> io::Result<()> {
        let data = tempfile::tempdir()?;
        let base = data.path().join("pmcluster-n1-00aa");
        std::fs::create_dir(&base)?;
        let record = data.path().join(CGROUP_RECORD_FILE);
        record_base(&record, &base);
        record_base(&record, &base);
        let mut want = base.as_os_str().as_encoded_bytes().to_vec();
        want.push(b'\n');
        assert_eq!(std::fs::read(&record)?, want);
        let cgroups = Cgroups {
            base: Some(base.clone()),
            record: Some(record.clone()),
            told: AtomicBool::new(false),
        };

        let busy = base.join("instance");
        std::fs::create_dir(&busy)?;
        std::fs::write(busy.join("cgroup.procs"), "123\n")?;
        cgroups.tidy();
        assert!(base.exists() && record.exists());

        std::fs::remove_file(busy.join("cgroup.procs"))?;
        std::fs::remove_dir(&busy)?;
        cgroups.tidy();
        assert!(!base.exists());
        assert!(!record.exists());
        assert!(!record_scratch(&record).exists());
        Ok(())
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain\\"), "/plain\\");
        assert_eq!(unescape("/x\\9"), "/x\\9");
    }
}
