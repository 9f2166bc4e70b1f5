//! A drain that a new leader (or a restarted coordinator) resumes: the store is loaded into a
//! fresh `Control`, where every node is "not yet reconnected" until its agent registers again,
//! and agents come back one by one, in any order. The drain keeps its guarantees across it: one
//! migration at a time per drained node, and an old copy kept until its replacement is online.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::clock::ManualClock;
use crate::model::{InstanceObserved, InstanceRecord, InstanceState};
use crate::store::MemoryStore;
use pmcluster_spec::AppSpec;

const T0: i64 = 1_000_000;

fn config() -> ControlConfig {
    ControlConfig {
        heartbeat_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    }
}

/// What the fake agents run: each instance id with its state, by node. A process is started
/// launching when its record appears on the node and is online only when the test says so.
#[derive(Default)]
struct Agents {
    by_node: BTreeMap<String, BTreeMap<Uuid, InstanceState>>,
}

impl Agents {
    /// Follows the store: new records on `node` start launching, removed ones stop.
    fn follow(&mut self, c: &Control, node: &str) {
        let records: BTreeSet<Uuid> = web_records(c)
            .into_iter()
            .filter(|r| r.node.as_deref() == Some(node))
            .map(|r| r.id)
            .collect();
        let held = self.by_node.entry(node.to_string()).or_default();
        held.retain(|id, _| records.contains(id));
        for id in records {
            held.entry(id).or_insert(InstanceState::Launching);
        }
    }

    fn statuses(&self, node: &str) -> Vec<InstanceObserved> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|(id, state)| InstanceObserved {
                id: *id,
                state: *state,
                pid: 100,
                ..InstanceObserved::default()
            })
            .collect()
    }

    fn online(&self) -> BTreeSet<Uuid> {
        self.by_node
            .values()
            .flatten()
            .filter(|(_, s)| **s == InstanceState::Online)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every process on `node` comes online.
    fn all_online(&mut self, node: &str) {
        for s in self
            .by_node
            .entry(node.to_string())
            .or_default()
            .values_mut()
        {
            *s = InstanceState::Online;
        }
    }
}

fn web_records(c: &Control) -> Vec<InstanceRecord> {
    c.persisted()
        .instances
        .values()
        .filter(|r| r.app == "web")
        .cloned()
        .collect()
}

fn registration_of(agents: &Agents, node: &str) -> Registration {
    Registration {
        instances: agents.statuses(node),
        ..register(node)
    }
}

fn report(c: &Control, agents: &Agents, node: &str, session: &Attached) {
    super::super::report_tests::send(c, node, session, agents.statuses(node));
}

/// The drain's guarantees, against what the agents really run: every index has a record of a
/// process that is online (nothing removed before its replacement serves), and at most one
/// replacement off the drained node is under way.
fn check(c: &Control, agents: &Agents, count: u32, step: &str) {
    let records = web_records(c);
    let online = agents.online();
    let table = || {
        records
            .iter()
            .map(|r| {
                format!(
                    "{}@{} {}{}",
                    r.index,
                    r.node.as_deref().unwrap_or("-"),
                    if online.contains(&r.id) {
                        "online"
                    } else {
                        "not online"
                    },
                    if r.replaces.is_some() {
                        " (replacement)"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for index in 0..count {
        assert!(
            records
                .iter()
                .any(|r| r.index == index && online.contains(&r.id)),
            "{step}: index {index} has no online copy left: {}",
            table()
        );
    }
    let under_way = records
        .iter()
        .filter(|r| r.replaces.is_some() && !online.contains(&r.id))
        .count();
    assert!(
        under_way <= 1,
        "{step}: {under_way} replacements started at once: {}",
        table()
    );
}

/// Three copies on `a`, online; `b` joins; `a` is drained and its first replacement (on `b`)
/// is launching. Returns the store, the clock and the agents as the leader leaves them.
fn mid_drain() -> Result<(Arc<dyn Store>, Arc<ManualClock>, Agents)> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::new(T0, 11));
    let c = Control::open_with(store.clone(), config(), clock.clone())?;
    let mut agents = Agents::default();
    let a = c.attach(&register("a"), None)?;
    c.apply(web(3))?;
    agents.follow(&c, "a");
    agents.all_online("a");
    report(&c, &agents, "a", &a);
    let b = c.attach(&register("b"), None)?;
    c.set_drain("a", true)?;
    c.tick();
    agents.follow(&c, "b");
    report(&c, &agents, "b", &b);
    check(&c, &agents, 3, "before the takeover");
    let on_b = web_records(&c)
        .iter()
        .filter(|r| r.node.as_deref() == Some("b"))
        .count();
    assert_eq!(on_b, 1, "one replacement under way before the takeover");
    // The leader goes: its sessions close, and the agents keep running what they run.
    c.retire();
    drop(c);
    Ok((store, clock, agents))
}

/// Drives the resumed drain to its end, checking the guarantees at every step: each
/// replacement comes online after a while, and the next one starts only then.
fn finish(
    c: &Control,
    clock: &ManualClock,
    agents: &mut Agents,
    a: &Attached,
    b: &Attached,
) -> Result<()> {
    for round in 0..10 {
        clock.advance_ms(500);
        agents.follow(c, "a");
        agents.follow(c, "b");
        report(c, agents, "a", a);
        report(c, agents, "b", b);
        c.tick();
        check(c, agents, 3, &format!("round {round}, launching"));
        // The replacement's app is up (it had a startup delay).
        agents.follow(c, "b");
        agents.all_online("b");
        report(c, agents, "b", b);
        report(c, agents, "a", a);
        check(c, agents, 3, &format!("round {round}, online"));
        c.tick();
        agents.follow(c, "a");
        agents.follow(c, "b");
        check(c, agents, 3, &format!("round {round}, after the handoff"));
        let records = web_records(c);
        if records.len() == 3 && records.iter().all(|r| r.node.as_deref() == Some("b")) {
            return Ok(());
        }
    }
    panic!("the drain did not finish: {:?}", web_records(c));
}

/// The order the tester hit: the replacement's node registers with the new leader first, and
/// the drained node some time later. The new leader started the remaining replacements together
/// and removed every old copy on the drained node before any replacement was online.
#[test]
fn a_drain_resumed_by_a_new_leader_keeps_its_copies_when_the_replacements_node_returns_first()
-> Result<()> {
    let (store, clock, mut agents) = mid_drain()?;
    clock.advance_ms(1_000);
    let c = Control::open_with(store, config(), clock.clone())?;
    c.tick();
    check(&c, &agents, 3, "after the load");
    let b = c.attach(&registration_of(&agents, "b"), None)?;
    check(&c, &agents, 3, "b registered");
    c.tick();
    check(&c, &agents, 3, "b registered, tick");
    // Agents reconnect one by one: a takes a few seconds, within the heartbeat timeout.
    for _ in 0..6 {
        clock.advance_ms(1_000);
        report(&c, &agents, "b", &b);
        c.tick();
        check(&c, &agents, 3, "a not back yet");
    }
    let a = c.attach(&registration_of(&agents, "a"), None)?;
    check(&c, &agents, 3, "a registered");
    c.tick();
    check(&c, &agents, 3, "a registered, tick");
    finish(&c, &clock, &mut agents, &a, &b)
}

/// The other order: the drained node first, then the replacement's node.
#[test]
fn a_drain_resumed_by_a_new_leader_keeps_its_copies_when_the_drained_node_returns_first()
-> Result<()> {
    let (store, clock, mut agents) = mid_drain()?;
    clock.advance_ms(1_000);
    let c = Control::open_with(store, config(), clock.clone())?;
    c.tick();
    let a = c.attach(&registration_of(&agents, "a"), None)?;
    c.tick();
    check(&c, &agents, 3, "a registered");
    for _ in 0..6 {
        clock.advance_ms(1_000);
        report(&c, &agents, "a", &a);
        c.tick();
        check(&c, &agents, 3, "b not back yet");
    }
    let b = c.attach(&registration_of(&agents, "b"), None)?;
    c.tick();
    check(&c, &agents, 3, "b registered");
    finish(&c, &clock, &mut agents, &a, &b)
}

/// A drained node that does not come back to the new leader within the heartbeat timeout is
/// down, as one that stops reporting is: its instances are then replaced at once, as a drained
/// node's that goes down. Until then, nothing of it moves.
#[test]
fn a_drained_node_that_does_not_return_to_a_new_leader_is_down_after_the_heartbeat_timeout()
-> Result<()> {
    let (store, clock, agents) = mid_drain()?;
    // Above the least a new leader gives, so the heartbeat timeout is what counts.
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(20),
        ..config()
    };
    let c = Control::open_with(store, config, clock.clone())?;
    let before = web_records(&c);
    let b = c.attach(&registration_of(&agents, "b"), None)?;
    for _ in 0..20 {
        c.tick();
        assert_eq!(web_records(&c), before, "nothing moves while a may return");
        clock.advance_ms(1_000);
        report(&c, &agents, "b", &b);
    }
    // The timeout has passed: the tick wakes for it, and a counts as down since the load.
    assert!(c.next_tick_at() <= clock.now_ms() + 1);
    clock.advance_ms(1);
    c.tick();
    let after = web_records(&c);
    assert!(
        after.iter().all(|r| r.node.as_deref() == Some("b")),
        "a's instances were replaced on b: {after:?}"
    );
    assert_eq!(after.len(), 3, "{after:?}");
    Ok(())
}

/// `web` (`spec`) on `a`, each process reporting `state`, then `b` attached and `a` drained:
/// a running copy's first replacement is placed on `b`.
fn drained(
    spec: AppSpec,
    clock: &Arc<ManualClock>,
    state: InstanceState,
) -> Result<(Control, Agents, Attached, Attached)> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let c = Control::open_with(store, config(), clock.clone())?;
    let mut agents = Agents::default();
    let a = c.attach(&register("a"), None)?;
    c.apply(spec)?;
    agents.follow(&c, "a");
    for s in agents.by_node.values_mut().flat_map(|n| n.values_mut()) {
        *s = state;
    }
    report(&c, &agents, "a", &a);
    let b = c.attach(&register("b"), None)?;
    c.set_drain("a", true)?;
    c.tick();
    Ok((c, agents, a, b))
}

/// One step of the fake agents: each of `nodes` follows the store and reports what it runs,
/// then the control loop ticks.
fn step(c: &Control, agents: &mut Agents, nodes: &[(&str, &Attached)]) {
    for (node, _) in nodes {
        agents.follow(c, node);
    }
    for (node, session) in nodes {
        report(c, agents, node, session);
    }
    c.tick();
}

fn on(c: &Control, node: &str) -> usize {
    web_records(c)
        .iter()
        .filter(|r| r.node.as_deref() == Some(node))
        .count()
}

fn moved_events(c: &Control) -> Vec<String> {
    c.recent_events("web", Some(EventKind::InstanceMoved), 10)
        .into_iter()
        .map(|e| e.message)
        .collect()
}

/// A replacement that never comes online (a crash loop, a port it never opens) held a drain up
/// for ever. The old copy now retires once the app's healthy deadline has passed since the
/// replacement was placed, an event says so, and the drain goes on to the next copy.
#[test]
fn a_drain_goes_on_past_a_replacement_not_online_by_the_healthy_deadline() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 11));
    let mut spec = web(2);
    spec.update.healthy_deadline = Duration::from_secs(30);
    let (c, mut agents, a, b) = drained(spec, &clock, InstanceState::Online)?;
    let pass = |agents: &mut Agents| step(&c, agents, &[("a", &a), ("b", &b)]);
    pass(&mut agents);
    assert_eq!(
        (on(&c, "a"), on(&c, "b")),
        (2, 1),
        "one migration under way"
    );
    // The replacement stays launching: nothing more moves before the deadline.
    for second in 1..30 {
        clock.advance_ms(1_000);
        pass(&mut agents);
        assert_eq!(on(&c, "a"), 2, "at {second} s");
        assert_eq!(on(&c, "b"), 1, "at {second} s");
    }
    assert!(moved_events(&c).is_empty());
    let a_node = c.list_nodes().into_iter().find(|n| n.name == "a");
    let waits = a_node.map(|n| n.message).unwrap_or_default();
    assert!(
        waits.starts_with("moving web[") && waits.contains("to b: not online for 29.0s"),
        "{waits}"
    );
    clock.advance_ms(1_000);
    pass(&mut agents);
    assert_eq!(
        on(&c, "a"),
        1,
        "the copy whose replacement is overdue retired"
    );
    let said = moved_events(&c);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("on draining node a retired without a replacement online")
            && said[0].contains("update.healthy_deadline (30.0s)"),
        "{said:?}"
    );
    // The next migration starts, and once its replacement serves, a is empty.
    pass(&mut agents);
    assert_eq!((on(&c, "a"), on(&c, "b")), (1, 2));
    agents.follow(&c, "b");
    agents.all_online("b");
    clock.advance_ms(500);
    pass(&mut agents);
    assert_eq!((on(&c, "a"), on(&c, "b")), (0, 2));
    Ok(())
}

/// A replacement whose node goes down for good held a drain for ever: being one side of a
/// handoff, the lost rule did not reach it. Once its node is down for the app's
/// reschedule_after it now goes, the old copy serving meanwhile, and the handoff starts again
/// on a node that is up.
#[test]
fn a_drain_goes_on_past_a_replacement_whose_node_is_lost() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 11));
    let mut spec = web(1);
    spec.reschedule = pmcluster_spec::app::Reschedule::After(Duration::from_secs(30));
    let (c, mut agents, a, b) = drained(spec, &clock, InstanceState::Online)?;
    assert_eq!((on(&c, "a"), on(&c, "b")), (1, 1), "the handoff to b");
    let third = c.attach(&register("c"), None)?;
    c.detach("b", b.session_id);
    let pass = |agents: &mut Agents| step(&c, agents, &[("a", &a), ("c", &third)]);
    for second in 1..30 {
        clock.advance_ms(1_000);
        pass(&mut agents);
        assert_eq!((on(&c, "a"), on(&c, "b")), (1, 1), "at {second} s");
    }
    let a_node = c.list_nodes().into_iter().find(|n| n.name == "a");
    let waits = a_node.map(|n| n.message).unwrap_or_default();
    assert!(
        waits.contains("to b: not online for")
            && waits.contains(
                "its node b is down: the handoff starts again elsewhere once it has \
                 been down for reschedule_after, 30.0s"
            ),
        "{waits}"
    );
    clock.advance_ms(1_000);
    pass(&mut agents);
    let said = moved_events(&c);
    assert!(
        said.iter()
            .any(|m| m.contains("web[0]: its new copy on b was dropped")
                && m.contains("the drain starts the handoff again")
                && m.contains("the copy on a serves on")),
        "{said:?}"
    );
    pass(&mut agents);
    assert_eq!(
        (on(&c, "a"), on(&c, "b"), on(&c, "c")),
        (1, 0, 1),
        "the lost replacement went and a new one is on c"
    );
    agents.follow(&c, "c");
    agents.all_online("c");
    clock.advance_ms(500);
    pass(&mut agents);
    assert_eq!((on(&c, "a"), on(&c, "c")), (0, 1), "a drained");
    Ok(())
}

/// A drain undone while its handoff was under way left the replacement retrying for ever beside
/// the copy that serves. Now it takes over if it comes online, and is given up (an event says
/// so) once the app's healthy deadline has passed since its placement.
#[test]
fn an_undrain_gives_up_a_handoff_not_online_by_the_healthy_deadline() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 11));
    let mut spec = web(1);
    spec.update.healthy_deadline = Duration::from_secs(30);
    let (c, mut agents, a, b) = drained(spec, &clock, InstanceState::Online)?;
    assert_eq!((on(&c, "a"), on(&c, "b")), (1, 1), "the handoff to b");
    c.set_drain("a", false)?;
    let pass = |agents: &mut Agents| step(&c, agents, &[("a", &a), ("b", &b)]);
    for second in 1..30 {
        clock.advance_ms(1_000);
        pass(&mut agents);
        assert_eq!((on(&c, "a"), on(&c, "b")), (1, 1), "at {second} s");
    }
    clock.advance_ms(1_000);
    pass(&mut agents);
    assert_eq!((on(&c, "a"), on(&c, "b")), (1, 0), "the move given up");
    let said = moved_events(&c);
    assert!(
        said.iter().any(|m| m.contains(
            "web[0] stays on a: its new copy on b was not online \
             within update.healthy_deadline (30.0s)"
        )),
        "{said:?}"
    );
    Ok(())
}

/// A finished job (exited with autorestart off) was migrated like a running copy: its
/// replacement ran it again. It now moves at once, stopped.
#[test]
fn a_drain_moves_a_finished_job_stopped_and_does_not_run_it_again() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 11));
    let mut spec = web(1);
    spec.autorestart = false;
    let (c, ..) = drained(spec, &clock, InstanceState::Exited)?;
    let records = web_records(&c);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].node.as_deref(), Some("b"));
    assert!(records[0].stopped, "moved stopped: {records:?}");
    let said = moved_events(&c);
    assert!(
        said.iter()
            .any(|m| m.contains("web[0] moved from a to b stopped")),
        "{said:?}"
    );
    Ok(())
}

/// With no other node to go to, a draining node says nothing moves, rather than nothing.
#[test]
fn a_drain_with_nowhere_to_go_says_so() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), config())?;
    c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    c.set_drain("a", true)?;
    c.tick();
    let a = c.list_nodes().into_iter().find(|n| n.name == "a");
    let said = a.map(|n| (n.status, n.message));
    assert_eq!(
        said,
        Some((
            NodeStatus::Draining,
            "web[0] cannot move: no ready node (1 node: 1 not ready); \
             web[1] cannot move: no ready node (1 node: 1 not ready)"
                .to_string()
        ))
    );
    Ok(())
}

/// An undrain of a node that was not drained (or a second drain) changes nothing, and says so:
/// no write, no event, and the caller is told, so the CLI does not report the node "eligible
/// again".
#[test]
fn a_drain_or_undrain_that_changes_nothing_says_so() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 11));
    let c = Control::open_with(Arc::new(MemoryStore::default()), config(), clock)?;
    c.attach(&register("a"), None)?;
    let drain_events = |c: &Control| c.recent_events("", Some(EventKind::NodeDrain), 10).len();
    let (_, changed) = c.set_drain("a", false)?;
    assert!(!changed, "a was never drained");
    assert_eq!(drain_events(&c), 0);
    let (view, changed) = c.set_drain("a", true)?;
    assert!(changed);
    assert_eq!(view.name, "a");
    let (_, changed) = c.set_drain("a", true)?;
    assert!(!changed, "a was draining already");
    assert_eq!(drain_events(&c), 1);
    let (_, changed) = c.set_drain("a", false)?;
    assert!(changed);
    assert_eq!(drain_events(&c), 2);
    Ok(())
}

/// Found by a user trial: an instance only the draining node fits (`!zone`) held the node's one
/// handoff slot for ever, so the instances other nodes fit never moved, and the node said they
/// all waited for a node to fit them. Now they move one at a time past it, and the node names
/// the one that stays, with the placer's reason.
#[test]
fn a_drain_moves_the_others_past_an_instance_no_other_node_fits() -> Result<()> {
    use pmcluster_spec::placement::Constraint;
    let clock = Arc::new(ManualClock::new(T0, 11));
    let c = Control::open_with(Arc::new(MemoryStore::default()), config(), clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    let mut flood = AppSpec::new("flood", "testapp", &[]);
    flood.placement.constraints = vec![Constraint::parse("constraints", "!zone")?];
    c.apply(flood)?;
    c.apply(web(2))?;
    let zoned = Registration {
        labels: [("zone".to_string(), "z2".to_string())].into(),
        ..register("b")
    };
    let b = c.attach(&zoned, None)?;
    c.set_drain("a", true)?;
    c.tick();
    let on = |node: &str| {
        let mut held: Vec<String> = c
            .persisted()
            .instances
            .values()
            .filter(|r| r.node.as_deref() == Some(node))
            .map(|r| format!("{}[{}]", r.app, r.index))
            .collect();
        held.sort();
        held
    };
    assert_eq!(
        on("b"),
        ["web[0]"],
        "web[0]'s handoff started, past flood[0]"
    );
    let message = || {
        c.list_nodes()
            .into_iter()
            .find(|n| n.name == "a")
            .map(|n| (n.status, n.message))
            .unwrap_or((NodeStatus::Down, "a is not listed".to_string()))
    };
    let stays = "flood[0] cannot move: no ready node matching !zone \
                 (2 nodes: 1 not ready, 1 not matching !zone)";
    let (status, said) = message();
    assert_eq!(status, NodeStatus::Draining);
    assert!(said.starts_with("moving web[0] to b: "), "{said}");
    assert!(said.contains(stays), "{said}");
    assert!(
        said.ends_with("1 instance to move, one handoff at a time"),
        "{said}"
    );
    // web[0]'s replacement comes online: web[1]'s handoff starts, and flood[0] still stays.
    let mut agents = Agents::default();
    agents.follow(&c, "a");
    agents.follow(&c, "b");
    agents.all_online("a");
    agents.all_online("b");
    clock.advance_ms(1_000);
    step(&c, &mut agents, &[("a", &a), ("b", &b)]);
    assert_eq!(on("b"), ["web[0]", "web[1]"]);
    // Both old copies gone once web[1]'s is online: flood[0] is all that is left, and said so.
    agents.follow(&c, "b");
    agents.all_online("b");
    clock.advance_ms(1_000);
    step(&c, &mut agents, &[("a", &a), ("b", &b)]);
    assert_eq!(on("a"), ["flood[0]"]);
    assert_eq!(message(), (NodeStatus::Draining, stays.to_string()));
    Ok(())
}

/// A node name no node can have is bad input; a well-formed one that is not there is not found.
#[test]
fn draining_a_name_no_node_can_have_is_invalid() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    for bad in ["", "a b", "../x"] {
        match c.set_drain(bad, true) {
            Err(ControlError::InvalidArgument(m)) => assert!(m.starts_with("node: "), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(matches!(
        c.set_drain("nosuch", true),
        Err(ControlError::NotFound(_))
    ));
    Ok(())
}
