//! Spawning and reaping: the one reaper and its table of waiters (see the parent module).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Exit, decimal, to_pid};

/// How often the reaper looks for exits even without SIGCHLD (a safety net: signals coalesce,
/// and one may arrive before the listener exists).
const REAP_SWEEP: Duration = Duration::from_secs(2);

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
        if let Ok((pid, _)) = &registered
            && !self.reap_all
        {
            // Reaping only registered pids, a reap between the spawn and the registration
            // passed this child by, and its SIGCHLD is spent: its exit would wait for the
            // next sweep (2 s, which made a crash loop's fast exit read as a stable run).
            self.reap_pid(*pid);
        }
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
                reap_registered(&mut table, pid);
            }
        }
    }

    /// Reaps one registered child if it has exited (the embedded reaper's way, see `reap`).
    fn reap_pid(&self, pid: u32) {
        reap_registered(&mut self.lock(), pid);
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

/// `waitpid` of one registered child, without blocking: its exit, if any, to its waiter.
fn reap_registered(table: &mut Table, pid: u32) {
    if !table.waiting.contains_key(&pid) {
        return;
    }
    match waitpid(to_pid(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => {}
        Ok(status) => deliver(table, status),
        // Not our child any more (cannot happen for a registered pid); forget it.
        Err(Errno::ECHILD) => {
            if let Some(tx) = table.waiting.remove(&pid) {
                let _ = tx.send(Exit::Unknown);
            }
        }
        Err(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Reaping all: an embedded reaper looks for the exit of a pid it registers, and this
        // one is no child of the test.
        let reaper = Reaper::new(true);
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

    /// An embedded reaper (reaping only registered pids) that reaps while a spawn is under way
    /// passes the new child by; the exit must still reach its waiter at once, not at the next
    /// sweep: its SIGCHLD is spent.
    #[test]
    fn an_embedded_reaper_sees_a_child_that_ended_before_its_registration() {
        let reaper = Reaper::new(false);
        let spawned = reaper.spawn_with(|| {
            let child = Command::new("true").spawn()?;
            let pid = child.id();
            // Ended (a zombie) before it is registered, and a reap (its SIGCHLD's) comes first.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while super::super::read_stat(pid).is_some_and(|s| s.running()) {
                assert!(std::time::Instant::now() < deadline, "true did not end");
                std::thread::sleep(Duration::from_millis(1));
            }
            reaper.reap();
            Ok::<u32, io::Error>(pid)
        });
        let mut spawned = spawned.expect("true spawns");
        assert_eq!(spawned.exit.try_recv().ok(), Some(Exit::Code(0)));
    }
}
