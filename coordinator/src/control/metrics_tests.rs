//! `Control::metrics_view`, the figures `/metrics` serves: built from the records, the agents'
//! reports and the autoscaler's decisions, under a clock the tests move.

use pmcluster_spec::autoscale::AutoscalePolicy;
use pmcluster_spec::{AppSpec, PortSpec};

use super::*;
use crate::clock::ManualClock;
use crate::model::view::{AppFigures, AutoscaleCount, InstanceFigures, MetricsView};
use crate::model::{InstanceObserved, InstanceState, NodeStatus, Registration};
use crate::store::MemoryStore;

const T0: i64 = 1_000_000;
const MIB: u64 = 1 << 20;
const NODE_MEMORY: u64 = 1 << 30;

fn register(name: &str) -> Registration {
    Registration {
        node_name: name.into(),
        cores: 2,
        memory_bytes: NODE_MEMORY,
        ..Registration::default()
    }
}

fn app(name: &str, instances: u32, ports: u16, cpu_millis: u32, memory_bytes: u64) -> AppSpec {
    let mut spec = AppSpec::new(name, "testapp", &[]);
    spec.instances = instances;
    spec.port = PortSpec::Range(ports, ports + 99);
    spec.resources.cpu_millis = cpu_millis;
    spec.resources.memory_bytes = memory_bytes;
    spec
}

/// Figures an instance reports, told apart by its index so that a series mixed up with another
/// shows.
fn figures_of(index: u32) -> (u64, u64, u32) {
    let n = u64::from(index) + 1;
    (1000 * n, 10 * MIB * n, index + 2)
}

/// Reports every instance of `web` placed on `node` in `state`, with [`figures_of`] its index.
fn report(c: &Control, node: &str, session: &Attached, state: InstanceState) -> Result<()> {
    let mut instances = Vec::new();
    for i in c.list_instances("web")? {
        // A removed one still ending is no instance of the agent's set.
        if i.node != node || i.removed {
            continue;
        }
        let id =
            i.id.parse()
                .map_err(|e| ControlError::InvalidArgument(format!("{}: {e}", i.id)))?;
        let (cpu_time_ms, memory_bytes, restarts) = figures_of(i.index);
        instances.push(InstanceObserved {
            id,
            state,
            pid: 100 + i.index,
            cpu_time_ms,
            memory_bytes,
            restarts,
            ..InstanceObserved::default()
        });
    }
    super::report_tests::send(c, node, session, instances);
    Ok(())
}

fn app_figures(v: &MetricsView, name: &str) -> AppFigures {
    v.apps
        .iter()
        .find(|a| a.app == name)
        .cloned()
        .unwrap_or_else(|| panic!("no figures of {name}: {v:?}"))
}

/// (instances, allocated cpu millis, allocated memory, status) of `node`.
fn node_figures(v: &MetricsView, node: &str) -> (u32, u64, u64, NodeStatus) {
    let n = v
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no figures of node {node}: {v:?}"));
    assert_eq!((n.cores, n.memory_bytes), (2, NODE_MEMORY), "{n:?}");
    (
        n.instances,
        n.allocated_cpu_millis,
        n.allocated_memory_bytes,
        n.status,
    )
}

/// Instances of `web` on `node` by the control's own listing.
fn placed_on(c: &Control, node: &str) -> Result<u32> {
    Ok(c.list_instances("web")?
        .iter()
        .filter(|i| i.node == node)
        .count() as u32)
}

/// Online and pending counts, per-instance figures while (and only while) their node is up,
/// node reservations that leave out pending instances, and the rollout's progress.
#[test]
fn metrics_view_counts_instances_nodes_and_the_rollout() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 3));
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_millis(1500),
        ..ControlConfig::default()
    };
    let c = Control::open_with(Arc::new(MemoryStore::default()), config, clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    let b = c.attach(&register("b"), None)?;
    c.apply(app("web", 3, 4100, 500, 128 * MIB))?;
    // More memory than any node has: it waits, and reserves nothing anywhere.
    c.apply(app("big", 1, 4300, 0, 1 << 40))?;
    let (on_a, on_b) = (placed_on(&c, "a")?, placed_on(&c, "b")?);
    assert_eq!(on_a + on_b, 3);
    assert!(on_a > 0 && on_b > 0, "web is spread: a {on_a}, b {on_b}");

    // Nothing reported yet: web is launching (neither online nor pending), big is pending.
    let v = c.metrics_view();
    let web = app_figures(&v, "web");
    assert_eq!((web.desired, web.online, web.pending), (3, 0, 0), "{v:?}");
    let big = app_figures(&v, "big");
    assert_eq!((big.desired, big.online, big.pending), (1, 0, 1), "{v:?}");
    assert_eq!((web.rollout, big.rollout), (None, None), "{v:?}");

    // a's instances come online, b's are still starting.
    report(&c, "a", &a, InstanceState::Online)?;
    report(&c, "b", &b, InstanceState::Launching)?;
    let v = c.metrics_view();
    assert_eq!(app_figures(&v, "web").online, on_a, "{v:?}");
    assert_eq!(app_figures(&v, "web").pending, 0, "{v:?}");
    for (node, n) in [("a", on_a), ("b", on_b)] {
        assert_eq!(
            node_figures(&v, node),
            (
                n,
                500 * u64::from(n),
                128 * MIB * u64::from(n),
                NodeStatus::Ready
            ),
            "{node}: {v:?}"
        );
    }
    let series = |v: &MetricsView| -> Vec<(String, u32, String)> {
        v.instances
            .iter()
            .map(|i| (i.app.clone(), i.index, i.node.clone()))
            .collect()
    };
    let mut want = series(&v);
    want.sort();
    want.dedup();
    assert_eq!(series(&v), want, "one series each, sorted");
    assert_eq!(v.instances.len(), 4, "{v:?}");
    let listed = c.list_instances("web")?;
    for i in v.instances.iter().filter(|i| i.app == "web") {
        let node = &listed
            .iter()
            .find(|l| l.index == i.index)
            .unwrap_or_else(|| panic!("web[{}] is not listed", i.index))
            .node;
        assert_eq!(&i.node, node);
        let (cpu_time_ms, memory_bytes, restarts) = figures_of(i.index);
        let want = InstanceFigures {
            app: "web".into(),
            index: i.index,
            node: node.clone(),
            online: node == "a",
            cpu_time_ms,
            memory_bytes,
            restarts: u64::from(restarts),
        };
        assert_eq!(i, &want);
    }
    let pending = v
        .instances
        .iter()
        .find(|i| i.app == "big")
        .unwrap_or_else(|| panic!("big has no series: {v:?}"));
    assert_eq!(
        pending,
        &InstanceFigures {
            app: "big".into(),
            index: 0,
            ..InstanceFigures::default()
        }
    );

    // b misses its heartbeats: down, and its instances' last figures are stale, so they go.
    clock.advance_ms(2_000);
    report(&c, "a", &a, InstanceState::Online)?;
    c.tick();
    let v = c.metrics_view();
    assert_eq!(node_figures(&v, "b").3, NodeStatus::Down, "{v:?}");
    assert_eq!(node_figures(&v, "a").3, NodeStatus::Ready, "{v:?}");
    for i in v.instances.iter().filter(|i| i.app == "web") {
        if i.node == "b" {
            assert_eq!(
                (i.online, i.cpu_time_ms, i.memory_bytes, i.restarts),
                (false, 0, 0, 0),
                "{i:?}"
            );
        } else {
            assert!(i.online && i.cpu_time_ms > 0, "{i:?}");
        }
    }
    assert_eq!(app_figures(&v, "web").online, on_a, "{v:?}");

    // A rolling restart: running, none of 3 indices done yet.
    c.restart_rolling("web")?;
    let v = c.metrics_view();
    assert_eq!(
        app_figures(&v, "web").rollout,
        Some(("running", 0, 3)),
        "{v:?}"
    );
    assert_eq!(app_figures(&v, "big").rollout, None, "{v:?}");
    // Its replacements do not make a series twice.
    c.tick();
    let v = c.metrics_view();
    let mut want = series(&v);
    want.sort();
    want.dedup();
    assert_eq!(series(&v), want, "one series each, sorted");
    Ok(())
}

/// Each decision is counted by app, direction and outcome, for as long as the app autoscales,
/// and from zero on a new control.
#[test]
fn metrics_view_counts_autoscale_decisions() -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::new(T0, 5));
    let c = Control::open_with(store.clone(), ControlConfig::default(), clock.clone())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(app("web", 2, 4100, 0, 0))?;
    let count =
        |app: &str, direction: &'static str, outcome: &'static str, n: u64| AutoscaleCount {
            app: app.into(),
            direction,
            outcome,
            count: n,
        };
    let tick = || {
        clock.advance_ms(1_000);
        c.tick();
    };

    // Bounds the count is outside of are corrected at the next sample, one decision each.
    c.set_autoscale("web", Some(AutoscalePolicy::new(3, 3, 70.0)))?;
    assert!(c.metrics_view().autoscale.is_empty(), "no decision yet");
    tick();
    let v = c.metrics_view();
    assert_eq!(v.autoscale, vec![count("web", "up", "scaled", 1)]);
    assert_eq!(app_figures(&v, "web").desired, 3);
    c.set_autoscale("web", Some(AutoscalePolicy::new(2, 2, 70.0)))?;
    tick();
    // Held at the bounds, the next sample decides nothing.
    tick();
    let v = c.metrics_view();
    assert_eq!(
        v.autoscale,
        vec![
            count("web", "down", "scaled", 1),
            count("web", "up", "scaled", 1)
        ]
    );
    assert_eq!(app_figures(&v, "web").desired, 2);

    // A policy above a cap lowered since it was set: held at the cap, counted as capped by a
    // control that starts counting afresh.
    c.set_autoscale("web", Some(AutoscalePolicy::new(3, 3, 70.0)))?;
    drop(c);
    let config = ControlConfig {
        caps: Caps {
            max_instances_per_app: 2,
            ..Caps::default()
        },
        ..ControlConfig::default()
    };
    let c = Control::open_with(store, config, clock.clone())?;
    let _a = c.attach(&register("a"), None)?;
    assert!(c.metrics_view().autoscale.is_empty());
    clock.advance_ms(1_000);
    c.tick();
    let v = c.metrics_view();
    assert_eq!(v.autoscale, vec![count("web", "up", "capped", 1)]);
    assert_eq!(app_figures(&v, "web").desired, 2);

    // Autoscaling off: its counts go with it.
    c.set_autoscale("web", None)?;
    clock.advance_ms(1_000);
    c.tick();
    assert!(c.metrics_view().autoscale.is_empty());
    Ok(())
}
