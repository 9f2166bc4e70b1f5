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
        let mut dst = crate::persist::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(rotated(path, 1))?;
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
