//! A node lost for longer than the app's `reschedule_after`: its instances are placed elsewhere,
//! and the events say where from and why, one line per index; when it returns, the old copies
//! its agent still runs are stopped, and the events say so.

use super::identity::registration_of;
use super::*;
use crate::clock::ManualClock;
use crate::model::{Event, Report};

const T0: i64 = 1_000_000;

/// A cluster of nodes `a` and `b` (2 cores each) running `spec` with a 30 s
/// `reschedule_after`, and `b`'s registration as its agent would send it again later.
fn two_nodes(mut spec: AppSpec) -> Result<(Control, Arc<ManualClock>, Attached, Registration)> {
    let clock = Arc::new(ManualClock::new(T0, 17));
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    };
    let c = Control::open_with(Arc::new(MemoryStore::default()), config, clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    let _b = c.attach(&register("b"), None)?;
    spec.reschedule = pmcluster_spec::app::Reschedule::After(Duration::from_secs(30));
    c.apply(spec)?;
    let returning = registration_of(&c, "b");
    assert!(!returning.held.is_empty(), "b runs some of web");
    Ok((c, clock, a, returning))
}

/// `b` disconnects now, and the clock then passes `seconds` (see [`pass`]).
fn lose_b_for(c: &Control, clock: &ManualClock, a: &Attached, seconds: i64) -> Result<()> {
    let session = session_of(c, "b").ok_or(ControlError::NotFound("b is not connected".into()))?;
    c.detach("b", session);
    pass(c, clock, a, seconds);
    Ok(())
}

fn session_of(c: &Control, node: &str) -> Option<u64> {
    let inner = c.lock();
    inner.nodes.get(node)?.session.as_ref().map(|s| s.id)
}

/// The clock passes `seconds`, `a` reporting (its heartbeat) and a tick after each.
fn pass(c: &Control, clock: &ManualClock, a: &Attached, seconds: i64) {
    for _ in 0..seconds {
        clock.advance_ms(1_000);
        c.report("a", a.session_id, Report::default());
        c.tick();
    }
}

/// The events of `web` since `b` was lost.
fn since_the_loss(c: &Control, kind: EventKind) -> Vec<Event> {
    (c.recent_events("web", Some(kind), 1000).into_iter())
        .filter(|e| e.at_ms > T0)
        .collect()
}

fn texts(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.message.clone()).collect()
}

/// Checks that `web` spread as `spread_as` after `b`'s loss, its moves said in one event,
/// `want`, and no placement said beside it (one line per move); returns that event.
fn moved_once(c: &Control, spread_as: &str, want: &str) -> Event {
    assert_eq!(spread(c, "web"), spread_as);
    let moved = since_the_loss(c, EventKind::InstanceMoved);
    assert_eq!(texts(&moved), [want]);
    let placed = since_the_loss(c, EventKind::InstancePlaced);
    assert!(placed.is_empty(), "one line per move: {:?}", texts(&placed));
    moved[0].clone()
}

/// `b` registers as `returning`: checks that one event, `want`, followed the one of its loss
/// (the old copies its agent still runs), and returns that event.
fn b_returns(c: &Control, returning: &Registration, want: &str) -> Result<(Attached, Event)> {
    let b = c.attach(returning, None)?;
    let moved = since_the_loss(c, EventKind::InstanceMoved);
    assert_eq!(texts(&moved[1..]), [want]);
    Ok((b, moved[1].clone()))
}

/// The index of the one of web's two instances `b` held.
fn held_index(returning: &Registration) -> u32 {
    let [held] = &returning.held[..] else {
        panic!("one of web's two instances on b: {:?}", returning.held);
    };
    held.index
}

#[test]
fn a_node_loss_says_where_from_and_why_once_per_index() -> Result<()> {
    let (c, clock, a, returning) = two_nodes(web(2))?;
    let index = held_index(&returning);
    lose_b_for(&c, &clock, &a, 29)?;
    assert!(
        since_the_loss(&c, EventKind::InstanceMoved).is_empty(),
        "not lost for reschedule_after yet"
    );
    pass(&c, &clock, &a, 2);
    let moved = moved_once(
        &c,
        "a:2",
        &format!("web[{index}] moved from b to a: node b down for 30.0s"),
    );
    assert_eq!((moved.node.as_str(), moved.index), ("b", Some(index)));

    // b returns with the old copy still running: its agent is told to stop it, and an event
    // says why.
    let (_b, stopped) = b_returns(
        &c,
        &returning,
        &format!("web[{index}] on b stopped: replaced on a while b was down"),
    )?;
    assert_eq!(stopped.node, "b");
    assert!(
        since_the_loss(&c, EventKind::InstanceState).is_empty(),
        "nothing removed without a replacement"
    );
    // Nothing more on a later return: the copies it holds are its records' again.
    c.detach("b", session_of(&c, "b").unwrap_or_default());
    let again = registration_of(&c, "b");
    let _b = c.attach(&again, None)?;
    assert_eq!(since_the_loss(&c, EventKind::InstanceMoved).len(), 2);
    Ok(())
}

#[test]
fn a_lost_instance_no_node_takes_says_it_waits_and_why() -> Result<()> {
    let mut spec = web(2);
    spec.placement.max_per_node = Some(1);
    let (c, clock, a, returning) = two_nodes(spec)?;
    let index = held_index(&returning);
    lose_b_for(&c, &clock, &a, 31)?;
    moved_once(
        &c,
        "-:1 a:1",
        &format!(
            "web[{index}] moved off b (down 30.0s): pending, no ready node below 1 instance of \
             the app (2 nodes: 1 not ready, 1 at the per-node limit)"
        ),
    );

    // Back: the pending copy is placed there, and the old one stops.
    b_returns(
        &c,
        &returning,
        &format!("web[{index}] on b stopped: replaced while b was down, by a new copy there"),
    )?;
    Ok(())
}

/// A node that ran many of an app's instances: one event for their moves and one for their
/// old copies' stops, as placements are, so that watchers and the history are not flooded.
#[test]
fn many_lost_instances_are_one_event() -> Result<()> {
    let (c, clock, a, returning) = two_nodes(web(50))?;
    assert_eq!(returning.held.len(), 25);
    lose_b_for(&c, &clock, &a, 31)?;
    let moved = moved_once(
        &c,
        "a:50",
        "web: 25 instances moved off b (down 30.0s): 25 placed on other nodes, 0 pending",
    );
    assert_eq!((moved.node.as_str(), moved.index), ("b", None));
    b_returns(
        &c,
        &returning,
        "web: 25 instances on b stopped: replaced or removed while b was down",
    )?;
    Ok(())
}

/// A link that drops and comes back before the agent applied the set its return sent, so that
/// it still runs the old copies: their stops were said at the first return, and are not said
/// again at the second.
#[test]
fn a_flapping_return_tells_of_each_old_copy_once() -> Result<()> {
    let (c, clock, a, _) = two_nodes(web(2))?;
    let mut api = web(2);
    api.name = "api".into();
    c.apply(api)?;
    let returning = registration_of(&c, "b");
    let index_of = |app: &str| {
        let held: Vec<u32> = (returning.held.iter())
            .filter(|h| h.spec.name == app)
            .map(|h| h.index)
            .collect();
        assert_eq!(held.len(), 1, "one of {app}'s two instances on b");
        held[0]
    };
    let (w, i) = (index_of("web"), index_of("api"));
    // api's copy on b is removed while b is down, web's replaced on a.
    lose_b_for(&c, &clock, &a, 1)?;
    c.delete_app("api")?;
    pass(&c, &clock, &a, 30);
    let told = |c: &Control| -> Vec<String> {
        (c.recent_events("", None, 1000).into_iter())
            .map(|e| e.message)
            .filter(|m| m.contains(" on b stopped"))
            .collect()
    };
    let want = [
        format!("api[{i}] on b stopped: removed while b was down"),
        format!("web[{w}] on b stopped: replaced on a while b was down"),
    ];
    let _b = c.attach(&returning, None)?;
    assert_eq!(told(&c), want);
    lose_b_for(&c, &clock, &a, 1)?;
    let _b = c.attach(&returning, None)?;
    assert_eq!(told(&c), want, "said once per copy");
    Ok(())
}

/// A node a coordinator never saw down (it took over, or restarted, with the node's agent
/// still running what a removal it did not deliver left) says nothing of the copies it holds
/// whose records went: the new coordinator cannot tell why they went, and "removed while b was
/// down" would be false.
#[test]
fn a_node_not_seen_down_has_no_returning_copies_to_tell_of() -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::new(T0, 17));
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    };
    let before = Control::open_with(store.clone(), config.clone(), clock.clone())?;
    let _a = before.attach(&register("a"), None)?;
    let _b = before.attach(&register("b"), None)?;
    before.apply(web(4))?;
    let returning = registration_of(&before, "b");
    assert!(!returning.held.is_empty(), "b runs some of web");
    before.delete_app("web")?;
    drop(before);
    // The next coordinator loads the store; b's agent, still holding its copies, finds it.
    clock.advance_ms(1_000);
    let c = Control::open_with(store, config, clock)?;
    let _b = c.attach(&returning, None)?;
    let said: Vec<String> = (c.recent_events("web", None, 1000).into_iter())
        .map(|e| e.message)
        .filter(|m| m.contains(" on b stopped"))
        .collect();
    assert!(said.is_empty(), "{said:?}");
    Ok(())
}
