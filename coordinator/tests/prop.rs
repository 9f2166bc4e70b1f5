//! Property tests for the pure core: placement and reconcile never use a drained or down node, a
//! converged state plans nothing, a plan applied once is not planned again, and a rollout never
//! starts more replacements than its update policy allows. Proptest shrinks a failure to a
//! small cluster, which is what makes one readable.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_coordinator::core::reconcile::{self, Link, NodeView, Plan, Snapshot};
use pmcluster_coordinator::core::rollout::{self, Facts};
use pmcluster_coordinator::model::{AppRecord, InstanceRecord, RecordIndex};
use pmcluster_coordinator::model::{Deployment, Kind, State};
use pmcluster_spec::AppSpec;
use pmcluster_spec::app::PortSpec;
use proptest::prelude::*;
use uuid::Uuid;

const NOW: i64 = 1_000_000;

#[derive(Debug, Clone)]
struct NodeIn {
    link: u8,
    drain: bool,
    cores: u32,
}

#[derive(Debug, Clone)]
struct RecIn {
    app: usize,
    index: u32,
    /// A node index, or none (pending).
    node: Option<usize>,
    online: bool,
    draining: bool,
    old_version: bool,
    /// Its agent cannot start it (long enough ago to move it).
    failing: bool,
    /// Its agent reports it exited (for good in `app1`, whose autorestart is off).
    exited: bool,
}

#[derive(Debug, Clone)]
struct World {
    nodes: Vec<NodeIn>,
    counts: Vec<u32>,
    records: Vec<RecIn>,
}

fn world() -> impl Strategy<Value = World> {
    let node = (0u8..4, any::<bool>(), 1u32..8).prop_map(|(link, drain, cores)| NodeIn {
        link,
        drain,
        cores,
    });
    let rec = (
        0usize..2,
        0u32..6,
        proptest::option::of(0usize..5),
        any::<bool>(),
        0u8..6,
        0u8..4,
        0u8..4,
        0u8..4,
    )
        .prop_map(
            |(app, index, node, online, draining, old, failing, exited)| RecIn {
                app,
                index,
                node,
                online,
                draining: draining == 0,
                old_version: old == 0,
                failing: failing == 0,
                exited: exited == 0 && !online,
            },
        );
    (
        proptest::collection::vec(node, 1..5),
        proptest::collection::vec(0u32..6, 2..=2),
        proptest::collection::vec(rec, 0..12),
    )
        .prop_map(|(nodes, counts, records)| World {
            nodes,
            counts,
            records,
        })
}

/// Owned state a `Snapshot` borrows from.
struct Owned {
    apps: BTreeMap<String, AppRecord>,
    instances: BTreeMap<Uuid, InstanceRecord>,
    names: Vec<String>,
    labels: BTreeMap<String, String>,
    nodes: Vec<NodeIn>,
    online: BTreeSet<Uuid>,
    exited: BTreeSet<Uuid>,
    unstartable: BTreeMap<Uuid, i64>,
    next_id: u128,
}

impl Owned {
    fn new(w: &World) -> Owned {
        let mut apps = BTreeMap::new();
        for (i, count) in w.counts.iter().enumerate() {
            let mut spec = AppSpec::new(&format!("app{i}"), "x", &[]);
            spec.instances = *count;
            // One app of jobs: an exited instance of it has finished.
            spec.autorestart = i == 0;
            let rec = AppRecord {
                version: 2,
                ..AppRecord::new(spec, 0)
            };
            apps.insert(format!("app{i}"), rec);
        }
        let names: Vec<String> = (0..w.nodes.len()).map(|i| format!("n{i}")).collect();
        let mut owned = Owned {
            apps,
            instances: BTreeMap::new(),
            names,
            labels: BTreeMap::new(),
            nodes: w.nodes.clone(),
            online: BTreeSet::new(),
            exited: BTreeSet::new(),
            unstartable: BTreeMap::new(),
            next_id: 1,
        };
        for r in &w.records {
            let id = owned.id();
            // A record on a node that does not exist is on an unknown node: also a case.
            let node = r.node.map(|n| format!("n{n}"));
            owned.instances.insert(
                id,
                InstanceRecord {
                    id,
                    app: format!("app{}", r.app),
                    index: r.index,
                    node,
                    port: None,
                    app_version: if r.old_version { 1 } else { 2 },
                    restart_epoch: 0,
                    stopped: false,
                    replaces: None,
                    draining_since: r.draining.then_some(NOW - 10),
                    created_ms: 0,
                    avoid: Vec::new(),
                    disabled: false,
                },
            );
            if r.online {
                owned.online.insert(id);
            }
            if r.exited {
                owned.exited.insert(id);
            }
            if r.failing {
                owned.unstartable.insert(id, NOW - 5_000_000);
            }
        }
        owned
    }

    fn id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    fn link(n: &NodeIn) -> Link {
        match n.link {
            0 | 1 => Link::Up,
            2 => Link::Down(NOW - 5_000_000),
            _ => Link::Quarantined,
        }
    }

    fn plan(&self) -> Plan {
        self.plan_scoped(None)
    }

    fn plan_scoped(&self, scope: Option<&BTreeSet<String>>) -> Plan {
        self.plan_with(scope, None)
    }

    fn plan_with(&self, scope: Option<&BTreeSet<String>>, index: Option<&RecordIndex>) -> Plan {
        let views: Vec<NodeView<'_>> = self
            .names
            .iter()
            .zip(&self.nodes)
            .map(|(name, n)| NodeView {
                name,
                labels: &self.labels,
                cores: n.cores,
                memory_bytes: 8 << 30,
                link: Owned::link(n),
                drain: n.drain,
            })
            .collect();
        reconcile::reconcile(Snapshot {
            apps: &self.apps,
            instances: &self.instances,
            nodes: &views,
            online: &self.online,
            exited: &self.exited,
            now_ms: NOW,
            unstartable: &self.unstartable,
            max_instances_per_app: u32::MAX,
            scope,
            index,
        })
    }

    /// Whether the reconciler may place on `node`.
    fn eligible(&self, node: &str) -> bool {
        self.names
            .iter()
            .position(|n| n == node)
            .is_some_and(|i| Owned::link(&self.nodes[i]) == Link::Up && !self.nodes[i].drain)
    }

    /// Applies `plan` as the shell's write path does (fresh ids for created records).
    fn apply(&mut self, plan: &Plan) {
        for (id, node) in &plan.assign {
            if let Some(r) = self.instances.get_mut(id) {
                r.node = Some(node.clone());
            }
        }
        for (id, version, port) in &plan.refresh {
            if let Some(r) = self.instances.get_mut(id) {
                r.app_version = *version;
                r.port = *port;
            }
        }
        for c in &plan.create {
            let id = self.id();
            let version = self.apps.get(&c.app).map_or(1, |a| a.version);
            self.instances.insert(
                id,
                InstanceRecord {
                    id,
                    app: c.app.clone(),
                    index: c.index,
                    node: c.node.clone(),
                    port: c.port,
                    app_version: version,
                    restart_epoch: 0,
                    stopped: c.stopped,
                    replaces: c.replaces,
                    draining_since: None,
                    created_ms: NOW,
                    avoid: c.avoid.clone(),
                    disabled: false,
                },
            );
        }
        for id in &plan.drain {
            if let Some(r) = self.instances.get_mut(id) {
                r.draining_since = Some(NOW);
            }
        }
        for id in &plan.remove {
            self.instances.remove(id);
            self.online.remove(id);
            self.exited.remove(id);
            self.unstartable.remove(id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A plan scoped to one app (a write's) changes only that app's records, and is the full
    /// plan whenever no other app needs anything.
    #[test]
    fn a_scoped_plan_is_the_full_plan_of_its_app(w in world()) {
        let owned = Owned::new(&w);
        let full = owned.plan();
        let app_of = |id: &Uuid| owned.instances.get(id).map(|r| r.app.clone());
        let apps_of = |p: &Plan| -> BTreeSet<String> {
            let ids = p.assign.iter().map(|(id, _)| id)
                .chain(p.refresh.iter().map(|(id, _, _)| id))
                .chain(&p.remove)
                .chain(&p.drain);
            ids.filter_map(app_of).chain(p.create.iter().map(|c| c.app.clone())).collect()
        };
        for app in owned.apps.keys() {
            let scope = BTreeSet::from([app.clone()]);
            let scoped = owned.plan_scoped(Some(&scope));
            let touched = apps_of(&scoped);
            prop_assert!(touched.is_subset(&scope), "scoped to {app}, touched {touched:?}");
            if apps_of(&full).is_subset(&scope) {
                prop_assert_eq!(&scoped.create, &full.create);
                prop_assert_eq!(&scoped.assign, &full.assign);
                prop_assert_eq!(&scoped.refresh, &full.refresh);
                prop_assert_eq!(&scoped.remove, &full.remove);
                prop_assert_eq!(&scoped.drain, &full.drain);
            }
        }
    }

    /// A plan read from the state's record index is the plan read from the records alone, full
    /// and scoped: with reservations, ports, and migrations under way, which the index sums.
    #[test]
    fn the_record_index_plans_as_the_records_do(
        w in world(),
        cpu in 0u32..3000,
        ported in any::<bool>(),
        replacing in proptest::collection::vec(any::<bool>(), 12),
    ) {
        let mut owned = Owned::new(&w);
        if let Some(app) = owned.apps.get_mut("app0") {
            app.spec.resources.cpu_millis = cpu;
        }
        if ported && let Some(app) = owned.apps.get_mut("app1") {
            app.spec.port = PortSpec::Range(5000, 5009);
        }
        let ids: Vec<Uuid> = owned.instances.keys().copied().collect();
        for (i, id) in ids.iter().enumerate() {
            let replaces = (i > 0 && replacing[i]).then(|| ids[i - 1]);
            if let Some(r) = owned.instances.get_mut(id) {
                let app = &owned.apps[&r.app];
                r.port = app.spec.port.port_for(r.index);
                r.replaces = replaces;
            }
        }
        let index = RecordIndex::build(&owned.apps, &owned.instances);
        prop_assert_eq!(owned.plan_with(None, Some(&index)), owned.plan());
        for app in owned.apps.keys() {
            let scope = BTreeSet::from([app.clone()]);
            prop_assert_eq!(
                owned.plan_with(Some(&scope), Some(&index)),
                owned.plan_scoped(Some(&scope))
            );
        }
    }

    /// Nothing is placed or created on a drained, down, quarantined or unknown node.
    #[test]
    fn never_places_on_an_ineligible_node(w in world()) {
        let owned = Owned::new(&w);
        let plan = owned.plan();
        for (id, node) in &plan.assign {
            prop_assert!(owned.eligible(node), "{id} assigned to ineligible {node}: {plan:?}");
        }
        for c in &plan.create {
            if let Some(node) = &c.node {
                prop_assert!(owned.eligible(node), "created on ineligible {node}: {plan:?}");
            }
        }
    }

    /// The reconciler is a function: the same state gives the same plan, and a plan applied is
    /// not planned again (no second record for an index it created or placed).
    #[test]
    fn a_plan_applied_is_not_planned_again(w in world()) {
        let mut owned = Owned::new(&w);
        let first = owned.plan();
        prop_assert_eq!(&first, &owned.plan());
        owned.apply(&first);
        let second = owned.plan();
        let created: BTreeSet<(&str, u32)> =
            first.create.iter().map(|c| (c.app.as_str(), c.index)).collect();
        for c in &second.create {
            prop_assert!(
                !created.contains(&(c.app.as_str(), c.index)),
                "{}[{}] created twice: {first:?} then {second:?}", c.app, c.index
            );
        }
        let assigned: BTreeSet<Uuid> = first.assign.iter().map(|(id, _)| *id).collect();
        for (id, _) in &second.assign {
            prop_assert!(!assigned.contains(id), "{id} assigned twice");
        }
    }

    /// A converged cluster (every index once, online, current, on an eligible node) plans
    /// nothing, whatever the other nodes look like.
    #[test]
    fn a_converged_state_plans_nothing(w in world()) {
        let mut owned = Owned::new(&w);
        owned.instances.clear();
        owned.online.clear();
        owned.unstartable.clear();
        let eligible: Vec<String> =
            owned.names.iter().filter(|n| owned.eligible(n)).cloned().collect();
        prop_assume!(!eligible.is_empty());
        let apps: Vec<(String, u32, u64)> = owned
            .apps
            .iter()
            .map(|(n, a)| (n.clone(), a.spec.instances, a.version))
            .collect();
        for (app, count, version) in apps {
            for index in 0..count {
                let id = owned.id();
                let node = eligible[(index as usize) % eligible.len()].clone();
                owned.instances.insert(id, InstanceRecord {
                    id,
                    app: app.clone(),
                    index,
                    node: Some(node),
                    port: None,
                    app_version: version,
                    restart_epoch: 0,
                    stopped: false,
                    replaces: None,
                    draining_since: None,
                    created_ms: 0,
                    avoid: Vec::new(),
                    disabled: false,
                });
                owned.online.insert(id);
            }
        }
        let plan = owned.plan();
        prop_assert!(plan.is_empty(), "{plan:?}");
    }

    /// A rollout never has more replacements under way than max_surge + max_unavailable, step
    /// after step, whichever replacements become healthy when.
    #[test]
    fn a_rollout_never_exceeds_its_surge(
        count in 1u32..8,
        max_surge in 0u32..3,
        max_unavailable in 0u32..3,
        healthy in proptest::collection::vec(any::<bool>(), 1..30),
    ) {
        prop_assume!(max_surge + max_unavailable > 0);
        let mut policy = pmcluster_spec::update::UpdatePolicy {
            max_surge,
            max_unavailable,
            ..Default::default()
        };
        policy.min_healthy_time = std::time::Duration::ZERO;
        let mut records: BTreeMap<Uuid, InstanceRecord> = BTreeMap::new();
        let mut facts: BTreeMap<Uuid, Facts> = BTreeMap::new();
        let mut next = 1u128;
        for index in 0..count {
            let id = Uuid::from_u128(next);
            next += 1;
            records.insert(id, InstanceRecord {
                id,
                app: "a".into(),
                index,
                node: Some("n".into()),
                port: None,
                app_version: 1,
                restart_epoch: 0,
                stopped: false,
                replaces: None,
                draining_since: None,
                created_ms: 0,
                avoid: Vec::new(),
                disabled: false,
            });
            facts.insert(id, Facts { healthy_since: Some(0), node_up: true, placed: true, node_draining: false, proven: false, errored: None });
        }
        let mut d = Deployment {
            id: 1,
            kind: Kind::Update,
            from_version: 1,
            to_version: 2,
            restart_epoch: 0,
            state: State::Running,
            started_ms: 0,
            updated_ms: 0,
            progress_ms: 0,
            promoted: false,
            message: String::new(),
            done: 0,
            total: count,
        };
        let budget = max_surge + max_unavailable;
        for (t, becomes_healthy) in healthy.iter().enumerate() {
            let now = 1000 * (t as i64 + 1);
            let refs: Vec<&InstanceRecord> = records.values().collect();
            let step = rollout::step("web", &d, &policy, count, &refs, &facts, now);
            for old in &step.replace {
                let Some(o) = records.get(old).cloned() else { continue };
                let id = Uuid::from_u128(next);
                next += 1;
                records.insert(id, InstanceRecord {
                    id,
                    app_version: 2,
                    replaces: Some(o.id),
                    draining_since: None,
                    created_ms: now,
                    avoid: Vec::new(),
                    disabled: false,
                    ..o
                });
                facts.insert(id, Facts { healthy_since: None, node_up: true, placed: true, node_draining: false, proven: false, errored: None });
            }
            for id in &step.drain {
                if let Some(r) = records.get_mut(id) {
                    r.draining_since = Some(now);
                }
            }
            for id in &step.remove {
                records.remove(id);
            }
            d = step.deployment;
            // Replacements not yet healthy: indices under way.
            let under_way = records
                .values()
                .filter(|r| r.replaces.is_some())
                .filter(|r| facts.get(&r.id).is_some_and(|f| f.healthy_since.is_none()))
                .count() as u32;
            // A stop-then-start index holds the budget until its replacement is healthy (this
            // property found it did not: count 3, max_surge 0, max_unavailable 1, two steps
            // with nothing healthy put 2 under way).
            prop_assert!(under_way <= budget, "{under_way} under way, budget {budget}");
            // Copies that serve or are about to: never more than count + max_surge.
            let copies = records.values().filter(|r| r.draining_since.is_none()).count() as u32;
            prop_assert!(
                copies <= count + max_surge,
                "{copies} copies of {count} instances, max_surge {max_surge}"
            );
            // Some replacements come online between steps.
            if *becomes_healthy {
                for r in records.values().filter(|r| r.app_version == 2) {
                    if let Some(f) = facts.get_mut(&r.id) {
                        f.healthy_since.get_or_insert(now);
                    }
                }
            }
        }
    }
}
