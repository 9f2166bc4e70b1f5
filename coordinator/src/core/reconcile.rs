//! The reconciler: compares desired apps with the instance records and says what must change.
//!
//! Buckets per app: *excess* (index at or above the desired count, or app gone) is removed;
//! *missing* indices are created; *pending* records (no node) are placed when a ready node exists;
//! *outdated* records (older app version or a port that no longer matches the range) are
//! refreshed in place. Everything else is left alone, so a converged state gives an empty plan.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::core::scheduler::{self, NodeLoad};
use crate::model::{AppRecord, InstanceRecord};

/// What the reconciler looks at.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub apps: &'a BTreeMap<String, AppRecord>,
    pub instances: &'a BTreeMap<Uuid, InstanceRecord>,
    /// Nodes that may receive new instances, sorted.
    pub ready_nodes: &'a [String],
}

/// A new instance record to create; the apply step mints its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub app: String,
    pub index: u32,
    pub node: Option<String>,
    pub port: Option<u16>,
}

/// The reconciler's output. Empty when nothing needs to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Create>,
    /// Pending records that now have a node.
    pub assign: Vec<(Uuid, String)>,
    /// Records whose version or port changed: the new version and port.
    pub refresh: Vec<(Uuid, u64, Option<u16>)>,
    pub remove: Vec<Uuid>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.assign.is_empty()
            && self.refresh.is_empty()
            && self.remove.is_empty()
    }
}

pub fn reconcile(snap: Snapshot<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut by_app: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
    for inst in snap.instances.values() {
        by_app.entry(inst.app.as_str()).or_default().push(inst);
    }
    // Records of deleted apps.
    for (app, insts) in &by_app {
        if !snap.apps.contains_key(*app) {
            plan.remove.extend(insts.iter().map(|i| i.id));
        }
    }
    // Loads over every app, kept current as this plan places instances.
    let mut totals: BTreeMap<&str, u32> =
        snap.ready_nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for inst in snap.instances.values() {
        if let Some(t) = inst.node.as_deref().and_then(|n| totals.get_mut(n)) {
            *t += 1;
        }
    }
    for (name, app) in snap.apps {
        let want = app.spec.instances;
        let mut insts = by_app.remove(name.as_str()).unwrap_or_default();
        // Placed records first, then by id, so a duplicate index keeps its running copy.
        insts.sort_by_key(|i| (i.index, i.node.is_none(), i.id));
        let mut seen = BTreeSet::new();
        let mut keep = Vec::new();
        for inst in insts {
            if inst.index >= want || !seen.insert(inst.index) {
                plan.remove.push(inst.id);
            } else {
                keep.push(inst);
            }
        }
        let mut loads: Vec<NodeLoad> = snap
            .ready_nodes
            .iter()
            .map(|n| NodeLoad {
                name: n.clone(),
                app_count: keep.iter().filter(|i| i.node.as_deref() == Some(n)).count() as u32,
                total: totals.get(n.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let place = |loads: &mut Vec<NodeLoad>, totals: &mut BTreeMap<&str, u32>| {
            let node = scheduler::place_one(loads)?;
            if let Some(t) = totals.get_mut(node.as_str()) {
                *t += 1;
            }
            Some(node)
        };
        for inst in &keep {
            let port = app.spec.port.port_for(inst.index);
            if inst.app_version != app.version || inst.port != port {
                plan.refresh.push((inst.id, app.version, port));
            }
            if inst.node.is_none()
                && let Some(node) = place(&mut loads, &mut totals)
            {
                plan.assign.push((inst.id, node));
            }
        }
        for index in 0..want {
            if !seen.contains(&index) {
                plan.create.push(Create {
                    app: name.clone(),
                    index,
                    node: place(&mut loads, &mut totals),
                    port: app.spec.port.port_for(index),
                });
            }
        }
    }
    plan.remove.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmcluster_spec::{AppSpec, PortSpec};

    /// Builds state from text: apps as `name=count[@port-range][vN]`, instances as
    /// `app/index@node` (`-` for pending), ids numbered in order.
    struct Fixture {
        apps: BTreeMap<String, AppRecord>,
        instances: BTreeMap<Uuid, InstanceRecord>,
        nodes: Vec<String>,
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn fixture(apps: &str, instances: &str, nodes: &str) -> Fixture {
        let apps = apps
            .split_whitespace()
            .map(|a| {
                let (name, rest) = a.split_once('=').unwrap_or((a, "1"));
                let (rest, version) = rest.split_once('v').unwrap_or((rest, "1"));
                let (count, port) = rest.split_once('@').unwrap_or((rest, ""));
                let mut spec = AppSpec::new(name, "x", &[]);
                spec.instances = count.parse().unwrap_or(0);
                spec.port = PortSpec::parse(port).unwrap_or_default();
                let rec = AppRecord {
                    spec,
                    version: version.parse().unwrap_or(1),
                    updated_at_ms: 0,
                };
                (name.to_string(), rec)
            })
            .collect();
        let instances = instances
            .split_whitespace()
            .enumerate()
            .map(|(n, s)| {
                let (ai, node) = s.split_once('@').unwrap_or((s, "-"));
                let (app, index) = ai.split_once('/').unwrap_or((ai, "0"));
                let rec = InstanceRecord {
                    id: id(n as u128 + 1),
                    app: app.into(),
                    index: index.parse().unwrap_or(0),
                    node: (node != "-").then(|| node.to_string()),
                    port: None,
                    app_version: 1,
                    restart_epoch: 0,
                    stopped: false,
                };
                (rec.id, rec)
            })
            .collect();
        Fixture {
            apps,
            instances,
            nodes: nodes.split_whitespace().map(String::from).collect(),
        }
    }

    /// Renders a plan as text: `+app/index@node`, `=id@node` (assign), `~id vN pP` (refresh),
    /// `-id` (remove).
    fn render(plan: &Plan) -> String {
        let short = |u: &Uuid| u.as_u128().to_string();
        let mut out = Vec::new();
        for c in &plan.create {
            let port = c.port.map(|p| format!(":{p}")).unwrap_or_default();
            out.push(format!(
                "+{}/{}@{}{}",
                c.app,
                c.index,
                c.node.as_deref().unwrap_or("-"),
                port
            ));
        }
        for (i, n) in &plan.assign {
            out.push(format!("={}@{n}", short(i)));
        }
        for (i, v, p) in &plan.refresh {
            out.push(format!(
                "~{} v{v} p{}",
                short(i),
                p.map(|p| p.to_string()).unwrap_or("-".into())
            ));
        }
        for i in &plan.remove {
            out.push(format!("-{}", short(i)));
        }
        out.join(" ")
    }

    fn check(apps: &str, instances: &str, nodes: &str, want: &str) {
        let f = fixture(apps, instances, nodes);
        let snap = Snapshot {
            apps: &f.apps,
            instances: &f.instances,
            ready_nodes: &f.nodes,
        };
        let plan = reconcile(snap);
        assert_eq!(
            render(&plan),
            want,
            "apps {apps:?} instances {instances:?} nodes {nodes:?}"
        );
        // Idempotence: the same input gives the same plan.
        assert_eq!(reconcile(snap), plan);
    }

    #[test]
    fn table() {
        // Converged: nothing to do.
        check("web=2", "web/0@a web/1@b", "a b", "");
        check("", "", "a", "");
        // Fresh app spreads over the nodes.
        check("web=4", "", "a b c", "+web/0@a +web/1@b +web/2@c +web/3@a");
        // No ready node: everything pending.
        check("web=2", "", "", "+web/0@- +web/1@-");
        // Pending instances are placed when a node appears.
        check("web=2", "web/0@- web/1@-", "b", "=1@b =2@b");
        // Scale up fills the least loaded nodes first.
        check("web=3", "web/0@a web/1@a", "a b", "+web/2@b");
        // Other apps count towards the tie-break.
        check("web=1 api=1", "api/0@a", "a b", "+web/0@b");
        // Scale down removes the highest indices.
        check("web=1", "web/0@a web/1@b web/2@c", "a b c", "-2 -3");
        // Deleted app: every record goes.
        check("", "web/0@a web/1@b", "a b", "-1 -2");
        // Duplicate index: the placed copy stays.
        check("web=1", "web/0@- web/0@a", "a", "-1");
        // Ports follow the index.
        check("web=2@4100-4199", "", "a", "+web/0@a:4100 +web/1@a:4101");
        // A new version refreshes records in place.
        check("web=1v2", "web/0@a", "a", "~1 v2 p-");
        // Instances on a node that is not ready stay where they are (no rescheduling here).
        check("web=2", "web/0@gone web/1@a", "a", "");
    }
}
