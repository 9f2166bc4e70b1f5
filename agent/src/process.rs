//! Processes: spawning instance processes, reaping them (this module is the agent's only caller of
//! `waitpid`, but for `into_cgroup`, which waits for a child whose exec failed), watching
//! processes the agent did not spawn (adopted after an agent restart), signalling a process
//! group and every descendant, and reading `/proc`.
//!
//! Why one reaper: the agent is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so the orphans of
//! its instances (a daemonising worker, a grandchild whose parent died) become its children and
//! must be reaped or they stay zombies for as long as the agent runs. Reaping "any child" would
//! steal the exit status of an instance leader from whoever waits for it, so nothing else may
//! wait: every spawn goes through [`Reaper::spawn`], which registers the pid under the same lock
//! the reaper holds while it reaps, or [`Reaper::spawn_with`], which keeps an exit reaped while
//! its spawn was under way until the pid is registered; the reaper hands each registered exit to
//! its waiter.
//!
//! What this module must not do: decide anything about restarts (see `restart`), or block the
//! runtime for longer than one short syscall burst.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often the reaper looks for exits even without SIGCHLD (a safety net: signals coalesce,
/// and one may arrive before the listener exists).
const REAP_SWEEP: Duration = Duration::from_secs(2);
/// How often an adopted process is checked when pidfds are not available (kernels before 5.3).
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The agent could not learn it: the process was adopted (not the agent's child), or the
    /// agent is shutting down.
    Unknown,
}

impl Exit {
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            _ => None,
        }
    }

    /// "exited with code 3", "killed by SIGKILL", "exited".
    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Signal(sig) => format!("killed by {}", signal_name(sig)),
            Exit::Unknown => "exited (status unknown: the agent did not start it)".to_string(),
        }
    }
}

/// `SIGKILL` for 9, `signal 77` for what nix does not know.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// A process, identified by pid and start time (clock ticks after boot, `/proc/PID/stat` field
/// 22) so that a reused pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The process running now under `pid`.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = read_stat(pid)?;
        Some(ProcId {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// A process this agent just started, by its pid. Its start time is read from `/proc`; a
    /// process that has already gone (its stat unreadable) gets start time 0, which only a
    /// process of the first clock tick after boot has, so it is never signalled and counts as gone.
    pub fn started(pid: u32) -> ProcId {
        ProcId::of(pid).unwrap_or(ProcId {
            pid,
            start_ticks: 0,
        })
    }

    /// Whether this very process still runs (zombies count as gone).
    pub fn alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && s.running())
    }

    /// Sends `signal` if this very process still runs.
    pub fn signal(&self, signal: Signal) {
        if self.alive() {
            let _ = kill(to_pid(self.pid), signal);
        }
    }
}

pub fn to_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Sends `signal` to a process group; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    match killpg(to_pid(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {signal} to process group {pgid}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning and reaping

/// A spawned process: its pid, its exit (delivered by the reaper) and, in pipe mode, its output.
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// The agent's reaper; see the module doc.
pub struct Reaper {
    /// Who waits for which exit. Held while reaping and through a std spawn: std waits for a
    /// child whose exec failed and panics if that child was reaped first. [`Reaper::spawn_with`]
    /// takes it only to count its spawn and to register the pid, not across the clone, so that
    /// spawns on two threads overlap.
    table: Mutex<Table>,
    /// Reap any child (`waitpid(-1)`): the agent is a subreaper and adopts orphans. Off for an
    /// agent embedded in another process (tests), which must only reap its own spawns.
    reap_all: bool,
}

/// The reaper's bookkeeping, with no system calls, so its order of events is table-tested.
#[derive(Default)]
struct Table {
    waiting: BTreeMap<u32, oneshot::Sender<Exit>>,
    /// Spawns under way without the lock ([`Reaper::spawn_with`]).
    spawning: usize,
    /// Exits reaped while such a spawn was under way that nobody waited for: one may be that
    /// spawn's child, which ended before it was registered. Emptied when no spawn is under
    /// way, so it holds no more than the orphans of a few milliseconds. A pid in here is not
    /// given out again before it is emptied unless the kernel's pids wrap around within that
    /// time.
    early: BTreeMap<u32, Exit>,
}

impl Table {
    /// A child that `waitpid` returned.
    fn exited(&mut self, pid: u32, exit: Exit) {
        match self.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None if self.spawning > 0 => {
                self.early.insert(pid, exit);
            }
            None => tracing::debug!(pid, "reaped an orphan: {}", exit.describe()),
        }
    }

    /// Registers `pid`'s waiter; an exit reaped before this reaches it at once.
    fn register(&mut self, pid: u32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        match self.early.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                self.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// A spawn without the lock ended (registered or failed).
    fn spawn_ended(&mut self) {
        self.spawning = self.spawning.saturating_sub(1);
        if self.spawning == 0 {
            self.early.clear();
        }
    }
}

/// Ends [`Reaper::spawn_with`]'s spawn in the table even if the spawn panics.
struct SpawnUnderWay<'a>(&'a Reaper);

impl Drop for SpawnUnderWay<'_> {
    fn drop(&mut self) {
        self.0.lock().spawn_ended();
    }
}

impl Reaper {
    pub fn new(reap_all: bool) -> Reaper {
        Reaper {
            table: Mutex::new(Table::default()),
            reap_all,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `signal` to a child of the agent's spawns that has not been reaped, and says
    /// whether it had not. Under the table's lock, which reaping takes too: so its pid cannot
    /// be reaped, and given to another process, in between.
    pub fn signal_unreaped(&self, pid: u32, signal: Signal) -> io::Result<bool> {
        let table = self.lock();
        if !table.waiting.contains_key(&pid) {
            return Ok(false);
        }
        match kill(to_pid(pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Spawns `cmd` and registers its pid. Blocking (fork and exec) for well under a
    /// millisecond; the caller's `Command` decides stdio, group and credentials.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let mut table = self.lock();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let exit = table.register(pid);
        // Dropping a std `Child` neither waits nor kills: the reaper owns its exit from here.
        Ok(Spawned {
            pid,
            exit,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        })
    }

    /// Registers the child that `spawn` starts (its pid). The lock is not held while `spawn`
    /// runs, so `spawn` must tolerate its child being reaped by the reaper (a failed child it
    /// waits for itself may be gone already); an exit reaped before the registration is kept
    /// for it.
    pub fn spawn_with<E>(&self, spawn: impl FnOnce() -> Result<u32, E>) -> Result<Spawned, E> {
        self.lock().spawning += 1;
        let under_way = SpawnUnderWay(self);
        let spawned = spawn();
        let registered = spawned.map(|pid| (pid, self.lock().register(pid)));
        drop(under_way);
        let (pid, exit) = registered?;
        Ok(Spawned {
            pid,
            exit,
            stdout: None,
            stderr: None,
        })
    }

    /// Reaps every child that has exited and hands registered exits to their waiters.
    pub fn reap(&self) {
        let mut table = self.lock();
        if self.reap_all {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!("waitpid failed: {e}");
                        break;
                    }
                    Ok(status) => deliver(&mut table, status),
                }
            }
        } else {
            let pids: Vec<u32> = table.waiting.keys().copied().collect();
            for pid in pids {
                match waitpid(to_pid(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => deliver(&mut table, status),
                    // Not our child any more (cannot happen for a registered pid); forget it.
                    Err(Errno::ECHILD) => {
                        if let Some(tx) = table.waiting.remove(&pid) {
                            let _ = tx.send(Exit::Unknown);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Reaps on every SIGCHLD (and every [`REAP_SWEEP`]) until `cancel`. Waiters still registered
    /// then are dropped, which reads as [`Exit::Unknown`].
    pub async fn run(&self, mut sigchld: tokio::signal::unix::Signal, cancel: CancellationToken) {
        let mut sweep = tokio::time::interval(REAP_SWEEP);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = sigchld.recv() => {}
                _ = sweep.tick() => {}
            }
            self.reap();
        }
    }
}

fn deliver(table: &mut Table, status: WaitStatus) {
    let (pid, exit) = match status {
        WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
        WaitStatus::Signaled(pid, sig, _core) => (pid, Exit::Signal(sig as i32)),
        // Stops and continues are not asked for.
        _ => return,
    };
    let Ok(pid) = u32::try_from(pid.as_raw()) else {
        return;
    };
    table.exited(pid, exit);
}

/// Who a child runs as, resolved before the fork: the user and group databases (NSS) lock and
/// allocate, so they cannot be read between fork and exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The supplementary groups to set (`setgroups`); `None` leaves the agent's.
    pub groups: Option<Vec<u32>>,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none() && self.groups.is_none()
    }
}

/// Sets what a child needs before it runs the program: its cgroup, CPU affinity, resource limits
/// and credentials, in that order.
///
/// Why the cgroup is joined here, first: a child joined after the spawn could fork (and its
/// children escape) before; and joining needs write access to `cgroup.procs`, which the agent
/// has and the instance's user may not, so it comes before the privileges are dropped. The
/// file is opened before the fork (`cgroup_procs`, close-on-exec, owned by the closure and so
/// closed in the parent when the `Command` is dropped); the child writes its own pid, formatted
/// into a stack buffer. A failed write is ignored: the instance then runs outside the cgroup
/// and its stop relies on its process group and family, as without cgroups (never fail a start
/// because of cgroups).
///
/// Why `pre_exec` and not `sched_setaffinity`/`prlimit` on the pid after the spawn: by then the
/// program runs, and many read their limits once at startup (nginx sizes its connection table
/// from RLIMIT_NOFILE, Go and the JVM raise theirs) or start threads at once (which an affinity
/// set afterwards on the pid would miss). Doing it in the child between fork and exec is the
/// only way to have them in force from the program's first instruction.
///
/// Why the credentials are switched here and not with `Command::uid`/`gid`: std switches them
/// *before* it runs `pre_exec` closures, so a limit above the agent's hard limit (which only a
/// privileged process may raise) would fail with EPERM for every instance that has a `user`.
/// Here the limits are set while the child is still privileged, then `setgroups`, `setgid` and
/// `setuid` drop the privileges (in that order: each needs the privilege the next one drops).
///
/// Sound because the closure only makes raw syscalls through nix (`getpid`, `write`,
/// `sched_setaffinity`, `setrlimit`, `setgroups`, `setgid`, `setuid`, `chdir`), which are
/// async-signal-safe, on values built before the fork and captured by move (the pid's digits go
/// into a buffer on the stack): it does not allocate, lock or touch any other state of the
/// parent.
#[allow(unsafe_code)]
pub fn set_in_child(
    cmd: &mut Command,
    cgroup_procs: Option<OwnedFd>,
    affinity: Option<nix::sched::CpuSet>,
    limits: Vec<(nix::sys::resource::Resource, u64)>,
    credentials: Credentials,
    cwd_as_user: Option<std::ffi::CString>,
) {
    if cgroup_procs.is_none()
        && affinity.is_none()
        && limits.is_empty()
        && credentials.is_empty()
        && cwd_as_user.is_none()
    {
        return;
    }
    let Credentials { uid, gid, groups } = credentials;
    let groups: Option<Vec<nix::unistd::Gid>> =
        groups.map(|g| g.into_iter().map(nix::unistd::Gid::from_raw).collect());
    // SAFETY: see the function doc: only async-signal-safe syscalls on pre-built values.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = &cgroup_procs {
                let mut digits = [0u8; 10];
                let pid = u32::try_from(nix::unistd::getpid().as_raw()).unwrap_or(0);
                // Ignored on failure: see the function doc.
                let _ = nix::unistd::write(fd, decimal(pid, &mut digits));
            }
            if let Some(set) = &affinity {
                nix::sched::sched_setaffinity(Pid::from_raw(0), set).map_err(io::Error::from)?;
            }
            for (resource, value) in &limits {
                nix::sys::resource::setrlimit(*resource, *value, *value)
                    .map_err(io::Error::from)?;
            }
            if let Some(groups) = &groups {
                nix::unistd::setgroups(groups).map_err(io::Error::from)?;
            }
            if let Some(gid) = gid {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)).map_err(io::Error::from)?;
            }
            if let Some(uid) = uid {
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(io::Error::from)?;
            }
            // After the switch, so the directory is entered with the instance's rights (std's
            // own chdir runs before this hook, as the agent).
            if let Some(dir) = &cwd_as_user {
                nix::unistd::chdir(dir.as_c_str()).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Watching an exit

/// How a supervisor learns that its process ended.
pub enum ExitWatch {
    /// Its own child: the reaper delivers the status.
    Child(oneshot::Receiver<Exit>),
    /// Adopted after an agent restart (not our child): its pidfd becomes readable at exit.
    Pidfd(AsyncFd<OwnedFd>),
    /// Adopted, and pidfds are not available: poll `/proc`.
    Poll(ProcId, Interval),
    /// Already known to have ended.
    Done(Exit),
}

impl ExitWatch {
    /// Watches a process this agent did not spawn.
    pub fn adopt(id: ProcId) -> ExitWatch {
        match pidfd(id) {
            Ok(fd) => ExitWatch::Pidfd(fd),
            Err(e) => {
                tracing::debug!(pid = id.pid, "no pidfd ({e}); polling /proc for its exit");
                let mut interval = tokio::time::interval(ADOPTED_POLL);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ExitWatch::Poll(id, interval)
            }
        }
    }

    /// Waits for the exit. Cancel-safe: dropping the future loses nothing.
    pub async fn wait(&mut self) -> Exit {
        match self {
            ExitWatch::Child(rx) => {
                let exit = (&mut *rx).await.unwrap_or(Exit::Unknown);
                *self = ExitWatch::Done(exit);
                exit
            }
            ExitWatch::Pidfd(fd) => match fd.readable().await {
                Ok(_) => {
                    *self = ExitWatch::Done(Exit::Unknown);
                    Exit::Unknown
                }
                Err(e) => {
                    tracing::warn!("watching a pidfd failed ({e}); assuming the process ended");
                    *self = ExitWatch::Done(Exit::Unknown);
                    Exit::Unknown
                }
            },
            ExitWatch::Poll(id, interval) => {
                loop {
                    interval.tick().await;
                    if !id.alive() {
                        break;
                    }
                }
                *self = ExitWatch::Done(Exit::Unknown);
                Exit::Unknown
            }
            ExitWatch::Done(exit) => *exit,
        }
    }
}

fn pidfd(id: ProcId) -> io::Result<AsyncFd<OwnedFd>> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(id.pid).unwrap_or(i32::MAX))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    // The pid may have been reused between the caller's check and the open: the fd must name
    // the very process that was recorded.
    if !id.alive() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    register(fd)
}

/// Registers a pidfd with the runtime. tokio deprecated its safe constructors in favour of
/// `unsafe` ones whose contract is that the fd stays open and the same for the `AsyncFd`'s whole
/// life; an `OwnedFd` moved into the `AsyncFd` guarantees exactly that, so the safe (deprecated)
/// form is sound here and keeps the crate free of `unsafe` for it.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

// ---------------------------------------------------------------------------------------------
// /proc

/// The fields of `/proc/PID/stat` the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// Not a zombie (nor dead).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from its last closing parenthesis.
pub fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(4)?).ok()?,
        pgrp: u32::try_from(num(5)?).ok()?,
        cpu_ticks: num(14)?.saturating_add(num(15)?),
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

/// When a process started (unix ms), from its start time in clock ticks after boot; 0 when the
/// boot time cannot be read.
pub fn started_at_ms(start_ticks: u64) -> i64 {
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<i64>().ok())
    });
    let Some(btime) = btime else { return 0 };
    let hz = i64::try_from(rustix::param::clock_ticks_per_second().max(1)).unwrap_or(100);
    let ticks = i64::try_from(start_ticks).unwrap_or(i64::MAX);
    btime
        .saturating_mul(1000)
        .saturating_add(ticks.saturating_mul(1000) / hz)
}

/// A file of `/proc` or of a cgroup, which give no size: read in 4 KiB reads until the end.
/// `read_to_string` would ask for a size first (`statx`, `lseek`) and then probe with reads of
/// 32, 32, 64, 128... bytes.
pub fn read_pseudo_file(path: &std::path::Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One process's `/proc/PID/stat`, in one `read`: `read_to_string` would probe the size-less
/// file with six growing reads (and a `statx`), on every start and every metrics pass.
pub fn read_stat(pid: u32) -> Option<Stat> {
    use std::io::Read;
    // The line is about 300 bytes: 16 bytes of name and 50 numbers.
    let mut buf = [0u8; 2048];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    if n == buf.len() {
        let mut text = buf.to_vec();
        file.read_to_end(&mut text).ok()?;
        return parse_stat(pid, &String::from_utf8_lossy(&text));
    }
    // Lossy: a program may name itself with any bytes, and only the fields after it are read.
    parse_stat(pid, &String::from_utf8_lossy(buf.get(..n)?))
}

/// Every process on the host, read once (one `/proc/PID/stat` per process). Processes that end
/// during the scan are simply missing.
pub fn scan() -> io::Result<Vec<Stat>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            out.push(stat);
        }
    }
    Ok(out)
}

/// Children by parent pid, for [`family`].
pub fn children_index(table: &[Stat]) -> BTreeMap<u32, Vec<usize>> {
    let mut index: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in table.iter().enumerate() {
        index.entry(s.ppid).or_default().push(i);
    }
    index
}

/// The processes of one instance in `table`: the leader, its descendants (by parent links, so
/// those that left the group with `setsid` count), and whatever else is in its process group
/// (orphans reparented to the agent). Zombies are left out. Indices into `table`, sorted.
pub fn family(
    table: &[Stat],
    children: &BTreeMap<u32, Vec<usize>>,
    leader: u32,
    pgid: u32,
) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> = table
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pid == leader || s.pgrp == pgid)
        .map(|(i, _)| i)
        .collect();
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        if let Some(kids) = children.get(&table[i].pid) {
            todo.extend(kids.iter().copied());
        }
    }
    seen.into_iter().filter(|i| table[*i].running()).collect()
}

/// The live processes of an instance right now (see [`family`]), as ids to kill later safely.
pub fn family_now(leader: u32, pgid: u32) -> Vec<ProcId> {
    let Ok(table) = scan() else {
        return Vec::new();
    };
    let children = children_index(&table);
    family(&table, &children, leader, pgid)
        .into_iter()
        .map(|i| ProcId {
            pid: table[i].pid,
            start_ticks: table[i].start_ticks,
        })
        .collect()
}

/// Whether any process of the group runs (zombies do not count: an orphaned member that exited
/// may wait a while for its reaper, and a stop must not wait for that).
pub fn group_alive(pgid: u32) -> bool {
    if killpg(to_pid(pgid), None).is_err() {
        return false;
    }
    match scan() {
        Ok(table) => table.iter().any(|s| s.pgrp == pgid && s.running()),
        // Without /proc, trust the signal probe.
        Err(_) => true,
    }
}

/// SIGKILL for a process group and every process of `known` that still runs.
pub fn kill_all(pgid: u32, known: &[ProcId]) {
    signal_group(pgid, Signal::SIGKILL);
    for p in known {
        p.signal(Signal::SIGKILL);
    }
}

/// Writes `n` in decimal into `buf` and returns the digits. Used between fork and exec, so it
/// must not allocate.
pub fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// An I/O error's text without the "(os error N)" suffix, e.g. "No such file or directory".
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

/// Now, in Unix milliseconds (the wall clock: what a user reads as "started at").
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, pgrp: u32, state: char) -> Stat {
        Stat {
            pid,
            state,
            ppid,
            pgrp,
            cpu_ticks: 0,
            start_ticks: u64::from(pid),
            rss_pages: 0,
        }
    }

    #[test]
    fn stat_lines() {
        let line = "123 (my (odd) app) S 1 123 123 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 3 0 \
                    9876 1000000 250 18446744073709551615";
        assert_eq!(
            parse_stat(123, line),
            Some(Stat {
                pid: 123,
                state: 'S',
                ppid: 1,
                pgrp: 123,
                cpu_ticks: 12,
                start_ticks: 9876,
                rss_pages: 250,
            })
        );
        for bad in ["", "garbage", "7 (x) R", "7 (x) R 1 2"] {
            assert_eq!(parse_stat(7, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pseudo_files_are_read_whole() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let long: String = (0..3000).map(|i| format!("{i}\n")).collect();
        assert!(long.len() > 3 * 4096);
        std::fs::write(dir.path().join("long"), &long)?;
        assert_eq!(read_pseudo_file(&dir.path().join("long"))?, long);
        let own = read_pseudo_file(std::path::Path::new("/proc/self/stat"))?;
        assert!(parse_stat(std::process::id(), &own).is_some(), "{own}");
        let missing = read_pseudo_file(&dir.path().join("missing"));
        assert!(missing.is_err_and(|e| e.kind() == io::ErrorKind::NotFound));
        Ok(())
    }

    #[test]
    fn a_process_with_any_bytes_in_its_name_is_read() -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let own = read_stat(std::process::id()).ok_or_else(|| io::Error::other("own stat"))?;
        assert_eq!(own.ppid, std::os::unix::process::parent_id());
        let dir = tempfile::tempdir()?;
        let odd = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"sl\xff) (eep"));
        std::os::unix::fs::symlink("/bin/sleep", &odd)?;
        let mut child = Command::new(&odd).arg("30").spawn()?;
        let read = read_stat(child.id());
        child.kill()?;
        child.wait()?;
        let read = read.ok_or_else(|| io::Error::other("the odd name's stat was not read"))?;
        assert_eq!(read.ppid, std::process::id());
        assert!(read.start_ticks >= own.start_ticks);
        assert_eq!(read_stat(u32::MAX), None);
        Ok(())
    }

    #[test]
    fn families() {
        // 10 leads group 10 with child 11 (grandchild 12 left the group with setsid); 13 is an
        // orphan of group 10 reparented to the agent (pid 1); 20 is another instance; 14 a zombie.
        let table = vec![
            stat(1, 0, 1, 'S'),
            stat(10, 1, 10, 'S'),
            stat(11, 10, 10, 'S'),
            stat(12, 11, 12, 'S'),
            stat(13, 1, 10, 'R'),
            stat(14, 10, 10, 'Z'),
            stat(20, 1, 20, 'S'),
            stat(21, 20, 20, 'S'),
        ];
        let children = children_index(&table);
        let pids = |leader, pgid| -> Vec<u32> {
            family(&table, &children, leader, pgid)
                .into_iter()
                .map(|i| table[i].pid)
                .collect()
        };
        assert_eq!(pids(10, 10), [10, 11, 12, 13]);
        assert_eq!(pids(20, 20), [20, 21]);
        assert_eq!(pids(99, 99), Vec::<u32>::new());
    }

    #[test]
    fn digits() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(7, &mut buf), b"7");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn error_descriptions() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(describe(&e), "No such file or directory");
    }

    #[test]
    fn exits() {
        assert_eq!(Exit::Code(3).describe(), "exited with code 3");
        assert_eq!(Exit::Signal(9).describe(), "killed by SIGKILL");
        assert_eq!(Exit::Signal(15).code(), None);
        assert_eq!(signal_name(200), "signal 200");
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let stat = read_stat(me);
        assert!(
            stat.is_some_and(|s| s.running() && s.rss_pages > 0),
            "{stat:?}"
        );
        let id = ProcId::of(me);
        assert!(id.is_some_and(|id| id.alive()));
        assert_eq!(Some(ProcId::started(me)), id);
    }

    /// What a waiter of `rx` has received so far.
    fn received(rx: &mut oneshot::Receiver<Exit>) -> Option<Exit> {
        rx.try_recv().ok()
    }

    #[test]
    fn the_table_hands_exits_to_their_waiters_in_any_order() {
        let mut t = Table::default();
        // Registered, then reaped: the ordinary case.
        let mut rx = t.register(7);
        assert_eq!(received(&mut rx), None);
        t.exited(7, Exit::Code(0));
        assert_eq!(received(&mut rx), Some(Exit::Code(0)));

        // Reaped while its spawn was under way, before it was registered.
        t.spawning += 1;
        t.exited(8, Exit::Signal(9));
        assert_eq!(t.early.len(), 1);
        let mut rx = t.register(8);
        assert_eq!(received(&mut rx), Some(Exit::Signal(9)));
        t.spawn_ended();
        assert!(t.early.is_empty() && t.waiting.is_empty());

        // An orphan reaped during another spawn is kept only while a spawn is under way.
        t.spawning += 2;
        t.exited(9, Exit::Code(1));
        let mut rx = t.register(10);
        t.spawn_ended();
        assert_eq!(t.early.len(), 1, "a spawn is still under way");
        t.exited(10, Exit::Code(3));
        assert_eq!(received(&mut rx), Some(Exit::Code(3)));
        t.spawn_ended();
        assert!(t.early.is_empty());

        // With no spawn under way, an unknown exit is an orphan's and is dropped.
        t.exited(11, Exit::Code(0));
        assert!(t.early.is_empty() && t.waiting.is_empty());
        // More ends than starts (cannot happen) do not wrap.
        t.spawn_ended();
        assert_eq!(t.spawning, 0);
    }

    #[test]
    fn a_spawn_that_fails_or_panics_is_no_longer_under_way() {
        let reaper = Reaper::new(false);
        let failed: Result<Spawned, &str> = reaper.spawn_with(|| Err("no"));
        assert!(failed.is_err());
        assert_eq!(reaper.lock().spawning, 0);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = reaper.spawn_with(|| -> Result<u32, ()> { panic!("in the spawn") });
        }));
        assert!(panicked.is_err());
        assert_eq!(reaper.lock().spawning, 0);
        let ok = reaper.spawn_with(|| Ok::<u32, ()>(4_000_000));
        assert!(ok.is_ok_and(|s| s.pid == 4_000_000));
        assert_eq!(reaper.lock().spawning, 0);
        assert!(reaper.lock().waiting.contains_key(&4_000_000));
    }

    #[test]
    fn a_started_process_that_is_gone_counts_as_gone() -> std::io::Result<()> {
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        child.wait()?;
        // Reaped: its stat is gone (or, if the pid was taken again, another start time).
        let id = ProcId::started(pid);
        assert_eq!(id.pid, pid);
        assert!(
            id.start_ticks == 0 || read_stat(pid).is_some_and(|s| s.start_ticks == id.start_ticks)
        );
        if id.start_ticks == 0 {
            assert!(!id.alive());
        }
        Ok(())
    }
}
