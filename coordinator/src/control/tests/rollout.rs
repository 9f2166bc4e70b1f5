use std::time::Duration;

use pmcluster_spec::update::UpdatePolicy;

use super::*;
use crate::clock::ManualClock;
use crate::model::{Deployment, State};

/// What the agent of `node` says of its desired set: a spec with `BROKEN` in its environment
/// crash-loops (errored, its agent retrying), any other runs; a stopped one is stopped.
fn report_set(c: &Control, node: &str, session: &Attached) {
    report_set_but(c, node, session, None);
}

/// As [`report_set`], with the process of the `down` instance between two starts (a crash; the
/// agent still restarts it, so not errored).
fn report_set_but(c: &Control, node: &str, session: &Attached, down: Option<Uuid>) {
    let set = session.desired.borrow().clone().unwrap_or_default();
    let statuses = set
        .assignments
        .iter()
        .map(|a| {
            let broken = a.spec.env.contains_key("BROKEN") || down == Some(a.id);
            let state = match (a.run, broken) {
                (false, _) => InstanceState::Stopped,
                (true, false) => InstanceState::Online,
                (true, true) => InstanceState::Exited,
            };
            InstanceObserved {
                id: a.id,
                state,
                pid: if state == InstanceState::Online {
                    100 + a.index
                } else {
                    0
                },
                restart_epoch: a.restart_epoch,
                ..InstanceObserved::default()
            }
        })
        .collect();
    super::report_tests::send(c, node, session, statuses);
}

/// Deployment `id` of `app`, current or in the history.
fn deployment(c: &Control, app: &str, id: u64) -> Result<Option<Deployment>> {
    let r = c.rollouts(app)?;
    Ok(r.current.into_iter().chain(r.history).find(|d| d.id == id))
}

/// A control in manual time with one node, `a`, running `web` at version 1 under an update
/// policy of short deadlines (healthy within 5 s, progress within 60 s).
struct Rolling {
    clock: Arc<ManualClock>,
    c: Control,
    a: Attached,
    v1: AppSpec,
}

impl Rolling {
    fn start(instances: u32, min_healthy_time: Duration) -> Result<Rolling> {
        Rolling::start_with(web(instances), min_healthy_time)
    }

    /// [`Rolling::start`] of `spec` (with the short deadlines).
    fn start_with(spec: AppSpec, min_healthy_time: Duration) -> Result<Rolling> {
        let clock = Arc::new(ManualClock::new(1_000_000, 11));
        let c = Control::open_with(
            Arc::new(MemoryStore::default()),
            ControlConfig::default(),
            clock.clone(),
        )?;
        let a = c.attach(&register("a"), None)?;
        let v1 = AppSpec {
            update: UpdatePolicy {
                min_healthy_time,
                healthy_deadline: Duration::from_secs(5),
                progress_deadline: Duration::from_secs(60),
                ..UpdatePolicy::default()
            },
            ..spec
        };
        c.apply(v1.clone())?;
        report_set(&c, "a", &a);
        Ok(Rolling { clock, c, a, v1 })
    }

    /// Applies version 1 with `var` set in its environment: the rollout that starts.
    fn update(&self, var: &str) -> Result<Deployment> {
        let mut v2 = self.v1.clone();
        v2.env.insert(var.into(), "1".into());
        let (_, _, _, started) = self.c.apply(v2)?;
        let Some(started) = started else {
            panic!("a new process starts a rollout");
        };
        Ok(started)
    }

    /// A second goes by: the agent reports its set (with `down`'s process between two starts)
    /// and the control ticks.
    fn second(&self, down: Option<Uuid>) {
        self.clock.advance_ms(1000);
        report_set_but(&self.c, "a", &self.a, down);
        self.c.tick();
    }

    /// Applies version 1 with `BROKEN=value` and no automatic rollback, and waits for that
    /// rollout to fail (and stand).
    fn fail_without_rollback(&self, value: &str) -> Result<Deployment> {
        let mut next = self.v1.clone();
        next.env.insert("BROKEN".into(), value.into());
        next.update.auto_rollback = false;
        let (_, _, _, started) = self.c.apply(next)?;
        let Some(started) = started else {
            panic!("a new process starts a rollout");
        };
        self.until(started.id, State::Failed, 30)?;
        Ok(started)
    }

    /// Seconds go by, `seconds` at most, until deployment `id` of `web` is in `state`.
    fn until(&self, id: u64, state: State, seconds: u32) -> Result<()> {
        let reached = (0..seconds).any(|_| {
            self.second(None);
            deployment(&self.c, "web", id)
                .ok()
                .flatten()
                .is_some_and(|d| d.state == state)
        });
        assert!(reached, "never {state:?}: {:?}", self.c.rollouts("web")?);
        Ok(())
    }

    /// Deployment `id` of `web`, once it has ended.
    fn ended(&self, id: u64) -> Result<Option<Deployment>> {
        Ok(deployment(&self.c, "web", id)?.filter(|d| d.state != State::Running))
    }
}

/// One node with fixed ports: the replacement cannot start beside its old copy, so the old
/// one goes first (stop-then-start). A new version that never comes up fails the rollout at
/// its healthy deadline (5 s), and the old version comes back; it sat "running, 0/2" until the
/// progress deadline (60 s), its index down all the while.
#[tokio::test]
async fn a_stop_then_start_rollout_fails_at_the_healthy_deadline() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(1))?;
    let started = r.update("BROKEN")?;
    let mut failed_after = None;
    for second in 1..=70 {
        r.second(None);
        if let Some(d) = r.ended(started.id)? {
            failed_after = Some((second, d));
            break;
        }
    }
    let Some((second, d)) = failed_after else {
        panic!("the rollout never ended: {:?}", r.c.rollouts("web")?);
    };
    assert_eq!(d.state, State::RolledBack, "{d:?}");
    assert!(d.message.contains("not healthy within 5s"), "{}", d.message);
    // A step each to make the replacement, drain the old copy and remove it (the replacement
    // is placed then), and 5 s from that placement: not from the rollout's start.
    assert!((8..=10).contains(&second), "failed after {second}s: {d:?}");
    // The rollback brings version 1's process back to every index.
    for _ in 0..30 {
        r.second(None);
    }
    let set = r.a.desired.borrow().clone().unwrap_or_default();
    let spec_of = |index: u32| {
        set.assignments
            .iter()
            .filter(|x| x.index == index)
            .map(|x| x.spec.env.contains_key("BROKEN"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (spec_of(0), spec_of(1)),
        (vec![false], vec![false]),
        "{set:?}"
    );
    Ok(())
}

/// A replacement healthy for its `min_healthy_time` has met its healthy deadline: when it goes
/// down later in the rollout (a crash its agent restarts), the rollout waits for it again but
/// does not fail, as the engine's memory of it (`rollout::Facts::proven`) is kept by the shell.
#[tokio::test]
async fn a_crash_of_a_proven_replacement_does_not_fail_the_rollout() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(3))?;
    let started = r.update("V")?;
    // Index 0's replacement: its id, and whether its healthy deadline has passed.
    let replacement = || {
        let inner = r.c.lock();
        let now = inner.now;
        (inner.state.app_instances("web").into_iter())
            .find(|r| r.index == 0 && r.app_version == 2)
            .map(|r| (r.id, now > r.created_ms + 5000))
    };
    let mut crashed = None;
    let mut ended = None;
    for second in 1..=60 {
        // Index 0 done (its replacement proven), index 1 under way, and index 0's deadline
        // past: index 0's process is down for three reports.
        let d = deployment(&r.c, "web", started.id)?;
        if crashed.is_none()
            && d.as_ref().is_some_and(|d| d.done == 1)
            && replacement().is_some_and(|(_, late)| late)
        {
            crashed = Some(second);
        }
        let down = crashed
            .filter(|at| second < at + 3)
            .and_then(|_| replacement())
            .map(|(id, _)| id);
        r.second(down);
        if let Some(d) = r.ended(started.id)? {
            ended = Some(d);
            break;
        }
    }
    assert!(
        crashed.is_some(),
        "index 0 was never proven while index 1 was under way"
    );
    let Some(d) = ended else {
        panic!("the rollout never ended: {:?}", r.c.rollouts("web")?);
    };
    assert_eq!((d.state, d.done), (State::Succeeded, 2), "{d:?}");
    Ok(())
}

/// A rolling restart replaces serving processes in waves; a stopped instance has none. It is
/// refused up front, naming the stopped instances and what to run, with nothing written (no
/// rollout, no new epoch, no new desired set); once they run, it goes ahead.
#[tokio::test]
async fn a_rolling_restart_with_stopped_instances_is_refused_and_changes_nothing() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(3))?;
    let generation = || a.desired.borrow().as_ref().map(|s| s.generation);

    c.act("web", None, Action::Stop)?;
    let (before, sent) = (c.lock().ahead.clone(), generation());
    let refused = c.restart_rolling("web");
    let Err(ControlError::FailedPrecondition(message)) = refused else {
        panic!("not refused: {refused:?}");
    };
    for part in [
        "web[0], web[1], web[2] are stopped",
        "start them first (pmcluster start web)",
        "(pmcluster restart web)",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert_eq!(c.lock().ahead, before, "nothing is written");
    assert_eq!(generation(), sent, "no new desired set");
    assert_eq!(c.rollouts("web")?.current, None);

    // One stopped instance of three is named alone.
    c.act("web", None, Action::Start)?;
    c.act("web", Some(1), Action::Stop)?;
    let refused = c.restart_rolling("web");
    let Err(ControlError::FailedPrecondition(message)) = refused else {
        panic!("not refused: {refused:?}");
    };
    assert!(
        message.starts_with("web[1] is stopped") && message.contains("start it first"),
        "{message}"
    );

    c.act("web", Some(1), Action::Start)?;
    let d = c.restart_rolling("web")?;
    assert_eq!((d.state, d.total), (State::Running, 3), "{d:?}");
    Ok(())
}

/// A new version rolls out to an app with a stopped instance: that index gets a stopped record
/// of the new version at once (nothing runs there to hand over), and the others go in waves.
/// The stopped record never became healthy, so it held the whole budget: no other index was
/// replaced, and the rollout failed at its progress deadline and rolled back.
#[tokio::test]
async fn an_update_carries_a_stopped_instance_along_stopped() -> Result<()> {
    let r = Rolling::start(3, Duration::from_secs(1))?;
    r.c.act("web", Some(1), Action::Stop)?;
    report_set(&r.c, "a", &r.a);
    let started = r.update("V")?;
    let mut ended = None;
    for _ in 0..60 {
        r.second(None);
        if let Some(d) = r.ended(started.id)? {
            ended = Some(d);
            break;
        }
    }
    let Some(d) = ended else {
        panic!("the rollout never ended: {:?}", r.c.rollouts("web")?);
    };
    assert_eq!((d.state, d.done), (State::Succeeded, 3), "{d:?}");
    let set = r.a.desired.borrow().clone().unwrap_or_default();
    let mut got: Vec<(u32, u64, bool)> = set
        .assignments
        .iter()
        .map(|x| (x.index, x.app_version, x.run))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(0, 2, true), (1, 2, false), (2, 2, true)], "{set:?}");
    Ok(())
}

/// The ids of `web`'s records, sorted, with their versions.
fn records_of(c: &Control) -> Vec<(u32, Uuid, u64)> {
    let inner = c.lock();
    let mut v: Vec<(u32, Uuid, u64)> = (inner.state.app_instances("web").into_iter())
        .map(|r| (r.index, r.id, r.app_version))
        .collect();
    v.sort();
    v
}

/// `rollout undo` returns to version 1's process as version 3. An index the undone rollout had
/// not reached still runs that process: it is kept, not replaced (it was, every one, with the
/// same process under the new number), as a Kubernetes rollback keeps the pods of its template.
/// The one index already replaced gets version 1 back, and its old copy's replacement goes.
#[tokio::test]
async fn an_undo_keeps_the_instances_that_run_the_version_it_returns_to() -> Result<()> {
    // No fixed ports, so a replacement starts beside its old copy; replacements prove themselves
    // over 10 s, so the undo comes while index 0's is still on trial.
    let spec = AppSpec {
        port: PortSpec::None,
        ..web(3)
    };
    let r = Rolling::start_with(spec, Duration::from_secs(10))?;
    let before = records_of(&r.c);
    // Undone before any step: nothing is replaced, the undo's rollout succeeds at once.
    r.update("V")?;
    let undo = r.c.roll_back("web", None)?;
    r.second(None);
    let d = deployment(&r.c, "web", undo.id)?;
    assert_eq!(d.map(|d| (d.state, d.done)), Some((State::Succeeded, 3)));
    let kept: Vec<(u32, Uuid)> = records_of(&r.c)
        .iter()
        .map(|(i, id, _)| (*i, *id))
        .collect();
    let ids: Vec<(u32, Uuid)> = before.iter().map(|(i, id, _)| (*i, *id)).collect();
    assert_eq!(kept, ids);
    assert!(records_of(&r.c).iter().all(|(_, _, v)| *v == 3));
    // Undone with index 0's replacement (version 4) online beside its old copy: the old copy
    // and the two indices not reached stay; the replacement goes.
    let started = r.update("W")?;
    for _ in 0..30 {
        r.second(None);
        if records_of(&r.c)
            .iter()
            .any(|(i, _, v)| *i == 0 && *v == started.to_version)
        {
            break;
        }
    }
    r.second(None);
    let during = records_of(&r.c);
    assert_eq!(during.len(), 4, "{during:?}");
    let undo = r.c.roll_back("web", None)?;
    let mut ended = None;
    for _ in 0..30 {
        r.second(None);
        if let Some(d) = r.ended(undo.id)? {
            ended = Some(d);
            break;
        }
    }
    assert_eq!(ended.map(|d| d.state), Some(State::Succeeded));
    let after = records_of(&r.c);
    assert_eq!(
        after.iter().map(|(i, id, _)| (*i, *id)).collect::<Vec<_>>(),
        ids,
        "{after:?}"
    );
    assert!(after.iter().all(|(_, _, v)| *v == undo.to_version));
    Ok(())
}

/// Two copies of an index on one node (a rollout's replacement beside its old copy) write the
/// same log files: a log request asks the node for both, and the agent reads each file once.
/// Asking for one (an arbitrary one) could miss the other's stderr file (`merge_logs` may
/// differ between them), or name a replacement the agent does not run yet.
#[tokio::test]
async fn a_log_request_asks_for_both_copies_of_an_index() -> Result<()> {
    let spec = AppSpec {
        port: PortSpec::None,
        ..web(2)
    };
    let mut r = Rolling::start_with(spec, Duration::from_secs(10))?;
    let started = r.update("V")?;
    let pair = (0..30).any(|_| {
        r.second(None);
        records_of(&r.c)
            .iter()
            .any(|(i, _, v)| *i == 0 && *v == started.to_version)
    });
    assert!(pair, "no replacement: {:?}", records_of(&r.c));
    assert_eq!(records_of(&r.c).len(), 3);
    while r.a.commands.try_recv().is_ok() {}
    let query = crate::model::LogsQuery {
        app: "web".into(),
        index: None,
        lines: 5,
        follow: false,
        no_history: false,
    };
    let _lines = r.c.stream_logs(&query)?;
    let asked = loop {
        match r.a.commands.try_recv() {
            Ok(AgentCommand::Logs(req)) => break req.instance_ids,
            Ok(_) => continue,
            Err(e) => panic!("the agent was not asked for logs: {e:?}"),
        }
    };
    let mut want: Vec<Uuid> = records_of(&r.c).iter().map(|(_, id, _)| *id).collect();
    want.sort();
    let mut asked = asked;
    asked.sort();
    assert_eq!(asked, want);
    Ok(())
}

/// `rollout promote` says what it did: a promotion of a paused canary rollout resumes it, and
/// the reply no longer carries the canary step's "promote with" hint. With no canary waiting
/// (none configured, promoted already, no rollout) it is refused as a failed precondition, not
/// answered with the unchanged status.
#[tokio::test]
async fn a_promotion_says_what_it_did_and_is_refused_with_nothing_to_promote() -> Result<()> {
    let mut r = Rolling::start(3, Duration::from_secs(1))?;
    let refused = |r: &Rolling, want: &str| match r.c.steer_rollout("web", RolloutAction::Promote) {
        Err(ControlError::FailedPrecondition(m)) => assert!(m.contains(want), "{m}"),
        other => panic!("want a refusal saying {want:?}, got {other:?}"),
    };
    refused(&r, "has no rollout in progress");
    let plain = r.update("PLAIN")?;
    refused(
        &r,
        "nothing to promote: the rollout of app \"web\" to version 2 has no canaries",
    );
    for _ in 0..60 {
        if r.ended(plain.id)?.is_some() {
            break;
        }
        r.second(None);
    }
    r.v1.update.canary = 1;
    let canary = r.update("CANARY")?;
    let mut waiting = false;
    for _ in 0..60 {
        r.second(None);
        if deployment(&r.c, "web", canary.id)?.is_some_and(|d| d.state == State::AwaitingPromotion)
        {
            waiting = true;
            break;
        }
    }
    assert!(waiting, "{:?}", r.c.rollouts("web")?);
    r.c.steer_rollout("web", RolloutAction::Pause)?;
    let d = r.c.steer_rollout("web", RolloutAction::Promote)?;
    assert_eq!(d.state, State::Running);
    assert_eq!(d.message, "promoted and resumed; the rollout goes on");
    refused(&r, "was promoted already");
    Ok(())
}

/// A replacement its agent gave up on fails the rollout at once, with the agent's reason and
/// without its advice to restart "instance 0"; one the agent reports errored while it still
/// retries the start (the port held by the copy it replaces, a directory not there yet) does
/// not: that is what the healthy deadline is for.
#[tokio::test]
async fn only_a_replacement_given_up_on_fails_the_rollout_at_once() -> Result<()> {
    for (message, fails) in [
        (
            "crashed 3 times within 60s (last: exited with code 3); restart it with: pmcluster \
             restart web --instance 0",
            true,
        ),
        (
            "port 4100 is already in use on this host; retrying in 400ms",
            false,
        ),
    ] {
        let r = Rolling::start(2, Duration::from_secs(1))?;
        let started = r.update("BROKEN")?;
        let mut failed = None;
        // The replacement is placed at the third step (stop-then-start: fixed ports), so seven
        // seconds are within its healthy deadline (5 s from its placement).
        for _ in 0..7 {
            r.clock.advance_ms(1000);
            let set = r.a.desired.borrow().clone().unwrap_or_default();
            let statuses = set
                .assignments
                .iter()
                .map(|a| {
                    let broken = a.spec.env.contains_key("BROKEN");
                    InstanceObserved {
                        id: a.id,
                        state: if broken {
                            InstanceState::Errored
                        } else {
                            InstanceState::Online
                        },
                        pid: if broken { 0 } else { 100 + a.index },
                        message: if broken {
                            message.into()
                        } else {
                            String::new()
                        },
                        restart_epoch: a.restart_epoch,
                        ..InstanceObserved::default()
                    }
                })
                .collect();
            super::report_tests::send(&r.c, "a", &r.a, statuses);
            r.c.tick();
            if let Some(d) = r.ended(started.id)? {
                failed = Some(d);
                break;
            }
        }
        match failed {
            Some(d) => {
                assert!(fails, "{message}: {d:?}");
                assert!(
                    d.message.ends_with(
                        "errored: crashed 3 times within 60s (last: exited with code 3)"
                    ),
                    "{}",
                    d.message
                );
            }
            None => assert!(!fails, "{message}: the rollout is still running"),
        }
    }
    Ok(())
}

/// After a failed rollout left standing (no automatic rollback), a rolling restart is refused:
/// it would replace the instances still on the version before with the failed one.
#[tokio::test]
async fn a_rolling_restart_is_refused_while_a_failed_rollout_stands() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(1))?;
    r.fail_without_rollback("1")?;
    match r.c.restart_rolling("web") {
        Err(ControlError::FailedPrecondition(why)) => {
            assert!(why.contains("rollout undo web"), "{why}")
        }
        other => panic!("not refused: {other:?}"),
    }
    Ok(())
}

/// Found by a review: after a failed rollout left standing, a second failed rollout started
/// from the failed version, and an undo returned to it; a scale-up meanwhile added instances
/// of the failed version. What serves (version 1) is where each of them goes now.
#[tokio::test]
async fn what_a_failed_rollout_left_standing_is_what_comes_next() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(1))?;
    let fail = |value: &str| r.fail_without_rollback(value);
    let first = fail("1")?;
    assert_eq!((first.from_version, first.to_version), (1, 2));
    let second = fail("2")?;
    assert_eq!((second.from_version, second.to_version), (1, 3));
    r.c.scale("web", 3)?;
    r.second(None);
    let added: Vec<u64> = records_of(&r.c)
        .into_iter()
        .filter(|(index, _, _)| *index == 2)
        .map(|(_, _, version)| version)
        .collect();
    assert_eq!(added, vec![1], "index 2 runs what serves");
    let undo = r.c.roll_back("web", None)?;
    assert_eq!(undo.from_version, 1);
    let inner = r.c.lock();
    let app = find_app(&inner.state, "web")?;
    assert_eq!(
        app.spec.env.get("BROKEN"),
        None,
        "undo returns to version 1's process"
    );
    Ok(())
}

/// A drain of the only node during a rolling update with per-index ports: the replacement can
/// go nowhere (nothing new is placed on a draining node), and stopping the old copy to make
/// room, as a rollout does on an open node, freed nothing. Every index was taken down in turn
/// until `undrain`. The old copies now serve on, and the progress deadline ends the rollout.
#[test]
fn a_drain_of_the_only_node_during_a_rolling_update_takes_no_index_down() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(1))?;
    let update = r.update("V")?;
    r.c.set_drain("a", true)?;
    for second in 1..=70 {
        r.second(None);
        let serving: std::collections::BTreeSet<u32> = (r.c.list_instances("web")?.into_iter())
            .filter(|i| i.state == InstanceState::Online)
            .map(|i| i.index)
            .collect();
        assert_eq!(serving, [0, 1].into(), "at {second} s");
    }
    let ended = deployment(&r.c, "web", update.id)?.map(|d| d.state);
    assert!(
        ended.is_some_and(|s| s != State::Running),
        "the progress deadline ends it: {ended:?}"
    );
    Ok(())
}

/// A rolling restart that fails (here: its only node drains, so no replacement can go anywhere
/// until the progress deadline) is not rolled back: the rollback of a restart was another
/// restart, waiting out the same deadline. Nor does it stand in the way of the next one, as a
/// failed new version does: every instance runs the app's version either way.
#[test]
fn a_failed_rolling_restart_is_not_rolled_back_and_holds_nothing() -> Result<()> {
    let r = Rolling::start(2, Duration::from_secs(1))?;
    r.c.set_drain("a", true)?;
    let restart = r.c.restart_rolling("web")?;
    r.until(restart.id, State::Failed, 70)?;
    for _ in 0..5 {
        r.second(None);
    }
    let rollouts = r.c.rollouts("web")?;
    let ended = deployment(&r.c, "web", restart.id)?.map(|d| d.state);
    assert_eq!(ended, Some(State::Failed), "{rollouts:?}");
    assert!(
        (rollouts.current.iter().chain(&rollouts.history)).all(|d| d.id <= restart.id),
        "no rollback after it: {rollouts:?}"
    );
    r.c.set_drain("a", false)?;
    let again = r.c.restart_rolling("web")?;
    assert!(again.id > restart.id, "{again:?}");
    Ok(())
}

/// Found by a review: a rolling restart while a new version's rollout was under way (here its
/// canary awaits promotion) replaced that rollout, took the instances still on version 1 to
/// version 2 past the canary gate, and, failing, left them nothing to be held on. It is refused
/// now, and the rollout under way goes on as it was.
#[test]
fn a_rolling_restart_is_refused_while_a_new_version_rolls_out() -> Result<()> {
    let r = Rolling::start(3, Duration::from_secs(1))?;
    let mut v2 = r.v1.clone();
    v2.update.canary = 1;
    v2.env.insert("V".into(), "2".into());
    let Some(update) = r.c.apply(v2)?.3 else {
        panic!("a new process starts a rollout");
    };
    r.until(update.id, State::AwaitingPromotion, 30)?;
    match r.c.restart_rolling("web") {
        Err(ControlError::FailedPrecondition(why)) => assert!(
            why.contains("the rollout to version 2 is awaiting promotion")
                && why.contains("rollout undo web"),
            "{why}"
        ),
        other => panic!("not refused: {other:?}"),
    }
    let now = deployment(&r.c, "web", update.id)?.map(|d| d.state);
    assert_eq!(now, Some(State::AwaitingPromotion));
    Ok(())
}

/// `rollout undo` of an app with no instances: the new version is in place at once, and the
/// reply says so. It was the app's last rollout, naming a version long gone.
#[test]
fn an_undo_with_no_instances_names_the_new_version() -> Result<()> {
    let c = Control::open_with(
        Arc::new(MemoryStore::default()),
        ControlConfig::default(),
        Arc::new(crate::clock::ManualClock::new(1_000_000, 3)),
    )?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    c.scale("web", 0)?;
    c.apply(AppSpec {
        env: [("V".to_string(), "2".to_string())].into(),
        ..web(0)
    })?;
    let version = c.get_app("web")?.version;
    let d = c.roll_back("web", None)?;
    assert_eq!(
        (d.from_version, d.to_version, d.state),
        (version, version + 1, State::Succeeded),
        "{d:?}"
    );
    assert_eq!(c.get_app("web")?.version, version + 1);
    Ok(())
}
