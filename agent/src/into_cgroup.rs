//! Starting an instance's process directly inside its cgroup, with
//! `clone3(CLONE_INTO_CGROUP)` (Linux 5.7).
//!
//! Why: a process that joins a cgroup by writing its pid to `cgroup.procs` is *migrated*, and a
//! migration waits for an RCU grace period under the kernel's threadgroup lock: about 18 ms on
//! the machines measured (bench/RESULTS.md), most of a restart. A process cloned into the cgroup
//! is born there and nothing is migrated.
//!
//! std's `Command` cannot pass clone flags, so this module does what its fork path does itself:
//! everything the child needs (the program's path, argv, envp, descriptors, limits, ids) is
//! built before the clone; the child then only makes raw system calls on those values and
//! executes the program, reporting a failure's errno through a close-on-exec pipe, as std does.
//! Where the kernel refuses `clone3` or the flag, [`spawn`] says so ([`SpawnError::Clone`]) and
//! the caller spawns with `Command` and joins the cgroup from the child, as before.
//!
//! The same clone starts instances that have no cgroup (`--no-cgroups`), for its other gain: on
//! x86_64 the child shares the agent's memory until it executes the program
//! (`CLONE_VM | CLONE_VFORK`, what `posix_spawn` does), where a fork would copy the agent's page
//! tables only for the exec to throw the copy away. That copy and its undoing cost about 1 ms of
//! CPU per start on the machines measured (a fork of a 10 MB process and its exec of
//! `/bin/true`: 1.6 ms against 0.6 ms with vfork, bench/RESULTS.md), serially in the agent.
//! Sharing the memory asks more of the child, which runs on a stack of its own (see
//! [`clone_child`]).
//!
//! All of the crate's unsafe code for this is here; see the SAFETY notes.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::process::Credentials;

/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args`, version 2 (88 bytes: up to `cgroup`), as linux/sched.h lays it out.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Everything the child does between the clone and the program, prepared by the parent.
pub struct Setup {
    /// The program as found on `PATH` (or as given, when it names a path).
    pub program: CString,
    pub argv: Vec<CString>,
    /// `KEY=VALUE`, the whole environment the program gets.
    pub envp: Vec<CString>,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Entered before the switch of user (as the agent).
    pub cwd: Option<CString>,
    /// Entered after it (as the instance's user).
    pub cwd_as_user: Option<CString>,
    pub affinity: Option<nix::sched::CpuSet>,
    pub limits: Vec<(nix::sys::resource::Resource, u64)>,
    pub credentials: Credentials,
}

/// The child's stack while it shares the agent's memory: it runs [`child`] only, whose frames
/// take a few hundred bytes.
const CHILD_STACK: usize = 64 * 1024;

/// Set once the kernel refused: every later start goes the usual way at once.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether to try [`spawn`] (the kernel has not refused it yet).
pub fn usable() -> bool {
    !REFUSED.load(Ordering::Relaxed)
}

/// Remembers that the kernel refused [`spawn`] (said once, in the log).
pub fn unusable(e: &io::Error) {
    if !REFUSED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "cannot start instances inside their cgroups with clone3 ({e}); they join them \
             after the start instead, which costs a cgroup migration per start"
        );
    }
}

/// Why [`spawn`] did not start the program.
#[derive(Debug)]
pub enum SpawnError {
    /// The kernel refused `clone3` or `CLONE_INTO_CGROUP` (too old, or a filter): spawn the
    /// usual way.
    Clone(io::Error),
    /// The child could not set itself up or run the program (as `Command::spawn` would fail).
    Child(io::Error),
}

/// The environment a program gets: the agent's own, then each of `layers` in order, a later
/// value replacing an earlier one (as `Command::envs` over the inherited environment).
pub fn environment<'a>(
    layers: impl IntoIterator<Item = &'a (String, String)>,
) -> Result<Vec<CString>, String> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in layers {
        env.insert(OsString::from(k), OsString::from(v));
    }
    env.into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| "an environment variable holds a NUL byte".to_string())
        })
        .collect()
}

/// Finds `program` as `execvp` would: a name with a `/` is used as it is (relative to the
/// working directory the child will have), any other is looked up in `path` (the program's own
/// `PATH`). `None`: not found, which the caller reports as ENOENT.
pub fn resolve(program: &str, path: Option<&OsStr>) -> Option<CString> {
    if program.contains('/') {
        return CString::new(program).ok();
    }
    let default = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    let path = path.unwrap_or(default);
    for dir in path.as_bytes().split(|b| *b == b':') {
        // An empty entry is the current directory.
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(program);
        let executable = std::fs::metadata(&candidate).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if executable {
            return CString::new(candidate.as_os_str().as_bytes()).ok();
        }
    }
    None
}

/// Starts `setup`'s program, in the cgroup whose directory `cgroup` is open on if given;
/// returns its pid. Run through `Reaper::spawn_with`, which keeps the child's exit if the reaper
/// takes it before the pid is registered; a failed child is waited for here, and one the reaper
/// took first is simply gone.
#[allow(unsafe_code)]
pub fn spawn(setup: &Setup, cgroup: Option<BorrowedFd<'_>>) -> Result<u32, SpawnError> {
    // Built here, before the clone: the child must not allocate.
    let argv: Vec<*const libc::c_char> = setup
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = setup
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let limits: Vec<(libc::c_int, libc::rlimit64)> = setup
        .limits
        .iter()
        .map(|(r, v)| {
            (
                *r as libc::c_int,
                libc::rlimit64 {
                    rlim_cur: *v,
                    rlim_max: *v,
                },
            )
        })
        .collect();
    let groups: Option<Vec<libc::gid_t>> = setup.credentials.groups.clone();
    // The child moves them onto 0 to 2 in that order: one already there would be overwritten
    // first. Only an agent started with a standard stream closed has them so; std's spawn
    // sorts that out.
    let low = [&setup.stdin, &setup.stdout, &setup.stderr]
        .iter()
        .any(|fd| fd.as_raw_fd() < 3);
    if low {
        return Err(SpawnError::Clone(io::Error::other(
            "a standard stream of the agent is closed",
        )));
    }
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SpawnError::Clone(e.into()))?;
    let mut args = CloneArgs {
        flags: cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    let input = ChildInput {
        setup,
        argv: &argv,
        envp: &envp,
        limits: &limits,
        groups: groups.as_deref(),
        err: err_write.as_raw_fd(),
    };
    let ret = clone_child(&mut args, &input);
    if ret < 0 {
        return Err(SpawnError::Clone(io::Error::from_raw_os_error(-ret as i32)));
    }
    let pid = ret as libc::pid_t;
    drop(err_write);
    // The child closes its copy when it runs the program (close-on-exec), or writes an errno.
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&err_read, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                reap(pid);
                return Err(SpawnError::Child(e.into()));
            }
        }
    }
    match got {
        0 => Ok(pid as u32),
        4 => {
            reap(pid);
            Err(SpawnError::Child(io::Error::from_raw_os_error(
                i32::from_ne_bytes(buf),
            )))
        }
        _ => {
            reap(pid);
            Err(SpawnError::Child(io::Error::other(
                "the child reported a failure it could not finish writing",
            )))
        }
    }
}

/// What [`child`] works on, built by the parent before the clone.
struct ChildInput<'a> {
    setup: &'a Setup,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    limits: &'a [(libc::c_int, libc::rlimit64)],
    groups: Option<&'a [libc::gid_t]>,
    err: libc::c_int,
}

/// Clones the child that runs [`child`] on `input`: the pid in the parent, or `-errno`.
///
/// On x86_64 the child shares this address space and runs on a stack of its own until it
/// executes the program or exits, and this thread waits until then (`CLONE_VM | CLONE_VFORK`).
/// The child cannot return from the system call into Rust code (its stack holds none of this
/// function's frame), so the call is made in assembly, which in the child calls
/// [`child_entry`] on the new stack. Every signal is blocked around the clone, so that no
/// handler of the agent runs in the child before [`child`] resets them.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn clone_child(args: &mut CloneArgs, input: &ChildInput<'_>) -> i64 {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut stack = vec![0u128; CHILD_STACK / std::mem::size_of::<u128>()];
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    // The lowest address; the kernel starts the child's stack pointer at `stack + stack_size`,
    // 16-byte aligned as a call expects (u128 is 16-aligned).
    args.stack = stack.as_mut_ptr() as u64;
    args.stack_size = (stack.len() * std::mem::size_of::<u128>()) as u64;
    let mut saved = SigSet::empty();
    if let Err(e) = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    ) {
        return -(e as i64);
    }
    let entry: extern "C" fn(*const ChildInput<'_>) -> ! = child_entry;
    let ret: i64;
    // SAFETY: the child runs `child_entry` on `stack`, which is not freed before this thread
    // resumes, and this thread resumes only once the child has executed its program or exited
    // (CLONE_VFORK): until then the child is the only user of `args`, `input`, what they point
    // to and `stack`, which this thread owns and no other thread sees. The child never returns
    // (`ud2` would trap if it did). `child` makes only system calls and thin glibc wrappers of
    // them on those values: no allocation and no lock that another thread of the agent could
    // hold; the errno it sets is this thread's, which this thread does not read after. syscall
    // clobbers rcx and r11; the parent's other registers are as the compiler left them.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") input as *const ChildInput<'_>,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None) {
        tracing::warn!("cannot restore the signal mask after a spawn: {e}");
    }
    drop(stack);
    ret
}

/// Clones the child that runs [`child`] on `input`: the pid in the parent, or `-errno`.
///
/// Elsewhere than on x86_64 the clone is a fork (no `CLONE_VM`): the child runs on a copy of
/// this address space, and the call returns in it as in the parent.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
fn clone_child(args: &mut CloneArgs, input: &ChildInput<'_>) -> i64 {
    // SAFETY: clone3 without CLONE_VM is fork: the child gets a copy of this address space with
    // only the calling thread. It runs `child`, which never returns and makes only raw system
    // calls (no allocation, no locks, no glibc state that other threads may hold) on values
    // built before; the parent reads them only after the child has executed or exited.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return -i64::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        );
    }
    if ret == 0 {
        child_entry(input)
    }
    ret
}

/// The child's first Rust frame (see [`clone_child`]).
#[allow(unsafe_code)]
extern "C" fn child_entry(input: *const ChildInput<'_>) -> ! {
    // SAFETY: `input` points to the parent's `ChildInput`, alive until the child has executed
    // or exited (see `clone_child`), and this runs only in the child.
    unsafe {
        let i = &*input;
        child(i.setup, i.argv, i.envp, i.limits, i.groups, i.err)
    }
}

/// Waits for a child that failed before running its program (it exits at once).
fn reap(pid: libc::pid_t) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

/// The child: sets itself up and runs the program, or reports the errno and exits 127.
///
/// SAFETY (for the caller): must only run in the child of [`spawn`]'s clone. Every call below is
/// a raw system call or a thin glibc wrapper of one (`dup2`, `fcntl`, `setpgid`,
/// `sigprocmask`, `sigaction`, `chdir`, `sched_setaffinity`, `execve`, `write`, `_exit`); the
/// credentials go through `syscall` directly, because glibc's `setuid` family would try to
/// switch the other threads of the parent, which do not exist here.
#[allow(unsafe_code)]
unsafe fn child(
    setup: &Setup,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    limits: &[(libc::c_int, libc::rlimit64)],
    groups: Option<&[libc::gid_t]>,
    err: libc::c_int,
) -> ! {
    // SAFETY: see the function doc; every pointer is to a value the parent built and still
    // holds (this process has a copy of it).
    unsafe {
        let fail = |err: libc::c_int| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        };
        for (fd, target) in [
            (setup.stdin.as_raw_fd(), 0),
            (setup.stdout.as_raw_fd(), 1),
            (setup.stderr.as_raw_fd(), 2),
        ] {
            if fd == target {
                // dup2 onto itself would keep close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    fail(err);
                }
            } else if libc::dup2(fd, target) < 0 {
                fail(err);
            }
        }
        // Its own process group, so a stop reaches everything it starts.
        if libc::setpgid(0, 0) < 0 {
            fail(err);
        }
        // The agent's handlers (tokio's) must not run here, where the memory is the agent's:
        // every handled signal back to its default before any is unblocked. The exec would
        // reset them too, but only after.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                libc::sigaction(signal, &dfl, std::ptr::null_mut());
            }
        }
        // A program expects no blocked signals and a default SIGPIPE (Rust ignores it in the
        // agent, and an ignored signal stays ignored across exec).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut()) < 0 {
            fail(err);
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            fail(err);
        }
        if let Some(dir) = &setup.cwd
            && libc::chdir(dir.as_ptr()) < 0
        {
            fail(err);
        }
        if let Some(set) = &setup.affinity
            && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set).is_err()
        {
            fail(err);
        }
        for (resource, value) in limits {
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                *resource,
                value as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            ) < 0
            {
                fail(err);
            }
        }
        let creds = &setup.credentials;
        if let Some(groups) = groups
            && libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
        {
            fail(err);
        }
        if let Some(gid) = creds.gid
            && libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
        {
            fail(err);
        }
        if let Some(uid) = creds.uid
            && libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
        {
            fail(err);
        }
        if let Some(dir) = &setup.cwd_as_user
            && libc::chdir(dir.as_ptr()) < 0
        {
            fail(err);
        }
        libc::execve(setup.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_as_execvp_would() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve("sh", Some(path)).expect("sh on PATH");
        assert!(sh.to_bytes().ends_with(b"/sh"), "{sh:?}");
        assert_eq!(resolve("./x", Some(path)), CString::new("./x").ok());
        assert_eq!(resolve("no-such-program-pmcluster", Some(path)), None);
        // Not executable: passed over.
        assert_eq!(resolve("passwd", Some(OsStr::new("/etc"))), None);
    }

    fn setup(program: &str, cwd: Option<&str>) -> Setup {
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        Setup {
            program: CString::new(program).expect("no NUL"),
            argv: vec![
                CString::new(program).expect("no NUL"),
                CString::new("30").expect("no NUL"),
            ],
            envp: vec![CString::new("PMC_T=1").expect("no NUL")],
            stdin: null(),
            stdout: null(),
            stderr: null(),
            cwd: cwd.map(|c| CString::new(c).expect("no NUL")),
            cwd_as_user: None,
            affinity: None,
            limits: Vec::new(),
            credentials: Credentials::default(),
        }
    }

    fn status_field(pid: u32, name: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }

    /// The program gets no blocked signal and a default SIGPIPE whatever the agent had (both
    /// survive an exec), and the agent's thread gets its own mask back.
    #[test]
    fn the_program_starts_with_clean_signals_and_the_caller_keeps_its_mask() {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        let Some(sleep) = resolve("sleep", Some(OsStr::new("/usr/bin:/bin"))) else {
            panic!("no sleep on /usr/bin:/bin");
        };
        let sleep = sleep.into_string().expect("utf8");
        // As the agent runs: SIGPIPE ignored (Rust's runtime), and here SIGUSR2 blocked too.
        let mut usr2 = SigSet::empty();
        usr2.add(Signal::SIGUSR2);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr2), None).expect("block");
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut before)).expect("mask");
        let pid = spawn(&setup(&sleep, Some("/")), None).expect("spawned");
        let mut after = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut after)).expect("mask");
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&usr2), None).expect("unblock");
        let blocked = status_field(pid, "SigBlk:");
        let ignored = status_field(pid, "SigIgn:");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
        // A vfork parent resumes as the exec releases the old memory, before the kernel has
        // placed the new environment: read until it is there (or the deadline passes).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let environ = loop {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
            if !environ.is_empty() || std::time::Instant::now() > deadline {
                break environ;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        reap(pid as i32);
        assert_eq!(
            before.iter().collect::<Vec<_>>(),
            after.iter().collect::<Vec<_>>()
        );
        assert_eq!(blocked, "0000000000000000");
        let ignored = u64::from_str_radix(&ignored, 16).expect("hex");
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored");
        assert_eq!(cwd, Path::new("/"));
        assert_eq!(environ, b"PMC_T=1\0");
    }

    /// What the child cannot do comes back as the errno of the step that failed.
    #[test]
    fn failures_in_the_child_come_back_as_errors() {
        for (program, cwd, errno) in [
            ("/nonexistent/pmcluster-program", None, libc::ENOENT),
            ("/etc/passwd", None, libc::EACCES),
            ("/bin/sh", Some("/nonexistent-pmcluster-dir"), libc::ENOENT),
        ] {
            match spawn(&setup(program, cwd), None) {
                Err(SpawnError::Child(e)) => {
                    assert_eq!(e.raw_os_error(), Some(errno), "{program} in {cwd:?}: {e}");
                }
                Err(SpawnError::Clone(e)) => panic!("{program}: the clone failed: {e}"),
                Ok(pid) => {
                    reap(pid as i32);
                    panic!("{program} in {cwd:?} started");
                }
            }
        }
    }

    #[test]
    fn later_layers_win() {
        let layers = [
            ("PMC_T_A".to_string(), "1".to_string()),
            ("PMC_T_A".to_string(), "2".to_string()),
        ];
        let env = environment(&layers).expect("no NUL");
        let a: Vec<&CString> = env
            .iter()
            .filter(|e| e.to_bytes().starts_with(b"PMC_T_A="))
            .collect();
        assert_eq!(a, [&CString::new("PMC_T_A=2").expect("no NUL")]);
        let bad = [("K".to_string(), "a\0b".to_string())];
        assert!(environment(&bad).is_err());
    }
}
