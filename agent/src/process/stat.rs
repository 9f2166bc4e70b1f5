//! Reading `/proc`: one process's stat line, every process, and an instance's family. The stat
//! line's parser is `pmcluster_spec::proc`'s, which `pmcluster down` uses too.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

pub use pmcluster_spec::proc::{Stat, parse_stat};

use super::ProcId;

/// When a process started (unix ms), from its start time in clock ticks after boot; 0 when the
/// boot time cannot be read.
pub fn started_at_ms(start_ticks: u64) -> i64 {
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<i64>().ok())
    });
    let Some(btime) = btime else { return 0 };
    let hz = i64::try_from(rustix::param::clock_ticks_per_second().max(1)).unwrap_or(100);
    let ticks = i64::try_from(start_ticks).unwrap_or(i64::MAX);
    btime
        .saturating_mul(1000)
        .saturating_add(ticks.saturating_mul(1000) / hz)
}

/// A file of `/proc` or of a cgroup, which give no size: read in 4 KiB reads until the end.
/// `read_to_string` would ask for a size first (`statx`, `lseek`) and then probe with reads of
/// 32, 32, 64, 128... bytes.
pub fn read_pseudo_file(path: &std::path::Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One process's `/proc/PID/stat`, in one `read`: `read_to_string` would probe the size-less
/// file with six growing reads (and a `statx`), on every start and every metrics pass.
pub fn read_stat(pid: u32) -> Option<Stat> {
    use std::io::Read;
    // The line is about 300 bytes: 16 bytes of name and 50 numbers.
    let mut buf = [0u8; 2048];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    if n == buf.len() {
        let mut text = buf.to_vec();
        file.read_to_end(&mut text).ok()?;
        return parse_stat(pid, &String::from_utf8_lossy(&text));
    }
    // Lossy: a program may name itself with any bytes, and only the fields after it are read.
    parse_stat(pid, &String::from_utf8_lossy(buf.get(..n)?))
}

/// Every process on the host, read once (one `/proc/PID/stat` per process). Processes that end
/// during the scan are simply missing.
pub fn scan() -> io::Result<Vec<Stat>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            out.push(stat);
        }
    }
    Ok(out)
}

/// Children by parent pid, for [`family`].
pub fn children_index(table: &[Stat]) -> BTreeMap<u32, Vec<usize>> {
    let mut index: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in table.iter().enumerate() {
        index.entry(s.ppid).or_default().push(i);
    }
    index
}

/// The processes of one instance in `table`: the leader, its descendants (by parent links, so
/// those that left the group with `setsid` count), and whatever else is in its process group
/// (orphans reparented to the agent). Zombies are left out. Indices into `table`, sorted.
pub fn family(
    table: &[Stat],
    children: &BTreeMap<u32, Vec<usize>>,
    leader: u32,
    pgid: u32,
) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> = table
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pid == leader || s.pgrp == pgid)
        .map(|(i, _)| i)
        .collect();
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        if let Some(kids) = children.get(&table[i].pid) {
            todo.extend(kids.iter().copied());
        }
    }
    seen.into_iter().filter(|i| table[*i].running()).collect()
}

/// The live processes of an instance right now (see [`family`]), as ids to kill later safely.
pub fn family_now(leader: u32, pgid: u32) -> Vec<ProcId> {
    let Ok(table) = scan() else {
        return Vec::new();
    };
    let children = children_index(&table);
    family(&table, &children, leader, pgid)
        .into_iter()
        .map(|i| ProcId {
            pid: table[i].pid,
            start_ticks: table[i].start_ticks,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, pgrp: u32, state: char) -> Stat {
        Stat {
            pid,
            state,
            ppid,
            pgrp,
            cpu_ticks: 0,
            start_ticks: u64::from(pid),
            rss_pages: 0,
        }
    }

    #[test]
    fn pseudo_files_are_read_whole() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let long: String = (0..3000).map(|i| format!("{i}\n")).collect();
        assert!(long.len() > 3 * 4096);
        std::fs::write(dir.path().join("long"), &long)?;
        assert_eq!(read_pseudo_file(&dir.path().join("long"))?, long);
        let own = read_pseudo_file(std::path::Path::new("/proc/self/stat"))?;
        assert!(parse_stat(std::process::id(), &own).is_some(), "{own}");
        let missing = read_pseudo_file(&dir.path().join("missing"));
        assert!(missing.is_err_and(|e| e.kind() == io::ErrorKind::NotFound));
        Ok(())
    }

    #[test]
    fn a_process_with_any_bytes_in_its_name_is_read() -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let own = read_stat(std::process::id()).ok_or_else(|| io::Error::other("own stat"))?;
        assert_eq!(own.ppid, std::os::unix::process::parent_id());
        let dir = tempfile::tempdir()?;
        let odd = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"sl\xff) (eep"));
        std::os::unix::fs::symlink("/bin/sleep", &odd)?;
        let mut child = std::process::Command::new(&odd).arg("30").spawn()?;
        let read = read_stat(child.id());
        child.kill()?;
        child.wait()?;
        let read = read.ok_or_else(|| io::Error::other("the odd name's stat was not read"))?;
        assert_eq!(read.ppid, std::process::id());
        assert!(read.start_ticks >= own.start_ticks);
        assert_eq!(read_stat(u32::MAX), None);
        Ok(())
    }

    #[test]
    fn families() {
        // 10 leads group 10 with child 11 (grandchild 12 left the group with setsid); 13 is an
        // orphan of group 10 reparented to the agent (pid 1); 20 is another instance; 14 a zombie.
        let table = vec![
            stat(1, 0, 1, 'S'),
            stat(10, 1, 10, 'S'),
            stat(11, 10, 10, 'S'),
            stat(12, 11, 12, 'S'),
            stat(13, 1, 10, 'R'),
            stat(14, 10, 10, 'Z'),
            stat(20, 1, 20, 'S'),
            stat(21, 20, 20, 'S'),
        ];
        let children = children_index(&table);
        let pids = |leader, pgid| -> Vec<u32> {
            family(&table, &children, leader, pgid)
                .into_iter()
                .map(|i| table[i].pid)
                .collect()
        };
        assert_eq!(pids(10, 10), [10, 11, 12, 13]);
        assert_eq!(pids(20, 20), [20, 21]);
        assert_eq!(pids(99, 99), Vec::<u32>::new());
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let stat = read_stat(me);
        assert!(
            stat.is_some_and(|s| s.running() && s.rss_pages > 0),
            "{stat:?}"
        );
        let id = ProcId::of(me);
        assert!(id.is_some_and(|id| id.alive()));
        assert_eq!(Some(ProcId::started(me)), id);
    }
}
