//! Scheduler throughput: the pure reconcile path placing 100,000 instances over 5,000 nodes with
//! resource requests and label constraints. Run: `cargo bench -p pmcluster-coordinator --bench scheduler`.
//! Prints placements per second; no assertion (timing belongs in reports, not tests).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use pmcluster_coordinator::core::reconcile::{Link, NodeView, Snapshot, reconcile};
use pmcluster_coordinator::model::AppRecord;
use pmcluster_spec::AppSpec;
use pmcluster_spec::placement::{Constraint, Strategy};

const NODES: usize = 5_000;
const APPS: usize = 100;
const PER_APP: u32 = 1_000;
const REGIONS: [&str; 4] = ["eu", "us", "ap", "sa"];

fn main() {
    let labels: Vec<(String, BTreeMap<String, String>)> = (0..NODES)
        .map(|i| {
            let mut l = BTreeMap::new();
            l.insert("region".to_string(), REGIONS[i % REGIONS.len()].to_string());
            l.insert(
                "disk".to_string(),
                if i % 3 == 0 { "hdd" } else { "ssd" }.to_string(),
            );
            (format!("node-{i:05}"), l)
        })
        .collect();
    let nodes: Vec<NodeView<'_>> = labels
        .iter()
        .map(|(name, labels)| NodeView {
            name,
            labels,
            cores: 64,
            memory_bytes: 256 << 30,
            link: Link::Up,
            drain: false,
        })
        .collect();
    let apps: BTreeMap<String, AppRecord> = (0..APPS)
        .map(|a| {
            let name = format!("app-{a:03}");
            let mut spec = AppSpec::new(&name, "x", &[]);
            spec.instances = PER_APP;
            spec.resources.cpu_millis = 100;
            spec.resources.memory_bytes = 64 << 20;
            spec.placement.constraints = vec![
                Constraint::parse("c", &format!("region={}", REGIONS[a % REGIONS.len()]))
                    .unwrap_or(Constraint::Exists("region".into())),
                Constraint::parse("c", "disk!=hdd").unwrap_or(Constraint::Exists("disk".into())),
            ];
            if a % 2 == 1 {
                spec.placement.strategy = Strategy::Binpack;
            }
            (name, AppRecord::new(spec, 0))
        })
        .collect();
    let instances = BTreeMap::new();
    let online = BTreeSet::new();
    let exited = BTreeSet::new();
    let unstartable = BTreeMap::new();
    let mut best = f64::MAX;
    for run in 0..3 {
        let start = Instant::now();
        let plan = reconcile(Snapshot {
            apps: &apps,
            instances: &instances,
            nodes: &nodes,
            online: &online,
            exited: &exited,
            now_ms: 0,
            unstartable: &unstartable,
            max_instances_per_app: u32::MAX,
            scope: None,
            index: None,
        });
        let secs = start.elapsed().as_secs_f64();
        let placed = plan.create.iter().filter(|c| c.node.is_some()).count();
        assert_eq!(
            placed,
            APPS * PER_APP as usize,
            "everything fits: {:?}",
            plan.pending
        );
        println!(
            "run {run}: placed {placed} instances over {NODES} nodes in {:.1} ms = {:.0} placements/s",
            secs * 1000.0,
            placed as f64 / secs
        );
        best = best.min(secs);
    }
    println!(
        "scheduler: best of 3: {:.0} placements/s ({} instances, {NODES} nodes, resources + 2 constraints, spread and binpack)",
        (APPS * PER_APP as usize) as f64 / best,
        APPS * PER_APP as usize
    );
}
