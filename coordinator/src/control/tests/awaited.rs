//! The nodes a coordinator awaits after it loads the store (a restart, or a new leader): each is
//! given the heartbeat timeout to reconnect. One that never does has no session to lapse or
//! close, and its `node.down` comes when that time is up, once, as a lost heartbeat's does.

use super::*;
use crate::clock::ManualClock;
use crate::model::event::Event;

const T0: i64 = 1_000_000;
/// Above the least time a new leader gives (`AGENT_RECONNECT_WITHIN`), so that the heartbeat
/// timeout is what counts here.
const TIMEOUT_MS: i64 = 20_000;

fn config() -> ControlConfig {
    ControlConfig {
        heartbeat_timeout: Duration::from_millis(TIMEOUT_MS as u64),
        ..ControlConfig::default()
    }
}

/// Nodes `a` and `b` with `web` on both; the coordinator then goes, and a new one loads the
/// store (the clock's time then is the load's). Returns the new one.
fn taken_over(clock: &Arc<ManualClock>) -> Result<Control> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let old = Control::open_with(store.clone(), config(), clock.clone())?;
    let _sessions = (
        old.attach(&register("a"), None)?,
        old.attach(&register("b"), None)?,
    );
    old.apply(web(4))?;
    old.tick();
    assert_eq!(spread(&old, "web"), "a:2 b:2");
    old.retire();
    drop(old);
    clock.advance_ms(1_000);
    Control::open_with(store, config(), clock.clone())
}

fn node_downs(c: &Control) -> Vec<Event> {
    c.recent_events("", Some(EventKind::NodeDown), 100)
}

/// Time passes in steps of a second, each connected node reporting at each, and a tick after
/// each.
fn pass(c: &Control, clock: &ManualClock, connected: &[(&str, &Attached)], ms: i64) {
    let mut left = ms;
    while left > 0 {
        let step = left.min(1_000);
        clock.advance_ms(step);
        left -= step;
        for (node, session) in connected {
            super::super::report_tests::send(c, node, session, Vec::new());
        }
        c.tick();
    }
}

#[test]
fn a_node_that_never_reconnects_to_a_new_leader_is_announced_down_once_when_its_time_is_up()
-> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 21));
    let c = taken_over(&clock)?;
    let deadline = clock.now_ms() + TIMEOUT_MS;
    let b = c.attach(&register("b"), None)?;
    c.tick();
    pass(&c, &clock, &[("b", &b)], TIMEOUT_MS - 1);
    assert!(node_downs(&c).is_empty(), "a still has time to reconnect");
    // The tick wakes for it, not at its next backstop.
    assert_eq!(c.next_tick_at(), deadline);
    clock.advance_ms(1);
    c.tick();
    let downs = node_downs(&c);
    let [down] = downs.as_slice() else {
        panic!("one node.down, of a: {downs:?}");
    };
    assert_eq!(
        (
            down.node.as_str(),
            down.app.as_str(),
            down.index,
            down.at_ms
        ),
        ("a", "", None, deadline),
        "{down:?}"
    );
    assert!(
        down.message.starts_with("node a missed heartbeats"),
        "{down:?}"
    );
    // Once: later ticks, and the reschedule of its instances, say nothing more of it.
    pass(&c, &clock, &[("b", &b)], 40_000);
    assert_eq!(node_downs(&c).len(), 1, "{:?}", node_downs(&c));
    assert_eq!(spread(&c, "web"), "b:4");
    Ok(())
}

/// A node that reconnects in time owes no `node.down`; it gets the one of its own session when
/// that is lost.
#[test]
fn a_node_that_reconnects_in_time_is_announced_down_only_when_its_session_is_lost() -> Result<()> {
    let clock = Arc::new(ManualClock::new(T0, 22));
    let c = taken_over(&clock)?;
    let b = c.attach(&register("b"), None)?;
    pass(&c, &clock, &[("b", &b)], TIMEOUT_MS / 2);
    let a = c.attach(&register("a"), None)?;
    pass(&c, &clock, &[("a", &a), ("b", &b)], TIMEOUT_MS);
    assert!(node_downs(&c).is_empty(), "both nodes are back");
    c.detach("a", a.session_id);
    pass(&c, &clock, &[("b", &b)], TIMEOUT_MS);
    let messages: Vec<String> = node_downs(&c).into_iter().map(|e| e.message).collect();
    assert_eq!(messages, ["node a disconnected"]);
    Ok(())
}

/// A coordinator that loads the store (a restart, or a new leader of an HA pair) gives each
/// node the heartbeat timeout to reconnect before its absence counts: agents notice a silent
/// old leader only by their keepalive, and one at a time.
#[test]
fn a_new_leader_gives_every_node_the_heartbeat_timeout_to_reconnect() -> Result<()> {
    const T0: i64 = 1_000_000;
    let clock = Arc::new(crate::clock::ManualClock::new(T0, 7));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    // Above the least a new leader gives (the test below), so the timeout is what counts.
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(20),
        ..ControlConfig::default()
    };
    let timeout = i64::try_from(config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    let old = Control::open_with(store.clone(), config.clone(), clock.clone())?;
    let _sessions = (
        old.attach(&register("a"), None)?,
        old.attach(&register("b"), None)?,
    );
    let mut spec = web(4);
    spec.reschedule = pmcluster_spec::app::Reschedule::After(Duration::from_secs(2));
    old.apply(spec)?;
    old.tick();
    assert_eq!(spread(&old, "web"), "a:2 b:2");
    drop(old);

    let new = Control::open_with(store, config, clock.clone())?;
    // Past the app's reschedule delay, within the heartbeat timeout: nothing moves, and the rows
    // say why they are not reported.
    clock.advance_ms(timeout / 2);
    new.tick();
    assert_eq!(spread(&new, "web"), "a:2 b:2");
    let rows = records(&new, "web")?;
    assert!(
        rows.iter().all(|i| i
            .message
            .contains("has not reconnected to this coordinator yet")),
        "{rows:?}"
    );
    // a reconnects; b never does: once the timeout and the delay have passed, b's move.
    let _a = new.attach(&register("a"), None)?;
    clock.advance_ms(timeout / 2 + 2_000 + 1);
    new.tick();
    assert_eq!(spread(&new, "web"), "a:4");
    Ok(())
}

/// With a tuned heartbeat timeout shorter than the agents' longest reconnect wait, a new leader
/// still waits for that wait: a trial froze etcd for 20 s under a 2 s timeout and a 1 s
/// `reschedule_after`, and the new leader restarted a whole app on the first node back. Until
/// then `nodes` reads `reconnecting`, not `down`.
#[test]
fn a_new_leader_waits_out_the_agents_reconnect_backoff() -> Result<()> {
    const T0: i64 = 1_000_000;
    let clock = Arc::new(crate::clock::ManualClock::new(T0, 7));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(2),
        ..ControlConfig::default()
    };
    let within =
        i64::try_from(pmcluster_spec::link::AGENT_RECONNECT_WITHIN.as_millis()).unwrap_or(i64::MAX);
    let old = Control::open_with(store.clone(), config.clone(), clock.clone())?;
    let _sessions = (
        old.attach(&register("a"), None)?,
        old.attach(&register("b"), None)?,
    );
    let mut spec = web(4);
    spec.reschedule = pmcluster_spec::app::Reschedule::After(Duration::from_secs(1));
    old.apply(spec)?;
    old.tick();
    assert_eq!(spread(&old, "web"), "a:2 b:2");
    drop(old);

    let new = Control::open_with(store, config, clock.clone())?;
    // Past the timeout and the reschedule delay, within the agents' reconnect wait.
    clock.advance_ms(within - 1);
    new.tick();
    assert_eq!(spread(&new, "web"), "a:2 b:2");
    let statuses = |c: &Control| -> Vec<(String, NodeStatus)> {
        c.list_nodes()
            .into_iter()
            .map(|n| (n.name, n.status))
            .collect()
    };
    assert_eq!(
        statuses(&new),
        [
            ("a".to_string(), NodeStatus::Reconnecting),
            ("b".to_string(), NodeStatus::Reconnecting)
        ]
    );
    let _a = new.attach(&register("a"), None)?;
    clock.advance_ms(2);
    new.tick();
    assert_eq!(
        statuses(&new),
        [
            ("a".to_string(), NodeStatus::Ready),
            ("b".to_string(), NodeStatus::Down)
        ]
    );
    clock.advance_ms(1_000);
    new.tick();
    assert_eq!(spread(&new, "web"), "a:4");
    Ok(())
}
