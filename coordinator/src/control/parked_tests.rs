//! What an async worker calls while the state is held for long (a big write) returns without
//! it: a report is parked, taken in later and never after a newer report of its node; token
//! lookups and command answers do not take the state at all.

use std::sync::mpsc;
use std::time::Duration;

use super::report_tests::{send, statuses};
use super::tests::{register, web};
use super::*;
use crate::clock::ManualClock;
use crate::model::{CommandResult, InstanceState, NodeStatus};
use crate::store::MemoryStore;

/// How long a parked report may take to return: far longer than it does.
const RETURNS_WITHIN: Duration = Duration::from_secs(10);

/// A control with node `a` attached and app `web` of `instances`.
fn one_node(instances: u32) -> Result<(Control, Attached)> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(instances))?;
    Ok((c, a))
}

fn endpoints(c: &Control) -> Result<usize> {
    Ok(c.endpoints("web")?.endpoints.len())
}

/// Runs `f` in another thread while the state is held, as by a write planning for seconds:
/// `f` must return without it.
fn returns_while_held<T: Send>(c: &Control, what: &str, f: impl FnOnce() -> T + Send) -> T {
    let held = c.inner.lock();
    let (done, returned) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = done.send(f());
        });
        let out = returned.recv_timeout(RETURNS_WITHIN);
        // Released either way, or a call that waited would never end and the scope with it.
        drop(held);
        out.unwrap_or_else(|_| panic!("{what} waited for the state"))
    })
}

/// Sends `node`'s report while the state is held: the call must return without it.
fn send_while_held(c: &Control, node: &str, session: &Attached, state: InstanceState) {
    let report = statuses(c, node, state, 0).expect("statuses");
    returns_while_held(c, "the report", || send(c, node, session, report));
}

#[test]
fn a_report_that_finds_the_state_held_is_parked_and_taken_in_by_the_tick() -> Result<()> {
    let (c, a) = one_node(2)?;
    send_while_held(&c, "a", &a, InstanceState::Online);
    assert!(c.parked.busy());
    assert_eq!(endpoints(&c)?, 0, "not taken in yet");
    c.tick();
    assert!(!c.parked.busy());
    assert_eq!(endpoints(&c)?, 2);
    Ok(())
}

#[test]
fn a_parked_report_is_taken_in_by_the_next_report_that_gets_the_state() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    let b = c.attach(&register("b"), None)?;
    c.apply(web(4))?;
    send_while_held(&c, "a", &a, InstanceState::Online);
    // b's report, with the state free, takes a's in after its own.
    send(&c, "b", &b, statuses(&c, "b", InstanceState::Online, 0)?);
    assert!(!c.parked.busy());
    assert_eq!(endpoints(&c)?, 4);
    Ok(())
}

/// An agent reports all it holds each time, so its newer report makes a parked one moot, and
/// the parked one taken in after it would set its instances back.
#[test]
fn a_parked_report_is_dropped_by_a_newer_one_of_its_node() -> Result<()> {
    let (c, a) = one_node(2)?;
    send_while_held(&c, "a", &a, InstanceState::Launching);
    send(&c, "a", &a, statuses(&c, "a", InstanceState::Online, 0)?);
    c.tick();
    assert_eq!(
        endpoints(&c)?,
        2,
        "the older report was taken in after the newer"
    );
    Ok(())
}

/// A read finds the state taken for long as a report does, and goes off the async workers.
#[test]
fn the_state_is_not_free_while_held_or_while_reports_are_parked() -> Result<()> {
    let (c, a) = one_node(1)?;
    assert!(c.state_free());
    {
        let _held = c.inner.lock();
        std::thread::scope(|s| {
            let free = s.spawn(|| c.state_free()).join().expect("no panic");
            assert!(!free);
        });
    }
    send_while_held(&c, "a", &a, InstanceState::Online);
    assert!(
        !c.state_free(),
        "reports are parked: the state was taken for long"
    );
    c.tick();
    assert!(c.state_free());
    Ok(())
}

/// A parked report is a heartbeat that came in time: a write queued behind the long one that
/// parked it (or any view) must not find the node silent since before that write.
#[test]
fn a_parked_report_counts_as_a_heartbeat_before_it_is_taken_in() -> Result<()> {
    let clock = Arc::new(ManualClock::new(1_000_000, 7));
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    };
    let c = Control::open_with(Arc::new(MemoryStore::default()), config, clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    send(&c, "a", &a, statuses(&c, "a", InstanceState::Online, 0)?);
    clock.advance_ms(9_000);
    send_while_held(&c, "a", &a, InstanceState::Online);
    clock.advance_ms(2_000);
    // 11 s after the last report taken in, 2 s after the parked one came; no tick yet.
    let node = c.list_nodes().into_iter().find(|n| n.name == "a");
    assert_eq!(node.map(|n| n.status), Some(NodeStatus::Ready));
    Ok(())
}

/// A report of a replaced session neither drops nor replaces the parked report of the session
/// that replaced it.
#[test]
fn a_replaced_sessions_report_leaves_the_new_sessions_parked_report() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    // The agent reconnected: the old session's task may still hand in what it had read.
    let old = c.attach(&register("a"), None)?;
    c.detach("a", old.session_id);
    let new = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    send_while_held(&c, "a", &new, InstanceState::Online);
    // Parked behind the new session's report: kept out.
    send_while_held(&c, "a", &old, InstanceState::Launching);
    // Taken in at once: must not drop the new session's parked report.
    send(
        &c,
        "a",
        &old,
        statuses(&c, "a", InstanceState::Launching, 0)?,
    );
    c.tick();
    assert_eq!(endpoints(&c)?, 2);
    Ok(())
}

/// The calls an async worker makes besides reports and reads (the auth layer's token lookup on
/// every call, an agent's answer to a command, a caller giving up on one, listing tokens) do not
/// take the state either.
#[test]
fn token_lookups_and_command_answers_do_not_wait_for_the_state() -> Result<()> {
    use crate::core::access::{Role, token_text};
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let (id, secret) = ("0123456789ab", "cd".repeat(32));
    let (record, bearer) = c.create_token(NewToken {
        id: id.into(),
        secret: secret.clone(),
        role: Role::Read,
        apps: None,
        description: String::new(),
        created_by: "test".into(),
    })?;
    assert_eq!(bearer, token_text(id, &secret));
    let grant = returns_while_held(&c, "a token lookup", || c.token_grant(&bearer));
    assert_eq!(
        grant.map(|(id, g)| (id, g.role)),
        Some((record.id, Role::Read))
    );
    let listed = returns_while_held(&c, "listing tokens", || c.list_tokens().len());
    assert_eq!(listed, 1);
    let answer = CommandResult {
        request_id: 7,
        outcomes: Vec::new(),
    };
    returns_while_held(&c, "a command's answer", || c.command_result("a", answer));
    returns_while_held(&c, "forgetting a command", || c.forget_command(7));
    // The copy follows the committed state: a revoked token is refused from the next call on.
    c.revoke_token(id)?;
    assert!(c.token_grant(&bearer).is_none());
    assert!(c.list_tokens().is_empty());
    Ok(())
}
