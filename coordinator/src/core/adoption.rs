//! Where an agent's memory and this coordinator's disagree: whether a registering node must be
//! quarantined (it serves another cluster, or applied more than this store knows), and the
//! records that adopt what a quarantined node holds. Pure; the shell reads the registration off
//! the wire and commits the batch.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{AppRecord, Batch, InstanceRecord, Persisted};

/// What a registering agent says of itself, as far as quarantine goes.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub node: &'a str,
    /// The cluster the agent remembers serving (empty: none yet).
    pub cluster_id: &'a str,
    /// The node name its data dir had before `--rename-node` (empty: none).
    pub renamed_from: &'a str,
    /// The highest desired-set generation it applied.
    pub generation: u64,
    /// How many instances it holds.
    pub held: usize,
}

/// One instance a quarantined agent holds, as it described it: an assignment it runs.
pub use crate::model::Assignment as Held;

/// Why a registering agent must be quarantined: it serves another cluster, or it applied a
/// newer desired set than this store ever sent the node (the store lost writes or was
/// restored). Either way this coordinator's view of the node is not to be trusted over the
/// agent's, so it sends nothing until an operator adopts the node.
///
/// The agent is checked against the node's [`NodeRecord::sent_up_to`], not its `generation`: a
/// write while the agent is away (a restart, a scale, a reschedule) moves the generation, and a
/// store restored from an older copy could otherwise catch up with the agent and send it a set
/// that stops what the copy does not know.
///
/// [`NodeRecord::sent_up_to`]: crate::model::NodeRecord::sent_up_to
pub fn quarantine_reason(state: &Persisted, reg: &Registration) -> Option<String> {
    let name = reg.node;
    let n = reg.held;
    let adopt = format!(
        "its {n} instance(s) keep running; to make them this cluster's, run 'pmcluster nodes adopt {name}'"
    );
    if !reg.cluster_id.is_empty() && reg.cluster_id != state.cluster_id {
        return Some(format!(
            "the agent belongs to cluster {}, this coordinator serves cluster {} (a lost or \
             replaced store?); {adopt}",
            reg.cluster_id, state.cluster_id
        ));
    }
    // A renamed node brings the generations of its old name; a forgotten one those it had.
    let record = state
        .nodes
        .get(name)
        .or_else(|| state.nodes.get(reg.renamed_from));
    // Not for an agent renamed from a name this store has no record of: the tombstone is the
    // forgotten node's, not proof that the agent is.
    let forgotten =
        (state.forgotten.get(name)).filter(|_| record.is_none() && reg.renamed_from.is_empty());
    let known = record
        .map(|n| n.sent_up_to())
        .or(forgotten.map(|f| f.sent_up_to))
        .unwrap_or(0);
    if reg.generation > known
        && record.is_none()
        && forgotten.is_none()
        && reg.renamed_from.is_empty()
    {
        // No record of the node at all: never known to this store, or forgotten so long ago
        // that its tombstone went.
        return Some(format!(
            "this cluster has no record of node {name} (the store is older than the agent, or \
             the node was forgotten long ago), whose agent applied desired-set generation {}; \
             its {n} instance(s) keep running, beside any replacements placed elsewhere; \
             'pmcluster nodes adopt {name}' keeps those whose index runs nowhere else and stops \
             the rest",
            reg.generation
        ));
    }
    if reg.generation > known {
        return Some(format!(
            "the agent applied desired-set generation {}, but this coordinator's store sent the \
             node sets only up to generation {known} (a lost or restored store?); {adopt}",
            reg.generation
        ));
    }
    None
}

/// The records that make a quarantined node's held instances this cluster's. Apps that do not
/// exist are created from the agent's spec, with enough instances for every held index. A held
/// instance is taken only where it fits: its app has the same process spec (else the reconciler
/// replaces it), and its index has no placed record already (a pending one is replaced by it).
pub fn adoption_batch(state: &Persisted, node: &str, held: &[Held], now: i64) -> Batch {
    let mut batch = Batch::default();
    let mut apps: BTreeMap<String, AppRecord> = BTreeMap::new();
    let mut taken: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut sorted: Vec<&Held> = held.iter().collect();
    sorted.sort_by_key(|a| (a.index, a.id));
    for a in sorted {
        let (id, spec) = (a.id, &a.spec);
        if state.instances.contains_key(&id) {
            continue;
        }
        let name = spec.name.clone();
        // An app this cluster had (or an earlier held instance created) keeps its count: an
        // index beyond it is not wanted. A new app counts what its spec says, or more.
        let (mut app, existed) = match apps.get(&name).or(state.apps.get(&name)) {
            Some(app) => (app.clone(), state.apps.contains_key(&name)),
            None => (
                AppRecord {
                    version: a.app_version.max(1),
                    ..AppRecord::new(spec.as_ref().clone(), now)
                },
                false,
            ),
        };
        if !app.spec.same_process(spec)
            || (existed && a.index >= app.spec.instances)
            || !taken.insert((name.clone(), a.index))
        {
            continue;
        }
        let occupied = state
            .app_instances(&name)
            .iter()
            .filter(|r| r.index == a.index && r.draining_since.is_none())
            .any(|r| r.node.is_some());
        if occupied {
            continue;
        }
        for r in state.app_instances(&name) {
            if r.index == a.index && r.node.is_none() {
                batch.del_instances.push(r.id);
            }
        }
        if app.spec.instances <= a.index {
            app.spec.instances = a.index + 1;
        }
        batch.put_instances.push(InstanceRecord {
            id,
            app: name.clone(),
            index: a.index,
            node: Some(node.to_string()),
            port: u16::try_from(a.port).ok().filter(|p| *p != 0),
            app_version: app.version,
            restart_epoch: a.restart_epoch,
            stopped: !a.run,
            replaces: None,
            draining_since: None,
            created_ms: now,
            avoid: Vec::new(),
            disabled: false,
        });
        apps.insert(name, app);
    }
    for (name, app) in apps {
        if state.apps.get(&name) != Some(&app) {
            batch.put_apps.push(app);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForgottenNode, NodeRecord};
    use pmcluster_spec::AppSpec;
    use uuid::Uuid;

    fn state(generation: u64) -> Persisted {
        let mut state = Persisted {
            cluster_id: "ours".into(),
            ..Persisted::default()
        };
        state.nodes.insert(
            "a".into(),
            NodeRecord {
                name: "a".into(),
                labels: Default::default(),
                cores: 1,
                memory_bytes: 1 << 30,
                hostname: String::new(),
                agent_version: String::new(),
                generation,
                drain: false,
                address: String::new(),
                sent_generation: None,
                restarts_unseen: Default::default(),
            },
        );
        state
    }

    /// (cluster the agent remembers, generation it applied, renamed from, generation the store
    /// sent the node up to) → quarantined? The record is at generation 5.
    #[test]
    fn quarantine() {
        let cases = [
            ("", 0, "", None, false),
            ("ours", 5, "", None, false),
            ("ours", 6, "", None, true),
            ("theirs", 0, "", None, true),
            // A renamed node brings its old name's generations.
            ("ours", 5, "a", None, false),
            // Sent up to 3 and written to since while no agent was there: an agent at 4 or 5
            // applied a set this store never sent.
            ("ours", 3, "", Some(3), false),
            ("ours", 4, "", Some(3), true),
            ("ours", 5, "", Some(3), true),
            ("ours", 5, "a", Some(3), true),
            // Sent up to 5, the record's own generation.
            ("ours", 5, "", Some(5), false),
        ];
        for (cluster, generation, renamed_from, loaded, want) in cases {
            let node = if renamed_from.is_empty() { "a" } else { "b" };
            let reg = Registration {
                node,
                cluster_id: cluster,
                renamed_from,
                generation,
                held: 1,
            };
            let mut state = state(5);
            if let Some(node) = state.nodes.get_mut("a") {
                node.sent_generation = loaded;
            }
            let got = quarantine_reason(&state, &reg);
            assert_eq!(
                got.is_some(),
                want,
                "{cluster} {generation} {renamed_from} {loaded:?}: {got:?}"
            );
        }
    }

    /// A node the store forgot comes back unquarantined while its agent holds no set newer
    /// than the store sent it; one the store has no record of at all (nor a tombstone) is told
    /// apart from a store behind its agent, and the reason says what adopting it does.
    #[test]
    fn a_node_that_returns_after_it_was_forgotten() {
        let reg = |generation| Registration {
            node: "c",
            cluster_id: "ours",
            renamed_from: "",
            generation,
            held: 3,
        };
        let mut forgot = state(5);
        forgot.forgotten.insert(
            "c".into(),
            ForgottenNode {
                name: "c".into(),
                sent_up_to: 13,
                generation: 20,
                forgotten_ms: 0,
            },
        );
        for (generation, want) in [
            (0, None),
            (13, None),
            (14, Some("only up to generation 13")),
        ] {
            let got = quarantine_reason(&forgot, &reg(generation));
            assert_eq!(
                got.as_deref().map(|why| why.contains(want.unwrap_or("-"))),
                want.map(|_| true),
                "agent at {generation}: {got:?}"
            );
        }
        // Only the forgotten name: another name's agent is not let in by it, nor one renamed
        // to it from a name the store has no record of.
        let other = Registration {
            node: "d",
            ..reg(13)
        };
        assert!(quarantine_reason(&forgot, &other).is_some());
        let renamed = Registration {
            renamed_from: "x",
            ..reg(13)
        };
        assert!(quarantine_reason(&forgot, &renamed).is_some());

        assert_eq!(quarantine_reason(&state(5), &reg(0)), None, "a new node");
        let why = quarantine_reason(&state(5), &reg(13)).unwrap_or_default();
        for want in [
            "no record of node c",
            "forgotten long ago",
            "its 3 instance(s) keep running",
            "stops the rest",
        ] {
            assert!(why.contains(want), "{want:?} in {why}");
        }
        let known = Registration {
            node: "a",
            ..reg(13)
        };
        let why = quarantine_reason(&state(5), &known).unwrap_or_default();
        assert!(why.contains("a lost or restored store?"), "{why}");
    }

    /// Held instances of a new app are imported with their ids; one whose index a placed record
    /// already holds is not, and neither is a second copy of an index.
    #[test]
    fn adoption() {
        let held = |n: u128, index: u32| Held {
            id: Uuid::from_u128(n),
            spec: AppSpec::new("web", "app", &[]).into(),
            index,
            port: 0,
            app_version: 3,
            restart_epoch: 0,
            run: true,
        };
        let batch = adoption_batch(&state(5), "a", &[held(2, 1), held(1, 0), held(3, 1)], 9);
        let got: Vec<(u128, u32)> = batch
            .put_instances
            .iter()
            .map(|r| (r.id.as_u128(), r.index))
            .collect();
        assert_eq!(got, [(1, 0), (2, 1)]);
        let app = batch
            .put_apps
            .first()
            .map(|a| (a.version, a.spec.instances));
        assert_eq!(
            app,
            Some((3, 2)),
            "the app at the agent's version, with both indices"
        );
        let mut taken = state(5);
        taken.apply(&batch);
        let again = adoption_batch(&taken, "a", &[held(4, 0)], 10);
        assert!(again.put_instances.is_empty(), "index 0 is held already");
    }
}
