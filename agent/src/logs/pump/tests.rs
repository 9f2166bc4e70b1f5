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
