//! Instance logs: where each instance's stdout and stderr files are, their rotation, the pumps
//! that stamp timestamped output into them, reading their last lines (backwards from the end,
//! never the whole file), following them as they grow, and answering the coordinator's
//! `LogRequest`s with `LogChunk`s.
//!
//! Log tasks only read files and send through the link's bounded log queue; when the queue is full
//! they wait. They never touch a supervisor, so a slow reader cannot hold an instance up (the
//! instance, or its pump, writes straight into its files).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::model::InstanceId;
use crate::state::Agent;
use crate::state::LogSource;

/// History lines when a request asks for 0.
pub const DEFAULT_LINES: u32 = 20;
/// Most history lines per instance and stream.
pub const MAX_LINES: u32 = 10_000;
/// Most lines in one `LogChunk`.
pub const CHUNK_LINES: usize = 500;
/// Most bytes of line text in one `LogChunk`, well under gRPC's 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Longer lines are cut (a program writing binary junk without newlines must not make one
/// giant message).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// How far back from the end a history read looks at most.
const MAX_SCAN_BYTES: u64 = 8 << 20;
/// Most bytes read from a followed file per poll.
const MAX_FOLLOW_READ: u64 = 1 << 20;
/// How often followed files are checked for growth.
pub const FOLLOW_POLL: Duration = Duration::from_millis(150);

/// Path of one instance's stdout or stderr file.
pub fn log_path(logs_dir: &Path, app: &str, index: u32, stream: pb::LogStream) -> PathBuf {
    let suffix = match stream {
        pb::LogStream::Stderr => "err",
        _ => "out",
    };
    logs_dir.join(format!("{app}-{index}-{suffix}.log"))
}

/// The streams an instance has files for: stderr goes into the stdout file with `merge_logs`.
pub fn log_streams(merged: bool) -> &'static [pb::LogStream] {
    if merged {
        &[pb::LogStream::Stdout]
    } else {
        &[pb::LogStream::Stdout, pb::LogStream::Stderr]
    }
}

/// The `n`th rotated file of `path`: `web-0-out.log.3`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The renames that make room for a new `.1` while keeping `keep` rotated files, oldest first so
/// that each one replaces a file that is already kept elsewhere (`.keep` is replaced, so dropped).
pub fn rotation_renames(path: &Path, keep: u32) -> Vec<(PathBuf, PathBuf)> {
    (1..keep)
        .rev()
        .map(|n| (rotated(path, n), rotated(path, n + 1)))
        .collect()
}

/// Rotates a file that a process writes to directly (with `O_APPEND`), by copy and truncate:
/// shift the kept files, copy the live file to `.1`, truncate the live file to zero.
///
/// Only for instances adopted from an agent that let them write their files directly (before
/// every instance's output went through a pump): such an instance holds its file open, and the
/// agent cannot make it reopen one. It bounds nothing (the file grows as fast as the instance
/// writes between two passes) and loses what is written between the copy and the truncate;
/// the instance's next start puts it behind a pump.
pub fn rotate_copy_truncate(path: &Path, keep: u32) -> io::Result<()> {
    if keep > 0 {
        for (from, to) in rotation_renames(path, keep) {
            match std::fs::rename(&from, &to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let mut src = File::open(path)?;
        let mut dst = File::create(rotated(path, 1))?;
        let mut copied = 0u64;
        for _ in 0..4 {
            let len = src.metadata()?.len();
            if len <= copied {
                break;
            }
            src.seek(SeekFrom::Start(copied))?;
            copied += io::copy(&mut (&mut src).take(len - copied), &mut dst)?;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
}

// ---------------------------------------------------------------------------------------------
// Log pumps
//
// Every instance writes its stdout and stderr into pipes, and one *pump* per instance reads
// them: a small helper process, the agent binary run as `pmcluster-agent log-pump --out FILE
// [--err FILE] ...` with the stdout pipe as its stdin and the stderr pipe as its fd 3 (one pipe
// and no `--err` with `merge_logs`). It appends what it reads to the files (stamping each line
// with `log_timestamps`) and rotates them as it writes: before a write would take a file past
// `log_max_size`, it writes what fits up to the last newline, renames the file to `.1` (the
// kept files shift, the oldest beyond `log_retain` goes) and opens a new one. So no file ever
// holds more than `log_max_size` (a line longer than that is cut over files), an instance's
// files per stream never more than `log_max_size × (log_retain + 1)`, and nothing is lost to a
// copy and truncate. Whatever an instance writes, the pump makes it wait only for the disk: it
// reads as fast as the pipe fills, holds at most one read buffer, and a full pipe makes the
// instance's write block, never grow a file past its bound.
//
// Why not let instances write their files directly (as they once did, rotated by copy and
// truncate once a second): then nothing bounds a file between two passes. A program writing
// 500 MB/s made files of gigabytes against a 10 MiB limit, and a host's disk is shared.
//
// Why a process of its own and not a task of the agent: a pipe whose reader is gone makes the
// writer's next write fail with EPIPE, and kill the writer with SIGPIPE unless it ignores it (a
// shell, most programs). Were the agent the reader, `kill -9` of the agent, its crash or its
// upgrade would kill every instance at its next line. The pump outlives the agent, so the
// instance keeps running and its lines keep arriving in the same files; the next agent finds
// the pump by its recorded pid (see `persist::SavedPump`) and leaves it alone, or starts a new
// one on a pipe nobody reads any more.
// The pump runs in its own process group, neither the agent's (Ctrl-C in the agent's terminal,
// or anything else aimed at the agent's group, would end it) nor the instance's (the stop
// signal and the SIGKILL sweep after the leader exits would end it before it read the last
// lines, which after a crash are the ones that matter, and it would count in the instance's
// memory and CPU). It needs no signal to end: it ends when its pipes do, that is when every
// process of the instance holding a write end has exited, so stopping the instance ends it.
// It also ignores SIGHUP, SIGINT, SIGQUIT and SIGTERM for the same reason, and names itself
// `pmcluster-pump`, so that `pkill pmcluster-agent` does not take it for the agent.
//
// An agent embedded in another process (tests) without a helper program pumps in threads of
// that process instead ([`pump`] is the same code): they end with that process.

/// Bytes read from an instance's pipe at a time: the most one write of a pump adds to a file.
pub const PUMP_READ: usize = 64 * 1024;
/// Kernel buffer asked for each pipe: room for bursts while the pump waits for the disk.
pub const PIPE_BUFFER: usize = 1 << 20;
/// The agent binary's hidden subcommand that runs one pump.
pub const PUMP_COMMAND: &str = "log-pump";
/// A pump's process name (`comm`, at most 15 bytes).
pub const PUMP_NAME: &std::ffi::CStr = c"pmcluster-pump";
/// The pump's file descriptor for the stderr pipe (its stdin carries the stdout pipe).
pub const PUMP_ERR_FD: i32 = 3;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
/// A write that fails (disk full, log directory removed) is reported once and its bytes are
/// dropped; the next write opens the file again. The pump never stops reading for it: an
/// instance whose pipe has no reader dies, one whose pipe is not read blocks.
pub struct LogWriter {
    target: PumpTarget,
    /// The open file and its size.
    file: Option<(File, u64)>,
    at_line_start: bool,
    failing: bool,
}

impl LogWriter {
    pub fn new(target: PumpTarget) -> LogWriter {
        LogWriter {
            target,
            file: None,
            at_line_start: true,
            failing: false,
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

    fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let Some((file, _)) = &self.file
            && file.metadata()?.nlink() == 0
        {
            // Removed (`rm`, the log directory deleted): write where `logs` will look.
            self.file = None;
        }
        while !bytes.is_empty() {
            if self.file.is_none() {
                let file = open_append(&self.target.path)?;
                let len = file.metadata()?.len();
                self.file = Some((file, len));
            }
            let Some((file, len)) = self.file.as_mut() else {
                return Err(io::Error::other("no log file"));
            };
            let n = match self.target.max_bytes {
                None => bytes.len(),
                Some(max) => split_at_room(bytes, max.saturating_sub(*len), *len == 0),
            };
            file.write_all(&bytes[..n])?;
            *len += n as u64;
            bytes = &bytes[n..];
            if !bytes.is_empty() {
                // Full: what is left goes into a fresh file.
                self.file = None;
                rotate_by_rename(&self.target.path, self.target.keep)?;
            }
        }
        Ok(())
    }
}

/// Copies one pipe into its log file (stamped, with timestamps) until the pipe ends (every
/// process holding its write end exited). Blocking: the body of a pump, or of a pump thread.
pub fn pump(mut input: impl Read, target: PumpTarget) -> io::Result<()> {
    let mut writer = LogWriter::new(target);
    let mut buf = vec![0u8; PUMP_READ];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => writer.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `log-pump` process: pumps its stdin (an instance's stdout pipe) into `out` and, with
/// `err`, its fd [`PUMP_ERR_FD`] (the stderr pipe) into that, each in a thread, until both pipes
/// end. See the section doc for why it ignores the usual termination signals.
pub fn pump_process(out: PumpTarget, err: Option<PumpTarget>) -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked, not handled: they stay pending and never end the process. Before any thread
    // starts, so that every thread inherits the mask.
    let mut blocked = SigSet::empty();
    for signal in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
    ] {
        blocked.add(signal);
    }
    blocked.thread_block().map_err(io::Error::from)?;
    if let Err(e) = nix::sys::prctl::set_name(PUMP_NAME) {
        tracing::debug!("cannot set the process name: {e}");
    }
    let stdout_pipe = blocking_input(std::io::stdin().as_fd().try_clone_to_owned()?)?;
    let err_pump = match err {
        Some(target) => {
            // The agent put the stderr pipe there (see `supervisor::spawn_pump`). Opened again
            // through /proc rather than taken over by number, which would need `unsafe`.
            let file = File::open(format!("/proc/self/fd/{PUMP_ERR_FD}"))?;
            if !file.metadata()?.file_type().is_fifo() {
                return Err(io::Error::other(format!(
                    "fd {PUMP_ERR_FD} is not the instance's stderr pipe"
                )));
            }
            let pipe = blocking_input(std::os::fd::OwnedFd::from(file))?;
            // A small stack: the thread only reads and writes through one buffer on the heap.
            Some(
                std::thread::Builder::new()
                    .name("pump-err".to_string())
                    .stack_size(64 * 1024)
                    .spawn(move || pump(File::from(pipe), target))?,
            )
        }
        None => None,
    };
    let out_result = pump(File::from(stdout_pipe), out);
    let err_result = match err_pump {
        Some(thread) => thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the stderr pump thread panicked"))),
        None => Ok(()),
    };
    out_result.and(err_result)
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
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    match open() {
        // The directory may have been removed under a running instance; recreate it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        other => other,
    }
}

/// Rotation of a file only the agent writes: shift the kept files and rename the live one to
/// `.1` (nothing is copied, nothing lost). With `keep` 0 the live file is removed.
pub fn rotate_by_rename(path: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for (from, to) in rotation_renames(path, keep) {
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// The end of a file as read by [`read_last_lines`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// Last complete lines, oldest first, without their newline.
    pub lines: Vec<String>,
    /// Text after the last newline (a line still being written); empty when none.
    pub partial: String,
    /// File offset just after the last newline: where a follower starts.
    pub end: u64,
    /// Device and inode, to notice the file being replaced.
    pub ident: Option<(u64, u64)>,
}

/// Reads the last `n` complete lines of `path` (and any unterminated last line), reading backwards
/// in blocks from the end. A missing file reads as empty.
pub fn read_last_lines(path: &Path, n: usize) -> io::Result<Tail> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let len = meta.len();
    let ident = Some((meta.dev(), meta.ino()));
    const BLOCK: u64 = 8 * 1024;
    // Blocks read so far, last block first.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut start = len;
    let mut newlines = 0usize;
    let floor = len.saturating_sub(MAX_SCAN_BYTES);
    // n complete lines need n newlines for their ends, plus one more before the oldest so it is
    // known to be whole (or the start of the file). The file's last newline ends the newest line.
    while start > floor && newlines <= n {
        let size = BLOCK.min(start - floor);
        start -= size;
        file.seek(SeekFrom::Start(start))?;
        let mut block = vec![0u8; usize::try_from(size).unwrap_or(0)];
        file.read_exact(&mut block)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
        blocks.push(block);
    }
    let data: Vec<u8> = blocks.into_iter().rev().flatten().collect();
    let mut segments: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    // The last segment follows the last newline: a partial line, or empty.
    let partial = segments.pop().unwrap_or_default();
    if start > 0 && !segments.is_empty() {
        // The first segment may begin mid-line.
        segments.remove(0);
    }
    let skip = segments.len().saturating_sub(n);
    let lines = segments[skip..].iter().map(|s| line_text(s)).collect();
    Ok(Tail {
        lines,
        partial: line_text(partial),
        end: len - partial.len() as u64,
        ident,
    })
}

/// As [`read_last_lines`], topped up from the last rotated file (`.1`) when the live file holds
/// fewer than `n` lines (it was just rotated), so that `logs --lines` shows as much right after
/// a rotation as before it.
pub fn read_last_lines_rotated(path: &Path, n: usize) -> io::Result<Tail> {
    let mut tail = read_last_lines(path, n)?;
    let missing = n.saturating_sub(tail.lines.len());
    if missing > 0 {
        let older = read_last_lines(&rotated(path, 1), missing)?;
        // A rotated file ends where the live one starts: its unterminated last line (cut only
        // when longer than a whole file) is as complete as it gets.
        let mut lines = older.lines;
        if !older.partial.is_empty() {
            lines.push(older.partial);
        }
        let skip = lines.len().saturating_sub(missing);
        lines.drain(..skip);
        lines.append(&mut tail.lines);
        tail.lines = lines;
    }
    Ok(tail)
}

/// One line's text: lossy UTF-8, no trailing `\r`, cut at [`MAX_LINE_BYTES`].
fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let cut = &bytes[..bytes.len().min(MAX_LINE_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Follows one file from an offset: new complete lines as it grows; starts over when the file is
/// truncated or replaced (rotation, `rm` and recreate).
///
/// It keeps the file it reads open, like `tail -F`: that is how a replacement is told apart from
/// the same file even when the new one gets the old inode number back.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    /// Bytes after the last newline read so far.
    pending: Vec<u8>,
}

fn ident(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl Follower {
    /// Follows `path` from where `tail` (read from it just before) ended. Blocking file I/O.
    pub fn new(path: PathBuf, tail: &Tail) -> Follower {
        let file = File::open(&path).ok();
        let same = match (&file, tail.ident) {
            (Some(f), Some(id)) => f.metadata().is_ok_and(|m| ident(&m) == id),
            _ => false,
        };
        Follower {
            path,
            file,
            offset: if same { tail.end } else { 0 },
            pending: Vec::new(),
        }
    }

    /// New complete lines since the last call. Blocking file I/O: call from the blocking pool.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(m) => Some(ident(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let held = match &self.file {
            Some(f) => Some(ident(&f.metadata()?)),
            None => None,
        };
        if on_disk.is_some() && on_disk != held {
            // Rotated (renamed away) or replaced: what is left of the old file first, then the
            // new file, whose content is all new.
            if let Some(file) = &self.file {
                let len = file.metadata()?.len();
                if len > self.offset {
                    return self.read_held(len);
                }
            }
            self.file = Some(File::open(&self.path)?);
            self.offset = 0;
            if !self.pending.is_empty() {
                // The old file ended mid-line: that line is complete as far as it goes.
                let line = line_text(&std::mem::take(&mut self.pending));
                let mut lines = vec![line];
                let len = self.held_len()?;
                lines.extend(self.read_held(len)?);
                return Ok(lines);
            }
        }
        let len = self.held_len()?;
        if len < self.offset {
            // Truncated (`> file`): start over.
            self.offset = 0;
            self.pending.clear();
        }
        self.read_held(len)
    }

    fn held_len(&self) -> io::Result<u64> {
        match &self.file {
            Some(f) => Ok(f.metadata()?.len()),
            None => Ok(0),
        }
    }

    /// Complete lines of the held file from the offset towards `len` (at most
    /// [`MAX_FOLLOW_READ`] bytes).
    fn read_held(&mut self, len: u64) -> io::Result<Vec<String>> {
        let Some(file) = &mut self.file else {
            return Ok(Vec::new());
        };
        if len <= self.offset {
            return Ok(Vec::new());
        }
        let want = (len - self.offset).min(MAX_FOLLOW_READ);
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.take(want).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.pending.extend_from_slice(&buf);
        let mut lines = Vec::new();
        let mut rest: &[u8] = &self.pending;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            lines.push(line_text(&rest[..pos]));
            rest = &rest[pos + 1..];
        }
        // An endless line without newline is flushed in pieces rather than buffered forever.
        if rest.len() >= MAX_LINE_BYTES {
            lines.push(line_text(rest));
            rest = &[];
        }
        self.pending = rest.to_vec();
        Ok(lines)
    }
}

/// The log requests of one link session. Dropping it aborts every task (the session ended).
pub(crate) struct LogRequests {
    agent: Arc<Agent>,
    out: mpsc::Sender<pb::AgentMessage>,
    /// Each task returns its request id and its serial number.
    tasks: JoinSet<(u64, u64)>,
    /// Cancel handles of running requests, with the serial of the task that owns the id.
    cancels: BTreeMap<u64, (u64, CancellationToken)>,
    next_serial: u64,
}

impl LogRequests {
    pub fn new(agent: Arc<Agent>, out: mpsc::Sender<pb::AgentMessage>) -> LogRequests {
        LogRequests {
            agent,
            out,
            tasks: JoinSet::new(),
            cancels: BTreeMap::new(),
            next_serial: 0,
        }
    }

    /// Starts answering one request.
    pub fn start(&mut self, req: pb::LogRequest) {
        let ids: Vec<InstanceId> = req.instance_ids.iter().map(InstanceId::new).collect();
        let cancel = CancellationToken::new();
        self.next_serial += 1;
        let serial = self.next_serial;
        if let Some((_, old)) = self
            .cancels
            .insert(req.request_id, (serial, cancel.clone()))
        {
            // The coordinator reused an id: the new request replaces the old one.
            old.cancel();
        }
        let job = Job {
            request_id: req.request_id,
            node: self.agent.node_name.clone(),
            logs_dir: self.agent.logs_dir.clone(),
            sources: self.agent.state.log_sources(&ids),
            lines: match req.lines {
                0 => DEFAULT_LINES,
                n => n.min(MAX_LINES),
            },
            follow: req.follow,
            out: self.out.clone(),
            cancel,
        };
        let request_id = req.request_id;
        self.tasks.spawn(async move {
            job.run().await;
            (request_id, serial)
        });
    }

    pub fn cancel(&mut self, request_id: u64) {
        if let Some((_, cancel)) = self.cancels.remove(&request_id) {
            cancel.cancel();
        }
    }

    /// Waits for a task to finish and forgets it; pending forever when there is none.
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok((request_id, serial))) => {
                // Only forget the handle if no newer request took over the id.
                if self
                    .cancels
                    .get(&request_id)
                    .is_some_and(|(owner, _)| *owner == serial)
                {
                    self.cancels.remove(&request_id);
                }
            }
            Some(Err(e)) => tracing::error!("log task failed: {e}"),
            None => std::future::pending().await,
        }
    }
}

impl Drop for LogRequests {
    fn drop(&mut self) {
        for (_, cancel) in self.cancels.values() {
            cancel.cancel();
        }
    }
}

/// One request being answered.
struct Job {
    request_id: u64,
    node: String,
    logs_dir: PathBuf,
    sources: Result<Vec<LogSource>, Vec<InstanceId>>,
    lines: u32,
    follow: bool,
    out: mpsc::Sender<pb::AgentMessage>,
    cancel: CancellationToken,
}

/// One followed file and what its lines are labelled with.
struct Stream {
    source: LogSource,
    stream: pb::LogStream,
    follower: Follower,
}

impl Job {
    async fn run(self) {
        let sources = match &self.sources {
            Ok(s) => s.clone(),
            Err(unknown) => {
                let ids: Vec<&str> = unknown.iter().map(InstanceId::as_str).collect();
                let error = format!("unknown instance on this node: {}", ids.join(", "));
                self.send(Vec::new(), true, error).await;
                return;
            }
        };
        let mut history = Vec::new();
        let mut streams = Vec::new();
        for source in &sources {
            if pmcluster_spec::app::validate_name(&source.app).is_err() {
                // An invalid spec never ran, so it has no files; its name may not be a safe path.
                continue;
            }
            for &stream in log_streams(source.merged) {
                let path = log_path(&self.logs_dir, &source.app, source.index, stream);
                let n = usize::try_from(self.lines).unwrap_or(usize::MAX);
                let read_path = path.clone();
                let follow = self.follow;
                let read = tokio::task::spawn_blocking(move || {
                    let tail = read_last_lines_rotated(&read_path, n)?;
                    let follower = follow.then(|| Follower::new(read_path, &tail));
                    io::Result::Ok((tail, follower))
                });
                let (mut tail, follower) = match read.await {
                    Ok(Ok(read)) => read,
                    Ok(Err(e)) => {
                        let error = format!("cannot read {}: {e}", path.display());
                        self.send(history, true, error).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!("log reader failed: {e}");
                        self.send(history, true, "log reader failed".into()).await;
                        return;
                    }
                };
                let label = |line: String| self.line(source, stream, line);
                history.extend(std::mem::take(&mut tail.lines).into_iter().map(&label));
                if let Some(follower) = follower {
                    streams.push(Stream {
                        source: source.clone(),
                        stream,
                        follower,
                    });
                } else if !tail.partial.is_empty() {
                    history.push(label(std::mem::take(&mut tail.partial)));
                }
            }
        }
        if !self.follow {
            self.send(history, true, String::new()).await;
            return;
        }
        if !history.is_empty() && !self.send(history, false, String::new()).await {
            return;
        }
        self.follow(streams).await;
    }

    async fn follow(&self, mut streams: Vec<Stream>) {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => {
                    // Tell the coordinator the request is closed; it may not be listening any more,
                    // so do not wait for room.
                    let _ = self.out.try_send(self.chunk(Vec::new(), true, String::new()));
                    return;
                }
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            let node = self.node.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                for s in &mut streams {
                    match s.follower.poll() {
                        Ok(new) => lines.extend(new.into_iter().map(|line| pb::LogLine {
                            app: s.source.app.clone(),
                            index: s.source.index,
                            node: node.clone(),
                            stream: s.stream.into(),
                            line,
                        })),
                        Err(e) => tracing::debug!("following {}: {e}", s.follower.path.display()),
                    }
                }
                (streams, lines)
            })
            .await;
            let lines;
            (streams, lines) = match polled {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("log follower failed: {e}");
                    return;
                }
            };
            if !lines.is_empty() && !self.send(lines, false, String::new()).await {
                return;
            }
        }
    }

    fn line(&self, source: &LogSource, stream: pb::LogStream, line: String) -> pb::LogLine {
        pb::LogLine {
            app: source.app.clone(),
            index: source.index,
            node: self.node.clone(),
            stream: stream.into(),
            line,
        }
    }

    fn chunk(&self, lines: Vec<pb::LogLine>, eof: bool, error: String) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::LogChunk(pb::LogChunk {
                request_id: self.request_id,
                lines,
                eof,
                error,
            })),
        }
    }

    /// Sends `lines` in chunks of at most [`CHUNK_LINES`] lines and [`CHUNK_BYTES`] bytes, `eof`
    /// and `error` on the last one. Returns false when the request was cancelled or the link is
    /// gone.
    async fn send(&self, lines: Vec<pb::LogLine>, eof: bool, error: String) -> bool {
        let mut chunks: Vec<Vec<pb::LogLine>> = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0usize;
        for line in lines {
            if current.len() >= CHUNK_LINES || bytes + line.line.len() > CHUNK_BYTES {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += line.line.len();
            current.push(line);
        }
        if !current.is_empty() || chunks.is_empty() {
            chunks.push(current);
        }
        let last = chunks.len() - 1;
        for (i, lines) in chunks.into_iter().enumerate() {
            let msg = if i == last {
                self.chunk(lines, eof, error.clone())
            } else {
                self.chunk(lines, false, String::new())
            };
            let sent = tokio::select! {
                () = self.cancel.cancelled() => false,
                r = self.out.send(msg) => r.is_ok(),
            };
            if !sent {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = match tempfile::NamedTempFile::new() {
            Ok(f) => f,
            Err(e) => panic!("temp file: {e}"),
        };
        if let Err(e) = f.write_all(content) {
            panic!("write: {e}");
        }
        f
    }

    fn check(content: &[u8], n: usize, want_lines: &[&str], want_partial: &str) {
        let f = file_with(content);
        let tail = match read_last_lines(f.path(), n) {
            Ok(t) => t,
            Err(e) => panic!("read: {e}"),
        };
        let name = String::from_utf8_lossy(&content[..content.len().min(40)]).into_owned();
        assert_eq!(tail.lines, want_lines, "{name:?} n={n}");
        assert_eq!(tail.partial, want_partial, "{name:?} n={n}");
        assert_eq!(
            tail.end,
            (content.len() - want_partial.len()) as u64,
            "{name:?}"
        );
    }

    #[test]
    fn last_lines() {
        check(b"", 5, &[], "");
        check(b"a\nb\nc\n", 2, &["b", "c"], "");
        check(b"a\nb\nc\n", 3, &["a", "b", "c"], "");
        check(b"a\nb\nc\n", 10, &["a", "b", "c"], "");
        check(b"a\nb\nc", 2, &["a", "b"], "c");
        check(b"a\nb\nc", 0, &[], "c");
        check(b"only", 3, &[], "only");
        check(b"\n\n\n", 2, &["", ""], "");
        check(b"crlf\r\nline\r\n", 5, &["crlf", "line"], "");
        check(b"bad \xff utf8\n", 1, &["bad \u{fffd} utf8"], "");
    }

    #[test]
    fn last_lines_across_blocks() {
        // 3000 numbered lines span many 8 KiB blocks.
        let mut content = String::new();
        for i in 0..3000 {
            content.push_str(&format!("line {i:05} {}\n", "x".repeat(20)));
        }
        let f = file_with(content.as_bytes());
        for n in [1usize, 7, 500, 2999, 3000, 5000] {
            let tail = match read_last_lines(f.path(), n) {
                Ok(t) => t,
                Err(e) => panic!("read: {e}"),
            };
            let first = 3000usize.saturating_sub(n);
            assert_eq!(tail.lines.len(), n.min(3000), "n={n}");
            assert!(
                tail.lines[0].starts_with(&format!("line {first:05} ")),
                "n={n}: {}",
                tail.lines[0]
            );
            assert!(tail.lines[tail.lines.len() - 1].starts_with("line 02999 "));
        }
    }

    #[test]
    fn rotation_names() {
        let p = Path::new("/logs/web-0-out.log");
        let render = |keep| -> Vec<String> {
            rotation_renames(p, keep)
                .into_iter()
                .map(|(a, b)| format!("{} -> {}", a.display(), b.display()))
                .collect()
        };
        assert_eq!(rotated(p, 2), Path::new("/logs/web-0-out.log.2"));
        assert!(render(0).is_empty());
        assert!(render(1).is_empty());
        assert_eq!(
            render(3),
            [
                "/logs/web-0-out.log.2 -> /logs/web-0-out.log.3",
                "/logs/web-0-out.log.1 -> /logs/web-0-out.log.2",
            ]
        );
    }

    #[test]
    fn copy_truncate_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        for round in 1..=5 {
            std::fs::write(&path, format!("round {round}\n")).expect("write");
            rotate_copy_truncate(&path, 3).expect("rotate");
            assert_eq!(std::fs::metadata(&path).map(|m| m.len()).ok(), Some(0));
        }
        let read = |n| std::fs::read_to_string(rotated(&path, n)).ok();
        assert_eq!(read(1).as_deref(), Some("round 5\n"));
        assert_eq!(read(2).as_deref(), Some("round 4\n"));
        assert_eq!(read(3).as_deref(), Some("round 3\n"));
        assert_eq!(read(4), None);
        // keep 0: truncate only.
        std::fs::write(&path, "x\n").expect("write");
        rotate_copy_truncate(&path, 0).expect("rotate");
        assert_eq!(read(1).as_deref(), Some("round 5\n"));
    }

    #[test]
    fn stamps() {
        // (chunks, at line start before) -> output
        let cases: [(&[&[u8]], &str); 5] = [
            (&[b"a\nb\n"], "T a\nT b\n"),
            (&[b"par", b"tial\nnext"], "T partial\nT next"),
            (&[b"\n\n"], "T \nT \n"),
            (&[b"x", b"\n", b"y\n"], "T x\nT y\n"),
            (&[b""], ""),
        ];
        for (chunks, want) in cases {
            let mut start = true;
            let got: Vec<u8> = chunks
                .iter()
                .flat_map(|c| stamp_lines(c, &mut start, "T"))
                .collect();
            assert_eq!(String::from_utf8_lossy(&got), want, "{chunks:?}");
        }
    }

    #[test]
    fn rename_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.log");
        for round in 1..=4 {
            std::fs::write(&path, format!("{round}")).expect("write");
            rotate_by_rename(&path, 2).expect("rotate");
            assert!(!path.exists());
        }
        let read = |n| std::fs::read_to_string(rotated(&path, n)).ok();
        assert_eq!(
            (read(1), read(2), read(3)),
            (Some("4".into()), Some("3".into()), None)
        );
    }

    #[test]
    fn pump_stamps_and_ends_with_the_pipe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.log");
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        let target = PumpTarget {
            path: path.clone(),
            max_bytes: None,
            keep: 0,
            timestamps: true,
        };
        let pumping = std::thread::spawn(move || pump(File::from(reader), target));
        let mut w = File::from(writer);
        w.write_all(b"one\ntwo\n").expect("write");
        drop(w);
        let ended = pumping.join().expect("pump thread");
        assert!(ended.is_ok(), "pump ends at EOF: {ended:?}");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("Z one") && lines[1].ends_with("Z two"),
            "{text}"
        );
    }

    #[test]
    fn stamper_rotates_by_rename_and_survives_a_removed_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        let path = logs.join("r.log");
        // "<24-byte stamp> line NN\n" is 33 bytes: two lines fit, a third would not.
        let mut stamper = LogWriter::new(PumpTarget {
            path: path.clone(),
            max_bytes: Some(70),
            keep: 2,
            timestamps: true,
        });
        for i in 0..7 {
            stamper.write(format!("line {i:02}\n").as_bytes());
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let ends = |p: &Path| -> Vec<String> {
            read(p)
                .lines()
                .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_string())
                .collect()
        };
        // 7 lines: [0 1] dropped, [2 3] in .2, [4 5] in .1, [6] live.
        assert_eq!(ends(&rotated(&path, 2)), ["line 02", "line 03"]);
        assert_eq!(ends(&rotated(&path, 1)), ["line 04", "line 05"]);
        assert_eq!(ends(&path), ["line 06"]);
        assert!(!rotated(&path, 3).exists());
        // The directory removed under the pump: it is made again at the next write.
        std::fs::remove_dir_all(&logs).expect("rm");
        stamper.write(b"after\n");
        assert_eq!(ends(&path), ["after"]);
    }

    #[test]
    fn splits_at_the_room_left() {
        // (bytes, room, file empty) -> bytes into this file
        let cases: [(&[u8], u64, bool, usize); 8] = [
            (b"abc\n", 10, false, 4),
            (b"abc\n", 4, false, 4),
            (b"ab\ncd\nef\n", 7, false, 6),
            (b"ab\ncd\nef\n", 2, false, 0),
            (b"ab\ncd\nef\n", 2, true, 2),
            (b"abcdef", 3, true, 3),
            (b"abcdef", 3, false, 0),
            (b"", 0, false, 0),
        ];
        for (bytes, room, empty, want) in cases {
            let got = split_at_room(bytes, room, empty);
            assert_eq!(
                got,
                want,
                "{:?} room {room} empty {empty}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    /// Whatever the chunks, no file passes the limit, no more than `keep` rotated files stay,
    /// and what they hold is the newest output, in order, lines whole.
    #[test]
    fn plain_writer_never_passes_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flood.log");
        let max = 1000u64;
        let mut writer = LogWriter::new(PumpTarget {
            path: path.clone(),
            max_bytes: Some(max),
            keep: 2,
            timestamps: false,
        });
        let mut all = Vec::new();
        for i in 0..2000u32 {
            // Lines of 6 to 60 bytes, written in chunks of 1 to ~3000 bytes that cut lines.
            let line = format!("{i:05} {}\n", "x".repeat((i as usize * 7) % 55));
            all.extend_from_slice(line.as_bytes());
            if i % 37 == 0 {
                writer.write(&all);
                all.clear();
            }
        }
        writer.write(&all);
        let mut kept = Vec::new();
        for p in [rotated(&path, 2), rotated(&path, 1), path.clone()] {
            let bytes = std::fs::read(&p).expect("read");
            assert!(
                bytes.len() as u64 <= max,
                "{}: {} bytes",
                p.display(),
                bytes.len()
            );
            assert!(bytes.ends_with(b"\n"), "{}: a line was cut", p.display());
            kept.extend(bytes);
        }
        assert!(!rotated(&path, 3).exists());
        let text = String::from_utf8(kept).expect("utf8");
        let numbers: Vec<u32> = text
            .lines()
            .map(|l| l[..5].parse().expect("a numbered line"))
            .collect();
        assert_eq!(numbers.last(), Some(&1999));
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn pump_arguments() {
        let target = PumpTarget {
            path: PathBuf::from("/l/a-0-out.log"),
            max_bytes: Some(1024),
            keep: 3,
            timestamps: true,
        };
        let args: Vec<String> = target
            .args(Some(Path::new("/l/a-0-err.log")))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--out",
                "/l/a-0-out.log",
                "--err",
                "/l/a-0-err.log",
                "--max-bytes",
                "1024",
                "--keep",
                "3",
                "--timestamps"
            ]
        );
        let plain = PumpTarget {
            max_bytes: None,
            timestamps: false,
            ..target
        };
        assert_eq!(plain.args(None).len(), 4);
        assert!(PUMP_NAME.to_bytes().len() <= 15);
    }

    #[test]
    fn last_lines_continue_into_the_rotated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        std::fs::write(rotated(&path, 1), "a\nb\nc\n").expect("write");
        std::fs::write(&path, "d\ne\npart").expect("write");
        let lines = |n| {
            read_last_lines_rotated(&path, n)
                .map(|t| (t.lines, t.partial))
                .ok()
        };
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(lines(1), Some((owned(&["e"]), "part".to_string())));
        assert_eq!(
            lines(4),
            Some((owned(&["b", "c", "d", "e"]), "part".to_string()))
        );
        assert_eq!(
            lines(10),
            Some((owned(&["a", "b", "c", "d", "e"]), "part".to_string()))
        );
    }

    #[test]
    fn missing_file_is_empty() {
        let tail = read_last_lines(Path::new("/nonexistent/pmcluster/x.log"), 5);
        assert_eq!(tail.ok(), Some(Tail::default()));
    }

    #[test]
    fn follower_sees_growth_truncation_and_replacement() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let path = dir.path().join("a.log");
        let write = |content: &[u8], append: bool| {
            let mut f = match std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) => panic!("open: {e}"),
            };
            if let Err(e) = f.write_all(content) {
                panic!("write: {e}");
            }
        };
        write(b"old\npart", false);
        let tail = match read_last_lines(&path, 10) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(tail.lines, ["old"]);
        let mut follower = Follower::new(path.clone(), &tail);
        let mut poll = || match follower.poll() {
            Ok(lines) => lines,
            Err(e) => panic!("poll: {e}"),
        };
        // The unterminated line is not sent until it is complete.
        assert!(poll().is_empty());
        write(b"ial\nnew\n", true);
        assert_eq!(poll(), ["partial", "new"]);
        assert!(poll().is_empty());
        // Truncated and rewritten shorter.
        write(b"x\n", false);
        assert_eq!(poll(), ["x"]);
        // Replaced by a new file.
        if let Err(e) = std::fs::remove_file(&path) {
            panic!("rm: {e}");
        }
        write(b"fresh file line\n", false);
        assert_eq!(poll(), ["fresh file line"]);
    }
}
