//! The pump host: one helper process per agent that starts each instance's log pump as a fork
//! of itself.
//!
//! Why: a pump started as a program of its own (`pmcluster-agent log-pump`) pays a whole exec
//! of the agent binary: its loader, its page faults, glibc's CPU probe. That was 1.1-1.4 ms of
//! CPU per instance started on the machines measured, more than the test app's own start
//! (bench/RESULTS.md). A fork of the host, a small single-threaded process that has already
//! paid all of that once, costs a fraction of it, and the child needs no exec: it is a pump at
//! once.
//!
//! What does not change: each pump is a process of its own, in a process group of its own, with
//! the name `pmcluster-pump`, and it ends when its pipes do; it outlives the host as it outlives
//! the agent. The host only starts pumps. It reads requests on a `SOCK_SEQPACKET` socket (its
//! stdin), each a JSON [`Request`] with the pipes' read ends passed along (`SCM_RIGHTS`), and
//! each is answered with a JSON [`Reply`], by the forked pump itself or by the host when it
//! could not fork one. It ends when the agent's end of the socket closes (the agent exits or is
//! killed), leaving its pumps running. When the host cannot be started, or stops answering and
//! turns out to have forked no pump (see [`send_request`]), the agent starts that pump as a
//! program of its own, as before.
//!
//! A pump's environment names its instance ([`crate::orphans::PUMP_VAR`]), so that an agent
//! whose data dir was wiped still finds it. A fork inherits the host's environment, so the host
//! is started with a placeholder in that variable ([`crate::orphans::ID_ROOM`] bytes), and each
//! pump writes its instance id over it in its own copy of the environment block, which is what
//! `/proc/PID/environ` shows. The host itself, its placeholder unwritten, marks no instance
//! (see [`crate::orphans::host_markers`]).

use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::PoisonError;
use std::time::Duration;

use nix::sys::signal::Signal;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use super::pump::{PUMP_NAME, PumpPipe, PumpTarget, block_stop_signals, pump_pipes};
use crate::model::InstanceId;
use crate::orphans::{ID_FILL, PUMP_VAR, host_markers};
use crate::process::ProcId;
use crate::state::{Agent, PumpHost};

/// The agent binary's hidden subcommand that runs the host.
pub const HOST_COMMAND: &str = "log-pump-host";
/// The host's process name (`comm`, at most 15 bytes).
pub const HOST_NAME: &std::ffi::CStr = c"pmcluster-pumps";
/// How long the agent waits for the host's answer before it gives up on the host.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long the agent waits for the answer on a runtime thread, holding the host's lock. A host
/// answers within a millisecond or so (one fork). One that has not by then is let go from the
/// lock, so that other starts get a new host meanwhile, and its answer is waited for off the
/// runtime's threads: a stuck host otherwise held a worker for [`ANSWER_WAIT`], and every other
/// worker that started a pump meanwhile waited as long on the lock.
const QUICK_ANSWER: Duration = Duration::from_millis(100);
/// How long the agent waits, after it ended a host that did not answer in time, for the answer
/// of a pump the host may have forked for the request (see [`send_request`]). Off the runtime's
/// threads and without the host's lock, so only that instance's start waits.
const LATE_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How often an idle host wakes to reap the pumps that ended.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// The largest request: two paths and an id.
const MAX_REQUEST: usize = 16 * 1024;

/// Start a pump for an instance: the first pipe passed along into `out`, the second (if any)
/// into `err`.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: String,
    out: PumpTarget,
    err: Option<PumpTarget>,
}

/// The answer to a [`Request`]: from the pump itself when the host forked it (so that an
/// answer comes if and only if a pump runs, see [`send_request`]), from the host when it could
/// not.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started { pid: u32 },
    Failed { error: String },
}

// ---------------------------------------------------------------------------------------------
// The agent's side

/// Has the agent's host start a pump for `pipes`; the pump's id. Starts the host first if
/// there is none (the agent keeps its socket in `Agent::pump_host`). On any failure the host is
/// let go (it ends when its socket closes), and the next pump starts a new one. A host slower
/// than [`QUICK_ANSWER`] is let go while its answer is awaited, and taken back after an answer
/// in time if no other host took its place meanwhile.
pub(crate) fn start_pump(
    agent: &Agent,
    program: &Path,
    id: &InstanceId,
    pipes: &[PumpPipe],
) -> io::Result<ProcId> {
    let mut held = agent
        .pump_host
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if held.is_none() {
        *held = Some(start_host(agent, program)?);
    }
    let Some(host) = held.as_ref() else {
        return Err(io::Error::other("no pump host"));
    };
    let deadline = match send_request(host.socket.as_fd(), id, pipes) {
        Ok(deadline) => deadline,
        Err(e) => {
            *held = None;
            return Err(e);
        }
    };
    if answered_within(host.socket.as_fd(), QUICK_ANSWER) {
        match read_answer(host.socket.as_fd(), deadline) {
            // Gone already when its pipes ended at once (the instance exited): nothing to wait
            // for.
            Ok(Some(pid)) => return Ok(ProcId::started(pid)),
            Ok(None) => {}
            Err(e) => {
                *held = None;
                return Err(e);
            }
        }
    }
    // Slow. The host is let go of, so that other starts get a new one meanwhile, and its
    // answer is waited for off the runtime's threads.
    let Some(host) = held.take() else {
        return Err(io::Error::other("no pump host"));
    };
    drop(held);
    let (pid, in_time) = off_workers(|| slow_answer(agent, &host, deadline))?;
    if in_time {
        // Slow but sound (a busy machine, a host just started): kept, unless another host took
        // its place meanwhile. Nothing is in flight on it once it answered.
        let mut held = agent
            .pump_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_none() {
            *held = Some(host);
        }
    }
    Ok(ProcId::started(pid))
}

/// The answer of a host that did not answer within [`QUICK_ANSWER`], and whether it came in
/// time: up to `deadline`, then (the host ended) that of a pump it may have forked.
fn slow_answer(
    agent: &Agent,
    host: &PumpHost,
    deadline: std::time::Instant,
) -> io::Result<(u32, bool)> {
    if let Some(pid) = read_answer(host.socket.as_fd(), deadline)? {
        return Ok((pid, true));
    }
    if let Err(e) = agent.reaper.signal_unreaped(host.pid, Signal::SIGKILL) {
        tracing::warn!("cannot end the log pump host that does not answer: {e}");
    }
    Ok((late_answer(host.socket.as_fd(), LATE_ANSWER_WAIT)?, false))
}

/// Runs `wait` where it holds up no runtime worker: through `block_in_place` on a worker of a
/// multi-threaded runtime, which hands the worker's other tasks to another thread.
fn off_workers<T>(wait: impl FnOnce() -> T) -> T {
    let on_workers = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_workers {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// Whether something can be read from `socket` (an answer, or its end) within `wait`.
fn answered_within(socket: BorrowedFd<'_>, wait: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let until = std::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let Ok(timeout) = Timespec::try_from(left) else {
            return false;
        };
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => return ready > 0,
            // The reaper's SIGCHLD handler (see [`uninterrupted`]); past `until`, the next poll
            // waits no more and says how things stand.
            Err(rustix::io::Errno::INTR) => {}
            // The read off the runtime's workers says what is wrong.
            Err(_) => return false,
        }
    }
}

fn start_host(agent: &Agent, program: &Path) -> io::Result<PumpHost> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    for timeout in [
        rustix::net::sockopt::Timeout::Recv,
        rustix::net::sockopt::Timeout::Send,
    ] {
        rustix::net::sockopt::set_socket_timeout(&ours, timeout, Some(ANSWER_WAIT))?;
    }
    let mut cmd = std::process::Command::new(program);
    cmd.arg0("pmcluster-agent")
        .arg(HOST_COMMAND)
        .envs(host_markers(&agent.marker))
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        // Its rare messages, and its pumps', go where the agent's go.
        .stderr(Stdio::inherit())
        .current_dir("/")
        .process_group(0);
    // Its exit is not waited for: it ends when `ours` closes.
    let spawned = agent.reaper.spawn(&mut cmd)?;
    tracing::debug!(pid = spawned.pid, "started the log pump host");
    Ok(PumpHost {
        socket: ours,
        pid: spawned.pid,
    })
}

/// Sends the request; the deadline of its answer (see [`read_answer`]).
///
/// Without an answer in time the host has the pipes and may have forked their pump, or may fork
/// it later: the caller must not start a second one on the same pipes (two writers to one log)
/// unless none runs. So it ends the host and reads on ([`late_answer`]). A forked pump answers
/// itself, before it lets go of the socket; with the host gone, the socket ends (no answer) only
/// when no pump of it holds it. So an answer means a pump runs, an end means none does, and a
/// socket still held after [`LATE_ANSWER_WAIT`] means one may ([`MayRun`]: the caller starts
/// none).
///
/// One request is in flight on a host at a time: the agent holds the host's lock from the send
/// to the answer, and lets the host go after a failure or when the answer is slow
/// ([`QUICK_ANSWER`]), never to send it another request. So an unread packet at a reset is this
/// request.
fn send_request(
    socket: BorrowedFd<'_>,
    id: &InstanceId,
    pipes: &[PumpPipe],
) -> io::Result<std::time::Instant> {
    let (out, err) = match pipes {
        [out] => (out, None),
        [out, err] => (out, Some(err)),
        _ => return Err(io::Error::other("a pump reads one or two pipes")),
    };
    let request = Request {
        id: id.as_str().to_string(),
        out: out.target.clone(),
        err: err.map(|p| p.target.clone()),
    };
    let body = serde_json::to_vec(&request).map_err(io::Error::other)?;
    let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|p| p.reader.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the pipes"));
    }
    let deadline = std::time::Instant::now() + ANSWER_WAIT;
    // A packet is sent whole or not at all, so an interrupted send is sent again.
    uninterrupted(deadline, || {
        rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&body)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
    })?;
    Ok(deadline)
}

/// The answer to the request sent last: the pump's pid, or `None` when none came by `deadline`
/// (see [`send_request`] for what that means).
fn read_answer(socket: BorrowedFd<'_>, deadline: std::time::Instant) -> io::Result<Option<u32>> {
    let mut answer = [0u8; 1024];
    match uninterrupted(deadline, || {
        rustix::net::recv(socket, &mut answer, RecvFlags::empty())
    }) {
        Ok((0, _)) => Err(io::Error::other("it ended")),
        Ok((n, _)) => started(&answer[..n]).map(Some),
        // Ended with the request unread: it forked nothing for it.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(io::Error::other("it ended")),
        // No answer in time (or a signal past the deadline): a pump may run, or may yet.
        Err(_) => Ok(None),
    }
}

/// Reads on, up to `wait`, for the answer of a request whose host was ended without answering
/// (see [`send_request`]).
fn late_answer(socket: BorrowedFd<'_>, wait: Duration) -> io::Result<u32> {
    let late = std::time::Instant::now() + wait;
    let silent = || {
        io::Error::other(format!(
            "it did not answer within {}s, and was ended before it started one",
            ANSWER_WAIT.as_secs()
        ))
    };
    let mut answer = [0u8; 1024];
    loop {
        let received = uninterrupted(late, || {
            rustix::net::recv(socket, &mut answer, RecvFlags::empty())
        });
        match received {
            Ok((0, _)) => return Err(silent()),
            Ok((n, _)) => return started(&answer[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(silent()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) && std::time::Instant::now() < late => {}
            // Something still holds the host's socket: a pump it forked, stuck (or the socket
            // failed otherwise, which says nothing either way).
            Err(_) => return Err(io::Error::other(MayRun)),
        }
    }
}

/// The pid in an answer.
fn started(answer: &[u8]) -> io::Result<u32> {
    match serde_json::from_slice(answer).map_err(io::Error::other)? {
        Reply::Started { pid } => Ok(pid),
        Reply::Failed { error } => Err(io::Error::other(error)),
    }
}

/// Why a pump was not started: the host was ended without answering, and a pump it forked
/// may still run on the pipes (its socket stayed open). No other is started on them: two
/// writers would split the output between them.
#[derive(Debug)]
struct MayRun;

impl std::fmt::Display for MayRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "it did not answer within {}s and was ended, but a pump it forked may hold the \
             pipes, silent for {}s more",
            ANSWER_WAIT.as_secs(),
            LATE_ANSWER_WAIT.as_secs()
        )
    }
}

impl std::error::Error for MayRun {}

/// Whether a failed [`start_pump`] may have left a pump running on the pipes, so that no other
/// may be started on them.
pub(crate) fn may_run(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<MayRun>())
}

/// Runs a call on the host's socket again when a signal interrupted it, until `deadline`. Each
/// call waits up to the socket's own timeout, so a request gives up after at most twice
/// [`ANSWER_WAIT`].
///
/// Why: a socket call under a timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`) fails with `EINTR` after
/// any signal handler, `SA_RESTART` or not (signal(7)), and the agent's reaper has one for
/// SIGCHLD, which every ending child sends. Taking that for a broken host once made the agent
/// drop a host that had already forked the pump, and start a second pump on the same pipes.
fn uninterrupted<T>(
    deadline: std::time::Instant,
    mut call: impl FnMut() -> rustix::io::Result<T>,
) -> io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) if std::time::Instant::now() < deadline => {}
            result => return result.map_err(io::Error::from),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The host

/// The `log-pump-host` process: starts a pump per request on its stdin until the agent's end
/// closes. Single-threaded, so that each fork is a whole copy of it.
pub fn host_process() -> io::Result<()> {
    block_stop_signals()?;
    if let Err(e) = nix::sys::prctl::set_name(HOST_NAME) {
        tracing::debug!("cannot set the process name: {e}");
    }
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    rustix::net::sockopt::set_socket_timeout(
        socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(REAP_EVERY),
    )?;
    let mut body = vec![0u8; MAX_REQUEST];
    loop {
        reap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut body)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let n = match received {
            Ok(msg) => msg.bytes,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if n == 0 && fds.is_empty() {
            // The agent's end closed.
            return Ok(());
        }
        let failed = match serde_json::from_slice::<Request>(&body[..n]) {
            Ok(request) => start(request, fds),
            Err(e) => Some(format!("a request the host cannot read: {e}")),
        };
        // A pump it forked answers itself.
        if let Some(error) = failed {
            answer(socket, &Reply::Failed { error })?;
        }
    }
}

fn answer(socket: BorrowedFd<'_>, reply: &Reply) -> io::Result<()> {
    let answer = serde_json::to_vec(reply).map_err(io::Error::other)?;
    rustix::net::send(socket, &answer, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Reaps the pumps that ended (the host is their parent until it ends).
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Forks the pump of `request` on `fds`; why it could not.
#[allow(unsafe_code)]
fn start(request: Request, mut fds: Vec<OwnedFd>) -> Option<String> {
    let wanted = 1 + usize::from(request.err.is_some());
    if fds.len() != wanted {
        return Some(format!("{} pipes passed for {wanted}", fds.len()));
    }
    let err = request.err.map(|target| (fds.remove(1), target));
    let out = (fds.remove(0), request.out);
    // SAFETY: the host is single-threaded (no runtime; its logging writes from the calling
    // thread), so the child is a whole copy of it and may allocate, lock and start threads.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => run_pump(&request.id, out, err),
        Ok(nix::unistd::ForkResult::Parent { .. }) => None,
        Err(e) => Some(format!("fork: {e}")),
    }
}

/// The forked pump: leaves the host's socket and group, takes its name and marker, pumps and
/// exits with `_exit`: the exit handlers it would run are the host's (a fork copies them), it
/// buffers nothing, and running them touched pages shared with the host, a copy of each.
fn run_pump(id: &str, out: (OwnedFd, PumpTarget), err: Option<(OwnedFd, PumpTarget)>) -> ! {
    // The answer comes from the pump, before it lets go of the socket (see `send_request`). An
    // agent gone by now changes nothing: the pipes are the instance's, and they are pumped.
    let started = Reply::Started {
        pid: std::process::id(),
    };
    if let Err(e) = answer(std::io::stdin().as_fd(), &started) {
        tracing::debug!("a pump cannot answer the agent: {e}");
    }
    // The host's socket must not outlive the host in its pumps: the agent would not see the
    // host end.
    let detached = std::fs::File::open("/dev/null")
        .and_then(|null| nix::unistd::dup2_stdin(null).map_err(io::Error::from));
    if let Err(e) = detached {
        tracing::warn!("a pump cannot leave the host's socket: {e}");
        end_pump(1);
    }
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    if let Err(e) = nix::sys::prctl::set_name(PUMP_NAME) {
        tracing::debug!("cannot set the process name: {e}");
    }
    if let Err(e) = mark_environment(id) {
        tracing::warn!(
            instance = id,
            "the log pump cannot mark its environment: {e}"
        );
    }
    let path = out.1.path.clone();
    match pump_pipes(out, err) {
        Ok(()) => end_pump(0),
        Err(e) => {
            tracing::error!("log pump for {}: {e}", path.display());
            end_pump(1)
        }
    }
}

/// Ends a forked pump at once (see [`run_pump`] for why not `std::process::exit`).
#[allow(unsafe_code)]
fn end_pump(code: i32) -> ! {
    // SAFETY: `_exit` ends the process and touches no memory of it; nothing is left to flush.
    unsafe { libc::_exit(code) }
}

/// Writes `id` over the placeholder of [`PUMP_VAR`] in this process's environment block (the
/// memory `/proc/self/environ` reads), ended by a NUL: what follows it up to the placeholder's
/// end then reads as an entry without `=`, which nothing takes for a variable.
fn mark_environment(id: &str) -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the `)` of the name start at field 3; env_start is field 50.
    let env_start: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(47))
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("no env_start in /proc/self/stat"))?;
    let environ = std::fs::read("/proc/self/environ")?;
    let (at, room) = placeholder_at(&environ)
        .ok_or_else(|| io::Error::other(format!("no room for the id in {PUMP_VAR}")))?;
    if id.len() >= room || id.is_empty() {
        return Err(io::Error::other(format!(
            "an id of {} bytes does not fit in {room}",
            id.len()
        )));
    }
    let mut bytes = id.as_bytes().to_vec();
    bytes.push(0);
    OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?
        .write_all_at(&bytes, env_start + at as u64)
}

/// Where the placeholder value of [`PUMP_VAR`] starts in an environment block, and its length.
fn placeholder_at(environ: &[u8]) -> Option<(usize, usize)> {
    let key = format!("{PUMP_VAR}=");
    let mut offset = 0;
    for entry in environ.split(|b| *b == 0) {
        if let Some(value) = entry.strip_prefix(key.as_bytes())
            && !value.is_empty()
            && value.iter().all(|b| *b == ID_FILL)
        {
            return Some((offset + key.len(), value.len()));
        }
        offset += entry.len() + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends the request and reads its answer, on one host.
    fn request(
        socket: BorrowedFd<'_>,
        id: &InstanceId,
        pipes: &[PumpPipe],
    ) -> io::Result<Option<u32>> {
        let deadline = send_request(socket, id, pipes)?;
        read_answer(socket, deadline)
    }

    /// Takes one request on the host's end of its socket.
    fn take_request(theirs: &OwnedFd) {
        let mut body = vec![0u8; MAX_REQUEST];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            theirs,
            &mut [IoSliceMut::new(&mut body)],
            &mut control,
            RecvFlags::empty(),
        )
        .expect("request");
        assert!(got.bytes > 0);
    }

    /// The state letter of process `pid` in `/proc` (`Z` once it was killed and not reaped).
    fn proc_state(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        after.trim_start().chars().next().unwrap_or('?')
    }

    /// A process of the test's own, ended and reaped when dropped.
    struct StandIn(u32);

    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(crate::process::to_pid(self.0), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(crate::process::to_pid(self.0), None);
        }
    }

    /// A host slower than [`QUICK_ANSWER`]: the agent lets go of it well before [`ANSWER_WAIT`]
    /// (the lock is free, so another start gets a new host at once), waits for its answer off
    /// the runtime's workers, takes it, and keeps the host (none took its place), not ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_host_is_let_go_at_once_and_its_answer_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = std::sync::Arc::new(Agent::for_test(dir.path()));
        let (ours, theirs, pipes, _writer) = host_pair(ANSWER_WAIT);
        // The host's pid is a process of the test's own, which the agent would end if it gave
        // up on the host.
        let stand_in = StandIn(
            agent
                .reaper
                .spawn(std::process::Command::new("sleep").arg("30"))
                .expect("sleep")
                .pid,
        );
        *agent.pump_host.lock().expect("lock") = Some(PumpHost {
            socket: ours,
            pid: stand_in.0,
        });
        let (answer_now, answer_when) = std::sync::mpsc::channel::<()>();
        let host = std::thread::spawn(move || {
            take_request(&theirs);
            answer_when.recv().expect("told to answer");
            answer(theirs.as_fd(), &Reply::Started { pid: 4242 }).expect("answer");
        });
        let started = {
            let agent = agent.clone();
            tokio::spawn(async move {
                start_pump(
                    &agent,
                    Path::new("/nonexistent"),
                    &InstanceId::new("i-1"),
                    &pipes,
                )
                .map(|p| p.pid)
            })
        };
        // Before the answer's deadline: the lock is not held while the answer is awaited (it
        // is let go after QUICK_ANSWER, a twentieth of that).
        let began = std::time::Instant::now();
        while !agent.pump_host.try_lock().is_ok_and(|held| held.is_none()) {
            assert!(
                began.elapsed() < ANSWER_WAIT,
                "the host's lock was held while its answer was awaited"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answer_now.send(()).expect("answer");
        let pid = started.await.expect("the start's task");
        host.join().expect("host thread");
        assert_eq!(pid.expect("the answer"), 4242);
        assert_ne!(
            proc_state(stand_in.0),
            'Z',
            "the host was ended though it answered in time"
        );
        let kept = agent
            .pump_host
            .lock()
            .expect("lock")
            .as_ref()
            .map(|h| h.pid);
        assert_eq!(
            kept,
            Some(stand_in.0),
            "a host that answered in time is kept"
        );
    }

    /// The agent's and the host's ends of a host socket, the agent's waiting up to `timeout`
    /// for an answer, and a pipe to pass along (with its write end, to keep it open).
    fn host_pair(timeout: Duration) -> (OwnedFd, OwnedFd, Vec<PumpPipe>, OwnedFd) {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )
        .expect("timeout");
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        let pipes = vec![PumpPipe {
            reader,
            target: PumpTarget {
                path: "/nonexistent/out.log".into(),
                max_bytes: None,
                keep: 0,
                timestamps: false,
            },
            fd: 1,
        }];
        (ours, theirs, pipes, writer)
    }

    #[test]
    fn finds_the_placeholder() {
        let fill = String::from_utf8_lossy(&[ID_FILL; 8]).into_owned();
        let env = format!("A=1\0{PUMP_VAR}={fill}\0B=2\0");
        let (at, room) = placeholder_at(env.as_bytes()).expect("found");
        assert_eq!(&env.as_bytes()[at..at + room], fill.as_bytes());
        // A written id is no placeholder any more.
        let written = format!("A=1\0{PUMP_VAR}=abc\0____\0");
        assert_eq!(placeholder_at(written.as_bytes()), None);
        assert!(HOST_NAME.to_bytes().len() <= 15);
    }

    extern "C" fn ignore(_: nix::libc::c_int) {}

    /// A signal that lands while the agent waits for the host's answer is no failure: the
    /// answer is still read, so no second pump is started on pipes the host already took.
    #[test]
    fn a_signal_during_the_wait_is_not_a_failure() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        // SIGWINCH, whose default is to be ignored: a handler changes nothing for other tests.
        // SA_RESTART too, to show that it does not help a socket call under a timeout.
        let action = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        #[allow(unsafe_code)]
        let before = unsafe { sigaction(Signal::SIGWINCH, &action) }.expect("sigaction");
        let (ours, theirs, pipes, _writer) = host_pair(ANSWER_WAIT);
        let (answer_now, answer_when) = std::sync::mpsc::channel::<()>();
        let (got_tx, got_rx) = std::sync::mpsc::channel::<()>();
        // The host: takes the request, then answers only when told to.
        let host = std::thread::spawn(move || {
            take_request(&theirs);
            got_tx.send(()).expect("got");
            answer_when.recv().expect("told to answer");
            let answer = serde_json::to_vec(&Reply::Started { pid: 4242 }).expect("json");
            rustix::net::send(&theirs, &answer, SendFlags::NOSIGNAL).expect("answer");
        });
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let agent = std::thread::spawn(move || {
            tid_tx.send(nix::sys::pthread::pthread_self()).expect("tid");
            request(ours.as_fd(), &InstanceId::new("i-1"), &pipes)
        });
        let tid = tid_rx.recv().expect("tid");
        // Signals until the host has the request, then 20 more while the agent's thread waits
        // for the answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut after_request = 0;
        while after_request < 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the host got no request"
            );
            nix::sys::pthread::pthread_kill(tid, Signal::SIGWINCH).expect("pthread_kill");
            std::thread::sleep(Duration::from_millis(5));
            if after_request > 0 || got_rx.try_recv().is_ok() {
                after_request += 1;
            }
        }
        answer_now.send(()).expect("answer");
        let pid = agent.join().expect("agent thread").expect("request");
        assert_eq!(pid, Some(4242), "answered in time");
        host.join().expect("host thread");
        // SAFETY: puts back what was there before.
        #[allow(unsafe_code)]
        unsafe { sigaction(Signal::SIGWINCH, &before) }.expect("sigaction");
    }

    /// What a host that does not answer in time has done with the request.
    #[derive(Clone, Copy, PartialEq)]
    enum Silent {
        /// Forked a pump, which answers late, after its host has gone.
        Forked,
        /// Forked a pump that stays silent, holding the socket.
        Stuck,
        /// Read it and forked nothing.
        ReadOnly,
        /// Never read it.
        Unread,
    }

    /// A host that does not answer in time may have forked the pump or may still fork it: the
    /// agent ends the host and waits for the pump's own answer.
    fn silent_host(silent: Silent) -> io::Result<u32> {
        // Short, so that the test does not wait the agent's two seconds.
        let (ours, theirs, pipes, _writer) = host_pair(Duration::from_millis(100));
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let host = std::thread::spawn(move || {
            if silent != Silent::Unread {
                take_request(&theirs);
            }
            let forked = matches!(silent, Silent::Forked | Silent::Stuck);
            let pump = forked.then(|| theirs.try_clone().expect("the pump's copy"));
            end_rx.recv().expect("ended");
            drop(theirs);
            if let Some(pump) = pump {
                if silent == Silent::Stuck {
                    // Past the late wait.
                    std::thread::sleep(Duration::from_millis(800));
                    return;
                }
                // A pump that was slow too: it answers after its host has gone.
                std::thread::sleep(Duration::from_millis(150));
                answer(pump.as_fd(), &Reply::Started { pid: 4343 }).expect("answer");
            }
        });
        let first = request(ours.as_fd(), &InstanceId::new("i-1"), &pipes);
        let silent_in_time = matches!(first, Ok(None));
        end_tx.send(()).expect("end the host");
        let result = late_answer(ours.as_fd(), Duration::from_millis(500));
        host.join().expect("host thread");
        assert!(silent_in_time, "no answer in time: {first:?}");
        result
    }

    /// Its late answer is taken: no second pump is started on the pipes.
    #[test]
    fn a_pump_forked_by_a_host_that_did_not_answer_in_time_is_the_pump() {
        assert_eq!(
            silent_host(Silent::Forked).expect("the pump's answer"),
            4343
        );
    }

    /// No pump runs (the socket ends, or resets with the request unread): the request fails,
    /// and the caller may start the pump on its own.
    #[test]
    fn a_host_that_did_not_answer_and_forked_nothing_fails_the_request() {
        for silent in [Silent::ReadOnly, Silent::Unread] {
            let e = silent_host(silent).expect_err("no pump runs");
            assert!(!may_run(&e), "{e}");
            assert!(
                e.to_string().contains("was ended before it started one"),
                "{e}"
            );
        }
    }

    /// A socket still held past the late wait: a pump may run, and the caller starts none.
    #[test]
    fn a_silent_pump_holding_the_socket_may_run() {
        let e = silent_host(Silent::Stuck).expect_err("no answer");
        assert!(may_run(&e), "{e}");
    }

    /// A host that ends with the request unread, in time, forked nothing: the request fails at
    /// once, and the caller may start the pump on its own.
    #[test]
    fn a_host_that_ended_with_the_request_unread_fails_it() {
        let (ours, theirs, pipes, _writer) = host_pair(Duration::from_secs(10));
        let host = std::thread::spawn(move || {
            // Waits for the request without taking it, then ends.
            let mut peek = [0u8; 1];
            rustix::net::recv(&theirs, &mut peek, RecvFlags::PEEK).expect("peek");
        });
        let started = std::time::Instant::now();
        let e = request(ours.as_fd(), &InstanceId::new("i-1"), &pipes).expect_err("ended");
        host.join().expect("host thread");
        assert!(e.to_string().contains("it ended"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "not a timeout");
    }
}
