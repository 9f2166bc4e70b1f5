//! Orphans: instance processes of this agent that no local record accounts for (its data dir was
//! wiped, a record was unreadable), found at startup and settled by the coordinator's first
//! desired set, which is the authority on what this node runs.
//!
//! How they are known to be this agent's: every instance carries markers in its environment
//! ([`instance_markers`]: its instance id, the node name and the *agent key*, a hash of the
//! agent's data dir path, which a wipe keeps), and so does every log pump ([`pump_markers`]).
//! With cgroups, every cgroup under the agent's own directory is the agent's too (the directory
//! is named after the node and the key: see [`crate::cgroup`]). Nothing else is ever touched:
//! not a process with another node name or another key (several agents may share a host, even
//! with the same node name in tests), not one without markers outside the agent's cgroups.
//!
//! What happens to them is the supervisor's (`supervisor::adopt`): the coordinator's first
//! desired set adopts or stops each. This module only marks processes and finds orphans.
//!
//! Finding them reads `/proc/PID/environ` of every process (all of them as root; an unprivileged
//! agent sees its own user's) once, at startup. Parsing and grouping are pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::cgroup;
use crate::model::InstanceId;
use crate::process::{self, ProcId, Stat};

/// The instance id of an instance process.
pub const INSTANCE_VAR: &str = pmcluster_spec::instance::INSTANCE_UUID_VAR;
/// The node name of the agent that started it.
pub const NODE_VAR: &str = pmcluster_spec::instance::NODE_VAR;
/// The key of the agent that started it (see [`Marker::key`]).
pub const AGENT_VAR: &str = pmcluster_spec::instance::AGENT_KEY_VAR;
/// On a log pump: the instance id it pumps for.
pub const PUMP_VAR: &str = pmcluster_spec::instance::PUMP_VAR;

/// What marks this agent's processes: its node name and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub node: String,
    /// [`pmcluster_spec::instance::agent_key`] of the data dir's absolute path: the same after
    /// the directory is wiped and made again, another for another agent on the host.
    pub key: String,
}

impl Marker {
    pub fn new(node: &str, data_dir: &Path) -> Marker {
        let path = std::fs::canonicalize(data_dir)
            .or_else(|_| std::path::absolute(data_dir))
            .unwrap_or_else(|_| data_dir.to_path_buf());
        Marker {
            node: node.to_string(),
            key: pmcluster_spec::instance::agent_key(&path),
        }
    }
}

/// The environment variables that mark an instance process of this agent.
pub fn instance_markers(m: &Marker, id: &InstanceId) -> [(&'static str, String); 3] {
    [
        (INSTANCE_VAR, id.as_str().to_string()),
        (NODE_VAR, m.node.clone()),
        (AGENT_VAR, m.key.clone()),
    ]
}

/// The environment variables that mark the log pump of an instance of this agent.
pub fn pump_markers(m: &Marker, id: &InstanceId) -> [(&'static str, String); 3] {
    [
        (PUMP_VAR, id.as_str().to_string()),
        (NODE_VAR, m.node.clone()),
        (AGENT_VAR, m.key.clone()),
    ]
}

/// Bytes kept in the pump host's environment for a pump's instance id (see
/// `crate::logs::host`: each pump writes its id over them).
pub const ID_ROOM: usize = 64;
/// What fills that room until a pump writes its id over it.
pub const ID_FILL: u8 = b'_';

/// The environment variables of the pump host: this agent's markers, and the room for a pump's
/// id in [`PUMP_VAR`].
pub fn host_markers(m: &Marker) -> [(&'static str, String); 3] {
    [
        (
            PUMP_VAR,
            String::from_utf8_lossy(&[ID_FILL; ID_ROOM]).into_owned(),
        ),
        (NODE_VAR, m.node.clone()),
        (AGENT_VAR, m.key.clone()),
    ]
}

/// Whether a [`PUMP_VAR`] value is the pump host's unwritten room rather than an instance id.
pub fn is_placeholder(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b == ID_FILL)
}

/// What a process's environment says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A process of this instance of this agent, and its `PORT` if it has one.
    Instance { id: String, port: Option<u16> },
    /// The log pump of this instance of this agent.
    Pump { id: String },
}

/// Reads the markers in a `/proc/PID/environ` text (NUL-separated `NAME=value`): a mark only when
/// both the node name and the key are this agent's.
pub fn parse_environ(environ: &[u8], m: &Marker) -> Option<Mark> {
    let found = pmcluster_spec::proc::markers(environ);
    let var = |value| Option::map(value, String::from_utf8_lossy);
    if var(found.node)? != m.node.as_str() || var(found.key)? != m.key.as_str() {
        return None;
    }
    if let Some(id) = var(found.instance).filter(|id| !id.is_empty()) {
        let port = var(found.port).and_then(|p| p.parse().ok());
        return Some(Mark::Instance {
            id: id.into_owned(),
            port,
        });
    }
    // The pump host's placeholder names no instance.
    let id = var(found.pump).filter(|id| !id.is_empty() && !is_placeholder(id))?;
    Some(Mark::Pump {
        id: id.into_owned(),
    })
}

/// Instance processes of this agent that no local record accounts for, by instance id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub instance_id: InstanceId,
    /// Its one process group leader, when there is exactly one (else it cannot be adopted).
    pub leader: Option<ProcId>,
    /// Its `PORT`, as the leader's environment says.
    pub port: Option<u16>,
    /// Every process known to be part of it (marked, or in its cgroup), the leader included.
    pub members: Vec<ProcId>,
    /// Its cgroup under the agent's, if it has one.
    pub cgroup: Option<PathBuf>,
    /// Its live log pumps.
    pub pumps: Vec<ProcId>,
}

/// One process as the scan saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub stat: Stat,
    pub mark: Option<Mark>,
}

/// Groups a scan into orphans (pure). `cgroups` maps each unknown cgroup of the agent to its
/// instance id and members; ids in `adopted` are the local state's and are left out. Sorted by
/// instance id.
pub fn group(
    seen: &[Seen],
    cgroups: &BTreeMap<PathBuf, (InstanceId, Vec<u32>)>,
    adopted: &BTreeSet<InstanceId>,
) -> Vec<Orphan> {
    let by_pid: BTreeMap<u32, &Seen> = seen.iter().map(|s| (s.stat.pid, s)).collect();
    let id_of = |s: &Stat| ProcId {
        pid: s.pid,
        start_ticks: s.start_ticks,
    };
    let mut orphans: BTreeMap<InstanceId, Orphan> = BTreeMap::new();
    fn entry(orphans: &mut BTreeMap<InstanceId, Orphan>, id: InstanceId) -> &mut Orphan {
        orphans.entry(id.clone()).or_insert_with(|| Orphan {
            instance_id: id,
            leader: None,
            port: None,
            members: Vec::new(),
            cgroup: None,
            pumps: Vec::new(),
        })
    }
    for s in seen.iter().filter(|s| s.stat.running()) {
        match &s.mark {
            Some(Mark::Instance { id, .. }) => {
                entry(&mut orphans, InstanceId::new(id))
                    .members
                    .push(id_of(&s.stat));
            }
            Some(Mark::Pump { id }) => {
                entry(&mut orphans, InstanceId::new(id))
                    .pumps
                    .push(id_of(&s.stat));
            }
            None => {}
        }
    }
    for (path, (id, pids)) in cgroups {
        let o = entry(&mut orphans, id.clone());
        o.cgroup = Some(path.clone());
        for pid in pids {
            if let Some(s) = by_pid.get(pid).filter(|s| s.stat.running()) {
                o.members.push(id_of(&s.stat));
            }
        }
    }
    let mut out = Vec::new();
    for (id, mut o) in orphans {
        if adopted.contains(&id) {
            continue;
        }
        o.members.sort();
        o.members.dedup();
        if o.members.is_empty() {
            // Pumps alone end with their pipes; an empty cgroup is the sweep's.
            continue;
        }
        let member_pids: BTreeSet<u32> = o.members.iter().map(|p| p.pid).collect();
        // The leader: marked with this id, leading its group, and not the child of another
        // member (a worker that made a group of its own with setsid has its parent there,
        // unless that parent died: then there are two candidates and none is adopted).
        let candidates: Vec<(ProcId, Option<u16>)> = o
            .members
            .iter()
            .filter_map(|p| {
                let s = by_pid.get(&p.pid)?;
                let port = match &s.mark {
                    Some(Mark::Instance { id: mid, port }) if mid == id.as_str() => *port,
                    _ => return None,
                };
                (s.stat.pgrp == s.stat.pid && !member_pids.contains(&s.stat.ppid))
                    .then_some((*p, port))
            })
            .collect();
        if let [(leader, port)] = candidates.as_slice() {
            o.leader = Some(*leader);
            o.port = *port;
        }
        out.push(o);
    }
    out
}

/// Finds this agent's orphans: marked processes (a `/proc` scan) and processes in `cgroups`,
/// the agent's cgroups that no local record names, leaving out the instances in `adopted`.
pub fn find(marker: &Marker, cgroups: &[PathBuf], adopted: &BTreeSet<InstanceId>) -> Vec<Orphan> {
    let table = match process::scan() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot scan /proc for instances of no record: {e}");
            return Vec::new();
        }
    };
    let me = std::process::id();
    let seen: Vec<Seen> = table
        .into_iter()
        .filter(|s| s.pid != me)
        .map(|stat| Seen {
            mark: read_environ(stat.pid).and_then(|e| parse_environ(&e, marker)),
            stat,
        })
        .collect();
    let by_cgroup: BTreeMap<PathBuf, (InstanceId, Vec<u32>)> = cgroups
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = InstanceId::new(crate::persist::id_of_safe_name(&name));
            (path.clone(), (id, cgroup::procs(path).unwrap_or_default()))
        })
        .collect();
    group(&seen, &by_cgroup, adopted)
}

fn read_environ(pid: u32) -> Option<Vec<u8>> {
    let file = std::fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    pmcluster_spec::proc::read_environ(file).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            node: "n1".into(),
            key: "00aa".into(),
        }
    }

    #[test]
    fn environ_marks() {
        let mark = |text: &str| parse_environ(text.replace(' ', "\0").as_bytes(), &marker());
        let inst = |id: &str, port| {
            Some(Mark::Instance {
                id: id.into(),
                port,
            })
        };
        // (environment, space-separated) -> mark
        let cases = [
            (
                "PMCLUSTER_INSTANCE_UUID=i1 PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00aa",
                inst("i1", None),
            ),
            (
                "A=b PORT=8080 PMCLUSTER_AGENT_KEY=00aa PMCLUSTER_NODE=n1 PMCLUSTER_INSTANCE_UUID=i2",
                inst("i2", Some(8080)),
            ),
            (
                "PMCLUSTER_PUMP_FOR=i3 PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00aa",
                Some(Mark::Pump { id: "i3".into() }),
            ),
            // The pump host, and a pump that wrote its id over the host's room (the rest of
            // the room follows its NUL).
            (
                "PMCLUSTER_PUMP_FOR=____ PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00aa",
                None,
            ),
            (
                "PMCLUSTER_PUMP_FOR=i4 _ PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00aa",
                Some(Mark::Pump { id: "i4".into() }),
            ),
            // Another node, another agent of the same node, no key, no id: not ours.
            (
                "PMCLUSTER_INSTANCE_UUID=i1 PMCLUSTER_NODE=n2 PMCLUSTER_AGENT_KEY=00aa",
                None,
            ),
            (
                "PMCLUSTER_INSTANCE_UUID=i1 PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00bb",
                None,
            ),
            ("PMCLUSTER_INSTANCE_UUID=i1 PMCLUSTER_NODE=n1", None),
            (
                "PMCLUSTER_INSTANCE_UUID= PMCLUSTER_NODE=n1 PMCLUSTER_AGENT_KEY=00aa",
                None,
            ),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(mark(text), want, "{text}");
        }
    }

    #[test]
    fn keys() {
        let a = Marker::new("n1", Path::new("/var/lib/a"));
        assert_eq!(a.key.len(), 16);
        assert_eq!(a, Marker::new("n1", Path::new("/var/lib/a")));
        assert_ne!(a.key, Marker::new("n1", Path::new("/var/lib/b")).key);
        assert_eq!(
            a.key,
            pmcluster_spec::instance::agent_key(Path::new("/var/lib/a"))
        );
    }

    fn stat(pid: u32, ppid: u32, pgrp: u32) -> Stat {
        Stat {
            pid,
            state: 'S',
            ppid,
            pgrp,
            cpu_ticks: 0,
            start_ticks: u64::from(pid) * 10,
            rss_pages: 0,
        }
    }

    fn seen(pid: u32, ppid: u32, pgrp: u32, mark: Option<Mark>) -> Seen {
        Seen {
            stat: stat(pid, ppid, pgrp),
            mark,
        }
    }

    fn inst(id: &str) -> Option<Mark> {
        Some(Mark::Instance {
            id: id.into(),
            port: Some(7000),
        })
    }

    /// Renders orphans as "id leader=PID members=[..] pumps=[..] cgroup".
    fn render(orphans: &[Orphan]) -> Vec<String> {
        orphans
            .iter()
            .map(|o| {
                format!(
                    "{} leader={:?} members={:?} pumps={:?} cgroup={}",
                    o.instance_id,
                    o.leader.map(|l| l.pid),
                    o.members.iter().map(|p| p.pid).collect::<Vec<_>>(),
                    o.pumps.iter().map(|p| p.pid).collect::<Vec<_>>(),
                    o.cgroup.is_some()
                )
            })
            .collect()
    }

    #[test]
    fn grouping() {
        let table = vec![
            // a: leader 10 (parent 1), its child 11, a setsid worker 12 whose parent is 11, pump 13.
            seen(10, 1, 10, inst("a")),
            seen(11, 10, 10, inst("a")),
            seen(12, 11, 12, inst("a")),
            seen(13, 1, 13, Some(Mark::Pump { id: "a".into() })),
            // b: two copies (two leaders): none adoptable.
            seen(20, 1, 20, inst("b")),
            seen(21, 1, 21, inst("b")),
            // c: adopted from the local state: left out.
            seen(30, 1, 30, inst("c")),
            // d: only its pump is left: nothing to do.
            seen(40, 1, 40, Some(Mark::Pump { id: "d".into() })),
            // e: in an unknown cgroup, with an unmarked member the leader started.
            seen(50, 1, 50, inst("e")),
            seen(51, 50, 51, None),
            // f: an unknown cgroup whose leader is gone: its worker is stopped, not adopted.
            seen(60, 1, 60, None),
            // Not ours at all.
            seen(70, 1, 70, None),
        ];
        let cgroups: BTreeMap<PathBuf, (InstanceId, Vec<u32>)> = [
            (PathBuf::from("/cg/e"), (InstanceId::new("e"), vec![50, 51])),
            (PathBuf::from("/cg/f"), (InstanceId::new("f"), vec![60, 99])),
        ]
        .into();
        let adopted: BTreeSet<InstanceId> = [InstanceId::new("c")].into();
        let orphans = group(&table, &cgroups, &adopted);
        assert_eq!(
            render(&orphans),
            [
                "a leader=Some(10) members=[10, 11, 12] pumps=[13] cgroup=false",
                "b leader=None members=[20, 21] pumps=[] cgroup=false",
                "e leader=Some(50) members=[50, 51] pumps=[] cgroup=true",
                "f leader=None members=[60] pumps=[] cgroup=true",
            ]
        );
        assert_eq!(orphans[0].port, Some(7000));
    }
}
