//! The pump: line stamps, both pipes read to their ends, rotation, cuts at the size limit,
//! and its command line.

use std::io::Write;

use super::*;
use crate::logs::rotated;

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
/// Both pipes of an instance in one pump: each into its own file, in order, the one still
/// open after the other ended, and the pump ends only when both have.
#[test]
fn one_pump_reads_both_pipes_until_both_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = |name: &str| PumpTarget {
        path: dir.path().join(name),
        max_bytes: None,
        keep: 0,
        timestamps: false,
    };
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    let (err_r, err_w) = rustix::pipe::pipe().expect("pipe");
    let (out_t, err_t) = (target("out.log"), target("err.log"));
    let pumping = std::thread::spawn(move || pump_pipes((out_r, out_t), Some((err_r, err_t))));
    let (mut out, mut err) = (File::from(out_w), File::from(err_w));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let until = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read(name) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {:?}",
                read(name)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for i in 0..50 {
        out.write_all(format!("out {i}\n").as_bytes()).expect("out");
        err.write_all(format!("err {i}\n").as_bytes()).expect("err");
    }
    drop(err);
    // stderr ended; stdout is still pumped.
    out.write_all(b"after\n").expect("out");
    let want_out: String = (0..50).map(|i| format!("out {i}\n")).collect();
    until("out.log", &format!("{want_out}after\n"));
    assert!(
        !pumping.is_finished(),
        "the pump ended with one pipe still open"
    );
    drop(out);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pumping.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pump outlived both pipes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ended = pumping.join().expect("pump thread");
    assert!(ended.is_ok(), "{ended:?}");
    let want_err: String = (0..50).map(|i| format!("err {i}\n")).collect();
    assert_eq!(read("err.log"), want_err);
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
/// Every file of `path`, oldest first: the rotated ones from the highest number down, then the
/// live one; none past `.limit`.
fn files_oldest_first(path: &Path, limit: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=limit)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}
/// Two pumps of one path (a rolling update's old and new process of an index, or a restart
/// whose old pump still drains), taking turns in one thread so that every interleaving is the
/// one written down. After every turn: no file over the limit (the two together used to make
/// one of about twice the limit), and the last line just written is the last line of the live
/// file (a pump whose file the other rotated used to go on writing into `.1`, which `logs -f`
/// no longer follows). With room for every rotated file, every line is kept exactly once.
#[test]
fn two_writers_of_one_path_share_its_bound_and_its_rotation() {
    // (max bytes, keep, turns: (writer, lines written in one write))
    type Case = (u64, u32, &'static [(usize, usize)]);
    let cases: [Case; 5] = [
        (
            50,
            50,
            &[(0, 3), (1, 3), (0, 1), (1, 1), (0, 1), (1, 1), (0, 4)],
        ),
        (50, 50, &[(0, 4), (1, 4), (0, 1), (0, 1), (1, 1), (1, 1)]),
        (
            100,
            50,
            &[(0, 1), (1, 9), (0, 1), (1, 1), (0, 9), (1, 2), (0, 2)],
        ),
        // One rotation by each in turn: the other's next line follows into the new file.
        (
            30,
            50,
            &[(0, 3), (1, 1), (0, 3), (1, 1), (0, 1), (1, 3), (0, 1)],
        ),
        // Nothing kept: the full file is removed, the next line still reaches the live one.
        (40, 0, &[(0, 4), (1, 2), (0, 2), (1, 1), (0, 1)]),
    ];
    for (case, (max, keep, turns)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.log");
        let mut writers: Vec<LogWriter> = (0..2)
            .map(|_| {
                LogWriter::new(PumpTarget {
                    path: path.clone(),
                    max_bytes: Some(max),
                    keep,
                    timestamps: false,
                })
            })
            .collect();
        let mut next = [0u32; 2];
        let mut written = Vec::new();
        for (turn, &(w, lines)) in turns.iter().enumerate() {
            let mut chunk = String::new();
            for _ in 0..lines {
                // 9 bytes a line.
                let line = format!("w{w} {:05}", next[w]);
                next[w] += 1;
                chunk.push_str(&line);
                chunk.push('\n');
                written.push(line);
            }
            writers[w].write(chunk.as_bytes());
            let at = format!("case {case} turn {turn}");
            for file in files_oldest_first(&path, keep + 1) {
                let len = std::fs::metadata(&file).map_or(0, |m| m.len());
                assert!(len <= max, "{at}: {} holds {len} bytes", file.display());
            }
            let live = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                live.lines().last(),
                written.last().map(String::as_str),
                "{at}: the line just written is not the live file's last"
            );
        }
        if keep > 0 {
            let mut kept: Vec<String> = files_oldest_first(&path, keep + 1)
                .iter()
                .flat_map(|f| {
                    let text = std::fs::read_to_string(f).unwrap_or_default();
                    text.lines().map(str::to_string).collect::<Vec<_>>()
                })
                .collect();
            kept.sort();
            written.sort();
            assert_eq!(kept, written, "case {case}: every line once");
        }
    }
}
/// Pumps of one path in threads of their own (so in parallel, each with its own open file as
/// separate pump processes have), writing many lines in chunks of varying size while the file
/// rotates every few writes: every line is kept exactly once and in its pump's order (given
/// rotated files enough to keep them all), no file passes the limit, and a line each pump
/// writes once all are done, after many rotations by the others, goes into the live file.
#[test]
fn pumps_in_parallel_on_one_path_keep_every_line_once_within_the_limit() {
    const PUMPS: usize = 3;
    const LINES: u32 = 4000;
    let max = 2048u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rolling.log");
    // About 16 bytes a line: some 24,000 lines in 2 KiB files.
    let keep = 400;
    let start = std::sync::Arc::new(std::sync::Barrier::new(PUMPS));
    let threads: Vec<_> = (0..PUMPS)
        .map(|p| {
            let start = start.clone();
            // However this host schedules the threads, none may go on unlocked here.
            let mut writer = LogWriter::new(PumpTarget {
                path: path.clone(),
                max_bytes: Some(max),
                keep,
                timestamps: false,
            })
            .waiting(Duration::from_secs(60));
            std::thread::spawn(move || {
                start.wait();
                let mut chunk = String::new();
                for i in 0..LINES {
                    chunk.push_str(&format!("p{p} {i:05} {}\n", "x".repeat(i as usize % 9)));
                    // Chunks of 1 to 13 lines, as a pipe's reads may bring.
                    if (i + p as u32).is_multiple_of(13) || i + 1 == LINES {
                        writer.write(chunk.as_bytes());
                        chunk.clear();
                    }
                }
                writer
            })
        })
        .collect();
    let mut writers: Vec<LogWriter> = threads
        .into_iter()
        .map(|t| t.join().expect("pump thread"))
        .collect();
    let live_last = || {
        let live = std::fs::read_to_string(&path).expect("the live file");
        live.lines().last().map(str::to_string)
    };
    for (p, writer) in writers.iter_mut().enumerate() {
        writer.write(format!("p{p} {LINES:05}\n").as_bytes());
        assert_eq!(
            live_last(),
            Some(format!("p{p} {LINES:05}")),
            "pump {p}'s line after the others' rotations is not in the live file"
        );
    }
    let files = files_oldest_first(&path, keep + 1);
    assert!(
        !rotated(&path, keep).exists(),
        "not enough rotated files kept to check every line: {}",
        files.len()
    );
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); PUMPS];
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        assert!(
            text.len() as u64 <= max,
            "{} holds {} bytes",
            file.display(),
            text.len()
        );
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}",
            file.display()
        );
        for line in text.lines() {
            let (pump, rest) = line.split_once(' ').expect("a pump's line");
            let p: usize = pump[1..].parse().expect("a pump number");
            seen[p].push(rest[..5].parse().expect("a line number"));
        }
    }
    for (p, numbers) in seen.iter().enumerate() {
        let want: Vec<u32> = (0..=LINES).collect();
        assert!(
            *numbers == want,
            "pump {p}: {} lines, the first out of place: {:?}",
            numbers.len(),
            numbers.iter().zip(0..).find(|(n, i)| *n != i)
        );
    }
}
/// A lock on the file held outside the pumps (a backup script's `flock`) holds a write up by
/// [`LOCK_WAIT`] at most: then the bytes go in unlocked, rather than the pump stopping reading
/// and the instance blocking on its next write once the pipe is full. The writes after it do
/// not wait the whole bound again while the lock stays held, which would let the pump read
/// only one chunk per bound.
#[test]
fn a_lock_held_outside_the_pumps_delays_a_write_only_briefly() {
    const MORE: u32 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("held.log");
    // An open file of its own: a lock of another process, as far as `flock` is concerned.
    let outsider = File::create(&path).expect("create");
    rustix::fs::flock(&outsider, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let target = PumpTarget {
        path: path.clone(),
        max_bytes: Some(1 << 20),
        keep: 1,
        timestamps: false,
    };
    let (done, writes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut writer = LogWriter::new(target);
        writer.write(b"first\n");
        let more = std::time::Instant::now();
        for _ in 0..MORE {
            writer.write(b"more\n");
        }
        let _ = done.send(more.elapsed());
    });
    // The old pump waited here for as long as the lock was held: this test's whole life.
    let more = writes
        .recv_timeout(Duration::from_secs(10))
        .expect("the writes end while the lock is held");
    assert!(
        more < LOCK_WAIT * MORE / 2,
        "{MORE} writes took {more:?} while the lock was held"
    );
    let want = format!("first\n{}", "more\n".repeat(MORE as usize));
    assert_eq!(std::fs::read_to_string(&path).ok(), Some(want));
    drop(outsider);
}
