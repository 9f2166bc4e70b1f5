//! Reading an instance's files: its last lines (backwards from the end, never the whole file,
//! continuing into the rotated file) and following it as it grows, is truncated or replaced.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{MAX_LINE_BYTES, rotated};

/// How far back from the end a history read looks at most.
const MAX_SCAN_BYTES: u64 = 8 << 20;
/// Most bytes read from a followed file per poll.
const MAX_FOLLOW_READ: u64 = 1 << 20;
/// The most rotated files a follower looks through for the one after the file it read.
const MAX_ROTATED: u32 = 1000;

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
    read_last_lines_rotated_with(path, n, || {})
}
/// How often a top-up is read again because the files rotated while it was read.
const ROTATION_RETRIES: usize = 8;
/// [`read_last_lines_rotated`], calling `between` after the live file is read and before `.1` is
/// (where tests rotate the files).
///
/// The two reads are not atomic: a flooding instance rotates every few milliseconds, and a
/// reader preempted between them would take the file it just read, renamed to `.1`, for its
/// predecessor, and show its lines twice. So the live path must still name the file that was
/// read after `.1` is read, or both are read again.
fn read_last_lines_rotated_with(
    path: &Path,
    n: usize,
    mut between: impl FnMut(),
) -> io::Result<Tail> {
    let mut attempt = 0;
    loop {
        let mut tail = read_last_lines(path, n)?;
        let missing = n.saturating_sub(tail.lines.len());
        if missing == 0 {
            return Ok(tail);
        }
        between();
        let older = read_last_lines(&rotated(path, 1), missing)?;
        attempt += 1;
        if live_ident(path)? != tail.ident && attempt < ROTATION_RETRIES {
            continue;
        }
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
        return Ok(tail);
    }
}
/// Device and inode of the file at `path` now; `None` when there is none.
fn live_ident(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(ident(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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
    /// The file it held was rotated past the kept files before it was read to its end, or
    /// before the ones after it were: lines may be missing (see [`Follower::take_gap`]).
    gap: bool,
    /// When it began to follow a file that did not exist yet (an instance writes its first
    /// line only later): the rotated files there were then (device and inode). The first file
    /// made since, the oldest one not among them, is where its lines start.
    waiting: Option<Vec<(u64, u64)>>,
}
fn ident(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}
/// The rotated files of `path` opened, `.1` first, up to the first that cannot be opened (at
/// most [`MAX_ROTATED`]).
fn rotated_files(path: &Path) -> impl Iterator<Item = File> + '_ {
    (1..=MAX_ROTATED).map_while(move |k| File::open(rotated(path, k)).ok())
}
impl Follower {
    /// The file it follows.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Follows `path` from where `tail` (read from it just before) ended. Blocking file I/O.
    pub fn new(path: PathBuf, tail: &Tail) -> Follower {
        let file = File::open(&path).ok();
        let same = match (&file, tail.ident) {
            (Some(f), Some(id)) => f.metadata().is_ok_and(|m| ident(&m) == id),
            _ => false,
        };
        let waiting = file.is_none().then(|| {
            rotated_files(&path)
                .filter_map(|f| f.metadata().ok().map(|m| ident(&m)))
                .collect()
        });
        Follower {
            path,
            offset: if same { tail.end } else { 0 },
            pending: Vec::new(),
            gap: false,
            waiting,
            file,
        }
    }

    /// The file to read first when there was none to follow at the start: the oldest rotated
    /// file that was not there then (a flood may have rotated the first file away already
    /// before the first poll), else the live file.
    ///
    /// Told apart by identity, not by time: a file's modification time may be coarse (a
    /// second, two) or come from another clock (a network filesystem's) than the one that
    /// stamped the start.
    fn first_file(&mut self, between: &mut impl FnMut()) -> io::Result<(File, bool)> {
        let Some(before) = self.waiting.take() else {
            return Ok((File::open(&self.path)?, false));
        };
        let mut first = None;
        for file in rotated_files(&self.path) {
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if !before.contains(&ident(&meta)) {
                first = Some(file);
            }
        }
        between();
        match first {
            Some(file) => Ok((file, false)),
            None => self.open_live(before),
        }
    }

    /// The live file; `waiting` is put back when there is none yet, so the next try looks at
    /// the rotated files again.
    fn open_live(&mut self, waiting: Vec<(u64, u64)>) -> io::Result<(File, bool)> {
        match File::open(&self.path) {
            Ok(f) => Ok((f, false)),
            Err(e) => {
                self.waiting = Some(waiting);
                Err(e)
            }
        }
    }

    /// Whether lines may be missing before those the last poll returned (once).
    pub fn take_gap(&mut self) -> bool {
        std::mem::take(&mut self.gap)
    }

    /// The file to read after the held one, read to its end, once the live file is another:
    /// the one rotated right after it while it is kept (`.k-1` when the held one is now `.k`),
    /// else the live file. Rotated files a flood made between two polls are read, not skipped.
    /// A held file no longer kept (rotated past `log_retain`, so deleted) may have had files
    /// after it that went too: the oldest kept one newer than it is read, and the gap said
    /// (the `bool`).
    ///
    /// Each rotated file is opened as it is looked at, and the handle of the one chosen is the
    /// one read: a flood renames `.k-1` to `.k` at any time, so a file opened again by name
    /// after the look may be another one (a file skipped, or one read twice). `between` runs
    /// after the look (where tests rotate the files).
    fn next_file(&mut self, between: &mut impl FnMut()) -> io::Result<(File, bool)> {
        let Some(held) = &self.file else {
            return self.first_file(between);
        };
        let Ok(meta) = held.metadata() else {
            return Ok((File::open(&self.path)?, false));
        };
        let (held_id, held_mtime) = (ident(&meta), meta.modified().ok());
        let mut previous: Option<File> = None;
        let mut newer: Option<File> = None;
        let mut found = false;
        // Bounded: the pump keeps at most `log_retain` (a small number) rotated files.
        for file in rotated_files(&self.path) {
            let Ok(m) = file.metadata() else {
                continue;
            };
            if ident(&m) == held_id {
                // The one rotated right after it is the one looked at just before.
                newer = previous.take();
                found = true;
                break;
            }
            // Only for a held file that is gone, whose place among the kept ones its identity
            // no longer tells: a file rotated before the held one was opened (an `rm` and a new
            // live file since) is older, not next. Its inode may be a new file's by now, so
            // identities cannot tell; file times, compared with each other, can.
            if m.modified().ok() >= held_mtime {
                newer = Some(file.try_clone()?);
            }
            previous = Some(file);
        }
        between();
        let gap = !found && meta.nlink() == 0 && newer.is_some();
        match newer {
            Some(file) => Ok((file, gap)),
            None => Ok((File::open(&self.path)?, false)),
        }
    }

    /// New complete lines since the last call. Blocking file I/O: call from the blocking pool.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        self.poll_at_most(usize::MAX)
    }

    /// [`Follower::poll`], at most about `max_lines` of them (one more when a rotated file
    /// ended mid-line): the rest stays in the file for the next call. A flood of short lines
    /// made one poll of 1 MiB about 90,000 lines at once, more than a reader's route at the
    /// coordinator holds, so a reader that kept up lost most of them.
    pub fn poll_at_most(&mut self, max_lines: usize) -> io::Result<Vec<String>> {
        self.poll_with(max_lines, || {})
    }

    /// [`Follower::poll_at_most`], calling `between` after the rotated files are looked through
    /// for the next one (where tests rotate the files).
    fn poll_with(
        &mut self,
        max_lines: usize,
        mut between: impl FnMut(),
    ) -> io::Result<Vec<String>> {
        let on_disk = live_ident(&self.path)?;
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
                    return self.read_held(len, max_lines);
                }
            }
            let (next, gap) = self.next_file(&mut between)?;
            // Said only once the next file is open: a failed open is tried again next poll.
            self.gap |= gap;
            self.file = Some(next);
            self.offset = 0;
            if !self.pending.is_empty() {
                // The old file ended mid-line: that line is complete as far as it goes.
                let line = line_text(&std::mem::take(&mut self.pending));
                let mut lines = vec![line];
                let len = self.held_len()?;
                lines.extend(self.read_held(len, max_lines)?);
                return Ok(lines);
            }
        }
        let len = self.held_len()?;
        if len < self.offset {
            // Truncated (`> file`): start over.
            self.offset = 0;
            self.pending.clear();
        }
        self.read_held(len, max_lines)
    }

    fn held_len(&self) -> io::Result<u64> {
        match &self.file {
            Some(f) => Ok(f.metadata()?.len()),
            None => Ok(0),
        }
    }

    /// Complete lines of the held file from the offset towards `len` (at most
    /// [`MAX_FOLLOW_READ`] bytes, and at most `max_lines` lines).
    fn read_held(&mut self, len: u64, max_lines: usize) -> io::Result<Vec<String>> {
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
        let max_lines = max_lines.max(1);
        while lines.len() < max_lines
            && let Some(pos) = rest.iter().position(|b| *b == b'\n')
        {
            lines.push(line_text(&rest[..pos]));
            rest = &rest[pos + 1..];
        }
        if lines.len() == max_lines {
            // The rest is read again next time. It is all from this read: `pending` held no
            // newline, and one ended the last line taken.
            self.offset -= rest.len() as u64;
            rest = &[];
        } else if rest.len() >= MAX_LINE_BYTES {
            // An endless line without newline is flushed in pieces rather than buffered forever.
            lines.push(line_text(rest));
            rest = &[];
        }
        self.pending = rest.to_vec();
        Ok(lines)
    }
}
#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::logs::rotate_by_rename;

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
    fn a_rotation_between_the_two_reads_reads_both_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        std::fs::write(rotated(&path, 1), "a\nb\nc\n").expect("write");
        std::fs::write(&path, "d\n").expect("write");
        // The pump rotates right after the live file is read: the file just read becomes `.1`,
        // and the new live file gets one line.
        let mut rotations = 0;
        let tail = read_last_lines_rotated_with(&path, 3, || {
            if rotations == 0 {
                rotate_by_rename(&path, 2).expect("rotate");
                std::fs::write(&path, "e\n").expect("write");
            }
            rotations += 1;
        })
        .expect("read");
        assert_eq!(rotations, 2, "read again after the rotation");
        // Read once, it would have shown "d" twice (the file just read, now `.1`, taken for its
        // predecessor). A top-up reads `.1` only, so "c" (now in `.2`) is not shown.
        assert_eq!(tail.lines, ["d", "e"]);
    }
    #[test]
    fn a_flood_that_keeps_rotating_still_reads_what_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.log");
        std::fs::write(&path, "a\n").expect("write");
        let mut rotations = 0;
        let tail = read_last_lines_rotated_with(&path, 5, || {
            rotate_by_rename(&path, 2).expect("rotate");
            rotations += 1;
            std::fs::write(&path, format!("{rotations}\n")).expect("write");
        })
        .expect("read");
        assert_eq!(rotations, ROTATION_RETRIES);
        assert!(!tail.lines.is_empty(), "{:?}", tail.lines);
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

    /// Rotations between two polls (a flood): the rotated files are read in order, none
    /// skipped; a file rotated past the kept ones before it was read is a gap, said once.
    /// Before, the follower went from the file it held straight to the live one, and lost
    /// every file in between without a word.
    #[test]
    fn a_follower_reads_the_files_rotated_between_two_polls() -> io::Result<()> {
        use crate::logs::rotate_by_rename;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.log");
        let append = |text: &str| append_to(&path, text);
        append("a\n")?;
        let tail = read_last_lines_rotated(&path, 10)?;
        let mut follower = Follower::new(path.clone(), &tail);
        let read = |follower: &mut Follower| -> io::Result<(Vec<String>, bool)> {
            let mut all = Vec::new();
            let mut gap = false;
            // Bounded: each poll moves on by a file at least.
            for _ in 0..10 {
                all.extend(follower.poll()?);
                gap |= follower.take_gap();
            }
            Ok((all, gap))
        };
        // Three files made between two polls, three kept: each read, in order.
        append("b\n")?;
        rotate_by_rename(&path, 3)?;
        append("c\n")?;
        rotate_by_rename(&path, 3)?;
        append("d\n")?;
        rotate_by_rename(&path, 3)?;
        append("e\n")?;
        assert_eq!(
            read(&mut follower)?,
            (vec!["b".into(), "c".into(), "d".into(), "e".into()], false)
        );
        // More than are kept: what is kept is read, and the gap is said.
        append("f\n")?;
        for line in ["g\n", "h\n", "i\n"] {
            rotate_by_rename(&path, 1)?;
            append(line)?;
        }
        let (lines, gap) = read(&mut follower)?;
        assert_eq!(lines, ["f", "h", "i"]);
        assert!(gap);
        // No file yet when it began (an instance that wrote nothing so far), then a flood
        // that rotates: from the first file made, not from the live one.
        let path = dir.path().join("b.log");
        let tail = read_last_lines_rotated(&path, 0)?;
        let mut follower = Follower::new(path.clone(), &tail);
        let append = |text: &str| append_to(&path, text);
        append("1\n")?;
        rotate_by_rename(&path, 3)?;
        append("2\n")?;
        assert_eq!(read(&mut follower)?, (vec!["1".into(), "2".into()], false));
        Ok(())
    }

    fn append_to(path: &Path, text: &str) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(text.as_bytes())
    }

    /// A flood rotates at any time, also between the look through the rotated files for the
    /// next one and its read: the file looked at is the one read. Before, it was opened again
    /// by name after the look, and a rotation in between (`.1` renamed to `.2`) made that the
    /// file after it: "b" was skipped.
    #[test]
    fn a_rotation_while_the_next_file_is_chosen_skips_nothing() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.log");
        append_to(&path, "a\n")?;
        let tail = read_last_lines_rotated(&path, 10)?;
        let mut follower = Follower::new(path.clone(), &tail);
        for line in ["b\n", "c\n"] {
            rotate_by_rename(&path, 3)?;
            append_to(&path, line)?;
        }
        let mut rotated_once = false;
        let mut lines = Vec::new();
        let mut gap = false;
        // Bounded: each poll moves on by a file at least.
        for _ in 0..10 {
            lines.extend(follower.poll_with(usize::MAX, || {
                if !std::mem::replace(&mut rotated_once, true) {
                    rotate_by_rename(&path, 3).expect("rotate");
                    append_to(&path, "d\n").expect("append");
                }
            })?);
            gap |= follower.take_gap();
        }
        assert!(rotated_once);
        assert_eq!(lines, ["b", "c", "d"]);
        assert!(!gap);
        Ok(())
    }

    /// A follower that began before its file existed starts from the first file made since,
    /// told by identity: a file time may be coarse or from another clock. Before, it compared
    /// file times with the clock: an earlier run's rotated file stamped ahead was read as new
    /// ("old" shown), and a new one stamped behind was skipped.
    #[test]
    fn a_follower_that_began_before_its_file_tells_new_files_by_identity() -> io::Result<()> {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("b.log");
        let hour = Duration::from_secs(3600);
        let stamp = |k: u32, time: SystemTime| -> io::Result<()> {
            File::options()
                .write(true)
                .open(rotated(&path, k))?
                .set_modified(time)
        };
        // An earlier run's file, stamped ahead of this clock.
        std::fs::write(rotated(&path, 1), "old\n")?;
        stamp(1, SystemTime::now() + hour)?;
        let tail = read_last_lines_rotated(&path, 0)?;
        let mut follower = Follower::new(path.clone(), &tail);
        append_to(&path, "1\n")?;
        rotate_by_rename(&path, 3)?;
        // The first file made since, stamped behind.
        stamp(1, SystemTime::now() - hour)?;
        append_to(&path, "2\n")?;
        let mut lines = Vec::new();
        for _ in 0..10 {
            lines.extend(follower.poll()?);
        }
        assert_eq!(lines, ["1", "2"]);
        Ok(())
    }

    /// A poll takes at most the lines it is allowed, and the next ones go on from there, in
    /// order, with none lost or repeated: across a line still being written, and into the file
    /// rotated in between. Before, one poll took up to 1 MiB however many lines that was.
    #[test]
    fn a_poll_takes_at_most_its_share_of_lines_and_the_next_go_on_from_there() -> io::Result<()> {
        use crate::logs::rotate_by_rename;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.log");
        append_to(&path, "")?;
        let tail = read_last_lines_rotated(&path, 10)?;
        let mut follower = Follower::new(path.clone(), &tail);
        let text: String = (0..2_500).map(|i| format!("{i}\n")).collect();
        append_to(&path, &text)?;
        append_to(&path, "part")?;
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        // Bounded: each poll takes a line at least until none is left.
        for _ in 0..10 {
            let lines = follower.poll_at_most(1_000)?;
            sizes.push(lines.len());
            got.extend(lines);
        }
        assert_eq!(sizes, [1_000, 1_000, 500, 0, 0, 0, 0, 0, 0, 0]);
        append_to(&path, "ial\n")?;
        append_to(&path, &text)?;
        // Rotated with a share left unread: the rest of it comes first, then the new file.
        rotate_by_rename(&path, 3)?;
        append_to(&path, "after\n")?;
        for _ in 0..10 {
            got.extend(follower.poll_at_most(1_000)?);
        }
        let mut want: Vec<String> = (0..2_500).map(|i| i.to_string()).collect();
        want.push("partial".to_string());
        want.extend((0..2_500).map(|i| i.to_string()));
        want.push("after".to_string());
        assert_eq!(got, want);
        Ok(())
    }
}
