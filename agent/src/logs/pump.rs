//! Log pumps.
//!
//! Every instance writes its stdout and stderr into pipes, and one *pump* per instance reads
//! them: a small helper process, forked by the agent's pump host (see [`super::host`]), which
//! hands it the pipes. Where the host cannot start it, the pump is the agent binary run as
//! `pmcluster-agent log-pump --out FILE [--err FILE] ...` with the stdout pipe as its stdin and
//! the stderr pipe as its stdout (one pipe and no `--err` with `merge_logs`). It appends what it reads to the files (stamping each line
//! with `log_timestamps`) and rotates them as it writes: before a write would take a file past
//! `log_max_size`, it writes what fits up to the last newline, renames the file to `.1` (the
//! kept files shift, the oldest beyond `log_retain` goes) and opens a new one. So no file ever
//! holds more than `log_max_size` (a line longer than that is cut over files), an instance's
//! files per stream never more than `log_max_size × (log_retain + 1)`, and nothing is lost to a
//! copy and truncate. This holds too when two pumps write one path, as the old and the new
//! process of an index do during a rolling update: each write locks the file and rotates under
//! the lock (see [`LogWriter`]). Whatever an instance writes, the pump makes it wait only for
//! the disk: it reads as fast as the pipe fills, holds at most one read buffer, and a full pipe
//! makes the instance's write block, never grow a file past its bound.
//!
//! Why not let instances write their files directly (as they once did, rotated by copy and
//! truncate once a second): then nothing bounds a file between two passes. A program writing
//! 500 MB/s made files of gigabytes against a 10 MiB limit, and a host's disk is shared.
//!
//! Why a process of its own and not a task of the agent: a pipe whose reader is gone makes the
//! writer's next write fail with EPIPE, and kill the writer with SIGPIPE unless it ignores it (a
//! shell, most programs). Were the agent the reader, `kill -9` of the agent, its crash or its
//! upgrade would kill every instance at its next line. The pump outlives the agent, so the
//! instance keeps running and its lines keep arriving in the same files; the next agent finds
//! the pump by its recorded pid (see `persist::SavedPump`) and leaves it alone, or starts a new
//! one on a pipe nobody reads any more.
//! The pump runs in its own process group, neither the agent's (Ctrl-C in the agent's terminal,
//! or anything else aimed at the agent's group, would end it) nor the instance's (the stop
//! signal and the SIGKILL sweep after the leader exits would end it before it read the last
//! lines, which after a crash are the ones that matter, and it would count in the instance's
//! memory and CPU). It needs no signal to end: it ends when its pipes do, that is when every
//! process of the instance holding a write end has exited, so stopping the instance ends it.
//! It also ignores SIGHUP, SIGINT, SIGQUIT and SIGTERM for the same reason, and names itself
//! `pmcluster-pump`, so that `pkill pmcluster-agent` does not take it for the agent.
//!
//! An agent embedded in another process (tests) without a helper program pumps in threads of
//! that process instead ([`pump`] is the same code): they end with that process.
use std::fs::File;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lock::{LOCK_WAIT, LOCK_WAIT_HELD_LONG, lock_within, size_if_named};
use super::{log_path, log_streams, rotate_by_rename};
use crate::model::InstanceId;
use crate::orphans::pump_markers;
use crate::persist::SavedPump;
use crate::process::{self, Exit, ProcId, describe};
use crate::state::Agent;

/// Bytes read from an instance's pipe at a time: the most one write of a pump adds to a file.
pub const PUMP_READ: usize = 64 * 1024;
/// Kernel buffer asked for each pipe: room for bursts while the pump waits for the disk.
pub const PIPE_BUFFER: usize = 1 << 20;
/// The agent binary's hidden subcommand that runs one pump.
pub const PUMP_COMMAND: &str = "log-pump";
/// A pump's process name (`comm`, at most 15 bytes).
pub const PUMP_NAME: &std::ffi::CStr = c"pmcluster-pump";
/// The pump's file descriptor for the stderr pipe (its stdin carries the stdout pipe). Its
/// stdout, read rather than written: std spawns a program whose descriptors are all standard
/// ones with `posix_spawn`, which shares the agent's memory until the exec (vfork), while any
/// other descriptor needs a hook in the child, which makes std fork the agent: a copy of its
/// page tables, undone at the exec, about 1 ms of CPU per pump on the machines measured
/// (bench/RESULTS.md).
pub const PUMP_ERR_FD: i32 = 1;
/// Prefixes every line that starts in `chunk` with `stamp` and a space. `at_line_start` carries
/// over from the previous chunk (a line may span chunks).
pub fn stamp_lines(chunk: &[u8], at_line_start: &mut bool, stamp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + stamp.len() + 1);
    for &b in chunk {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
            *at_line_start = false;
        }
        out.push(b);
        if b == b'\n' {
            *at_line_start = true;
        }
    }
    out
}
/// How many bytes of `bytes` go into a file that has `room` bytes left before its limit, the
/// rest going into the next file: all when they fit; else up to the last newline that fits, so
/// lines stay whole; else, in a file still empty, as much as fits (a line longer than a whole
/// file is cut); else none (the file is rotated first).
pub fn split_at_room(bytes: &[u8], room: u64, file_empty: bool) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if bytes.len() <= room {
        return bytes.len();
    }
    match bytes[..room].iter().rposition(|b| *b == b'\n') {
        Some(newline) => newline + 1,
        None if file_empty => room,
        None => 0,
    }
}
/// Where a pump writes, how, and when it rotates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PumpTarget {
    pub path: PathBuf,
    /// Rotate before the file would pass this size; `None`: never.
    pub max_bytes: Option<u64>,
    pub keep: u32,
    /// Stamp each line with the time it was read (`log_timestamps`).
    pub timestamps: bool,
}
impl PumpTarget {
    /// The arguments after [`PUMP_COMMAND`] that make a pump write to this target, and to `err`
    /// (same settings, another path) what it reads on [`PUMP_ERR_FD`].
    pub fn args(&self, err: Option<&Path>) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--out".into(), self.path.clone().into_os_string()];
        if let Some(err) = err {
            args.push("--err".into());
            args.push(err.as_os_str().to_os_string());
        }
        if let Some(max) = self.max_bytes {
            args.push("--max-bytes".into());
            args.push(max.to_string().into());
        }
        args.push("--keep".into());
        args.push(self.keep.to_string().into());
        if self.timestamps {
            args.push("--timestamps".into());
        }
        args
    }
}
/// Appends output to a pump's file (stamped, with timestamps), rotating the file by rename
/// before a write would take it past its limit.
///
/// Other pumps may write the same path at the same time: during a rolling update the new
/// process of an index runs beside the old one, and a restarted instance's old pump may still
/// be draining its pipe. So each write takes an exclusive `flock` on the file (waiting for it
/// [`LOCK_WAIT`] at most, see there why), checks that the path still names it (else another
/// pump rotated it: the path is opened again), takes its size from the file rather than from
/// what this pump wrote, and rotates under the lock. The limit then holds for the pumps
/// together, a rotation is never undone or repeated by another, and no pump writes into a file
/// that was rotated away (which `logs -f` no longer follows). What the lock does not do: keep
/// lines whole between pumps. A read of a pipe may end inside a line, and another pump's write
/// may land before the rest of it.
///
/// A write that fails (disk full, log directory removed) is reported once and its bytes are
/// dropped; the next write opens the file again. The pump never stops reading for it: an
/// instance whose pipe has no reader dies, one whose pipe is not read blocks.
pub struct LogWriter {
    target: PumpTarget,
    /// The file last written, kept open between writes: whether the path still names it is
    /// checked at the next, under its lock.
    file: Option<File>,
    at_line_start: bool,
    failing: bool,
    /// The file system refused a lock once (reported); writes go on unlocked.
    lock_refused: bool,
    /// How long a write waits for the lock: [`LOCK_WAIT`], longer in tests whose pumps must
    /// not go unlocked however the host schedules them.
    lock_wait: Duration,
    /// The last try found the lock held past `lock_wait`: by something other than a pump, or
    /// by a pump held up (descheduled on a loaded host). Until the lock is got again, a write waits [`LOCK_WAIT_HELD_LONG`] and goes on
    /// unlocked, rather than wait the whole bound again at every read of the pipe. The price,
    /// while the lock is held so: a write may race another pump's.
    lock_held_long: bool,
    /// That was reported (once: a script holding the lock every hour would repeat it).
    lock_held_told: bool,
}
impl LogWriter {
    pub fn new(target: PumpTarget) -> LogWriter {
        LogWriter {
            target,
            file: None,
            at_line_start: true,
            failing: false,
            lock_refused: false,
            lock_wait: LOCK_WAIT,
            lock_held_long: false,
            lock_held_told: false,
        }
    }

    /// This writer, waiting `wait` for the file's lock rather than [`LOCK_WAIT`].
    #[cfg(test)]
    pub(super) fn waiting(self, wait: Duration) -> LogWriter {
        LogWriter {
            lock_wait: wait,
            ..self
        }
    }

    /// Appends `chunk` (its lines stamped with the time now, with timestamps).
    pub fn write(&mut self, chunk: &[u8]) {
        let result = if self.target.timestamps {
            let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let bytes = stamp_lines(chunk, &mut self.at_line_start, &stamp);
            self.append(&bytes)
        } else {
            self.append(chunk)
        };
        let path = &self.target.path;
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("writing {} again", path.display());
            }
            Ok(()) => {}
            Err(e) => {
                self.file = None;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "writing {}: {e}; dropping its output until it works",
                        path.display()
                    );
                }
            }
        }
    }

    /// Appends `bytes` to the file the path names, under its lock (see the type's doc),
    /// rotating it first when full.
    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let path = &self.target.path;
        let mut file = match self.file.take() {
            Some(file) => file,
            None => open_append(path)?,
        };
        let mut reopened = 0;
        // This write rotated the file: a line that does not fit is cut from here on, though
        // another pump may have put a line into the fresh file meanwhile. Waiting for an empty
        // file instead rotated again at each such line, each time pushing a kept file out.
        let mut rotated_here = false;
        while !bytes.is_empty() {
            let wait = match self.lock_held_long {
                true => LOCK_WAIT_HELD_LONG.min(self.lock_wait),
                false => self.lock_wait,
            };
            let lock = match lock_within(&file, wait) {
                Ok(Some(lock)) => {
                    self.lock_held_long = false;
                    Some(lock)
                }
                Ok(None) => {
                    self.lock_held_long = true;
                    if !self.lock_held_told {
                        self.lock_held_told = true;
                        tracing::warn!(
                            "{} stays locked past {:?} (by another process, or a pump of it \
                             held up); writing it unlocked while it is",
                            path.display(),
                            self.lock_wait
                        );
                    }
                    None
                }
                // A file system without locks (some FUSE ones): one pump alone stays right,
                // and dropping the output would be worse than two pumps racing.
                Err(e) => {
                    if !self.lock_refused {
                        self.lock_refused = true;
                        tracing::warn!("cannot lock {}: {e}; writing it unlocked", path.display());
                    }
                    None
                }
            };
            let Some(len) = size_if_named(&file, path)? else {
                // Rotated by another pump, or removed (`rm`, the log directory deleted): write
                // where `logs` looks. A second turn means the path changed again between the
                // open and the lock; bounded, so that a rename loop outside the pumps costs
                // this write, not the pump's reading.
                reopened += 1;
                if reopened > MAX_REOPENS {
                    return Err(io::Error::other(
                        "the log file is replaced as fast as it is opened",
                    ));
                }
                drop(lock);
                file = open_append(path)?;
                continue;
            };
            let n = match self.target.max_bytes {
                None => bytes.len(),
                Some(max) => {
                    split_at_room(bytes, max.saturating_sub(len), len == 0 || rotated_here)
                }
            };
            (&file).write_all(&bytes[..n])?;
            bytes = &bytes[n..];
            if !bytes.is_empty() {
                // Full: what is left goes into a fresh file. Renamed under the lock, so that no
                // other pump writes into it once it is `.1`, nor rotates it too.
                rotate_by_rename(path, self.target.keep)?;
                rotated_here = true;
                drop(lock);
                file = open_append(path)?;
            }
        }
        self.file = Some(file);
        Ok(())
    }
}
/// How often one write opens its path again because the file it named changed before it was
/// locked.
const MAX_REOPENS: u32 = 64;
/// Copies one pipe into its log file (stamped, with timestamps) until the pipe ends (every
/// process holding its write end exited). Blocking: the body of a pump of one pipe
/// (`merge_logs`), and of each thread of an agent that pumps in threads.
pub fn pump(input: File, target: PumpTarget) -> io::Result<()> {
    let mut writer = LogWriter::new(target);
    let mut buf = Vec::with_capacity(PUMP_READ);
    loop {
        match read_into(&input, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => writer.write(&buf),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
/// One read of `pipe` into `buf` (emptied first) without zeroing the buffer before: a pump's
/// buffer is touched only as far as reads fill it. Zeroed, its 64 KiB were 16 page faults at
/// every pump's start, most of them for a program that writes a line.
fn read_into(pipe: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    rustix::io::read(pipe, rustix::buffer::spare_capacity(buf)).map_err(io::Error::from)
}
/// The `log-pump` process: pumps its stdin (an instance's stdout pipe) into `out` and, with
/// `err`, its fd [`PUMP_ERR_FD`] (the stderr pipe) into that, until both pipes end. See the
/// section doc for why it ignores the usual termination signals.
pub fn pump_process(out: PumpTarget, err: Option<PumpTarget>) -> io::Result<()> {
    block_stop_signals()?;
    if let Err(e) = nix::sys::prctl::set_name(PUMP_NAME) {
        tracing::debug!("cannot set the process name: {e}");
    }
    let stdout_pipe = std::io::stdin().as_fd().try_clone_to_owned()?;
    let err = match err {
        Some(target) => {
            // The agent put the stderr pipe there (see `spawn_pump_process`). Opened again
            // through /proc rather than taken over by number, which would need `unsafe`.
            let file = File::open(format!("/proc/self/fd/{PUMP_ERR_FD}"))?;
            if !file.metadata()?.file_type().is_fifo() {
                return Err(io::Error::other(format!(
                    "fd {PUMP_ERR_FD} is not the instance's stderr pipe"
                )));
            }
            Some((OwnedFd::from(file), target))
        }
        None => None,
    };
    pump_pipes((stdout_pipe, out), err)
}
/// Blocks the signals a pump must outlive (see the module doc). Blocked, not handled: they stay
/// pending and never end the process. Early in a pump, and in the pump host before its forks,
/// so that every pump has the mask.
pub(super) fn block_stop_signals() -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut blocked = SigSet::empty();
    for signal in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
    ] {
        blocked.add(signal);
    }
    blocked.thread_block().map_err(io::Error::from)
}
/// The body of a pump: each pipe into its target until both pipes end.
pub(super) fn pump_pipes(
    out: (OwnedFd, PumpTarget),
    err: Option<(OwnedFd, PumpTarget)>,
) -> io::Result<()> {
    let (out_pipe, out) = out;
    let stdout_pipe = blocking_input(out_pipe)?;
    match err {
        None => pump(File::from(stdout_pipe), out),
        Some((err_pipe, err)) => pump_both([(stdout_pipe, out), (err_pipe, err)]),
    }
}
/// Two pipes in one thread, a read of each that has something (or has ended) per turn, until
/// both end; the first error after both ended. Not a thread per pipe: the thread's creation, its
/// stack and its own malloc arena were about a quarter of a pump's CPU at an instance's start.
/// The price: a write to a slow disk holds up both pipes, as a thread per pipe would not (each
/// pipe still buffers [`PIPE_BUFFER`] before its writer waits).
///
/// The pipes are made non-blocking, so that a read never waits on one pipe while the other
/// fills: another reader of the same pipe (a pump an earlier agent left) may have taken what
/// `poll` saw.
fn pump_both(pipes: [(OwnedFd, PumpTarget); 2]) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut open: Vec<(File, LogWriter)> = Vec::with_capacity(2);
    for (pipe, target) in pipes {
        let flags = rustix::fs::fcntl_getfl(&pipe)?;
        rustix::fs::fcntl_setfl(&pipe, flags | rustix::fs::OFlags::NONBLOCK)?;
        open.push((File::from(pipe), LogWriter::new(target)));
    }
    let mut buf = Vec::with_capacity(PUMP_READ);
    let mut first_error = None;
    while !open.is_empty() {
        let mut ready = [false; 2];
        {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|(file, _)| PollFd::new(file, PollFlags::IN))
                .collect();
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    // Ending would leave the instance's next write to a pipe nobody reads
                    // (SIGPIPE): wait and try again.
                    tracing::warn!("a log pump's poll failed ({e}); trying again");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            // Readable, ended (HUP) or failed (ERR): a read says which.
            for (slot, fd) in ready.iter_mut().zip(&fds) {
                *slot = !fd.revents().is_empty();
            }
        }
        // `retain_mut` visits the pipes in order, as `ready` lists them.
        let mut ready = ready.into_iter();
        open.retain_mut(|(file, writer)| {
            if !ready.next().unwrap_or(false) {
                return true;
            }
            match read_into(file, &mut buf) {
                Ok(0) => false,
                Ok(_) => {
                    writer.write(&buf);
                    true
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) =>
                {
                    true
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    false
                }
            }
        });
    }
    first_error.map_or(Ok(()), Err)
}
/// A pipe to read from, made blocking: one reopened through /proc may have been opened
/// non-blocking, and a pump's loop blocks.
fn blocking_input(input: std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    let flags = rustix::fs::fcntl_getfl(&input)?;
    if flags.contains(rustix::fs::OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(&input, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok(input)
}
fn open_append(path: &Path) -> io::Result<File> {
    // An instance's output is its owner's only, like everything in the data dir.
    let open = || {
        crate::persist::private_file()
            .create(true)
            .append(true)
            .open(path)
    };
    match open() {
        // The directory may have been removed under a running instance; recreate it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                crate::persist::create_private_dir(dir)?;
            }
            open()
        }
        other => other,
    }
}
/// How long an exit or stop waits for the instance's log pump to drain its pipes.
const PUMP_DRAIN_WAIT: Duration = Duration::from_millis(500);

/// The read end of one of an instance's output pipes, for its pump.
pub(crate) struct PumpPipe {
    pub(super) reader: OwnedFd,
    pub(super) target: PumpTarget,
    /// The instance's file descriptor it is on (1, or 2).
    pub(super) fd: u32,
}
/// An instance's stdout and stderr: the write ends of its pipes (one for both with
/// `merge_logs`), and the read ends for its pump.
pub(crate) type Output = (OwnedFd, OwnedFd, Vec<PumpPipe>);
pub(crate) fn output(
    logs_dir: &Path,
    app: &str,
    index: u32,
    spec: &AppSpec,
) -> Result<Output, String> {
    crate::persist::create_private_dir(logs_dir)
        .map_err(|e| format!("cannot create {}: {}", logs_dir.display(), describe(&e)))?;
    let pipe_error = |e: io::Error| format!("cannot make a pipe: {}", describe(&e));
    let mut pumps = Vec::new();
    let mut ends = Vec::new();
    for (&stream, fd) in log_streams(spec.merge_logs).iter().zip([1, 2]) {
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| pipe_error(e.into()))?;
        // Best effort: the default (64 KiB) works, only with less room for bursts.
        let _ = rustix::pipe::fcntl_setpipe_size(&reader, PIPE_BUFFER);
        pumps.push(PumpPipe {
            reader,
            target: pump_target(logs_dir, app, index, stream, spec),
            fd,
        });
        ends.push(writer);
    }
    let (stdout, stderr) = match (ends.pop(), ends.pop()) {
        // Two pipes: the last made is stderr's.
        (Some(err), Some(out)) => (out, err),
        (Some(both), None) => (both.try_clone().map_err(pipe_error)?, both),
        _ => return Err("cannot make a pipe".to_string()),
    };
    Ok((stdout, stderr, pumps))
}
fn pump_target(
    logs_dir: &Path,
    app: &str,
    index: u32,
    stream: pb::LogStream,
    spec: &AppSpec,
) -> PumpTarget {
    let path = log_path(logs_dir, app, index, stream);
    PumpTarget {
        // The pump runs in `/`, so that it holds no directory busy.
        path: std::path::absolute(&path).unwrap_or(path),
        max_bytes: spec.supervision.log_max_bytes.filter(|m| *m > 0),
        keep: spec.supervision.log_keep_bounded(),
        timestamps: spec.supervision.log_timestamps,
    }
}
/// The records of an instance's new pump (one per pipe), and its exit as the reaper reports it:
/// `None` when threads of the agent pump instead.
pub(crate) type Started = (Vec<SavedPump>, Option<oneshot::Receiver<Exit>>);
/// Starts the pump of an instance's output pipes (see the module doc for why it is a
/// process): the agent's `log-pump` helper in a process group of its own, with the first pipe
/// as its stdin and the second (if any) as its fd [`PUMP_ERR_FD`]; returns it for the
/// instance's record, once per pipe. Without a helper program, or when it cannot be started,
/// threads of the agent pump instead (which the agent's exit ends).
pub(crate) fn spawn_pump(agent: &Agent, id: &InstanceId, pipes: Vec<PumpPipe>) -> Started {
    if pipes.is_empty() {
        return (Vec::new(), None);
    }
    if let Some(program) = &agent.log_pump {
        let started = match super::host::start_pump(agent, program, id, &pipes) {
            Ok(pump) => Some((pump, watch_exit(pump))),
            Err(e) if super::host::may_run(&e) => {
                tracing::warn!(
                    instance = %id,
                    "the log pump host cannot start its pump ({e}); not starting another on \
                     the same pipes",
                );
                return (Vec::new(), None);
            }
            Err(e) => {
                tracing::warn!(
                    instance = %id,
                    "the log pump host cannot start its pump ({}); starting the pump on its own",
                    describe(&e),
                );
                match spawn_pump_process(agent, program, id, &pipes) {
                    Ok((pump, exit)) => Some((pump, Some(exit))),
                    Err(e) => {
                        tracing::warn!(
                            instance = %id,
                            "cannot start the log pump {}: {}; pumping in the agent, which its \
                             exit ends",
                            program.display(),
                            describe(&e),
                        );
                        None
                    }
                }
            }
        };
        if let Some((pump, exit)) = started {
            let saved = pipes
                .iter()
                .map(|p| SavedPump {
                    fd: p.fd,
                    pid: pump.pid,
                    start_ticks: pump.start_ticks,
                })
                .collect();
            return (saved, exit);
        }
    }
    for p in pipes {
        let path = p.target.path.clone();
        let target = p.target;
        let reader = p.reader;
        let thread = std::thread::Builder::new()
            .name("log-pump".to_string())
            .spawn(move || {
                if let Err(e) = pump(std::fs::File::from(reader), target) {
                    tracing::warn!("pumping into {}: {e}", path.display());
                }
            });
        if let Err(e) = thread {
            tracing::error!(instance = %id, "cannot start a log pump thread: {e}; its output is lost");
        }
    }
    (Vec::new(), None)
}
/// The end of a pump the host started (not this agent's child), as [`drained`] waits for it:
/// from its pidfd, in a task of the runtime. `None` outside one, where `drained` polls.
fn watch_exit(pump: ProcId) -> Option<oneshot::Receiver<Exit>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, rx) = oneshot::channel();
    runtime.spawn(async move {
        let exit = process::ExitWatch::adopt(pump).wait().await;
        let _ = tx.send(exit);
    });
    Some(rx)
}
fn spawn_pump_process(
    agent: &Agent,
    program: &Path,
    id: &InstanceId,
    pipes: &[PumpPipe],
) -> io::Result<(ProcId, oneshot::Receiver<Exit>)> {
    let (first, second) = match pipes {
        [first] => (first, None),
        [first, second] => (first, Some(second)),
        _ => return Err(io::Error::other("a pump reads one or two pipes")),
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg0("pmcluster-agent")
        .arg(PUMP_COMMAND)
        .args(first.target.args(second.map(|p| p.target.path.as_path())))
        .envs(pump_markers(&agent.marker, id))
        .stdin(Stdio::from(first.reader.try_clone()?))
        // The stderr pipe, as its fd [`PUMP_ERR_FD`].
        .stdout(match second {
            Some(second) => Stdio::from(second.reader.try_clone()?),
            None => Stdio::null(),
        })
        // Its rare messages go where the agent's go.
        .stderr(Stdio::inherit())
        .current_dir("/")
        .process_group(0);
    let spawned = agent.reaper.spawn(&mut cmd)?;
    // It ends with its pipes; its exit only tells [`drained`] that it wrote everything.
    let pid = ProcId::started(spawned.pid);
    Ok((pid, spawned.exit))
}
/// The pumps of an adopted instance: those recorded that still run, and a new one for the
/// pipes nobody reads any more (a pump died while no agent ran, or the instance was started by
/// an agent that pumped in-process). A new pump opens the pipe through `/proc/PID/fd/N`, which
/// gives a new read end of the same pipe. An instance that writes its files directly (started
/// by an older agent) has no pipe and gets no pump.
pub(crate) fn keep_pumping(
    agent: &Agent,
    id: &InstanceId,
    pid: u32,
    app: &str,
    index: u32,
    spec: &AppSpec,
    recorded: &[SavedPump],
) -> Vec<SavedPump> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut pumps = Vec::new();
    let mut orphaned = Vec::new();
    for (&stream, fd) in log_streams(spec.merge_logs).iter().zip([1u32, 2]) {
        let running = recorded.iter().find(|p| {
            p.fd == fd
                && ProcId {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                }
                .alive()
        });
        if let Some(p) = running {
            pumps.push(p.clone());
            continue;
        }
        let path = format!("/proc/{pid}/fd/{fd}");
        // Non-blocking: opening a pipe for reading waits for a writer, and the instance may be
        // just exiting. The pump reads it blocking again.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path);
        match opened {
            Ok(f) if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) => {
                let fd_owned = OwnedFd::from(f);
                if let Err(e) = rustix::fs::fcntl_setfl(&fd_owned, rustix::fs::OFlags::empty()) {
                    tracing::warn!(pid, "cannot make {path} blocking: {e}");
                    continue;
                }
                tracing::info!(pid, "its log pump for fd {fd} is gone; starting another");
                orphaned.push(PumpPipe {
                    reader: fd_owned,
                    target: pump_target(&agent.logs_dir, app, index, stream, spec),
                    fd,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pid, "cannot reopen {path} for its logs: {e}"),
        }
    }
    // Its exit is not kept: an adopted instance's pumps are waited for as the earlier ones are
    // (see `drained`).
    pumps.extend(spawn_pump(agent, id, orphaned).0);
    pumps
}
/// Waits (briefly) until the pumps of a process that ended have written what was left in its
/// pipes and ended, so that its last lines are in its files once its exit is reported (and
/// before a restart writes more). A pump whose pipe some escaped process still holds open is
/// not waited for longer than [`PUMP_DRAIN_WAIT`].
///
/// `exit` is the end of the pump this agent started, reported by the reaper on its SIGCHLD: a
/// restart waits for this, and a pump that was still reading at the first look cost the restart
/// a 2 ms poll (3 with the timer's rounding). Pumps of an adopted instance (not this agent's
/// children, or started by an earlier agent) are polled.
pub(crate) async fn drained(pumps: &[SavedPump], exit: Option<oneshot::Receiver<Exit>>) {
    let deadline = Instant::now() + PUMP_DRAIN_WAIT;
    if let Some(exit) = exit {
        match tokio::time::timeout_at(deadline, exit).await {
            Ok(Ok(_)) | Err(_) => return,
            // The reaper stopped (the agent is going away): poll, as for any other pump.
            Ok(Err(_)) => {}
        }
    }
    let alive = || {
        pumps.iter().any(|p| {
            ProcId {
                pid: p.pid,
                start_ticks: p.start_ticks,
            }
            .alive()
        })
    };
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests;
