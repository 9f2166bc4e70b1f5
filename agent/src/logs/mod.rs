//! Instance logs: where each instance's stdout and stderr files are, their rotation, the pumps
//! that stamp timestamped output into them, reading their last lines (backwards from the end,
//! never the whole file), following them as they grow, and answering the coordinator's
//! `LogRequest`s with `LogChunk`s.
//!
//! Parts: this file names the files and rotates them; [`pump`] writes them; `lock` keeps their
//! writers apart; [`tail`] reads their last lines and follows them; `serve` answers the
//! coordinator's log requests.
//!
//! Log tasks only read files and send through the link's bounded log queue; when the queue is full
//! they wait. They never touch a supervisor, so a slow reader cannot hold an instance up (the
//! instance, or its pump, writes straight into its files).
pub mod host;
mod lock;
pub mod pump;
mod serve;
pub mod tail;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pmcluster_proto::v1 as pb;

use lock::{LOCK_WAIT, lock_within, size_if_named};

pub use host::{HOST_COMMAND, host_process};
pub use pump::{PUMP_COMMAND, PumpTarget, pump_process};
pub(crate) use serve::LogRequests;

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
/// How often followed files are checked for growth.
pub const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// The most lines one poll of a follow request sends, shared by its files: half of what the
/// coordinator's route for one reader holds (16,384 lines), so that a reader who takes one
/// poll's lines before the next loses none. What is left waits in the files.
pub const FOLLOW_POLL_LINES: usize = 8_192;
/// The least share of a poll's lines a file gets, however many files a request follows.
pub const FOLLOW_MIN_SHARE: usize = 64;
/// The next poll after one that left lines in a file: a flood is sent at up to about 160,000
/// lines a second, which a reader on this machine's CLI keeps up with.
pub const FOLLOW_BEHIND_POLL: Duration = Duration::from_millis(50);
/// Path of one instance's stdout or stderr file, always a file directly in `logs_dir`.
///
/// The app name comes from the wire or from a record on disk: a valid one is a plain path
/// component already, and any other (which no instance runs under, but a saved record or a log
/// request may still carry) is hex-encoded like an odd instance id, so no name can climb out.
pub fn log_path(logs_dir: &Path, app: &str, index: u32, stream: pb::LogStream) -> PathBuf {
    let suffix = match stream {
        pb::LogStream::Stderr => "err",
        _ => "out",
    };
    let stem = if pmcluster_spec::app::validate_name(app).is_ok() {
        app.to_string()
    } else {
        format!("x-{}", crate::persist::hex(app.as_bytes()))
    };
    logs_dir.join(format!("{stem}-{index}-{suffix}.log"))
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
/// How often a copy and truncate opens its path again because a pump rotated the file away
/// before it was locked.
const COPY_TRUNCATE_TRIES: u32 = 4;
/// Rotates a file that a process writes to directly (with `O_APPEND`) when it holds more than
/// `over` bytes, by copy and truncate: shift the kept files, copy the live file to `.1`,
/// truncate the live file to zero.
///
/// Only for instances adopted from an agent that let them write their files directly (before
/// every instance's output went through a pump): such an instance holds its file open, and the
/// agent cannot make it reopen one. It bounds nothing (the file grows as fast as the instance
/// writes between two passes) and loses what the instance writes between the copy and the
/// truncate; the instance's next start puts it behind a pump.
///
/// That next start may be a rolling update, whose new process's pump writes the same path
/// beside the adopted one: so the rotation holds the pumps' lock (see [`pump::LogWriter`]),
/// and a pump's write lands in the copy or after the truncate, not between them. Under the lock
/// it checks again that the path names the file and that the file is still over `over`: a
/// pump may have rotated it by rename meanwhile. Like a pump, it waits [`LOCK_WAIT`] at most
/// for the lock, then rotates without it.
///
/// The copy is made aside before the lock is taken ([`Staged`]), and under the lock only what
/// was written since is added to it: a copy of hundreds of megabytes made under the lock would
/// hold a pump past its [`LOCK_WAIT`], and make it write unlocked.
pub fn rotate_copy_truncate(path: &Path, keep: u32, over: u64) -> io::Result<()> {
    copy_truncate_within(path, keep, over, LOCK_WAIT)
}
/// [`rotate_copy_truncate`], waiting `wait` at most for the lock.
fn copy_truncate_within(path: &Path, keep: u32, over: u64, wait: Duration) -> io::Result<()> {
    for _ in 0..COPY_TRUNCATE_TRIES {
        let live = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let staged = if keep > 0 {
            Some(Staged::begin(&live, path)?)
        } else {
            None
        };
        let lock = match lock_within(&live, wait) {
            Ok(lock) => {
                if lock.is_none() {
                    tracing::warn!(
                        "{} stays locked by another process past {wait:?}; rotating it unlocked",
                        path.display()
                    );
                }
                lock
            }
            // A file system without locks: the rotation is done as it was before the pumps.
            Err(e) => {
                tracing::debug!("cannot lock {}: {e}; rotating it unlocked", path.display());
                None
            }
        };
        match size_if_named(&live, path)? {
            Some(len) if len > over => {
                if let Some(staged) = staged {
                    staged.keep_as_first(&live, path, keep)?;
                }
                live.set_len(0)?;
                drop(lock);
                return Ok(());
            }
            // No longer over: a pump rotated it by rename since the caller looked.
            Some(_) => return Ok(()),
            // Rotated by rename between the open and the lock: look at the file it names now.
            None => {}
        }
    }
    Ok(())
}
/// The copy a copy and truncate makes of a live file, at `<path>.rotating` until it becomes
/// the `.1`; removed when dropped before that (the rotation found nothing to do, or failed).
struct Staged {
    aside: PathBuf,
    copy: File,
    copied: u64,
    kept: bool,
}
impl Staged {
    /// A copy of what `live` holds now.
    fn begin(live: &File, path: &Path) -> io::Result<Staged> {
        // Log files end in `.log` (see `log_path`), and only their copies in STAGED_SUFFIX.
        let mut aside = path.as_os_str().to_os_string();
        aside.push(".rotating");
        let aside = PathBuf::from(aside);
        let copy = crate::persist::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&aside)?;
        let mut staged = Staged {
            aside,
            copy,
            copied: 0,
            kept: false,
        };
        staged.catch_up(live)?;
        Ok(staged)
    }
    /// Adds what was written to `live` since the copy was made. A file shorter than the copy
    /// was emptied meanwhile (by its own process, or a rotation of another agent's), so the
    /// copy is made again from its start. One emptied and then refilled past the copy's length
    /// is not told apart (its lengths alone say nothing): its first bytes stay the old ones.
    /// The few tries bound the copy of a file written faster than it can be copied; what comes
    /// after goes to the truncate's loss.
    fn catch_up(&mut self, mut live: &File) -> io::Result<()> {
        for _ in 0..4 {
            let len = live.metadata()?.len();
            if len < self.copied {
                self.copy.set_len(0)?;
                self.copy.seek(SeekFrom::Start(0))?;
                self.copied = 0;
            }
            if len == self.copied {
                break;
            }
            live.seek(SeekFrom::Start(self.copied))?;
            self.copied += io::copy(&mut live.take(len - self.copied), &mut self.copy)?;
        }
        Ok(())
    }
    /// Shifts the kept files of `path` and makes the copy its `.1`, then adds what `live` got
    /// meanwhile (through the copy's open file, under its new name): the truncate that follows
    /// loses only what is written after that.
    fn keep_as_first(mut self, live: &File, path: &Path, keep: u32) -> io::Result<()> {
        self.catch_up(live)?;
        shift_kept(path, keep)?;
        std::fs::rename(&self.aside, rotated(path, 1))?;
        self.kept = true;
        self.catch_up(live)
    }
}
impl Drop for Staged {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.aside);
        }
    }
}
/// The suffix of a copy made aside ([`Staged`]).
const STAGED_SUFFIX: &str = ".log.rotating";
/// Removes the copies made aside that an agent killed during a rotation left in `logs_dir`: the
/// adopted instance's next start puts it behind a pump, so no later rotation of that path would
/// replace one. For the agent's start, under its data dir's lock.
pub fn remove_stale_copies(logs_dir: &Path) {
    for entry in std::fs::read_dir(logs_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(STAGED_SUFFIX)) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!("removed {}, left by a rotation", entry.path().display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}
/// Rotation of a file only the agent writes: shift the kept files and rename the live one to
/// `.1` (nothing is copied, nothing lost). With `keep` 0 the live file is removed.
pub fn rotate_by_rename(path: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    shift_kept(path, keep)?;
    std::fs::rename(path, rotated(path, 1))
}
/// Makes room for a new `.1` of `path` (see [`rotation_renames`]); a kept file missing is no
/// error.
fn shift_kept(path: &Path, keep: u32) -> io::Result<()> {
    for (from, to) in rotation_renames(path, keep) {
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_in_the_logs_dir() {
        let dir = Path::new("/data/logs");
        let cases = [
            ("web", pb::LogStream::Stdout, "web-0-out.log"),
            ("web.v2", pb::LogStream::Stderr, "web.v2-0-err.log"),
            (
                "../../etc/passwd",
                pb::LogStream::Stdout,
                "x-2e2e2f2e2e2f6574632f706173737764-0-out.log",
            ),
            ("..", pb::LogStream::Stdout, "x-2e2e-0-out.log"),
            ("", pb::LogStream::Stdout, "x--0-out.log"),
            ("a/b", pb::LogStream::Stderr, "x-612f62-0-err.log"),
        ];
        for (app, stream, want) in cases {
            let path = log_path(dir, app, 0, stream);
            assert_eq!(path, dir.join(want), "{app:?}");
            assert_eq!(path.parent(), Some(dir), "{app:?}");
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
            rotate_copy_truncate(&path, 3, 0).expect("rotate");
            assert_eq!(std::fs::metadata(&path).map(|m| m.len()).ok(), Some(0));
        }
        let read = |n| std::fs::read_to_string(rotated(&path, n)).ok();
        assert_eq!(read(1).as_deref(), Some("round 5\n"));
        assert_eq!(read(2).as_deref(), Some("round 4\n"));
        assert_eq!(read(3).as_deref(), Some("round 3\n"));
        assert_eq!(read(4), None);
        // keep 0: truncate only.
        std::fs::write(&path, "x\n").expect("write");
        rotate_copy_truncate(&path, 0, 0).expect("rotate");
        assert_eq!(read(1).as_deref(), Some("round 5\n"));
    }
    /// `a.log` in `dir`, holding `text`, with an exclusive `flock` held through a file opened
    /// apart (a pump's or an outsider's, as `flock` sees it; `append` for one that writes).
    fn locked_log(dir: &Path, text: &str, append: bool) -> (PathBuf, File) {
        let path = dir.join("a.log");
        std::fs::write(&path, text).expect("write");
        let file = std::fs::OpenOptions::new()
            .read(!append)
            .append(append)
            .open(&path)
            .expect("open");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        (path, file)
    }
    /// Runs `rotate` on `path` in a thread of its own; its result comes through the receiver.
    fn rotating(
        path: &Path,
        rotate: impl FnOnce(&Path) -> io::Result<()> + Send + 'static,
    ) -> std::sync::mpsc::Receiver<Result<(), String>> {
        let (done, rotation) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = done.send(rotate(&path).map_err(|e| e.to_string()));
        });
        rotation
    }
    /// A copy and truncate waits for the lock a pump writes under (the new process of an
    /// index, in a rolling update, beside the adopted one that writes the file itself): the
    /// pump's write goes into the copy or after the truncate, not between them, where it was
    /// lost.
    #[test]
    fn copy_truncate_waits_for_a_pumps_lock() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        // The copy is made before the lock is waited for: the lock is held only for the tail.
        let (path, pump, rotation, aside) = rotating_once_copied(dir.path(), "before\n", true);
        let early = rotation.recv_timeout(Duration::from_millis(100));
        assert!(early.is_err(), "rotated under a pump's lock: {early:?}");
        (&pump).write_all(b"under the lock\n").expect("write");
        let_go(&pump, &rotation);
        let read = |path| std::fs::read_to_string(path).ok();
        assert_eq!(
            (read(rotated(&path, 1)), read(path.clone()), read(aside)),
            (
                Some("before\nunder the lock\n".into()),
                Some(String::new()),
                None
            )
        );
    }
    /// `a.log` in `dir` holding `text`, locked as [`locked_log`] locks it, and a copy and
    /// truncate of it (2 files kept) started by [`rotating`], returned once it has made its
    /// copy aside (the last path) and so waits for the lock.
    fn rotating_once_copied(
        dir: &Path,
        text: &str,
        append: bool,
    ) -> (
        PathBuf,
        File,
        std::sync::mpsc::Receiver<Result<(), String>>,
        PathBuf,
    ) {
        let (path, pump) = locked_log(dir, text, append);
        let rotation = rotating(&path, |p| {
            copy_truncate_within(p, 2, 0, Duration::from_secs(10))
        });
        let aside = dir.join("a.log.rotating");
        wait_until(
            || std::fs::read_to_string(&aside).ok().as_deref() == Some(text),
            "the copy is made aside",
        );
        (path, pump, rotation, aside)
    }
    /// Lets go of `pump`'s lock, and waits for `rotation` to end well.
    fn let_go(pump: &File, rotation: &std::sync::mpsc::Receiver<Result<(), String>>) {
        rustix::fs::flock(pump, rustix::fs::FlockOperation::Unlock).expect("unlock");
        let result = rotation
            .recv_timeout(Duration::from_secs(10))
            .expect("rotated once the lock is let go");
        assert_eq!(result, Ok(()));
    }
    /// Polls `done` every millisecond for 10 s at most.
    fn wait_until(done: impl Fn() -> bool, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    /// A file emptied between the copy made aside and the lock (by its own process) is copied
    /// again from its start: the copy holds what the file holds, not the old lines before it.
    #[test]
    fn copy_truncate_of_a_file_emptied_meanwhile_copies_it_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, pump, rotation, aside) =
            rotating_once_copied(dir.path(), "old lines, emptied\n", false);
        // Emptied and written again, in place: the same file, shorter than the copy.
        std::fs::write(&path, "new\n").expect("write");
        let_go(&pump, &rotation);
        let read = |path| std::fs::read_to_string(path).ok();
        assert_eq!(
            (read(rotated(&path, 1)), read(path.clone()), read(aside)),
            (Some("new\n".into()), Some(String::new()), None)
        );
    }
    /// A pump that rotated the file by rename while the copy and truncate waited for its lock
    /// leaves nothing to rotate: the full file is `.1` already, and the one the path names now
    /// is the pump's fresh one. Neither is copied, shifted nor emptied.
    #[test]
    fn copy_truncate_after_a_pumps_rotation_leaves_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, pump) = locked_log(dir.path(), "full file\n", false);
        let rotation = rotating(&path, |p| {
            copy_truncate_within(p, 2, 5, Duration::from_secs(10))
        });
        // The rotation has the full file open (and waits for its lock) once two of this
        // process's descriptors name it: the pump's and its own. Then the pump rotates it.
        use std::os::unix::fs::MetadataExt;
        let full = pump.metadata().map(|m| (m.dev(), m.ino())).expect("stat");
        let opened = || {
            (std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten())
            .filter(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == full))
            .count()
                >= 2
        };
        wait_until(opened, "the rotation opens the file");
        rotate_by_rename(&path, 2).expect("rename");
        std::fs::write(&path, "new\n").expect("write");
        rustix::fs::flock(&pump, rustix::fs::FlockOperation::Unlock).expect("unlock");
        let result = rotation
            .recv_timeout(Duration::from_secs(10))
            .expect("done once the lock is let go");
        assert_eq!(result, Ok(()));
        let read = |path| std::fs::read_to_string(path).ok();
        assert_eq!(
            (
                read(path.clone()),
                read(rotated(&path, 1)),
                read(rotated(&path, 2)),
                read(dir.path().join("a.log.rotating"))
            ),
            (Some("new\n".into()), Some("full file\n".into()), None, None)
        );
    }
    /// A lock held for longer than any pump holds it (a backup script's) delays the rotation by
    /// [`LOCK_WAIT`] at most: then the file is rotated unlocked, rather than left to grow.
    #[test]
    fn copy_truncate_waits_for_a_lock_held_elsewhere_only_briefly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, outsider) = locked_log(dir.path(), "line\n", false);
        let rotation = rotating(&path, |p| rotate_copy_truncate(p, 1, 0));
        let result = rotation
            .recv_timeout(Duration::from_secs(10))
            .expect("rotated while the lock is held");
        assert_eq!(result, Ok(()));
        let read = |path| std::fs::read_to_string(path).ok();
        assert_eq!(
            (read(path.clone()), read(rotated(&path, 1))),
            (Some(String::new()), Some("line\n".into()))
        );
        drop(outsider);
    }
    /// A copy an agent killed mid-rotation left is removed at the next start; log files and
    /// their rotated ones stay.
    #[test]
    fn stale_copies_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            "web-0-out.log",
            "web-0-out.log.1",
            "web-0-out.log.rotating",
            "note.rotating",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        remove_stale_copies(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["note.rotating", "web-0-out.log", "web-0-out.log.1"]);
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
}
