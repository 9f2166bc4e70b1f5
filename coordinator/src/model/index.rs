//! What the instance records add up to, per app and per node, kept by [`Persisted::apply`] as
//! batches change the records. A write's plan and an app's view read their app's records and the
//! nodes' use from here; without it each of them passed every record in the cluster, which made
//! creating an app cost time in proportion to the cluster's size.
//!
//! Derived data: [`RecordIndex::build`] gives the same index from the records alone, and debug
//! builds check that it does whenever the index is read ([`Persisted::index`]).
//!
//! [`Persisted::apply`]: super::Persisted::apply
//! [`Persisted::index`]: super::Persisted::index

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{AppRecord, InstanceRecord};

/// What the records on one node hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUse {
    /// Records on the node, every app.
    pub records: u32,
    /// Millicores and bytes the records reserve, at their apps' current specs. Wide enough
    /// that no number of records can overflow them (100,000 records of the largest request
    /// would pass `i64`), so that taking a record back always undoes adding it.
    pub cpu_millis: i128,
    pub memory_bytes: i128,
    /// Each port a record holds, with how many hold it.
    pub ports: BTreeMap<u16, u32>,
}

/// Per-app and per-node sums over the instance records.
#[derive(Clone, Default)]
pub struct RecordIndex {
    /// Records counted: the state's record count whenever the index is current. A state whose
    /// records were changed without [`super::Persisted::apply`] shows another count, and is read
    /// by passing its records until its next apply builds the index again.
    pub(super) records: usize,
    /// (index, id) of each app's records.
    apps: BTreeMap<String, BTreeSet<(u32, Uuid)>>,
    /// Use of each node that records name (registered or not).
    nodes: BTreeMap<String, NodeUse>,
    /// Records that take over from another (a migration's replacement).
    replacing: BTreeSet<Uuid>,
}

/// Derived from the records, so two states whose records are equal are equal whatever their
/// indexes hold (one may not be built yet); [`RecordIndex::matches`] compares the contents.
impl PartialEq for RecordIndex {
    fn eq(&self, _: &RecordIndex) -> bool {
        true
    }
}

impl Eq for RecordIndex {}

impl std::fmt::Debug for RecordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Derived from the records, which the state prints already.
        write!(
            f,
            "RecordIndex({} records, {} apps, {} nodes)",
            self.records,
            self.apps.len(),
            self.nodes.len()
        )
    }
}

/// What a record of `app` reserves on its node.
pub(super) fn reservation(app: Option<&AppRecord>) -> (i128, i128) {
    app.map_or((0, 0), |a| {
        let r = &a.spec.resources;
        (i128::from(r.cpu_millis), i128::from(r.memory_bytes))
    })
}

impl RecordIndex {
    pub fn build(
        apps: &BTreeMap<String, AppRecord>,
        instances: &BTreeMap<Uuid, InstanceRecord>,
    ) -> RecordIndex {
        let mut index = RecordIndex::default();
        for inst in instances.values() {
            index.add(inst, apps);
        }
        index
    }

    /// Whether both hold the same sums.
    pub fn matches(&self, other: &RecordIndex) -> bool {
        self.records == other.records
            && self.apps == other.apps
            && self.nodes == other.nodes
            && self.replacing == other.replacing
    }

    /// (index, id) of `app`'s records, in that order.
    pub fn of_app(&self, app: &str) -> Option<&BTreeSet<(u32, Uuid)>> {
        self.apps.get(app)
    }

    pub fn node(&self, name: &str) -> Option<&NodeUse> {
        self.nodes.get(name)
    }

    pub fn replacing(&self) -> &BTreeSet<Uuid> {
        &self.replacing
    }

    /// Whether any record of `app` is counted.
    pub(super) fn holds(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    pub(super) fn add(&mut self, inst: &InstanceRecord, apps: &BTreeMap<String, AppRecord>) {
        self.records += 1;
        match self.apps.get_mut(inst.app.as_str()) {
            Some(set) => {
                set.insert((inst.index, inst.id));
            }
            None => {
                self.apps
                    .insert(inst.app.clone(), BTreeSet::from([(inst.index, inst.id)]));
            }
        }
        if inst.replaces.is_some() {
            self.replacing.insert(inst.id);
        }
        let Some(node) = inst.node.as_deref() else {
            return;
        };
        if !self.nodes.contains_key(node) {
            self.nodes.insert(node.to_string(), NodeUse::default());
        }
        let Some(u) = self.nodes.get_mut(node) else {
            return;
        };
        let (cpu, memory) = reservation(apps.get(&inst.app));
        u.records += 1;
        u.cpu_millis += cpu;
        u.memory_bytes += memory;
        if let Some(p) = inst.port {
            *u.ports.entry(p).or_default() += 1;
        }
    }

    /// Takes back what [`RecordIndex::add`] added for `inst`, with the same apps.
    pub(super) fn sub(&mut self, inst: &InstanceRecord, apps: &BTreeMap<String, AppRecord>) {
        self.records = self.records.saturating_sub(1);
        if let Some(set) = self.apps.get_mut(inst.app.as_str()) {
            set.remove(&(inst.index, inst.id));
            if set.is_empty() {
                self.apps.remove(inst.app.as_str());
            }
        }
        self.replacing.remove(&inst.id);
        let Some(node) = inst.node.as_deref() else {
            return;
        };
        let Some(u) = self.nodes.get_mut(node) else {
            return;
        };
        let (cpu, memory) = reservation(apps.get(&inst.app));
        u.records = u.records.saturating_sub(1);
        u.cpu_millis -= cpu;
        u.memory_bytes -= memory;
        if let Some(p) = inst.port
            && let Some(n) = u.ports.get_mut(&p)
        {
            *n -= 1;
            if *n == 0 {
                u.ports.remove(&p);
            }
        }
        if u.records == 0 {
            self.nodes.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, Persisted};
    use pmcluster_spec::AppSpec;

    fn app(name: &str, cpu: u32) -> AppRecord {
        let mut spec = AppSpec::new(name, "x", &[]);
        spec.resources.cpu_millis = cpu;
        AppRecord::new(spec, 0)
    }

    fn rec(
        n: u128,
        app: &str,
        index: u32,
        node: Option<&str>,
        port: Option<u16>,
    ) -> InstanceRecord {
        InstanceRecord {
            id: Uuid::from_u128(n),
            app: app.to_string(),
            index,
            node: node.map(str::to_string),
            port,
            app_version: 1,
            restart_epoch: 0,
            stopped: false,
            replaces: None,
            draining_since: None,
            created_ms: 0,
            avoid: Vec::new(),
            disabled: false,
        }
    }

    /// Each batch is applied, and the index must equal one built from the records afresh.
    #[test]
    fn applied_batches_keep_the_index_equal_to_a_fresh_build() {
        let moved = InstanceRecord {
            replaces: Some(Uuid::from_u128(1)),
            ..rec(2, "web", 0, Some("b"), Some(80))
        };
        let batches = [
            // Records first, then their app: they reserve nothing until it exists.
            Batch {
                put_instances: vec![rec(1, "web", 0, Some("a"), Some(80))],
                ..Batch::default()
            },
            Batch::app(app("web", 500)),
            Batch {
                put_apps: vec![app("api", 0)],
                put_instances: vec![moved, rec(3, "api", 0, None, None)],
                ..Batch::default()
            },
            // A record put and deleted in one batch, and a pending one placed.
            Batch {
                put_instances: vec![
                    rec(4, "api", 1, Some("a"), Some(80)),
                    rec(3, "api", 0, Some("a"), Some(81)),
                ],
                del_instances: vec![Uuid::from_u128(4)],
                ..Batch::default()
            },
            // A reservation that changes, then an app deleted under its records.
            Batch::app(app("web", 250)),
            Batch {
                del_apps: vec!["web".to_string()],
                del_instances: vec![Uuid::from_u128(1)],
                ..Batch::default()
            },
        ];
        let mut state = Persisted::default();
        for (i, batch) in batches.iter().enumerate() {
            state.apply(batch);
            let fresh = RecordIndex::build(&state.apps, &state.instances);
            assert!(state.index.matches(&fresh), "after batch {i}: {state:?}");
            assert!(state.index().is_some(), "after batch {i}");
        }
        let ix = state.index().expect("current");
        let a = ix.node("a").expect("a holds api[0]");
        assert_eq!((a.records, a.cpu_millis), (1, 0));
        assert_eq!(a.ports, BTreeMap::from([(81, 1)]));
        assert_eq!(ix.node("b").map(|b| b.cpu_millis), Some(0));
        assert_eq!(ix.replacing(), &BTreeSet::from([Uuid::from_u128(2)]));
        let api: Vec<u32> = state.app_instances("api").iter().map(|r| r.index).collect();
        assert_eq!(api, [0]);
    }

    /// A state filled without `apply` is read from its records, and its next apply builds the
    /// index again.
    #[test]
    fn records_filled_directly_are_read_until_the_next_apply() {
        let mut state = Persisted::default();
        let r = rec(1, "web", 0, Some("a"), None);
        state.instances.insert(r.id, r);
        assert!(state.index().is_none());
        assert_eq!(state.app_instances("web").len(), 1);
        state.apply(&Batch::app(app("web", 100)));
        let ix = state.index().expect("rebuilt by the apply");
        assert_eq!(ix.node("a").map(|a| a.cpu_millis), Some(100));
    }
}
