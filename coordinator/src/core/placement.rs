//! Placement of one app's new instances: feasibility filters (eligibility, label constraints,
//! per-node limit, resources, port), each with a reason, then a score (spread or binpack, soft
//! affinities first), then a pick with a deterministic tie-break by node name.
//!
//! A [`Placer`] keeps the feasible nodes in a heap keyed by score, so placing k instances over n
//! nodes costs O(n + k log n) rather than O(k n).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use pmcluster_spec::placement::{Affinity, Constraint, Strategy};

/// A node's `ports_held` where no index counts the records' ports.
pub static NO_PORTS: BTreeMap<u16, u32> = BTreeMap::new();

/// One node as the scheduler sees it. `cpu_free`/`memory_free` may be negative after overcommit.
#[derive(Debug, Clone)]
pub struct NodeSlot<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Ready and accepting new instances (not down, draining or ineligible).
    pub eligible: bool,
    pub cpu_capacity: i64,
    pub memory_capacity: i64,
    pub cpu_free: i64,
    pub memory_free: i64,
    /// Ports held on this node: the records' of every app, this one's included (as the state's
    /// index counts them, each with how many hold it), and those placed in this plan.
    pub ports_held: &'a BTreeMap<u16, u32>,
    pub ports_used: BTreeSet<u16>,
    /// Instances on this node, every app.
    pub total: u32,
}

impl NodeSlot<'_> {
    /// Takes a reservation off the free capacity. Sums of requests can pass `i64` (thousands of
    /// records of the largest request on one node, with overcommit): they stop at its end.
    pub fn reserve(&mut self, cpu_millis: i128, memory_bytes: i128) {
        self.cpu_free = saturating_i64(i128::from(self.cpu_free) - cpu_millis);
        self.memory_free = saturating_i64(i128::from(self.memory_free) - memory_bytes);
    }
}

/// `v`, or the end of `i64`'s range it is past.
pub fn saturating_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// What one app asks of a node.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    pub strategy: Strategy,
    pub constraints: &'a [Constraint],
    pub affinities: &'a [Affinity],
    /// At most this many instances of the app per node (`distinct_hosts` is 1).
    pub max_per_node: Option<u32>,
    /// Millicores.
    pub cpu: u32,
    pub memory: u64,
    pub overcommit: bool,
}

/// Why a node was left out, counted per cause to explain a pending instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rejections {
    not_ready: u32,
    constraint: BTreeMap<String, u32>,
    per_node_limit: u32,
    cpu: u32,
    memory: u32,
    port: u32,
}

type Key = (Reverse<i64>, i64, i64, usize);

/// Places instances of one app, one at a time.
pub struct Placer<'s, 'a> {
    slots: &'s mut [NodeSlot<'a>],
    ask: Ask<'a>,
    /// Instances of this app per slot.
    app_counts: Vec<u32>,
    affinity: Vec<i64>,
    heap: BinaryHeap<Reverse<Key>>,
    rejected: Rejections,
}

/// `512 MiB`, `2 GiB`, `23.5 GiB`: whole units where they are, one decimal of GiB from 1 GiB up.
fn human_bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    if b >= GIB {
        return if b.is_multiple_of(GIB) {
            format!("{} GiB", b / GIB)
        } else {
            format!("{:.1} GiB", b as f64 / GIB as f64)
        };
    }
    for (unit, size) in [("MiB", 1u64 << 20), ("KiB", 1 << 10)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{} {unit}", b / size);
        }
    }
    if b >= 1 << 20 {
        return format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
    }
    format!("{b} B")
}

impl<'s, 'a> Placer<'s, 'a> {
    /// `app_counts[i]` is how many instances of the app slot `i` already runs.
    pub fn new(
        slots: &'s mut [NodeSlot<'a>],
        app_counts: Vec<u32>,
        ask: Ask<'a>,
    ) -> Placer<'s, 'a> {
        let mut rejected = Rejections::default();
        let mut affinity = vec![0; slots.len()];
        let mut heap = BinaryHeap::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            if !slot.eligible {
                rejected.not_ready += 1;
                continue;
            }
            if let Some(c) = ask.constraints.iter().find(|c| !c.matches(slot.labels)) {
                *rejected.constraint.entry(c.to_string()).or_default() += 1;
                continue;
            }
            affinity[i] = ask
                .affinities
                .iter()
                .filter(|a| a.constraint.matches(slot.labels))
                .map(|a| i64::from(a.weight))
                .sum();
            heap.push(Reverse((Reverse(affinity[i]), 0, 0, i)));
        }
        let mut placer = Placer {
            slots,
            ask,
            app_counts,
            affinity,
            heap,
            rejected,
        };
        // Keys depend on counts and resources: compute them now that the placer owns the data.
        let items: Vec<usize> = placer.heap.drain().map(|Reverse(k)| k.3).collect();
        for i in items {
            let key = placer.key(i);
            placer.heap.push(Reverse(key));
        }
        placer
    }

    fn key(&self, i: usize) -> Key {
        let slot = &self.slots[i];
        let count = i64::from(self.app_counts.get(i).copied().unwrap_or(0));
        let aff = Reverse(self.affinity[i]);
        match self.ask.strategy {
            Strategy::Spread => (aff, count, i64::from(slot.total), i),
            Strategy::Binpack => {
                // Fullest first: least free share left (per mille, CPU and memory added), then
                // most instances.
                let share = |free: i64, cap: i64| {
                    if cap > 0 {
                        saturating_i64(i128::from(free.max(0)) * 1000 / i128::from(cap))
                    } else {
                        0
                    }
                };
                let free = if self.ask.cpu == 0 && self.ask.memory == 0 {
                    0
                } else {
                    share(slot.cpu_free, slot.cpu_capacity)
                        + share(slot.memory_free, slot.memory_capacity)
                };
                (aff, free, -i64::from(slot.total), i)
            }
        }
    }

    /// No node is left that could take another instance of this app: every further
    /// [`Placer::place`] fails the same way. (A node held back only by a port clash stays.)
    pub fn exhausted(&self) -> bool {
        self.heap.is_empty()
    }

    /// Chooses a node for one instance (with `port`, if fixed) and books it there.
    pub fn place(&mut self, port: Option<u16>) -> Result<&'a str, String> {
        self.place_avoiding(port, &[])
    }

    /// Whether [`Placer::place`] would find a node now, without booking it: the reason if not.
    /// Nodes it drops are those every later placement of the app would drop too (their causes
    /// only get worse), so asking changes no later answer.
    pub fn fits(&mut self, port: Option<u16>) -> Result<(), String> {
        let (_, key) = self.pick(port, &[])?;
        self.heap.push(Reverse(key));
        Ok(())
    }

    /// [`Placer::place`], leaving out the nodes in `avoid` (where the instance could not start).
    pub fn place_avoiding(&mut self, port: Option<u16>, avoid: &[&str]) -> Result<&'a str, String> {
        let (i, _) = self.pick(port, avoid)?;
        if let Some(c) = self.app_counts.get_mut(i) {
            *c += 1;
        }
        let slot = &mut self.slots[i];
        slot.total += 1;
        slot.reserve(i128::from(self.ask.cpu), i128::from(self.ask.memory));
        if let Some(p) = port {
            slot.ports_used.insert(p);
        }
        let name = slot.name;
        let key = self.key(i);
        self.heap.push(Reverse(key));
        Ok(name)
    }

    /// The best node for one instance, taken off the heap with its key (the caller books it, or
    /// puts the key back); the nodes passed over for a port or `avoid` go back.
    fn pick(&mut self, port: Option<u16>, avoid: &[&str]) -> Result<(usize, Key), String> {
        let mut port_clash = Vec::new();
        let mut avoided = Vec::new();
        let chosen = loop {
            let Some(Reverse(key)) = self.heap.pop() else {
                break None;
            };
            let i = key.3;
            let slot = &self.slots[i];
            if avoid.contains(&slot.name) {
                avoided.push(key);
                continue;
            }
            let count = self.app_counts.get(i).copied().unwrap_or(0);
            // Causes that only get worse while this app is placed drop the node for good.
            if self.ask.max_per_node.is_some_and(|m| count >= m) {
                self.rejected.per_node_limit += 1;
                continue;
            }
            if !self.ask.overcommit && slot.cpu_free < i64::from(self.ask.cpu) {
                self.rejected.cpu += 1;
                continue;
            }
            if !self.ask.overcommit && i128::from(slot.memory_free) < i128::from(self.ask.memory) {
                self.rejected.memory += 1;
                continue;
            }
            if port
                .is_some_and(|p| slot.ports_used.contains(&p) || slot.ports_held.contains_key(&p))
            {
                port_clash.push(key);
                continue;
            }
            break Some((i, key));
        };
        let clashes = port_clash.len() as u32;
        let avoided_nodes = avoided.len();
        for key in port_clash.into_iter().chain(avoided) {
            self.heap.push(Reverse(key));
        }
        let Some(chosen) = chosen else {
            if avoided_nodes == 0 {
                return Err(self.reason(clashes, port));
            }
            let left_out = format!(
                "{avoided_nodes} node{} left out where it could not start",
                if avoided_nodes == 1 { "" } else { "s" }
            );
            if clashes == 0 && self.rejected == Rejections::default() {
                return Err(format!("no other ready node ({left_out})"));
            }
            return Err(format!("{}; {left_out}", self.reason(clashes, port)));
        };
        Ok(chosen)
    }

    /// Explains why nothing fits, e.g. `no ready node with 512 MiB memory free matching region=eu
    /// (3 nodes: 2 not matching region=eu, 1 short of memory)`.
    fn reason(&self, port_clashes: u32, port: Option<u16>) -> String {
        let ask = &self.ask;
        let mut want = String::from("no ready node");
        let mut needs = Vec::new();
        if ask.memory > 0 && !ask.overcommit {
            needs.push(format!("{} memory", human_bytes(ask.memory)));
        }
        if ask.cpu > 0 && !ask.overcommit {
            needs.push(format!("{}m CPU", ask.cpu));
        }
        if !needs.is_empty() {
            want.push_str(&format!(" with {} free", needs.join(" and ")));
        }
        if !ask.constraints.is_empty() {
            let cs: Vec<String> = ask.constraints.iter().map(|c| c.to_string()).collect();
            want.push_str(&format!(" matching {}", cs.join(", ")));
        }
        if let Some(m) = ask.max_per_node {
            want.push_str(&format!(
                " below {m} instance{} of the app",
                if m == 1 { "" } else { "s" }
            ));
        }
        let r = &self.rejected;
        let mut why = Vec::new();
        if r.not_ready > 0 {
            why.push(format!("{} not ready", r.not_ready));
        }
        for (c, n) in &r.constraint {
            why.push(format!("{n} not matching {c}"));
        }
        if r.per_node_limit > 0 {
            why.push(format!("{} at the per-node limit", r.per_node_limit));
        }
        if r.memory > 0 {
            why.push(format!("{} short of memory", r.memory));
        }
        if r.cpu > 0 {
            why.push(format!("{} short of CPU", r.cpu));
        }
        if port_clashes > 0 {
            let p = port.map(|p| p.to_string()).unwrap_or_default();
            // Held by another app's instance, or by this app's own copy that a rollout or a move
            // replaces: the index counts ports, not whose they are.
            why.push(format!("{port_clashes} with port {p} in use"));
        }
        let n = self.slots.len();
        if n == 0 {
            return "no node has registered yet".to_string();
        }
        format!(
            "{want} ({n} node{}: {}){}",
            if n == 1 { "" } else { "s" },
            why.join(", "),
            self.never_fits()
        )
    }

    /// What to do when no registered node could hold one instance even empty: waiting for
    /// capacity to free up would be waiting for ever.
    fn never_fits(&self) -> String {
        let ask = &self.ask;
        if ask.overcommit {
            return String::new();
        }
        let memory = i128::from(ask.memory);
        let largest = self
            .slots
            .iter()
            .map(|s| s.memory_capacity)
            .max()
            .unwrap_or(0);
        if memory > 0 && i128::from(largest) < memory {
            return format!(
                "; no node has {} of memory in all (the largest has {}): lower \
                 resources.memory, or add a larger node",
                human_bytes(ask.memory),
                human_bytes(u64::try_from(largest).unwrap_or(0))
            );
        }
        let cpu = i64::from(ask.cpu);
        let largest = self.slots.iter().map(|s| s.cpu_capacity).max().unwrap_or(0);
        if cpu > 0 && largest < cpu {
            return format!(
                "; no node has {cpu}m CPU in all (the largest has {largest}m): lower \
                 resources.cpu, or add a larger node"
            );
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N {
        name: String,
        labels: BTreeMap<String, String>,
        eligible: bool,
        cpu: i64,
        mem: i64,
        total: u32,
        ports: Vec<u16>,
    }

    /// `name[:label=v,...][ cpu=N mem=N total=N down port=P]` per line.
    fn nodes(text: &str) -> Vec<N> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|line| {
                let mut words = line.split_whitespace();
                let head = words.next().unwrap_or_default();
                let (name, labels) = head.split_once(':').unwrap_or((head, ""));
                let labels = labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let mut n = N {
                    name: name.into(),
                    labels,
                    eligible: true,
                    cpu: 4000,
                    mem: 8 << 30,
                    total: 0,
                    ports: vec![],
                };
                for w in words {
                    match w.split_once('=') {
                        Some(("cpu", v)) => n.cpu = v.parse().unwrap(),
                        Some(("mem", v)) => n.mem = v.parse::<i64>().unwrap() << 20,
                        Some(("total", v)) => n.total = v.parse().unwrap(),
                        Some(("port", v)) => n.ports.push(v.parse().unwrap()),
                        None if w == "down" => n.eligible = false,
                        _ => panic!("bad fixture word {w}"),
                    }
                }
                n
            })
            .collect()
    }

    fn slots(ns: &[N]) -> Vec<NodeSlot<'_>> {
        ns.iter()
            .map(|n| NodeSlot {
                name: &n.name,
                labels: &n.labels,
                eligible: n.eligible,
                cpu_capacity: n.cpu,
                memory_capacity: n.mem,
                cpu_free: n.cpu,
                memory_free: n.mem,
                ports_held: &NO_PORTS,
                ports_used: n.ports.iter().copied().collect(),
                total: n.total,
            })
            .collect()
    }

    /// Places `k` instances (ports from `port`, if given) and renders the picks.
    fn check(fixture: &str, ask: Ask<'_>, k: u32, port: Option<u16>, want: &str) {
        let ns = nodes(fixture);
        let mut s = slots(&ns);
        let counts = vec![0; s.len()];
        let mut placer = Placer::new(&mut s, counts, ask);
        let got: Vec<String> = (0..k)
            .map(|i| match placer.place(port.map(|p| p + i as u16)) {
                Ok(n) => n.to_string(),
                Err(e) => format!("[{e}]"),
            })
            .collect();
        assert_eq!(got.join(" "), want, "fixture:\n{fixture}");
    }

    fn cs(list: &[&str]) -> Vec<Constraint> {
        list.iter()
            .map(|c| Constraint::parse("c", c).unwrap())
            .collect()
    }

    #[test]
    fn avoiding_nodes() {
        // (nodes, avoid, port, want)
        let cases = [
            ("a\nb\nc", &["a"][..], None, "b"),
            ("a\nb\nc", &["a", "b"][..], None, "c"),
            // The next best is left out too: spread still picks the emptiest of the rest.
            ("a\nb total=3\nc total=1", &["a"][..], None, "c"),
            (
                "a\nb port=80",
                &["a"][..],
                Some(80),
                "[no ready node (2 nodes: 1 with port 80 in use); 1 node left out where it \
                 could not start]",
            ),
            (
                "a\nb",
                &["a", "b"][..],
                None,
                "[no other ready node (2 nodes left out where it \
              could not start)]",
            ),
        ];
        for (fixture, avoid, port, want) in cases {
            let ns = nodes(fixture);
            let mut s = slots(&ns);
            let counts = vec![0; s.len()];
            let mut placer = Placer::new(&mut s, counts, Ask::default());
            let got = match placer.place_avoiding(port, avoid) {
                Ok(n) => n.to_string(),
                Err(e) => format!("[{e}]"),
            };
            assert_eq!(got, want, "{fixture:?} avoiding {avoid:?}");
            // What was left out stays available to the next placement.
            if avoid.len() < ns.len() {
                assert!(placer.place(None).is_ok(), "{fixture:?}");
            }
        }
    }

    #[test]
    fn a_request_no_node_can_ever_hold_says_so() {
        let ask = Ask {
            memory: 30 << 30,
            ..Ask::default()
        };
        check(
            "a mem=24064\nb mem=8192",
            ask,
            1,
            None,
            "[no ready node with 30 GiB memory free (2 nodes: 2 short of memory); no node has \
             30 GiB of memory in all (the largest has 23.5 GiB): lower resources.memory, or add \
             a larger node]",
        );
        let ask = Ask {
            cpu: 8000,
            ..Ask::default()
        };
        check(
            "a cpu=4000 down",
            ask,
            1,
            None,
            "[no ready node with 8000m CPU free (1 node: 1 not ready); no node has 8000m CPU in \
             all (the largest has 4000m): lower resources.cpu, or add a larger node]",
        );
        // A node that would hold it once emptied: the plain reason.
        let ask = Ask {
            memory: 6 << 30,
            ..Ask::default()
        };
        check(
            "a mem=8192",
            ask,
            2,
            None,
            "a [no ready node with 6 GiB memory free (1 node: 1 short of memory)]",
        );
    }

    #[test]
    fn sums_past_i64_neither_wrap_nor_panic() {
        // Requests from before the 1 PiB cap, or with overcommit, can add up past i64.
        let huge = Ask {
            memory: u64::MAX,
            overcommit: true,
            ..Ask::default()
        };
        check("a\nb", huge, 4, None, "a b a b");
        let ns = nodes("a");
        let mut s = slots(&ns);
        s[0].reserve(0, i128::from(u64::MAX) * 3);
        assert_eq!(s[0].memory_free, i64::MIN);
        let mut placer = Placer::new(
            &mut s,
            vec![0],
            Ask {
                memory: 1,
                ..Ask::default()
            },
        );
        assert!(placer.place(None).is_err());
        // u64::MAX read as an i64 is -1, which once fitted anywhere.
        let ns = nodes("a");
        let mut s = slots(&ns);
        let mut placer = Placer::new(
            &mut s,
            vec![0],
            Ask {
                memory: u64::MAX,
                ..Ask::default()
            },
        );
        assert!(placer.place(None).is_err());
    }

    #[test]
    fn strategies() {
        check("a\nb\nc", Ask::default(), 4, None, "a b c a");
        check("a total=5\nb\nc total=1", Ask::default(), 3, None, "b c a");
        let binpack = Ask {
            strategy: Strategy::Binpack,
            memory: 1 << 30,
            ..Ask::default()
        };
        // Packs: a fills up (4 GiB = 4 instances) before b is used.
        check(
            "a mem=4096\nb mem=2048",
            binpack.clone(),
            5,
            None,
            "a a a a b",
        );
        // Without requests, binpack packs by instance count.
        let binpack = Ask {
            strategy: Strategy::Binpack,
            ..Ask::default()
        };
        check("a\nb total=1", binpack, 2, None, "b b");
    }

    #[test]
    fn filters_and_reasons() {
        let eu = cs(&["region=eu"]);
        let ask = Ask {
            constraints: &eu,
            ..Ask::default()
        };
        check(
            "a:region=eu\nb:region=us\nc:region=eu down",
            ask,
            2,
            None,
            "a a",
        );
        let ask = Ask {
            constraints: &eu,
            memory: 512 << 20,
            ..Ask::default()
        };
        check(
            "a:region=eu mem=700\nb:region=us",
            ask,
            2,
            None,
            "a [no ready node with 512 MiB memory free matching region=eu (2 nodes: 1 not matching region=eu, 1 short of memory)]",
        );
        let ask = Ask {
            max_per_node: Some(1),
            ..Ask::default()
        };
        check(
            "a\nb",
            ask,
            3,
            None,
            "a b [no ready node below 1 instance of the app (2 nodes: 2 at the per-node limit)]",
        );
        let ask = Ask {
            cpu: 1500,
            ..Ask::default()
        };
        check(
            "a cpu=2000\nb cpu=1000",
            ask.clone(),
            2,
            None,
            "a [no ready node with 1500m CPU free (2 nodes: 1 short of CPU, 1 short of CPU)]"
                .replace("1 short of CPU, 1 short of CPU", "2 short of CPU")
                .as_str(),
        );
        let over = Ask {
            overcommit: true,
            ..ask
        };
        check("a cpu=2000", over, 2, None, "a a");
        check("", Ask::default(), 1, None, "[no node has registered yet]");
        check(
            "a down",
            Ask::default(),
            1,
            None,
            "[no ready node (1 node: 1 not ready)]",
        );
    }

    #[test]
    fn ports_never_collide_with_other_apps() {
        // a holds 3001 for another app: the instance needing 3001 goes to b; the others spread.
        check("a port=3001\nb", Ask::default(), 3, Some(3000), "a b a");
        check(
            "a port=3000",
            Ask::default(),
            1,
            Some(3000),
            "[no ready node (1 node: 1 with port 3000 in use)]",
        );
    }

    #[test]
    fn affinity_prefers_without_excluding() {
        let aff = vec![Affinity {
            constraint: Constraint::parse("c", "zone=a").unwrap(),
            weight: 50,
        }];
        let ask = Ask {
            affinities: &aff,
            max_per_node: Some(2),
            ..Ask::default()
        };
        check("x:zone=b\ny:zone=a\nz:zone=a", ask, 5, None, "y z y z x");
    }

    #[test]
    fn many_nodes_spread_evenly() {
        let fixture: String = (0..50).map(|i| format!("n{i:02}\n")).collect();
        let ns = nodes(&fixture);
        let mut s = slots(&ns);
        let mut placer = Placer::new(&mut s, vec![0; 50], Ask::default());
        for _ in 0..1000 {
            placer.place(None).unwrap();
        }
        assert!(s.iter().all(|n| n.total == 20));
    }
}
