//! Cluster identity: agents of another cluster or ahead of the store are quarantined, what they
//! hold is listed and adopted, and a store restored from an older copy still carries out the
//! restarts asked of it.

use super::*;
use crate::model::{ForgottenNode, MAX_FORGOTTEN};

/// The held assignments of node `name` in `c`'s desired set, as an agent would send them.
pub(super) fn held_of(c: &Control, name: &str) -> Vec<Assignment> {
    let inner = c.lock();
    inner
        .nodes
        .get(name)
        .and_then(|l| l.desired.borrow().clone())
        .map(|s| s.assignments.clone())
        .unwrap_or_default()
}

/// What node `name`'s agent would say when it registers again: `c`'s cluster, the node's
/// generation and its desired set as held.
pub(super) fn registration_of(c: &Control, name: &str) -> Registration {
    let (cluster_id, generation) = {
        let inner = c.lock();
        (
            inner.state.cluster_id.clone(),
            inner.state.nodes[name].generation,
        )
    };
    Registration {
        cluster_id,
        generation,
        held: held_of(c, name),
        ..register(name)
    }
}

/// Every instance of `assignments` reported online at its restart epoch, as an agent running
/// them would.
fn report_running(c: &Control, node: &str, session: &Attached, assignments: &[Assignment]) {
    let running = assignments
        .iter()
        .map(|a| InstanceObserved {
            id: a.id,
            state: InstanceState::Online,
            pid: 100 + a.index,
            restart_epoch: a.restart_epoch,
            ..InstanceObserved::default()
        })
        .collect();
    super::report_tests::send(c, node, session, running);
}

/// One agent running `web` (2), a copy of the store taken, then a scale to 3, whose web[2] the
/// copy does not know: the store, the copy and the agent's registration after the scale.
fn copied_then_scaled() -> Result<(Arc<MemoryStore>, Persisted, Registration)> {
    let store = Arc::new(MemoryStore::default());
    let c = Control::open(store.clone(), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let backup = store.load()?;
    c.scale("web", 3)?;
    Ok((store, backup, registration_of(&c, "a")))
}

/// Issue 9 item 2: a coordinator on a new store quarantines agents of the old cluster (sends
/// nothing, lists what they hold), and adoption imports their instances with the same ids,
/// a generation above theirs and `adopt` set.
#[tokio::test]
async fn issue9_a_new_store_quarantines_then_adopts_without_restarts() -> Result<()> {
    let old = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = old.attach(&register("a"), None)?;
    let _b = old.attach(&register("b"), None)?;
    old.apply(web(4))?;
    let old_cluster = old.lock().state.cluster_id.clone();
    let regs: Vec<Registration> = ["a", "b"]
        .iter()
        .map(|n| {
            let generation = old.lock().state.nodes[*n].generation;
            Registration {
                cluster_id: old_cluster.clone(),
                generation,
                held: held_of(&old, n),
                ..register(n)
            }
        })
        .collect();
    let old_ids: BTreeSet<String> = old
        .list_instances("web")?
        .into_iter()
        .map(|i| i.id)
        .collect();

    let new = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    assert_ne!(new.lock().state.cluster_id, old_cluster);
    let mut sessions = Vec::new();
    for reg in &regs {
        let attached = new.attach(reg, None)?;
        assert!(
            attached.quarantine.contains("nodes adopt"),
            "{}",
            attached.quarantine
        );
        assert!(
            attached.desired.borrow().is_none(),
            "a set went to a quarantined node"
        );
        sessions.push(attached);
    }
    let nodes = new.list_nodes();
    assert!(nodes.iter().all(|n| n.status == NodeStatus::Quarantined));
    let listed: BTreeSet<String> = new
        .list_instances("web")?
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, old_ids, "the held instances are listed");
    assert!(
        new.lock().state.apps.is_empty(),
        "nothing is imported before adoption"
    );

    let adopted = new.adopt_node("")?;
    assert_eq!(adopted.len(), 2);
    let ids: BTreeSet<String> = new
        .list_instances("web")?
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, old_ids, "the same instances, none new");
    assert_eq!(new.get_app("web")?.spec.instances, 4);
    for (reg, session) in regs.iter().zip(&sessions) {
        let set = session
            .desired
            .borrow()
            .clone()
            .ok_or(ControlError::NotFound("no set".into()))?;
        assert!(set.adopt && set.generation > reg.generation, "{set:?}");
        let cluster_id = new.lock().state.cluster_id.clone();
        assert_eq!(set.cluster_id, cluster_id);
        let mut got: Vec<Uuid> = set.assignments.iter().map(|a| a.id).collect();
        let mut want: Vec<Uuid> = reg.held.iter().map(|a| a.id).collect();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "node {} keeps exactly what it holds",
            reg.node_name
        );
    }
    assert!(matches!(
        new.adopt_node("a"),
        Err(ControlError::FailedPrecondition(_))
    ));
    Ok(())
}

/// Records on a node that is quarantined because the store was restored from an older copy:
/// they are this cluster's, but nothing reaches the node, and their rows say so.
#[tokio::test]
async fn records_on_a_quarantined_node_say_why_nothing_changes() -> Result<()> {
    let (_, backup, registration) = copied_then_scaled()?;

    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let restored = Control::open_with(
        Arc::new(MemoryStore::holding(backup)),
        ControlConfig::default(),
        clock.clone(),
    )?;
    let attached = restored.attach(&registration, None)?;
    assert!(!attached.quarantine.is_empty());
    // One reports an error its agent retries: that message stays (`--wait` reads it), with
    // the node's beside it.
    let retrying = format!("cannot bind port 4100{RETRYING} 1s");
    let instances = registration
        .held
        .iter()
        .map(|a| InstanceObserved {
            id: a.id,
            state: if a.index == 0 {
                InstanceState::Errored
            } else {
                InstanceState::Online
            },
            pid: 100 + a.index,
            message: if a.index == 0 {
                retrying.clone()
            } else {
                String::new()
            },
            ..InstanceObserved::default()
        })
        .collect();
    super::report_tests::send(&restored, "a", &attached, instances);
    let rows = restored.list_instances("web")?;
    let recorded: Vec<&InstanceView> = rows.iter().filter(|i| !i.unmanaged).collect();
    assert_eq!(recorded.len(), 2, "{rows:?}");
    let quarantined = "node a is quarantined: nothing starts, stops or restarts it until \
                       `pmcluster nodes adopt a` (`pmcluster nodes` says why)";
    for row in recorded {
        let want = match row.index {
            0 => format!("{retrying}; {quarantined}"),
            _ => quarantined.to_string(),
        };
        assert_eq!(row.message, want, "web[{}]", row.index);
    }
    // A node whose heartbeats stopped is down, whatever its session last said.
    clock.advance_ms(3_600_000);
    for row in restored.list_instances("web")? {
        if !row.unmanaged {
            assert_eq!(row.message, "node a is down", "web[{}]", row.index);
            // Its last figures are not shown as if measured now.
            let figures = (row.cpu_percent, row.memory_bytes, row.started_at_ms);
            assert_eq!(figures, (0.0, 0, 0), "web[{}]", row.index);
        }
    }
    Ok(())
}

/// A restart asked of a store restored from an older copy, whose records' restart epochs are
/// behind what the agent runs, still restarts: asked after the agent reported, or before it
/// connected at all, and the coordinator restarted since (even when the restart brings the
/// store's generation up to the agent's, the node is quarantined until adopted, and adoption
/// raises it).
#[tokio::test]
async fn a_restart_asked_of_a_restored_store_happens() -> Result<()> {
    // (asked before the agent connects, restarts the agent ran after the copy was taken)
    for (before_the_agent, ran) in [(false, 1), (true, 1), (true, 2)] {
        let case = format!("asked before the agent: {before_the_agent}, {ran} restart(s) ran");
        let store = Arc::new(MemoryStore::default());
        let c = Control::open(store.clone(), ControlConfig::default())?;
        let _a = c.attach(&register("a"), None)?;
        c.apply(web(2))?;
        let backup = store.load()?;
        for _ in 0..ran {
            c.act("web", None, Action::Restart)?;
        }
        let registration = registration_of(&c, "a");
        let held = &registration.held;
        assert!(held.iter().all(|a| a.restart_epoch == ran), "{held:?}");
        drop(c);

        let kept = Arc::new(MemoryStore::holding(backup));
        let mut restored = Control::open(kept.clone(), ControlConfig::default())?;
        if before_the_agent {
            restored.act("web", None, Action::Restart)?;
            // The coordinator restarts before the agent is back: the restart is stored.
            drop(restored);
            restored = Control::open(kept, ControlConfig::default())?;
        }
        // Asked before, one restart brings the restored store's generation up to the agent's
        // after one; the agent is still ahead of the store as it was loaded.
        let generation = restored.lock().state.nodes["a"].generation;
        assert_eq!(
            generation >= registration.generation,
            before_the_agent && ran == 1,
            "{case}"
        );
        let attached = restored.attach(&registration, None)?;
        assert!(!attached.quarantine.is_empty(), "{case}");
        report_running(&restored, "a", &attached, &registration.held);
        if !before_the_agent {
            restored.act("web", None, Action::Restart)?;
        }
        assert!(
            attached.desired.borrow().is_none(),
            "{case}: a set before adoption"
        );
        restored.adopt_node("a")?;
        let set = attached
            .desired
            .borrow()
            .clone()
            .ok_or(ControlError::NotFound(format!("no set: {case}")))?;
        assert_eq!(set.assignments.len(), 2, "{case}");
        for a in &set.assignments {
            assert_eq!(
                a.restart_epoch,
                ran + 1,
                "{case}: web[{}] one restart above the epoch its agent ran",
                a.index
            );
        }
    }
    Ok(())
}

/// A store restored from an older copy, written to while the agent is away until its record
/// of the node reaches the agent's generation, and opened again after (a coordinator restart, a
/// new leader): the agent is still quarantined (the store never sent what it applied), so no
/// set stops what the copy does not know. The same writes to the store that was not restored
/// quarantine nothing.
#[tokio::test]
async fn a_restored_store_that_catches_up_with_the_agent_still_quarantines_it() -> Result<()> {
    let (store, backup, registration) = copied_then_scaled()?;
    let generation = registration.generation;
    assert_eq!(registration.held.len(), 3);

    for restored_copy in [true, false] {
        let case = if restored_copy {
            "restored"
        } else {
            "not restored"
        };
        let kept = if restored_copy {
            Arc::new(MemoryStore::holding(backup.clone()))
        } else {
            store.clone()
        };
        let c = Control::open(kept.clone(), ControlConfig::default())?;
        // Restarts while the agent is away, until the record's generation passes the agent's.
        for _ in 0..10 {
            if c.lock().state.nodes["a"].generation > generation {
                break;
            }
            c.act("web", None, Action::Restart)?;
        }
        assert!(c.lock().state.nodes["a"].generation > generation, "{case}");
        drop(c);
        let c = Control::open(kept, ControlConfig::default())?;
        let attached = c.attach(&registration, None)?;
        assert_eq!(!attached.quarantine.is_empty(), restored_copy, "{case}");
        if restored_copy {
            assert!(
                attached.desired.borrow().is_none(),
                "a set went to a quarantined node"
            );
            let unmanaged: Vec<u32> = c
                .list_instances("web")?
                .into_iter()
                .filter(|i| i.unmanaged)
                .map(|i| i.index)
                .collect();
            assert_eq!(unmanaged, [2], "web[2] listed as the agent holds it");
            // Adopted, it takes sets again, and its next registration is not quarantined.
            c.adopt_node("a")?;
            let set = attached.desired.borrow().clone();
            let taken = set.ok_or(ControlError::NotFound("no set after adoption".into()))?;
            c.detach("a", attached.session_id);
            let again = c.attach(
                &Registration {
                    generation: taken.generation,
                    held: taken.assignments.clone(),
                    ..registration.clone()
                },
                None,
            )?;
            assert!(again.quarantine.is_empty(), "{}", again.quarantine);
        } else {
            let set = attached
                .desired
                .borrow()
                .clone()
                .ok_or(ControlError::NotFound("no set".into()))?;
            assert_eq!(set.assignments.len(), 3);
            assert!(set.generation > registration.generation);
        }
    }
    Ok(())
}

/// A node's `sent_generation` follows its generation while an agent is attached, stays while
/// none is (whatever is written: a scale, a drain), and catches up when one registers.
#[tokio::test]
async fn the_generation_sent_moves_only_while_an_agent_is_attached() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let sent = |c: &Control| {
        let inner = c.lock();
        let node = &inner.state.nodes["a"];
        (node.generation, node.sent_generation)
    };
    let a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let (generation, at) = sent(&c);
    assert_eq!(at, Some(generation), "attached");
    c.detach("a", a.session_id);
    c.scale("web", 3)?;
    c.set_drain("a", true)?;
    let (moved, still) = sent(&c);
    assert!(moved > generation, "the scale moved the node's generation");
    assert_eq!(still, Some(generation), "no agent: nothing sent");
    let again = c.attach(
        &Registration {
            generation,
            ..register("a")
        },
        None,
    )?;
    assert!(again.quarantine.is_empty());
    let (now, at) = sent(&c);
    assert_eq!(at, Some(now), "registered: its set goes out");
    Ok(())
}

/// An adoption that imports nothing (the agent holds nothing) still counts its set as sent: the
/// agent takes it, and its next registration is not quarantined.
#[tokio::test]
async fn a_node_adopted_with_nothing_to_import_registers_again_unquarantined() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let old = Registration {
        cluster_id: "another-cluster".into(),
        generation: 9,
        ..register("a")
    };
    let attached = c.attach(&old, None)?;
    assert!(!attached.quarantine.is_empty());
    c.adopt_node("a")?;
    let set = attached
        .desired
        .borrow()
        .clone()
        .ok_or(ControlError::NotFound("no set after adoption".into()))?;
    assert!(set.adopt && set.generation > 9 && set.assignments.is_empty());
    c.detach("a", attached.session_id);
    let again = c.attach(
        &Registration {
            cluster_id: set.cluster_id.clone(),
            generation: set.generation,
            ..register("a")
        },
        None,
    )?;
    assert!(again.quarantine.is_empty(), "{}", again.quarantine);
    Ok(())
}

/// A restart while the agent is away notes it on the node's record; that write still plans only
/// the restarted app, where any other change to a node record plans every app.
#[tokio::test]
async fn a_restart_note_keeps_the_write_scoped_to_its_app() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let inner = c.lock();
    let node = inner.state.nodes["a"].clone();
    let rec = inner.state.app_instances("web")[0].clone();
    let restart = |node: NodeRecord| Batch {
        put_instances: vec![crate::model::InstanceRecord {
            restart_epoch: rec.restart_epoch + 1,
            ..rec.clone()
        }],
        put_nodes: vec![node],
        ..Batch::default()
    };
    let noted = NodeRecord {
        restarts_unseen: [(rec.id, rec.restart_epoch + 1)].into(),
        ..node.clone()
    };
    let scope = super::write::write_scope(&inner.state, &restart(noted));
    assert_eq!(scope, Some(["web".to_string()].into()));
    let drained = NodeRecord {
        drain: true,
        ..node.clone()
    };
    assert_eq!(
        super::write::write_scope(&inner.state, &restart(drained)),
        None
    );
    Ok(())
}

/// A restart note of a record gone since (scaled away, deleted) goes with the next note, so the
/// node's record stays as small as its instances.
#[tokio::test]
async fn restart_notes_of_gone_records_go() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    c.detach("a", a.session_id);
    let gone = Uuid::from_u128(99);
    {
        let mut inner = c.lock();
        let mut node = inner.state.nodes["a"].clone();
        node.restarts_unseen.insert(gone, 1);
        let batch = Batch {
            put_nodes: vec![node],
            ..Batch::default()
        };
        write::commit(c.store.as_ref(), &mut inner.state, &batch)?;
        inner.ahead.apply(&batch);
    }
    c.act("web", None, Action::Restart)?;
    let notes = c.lock().state.nodes["a"].restarts_unseen.clone();
    let id = c.lock().state.app_instances("web")[0].id;
    assert_eq!(notes.keys().collect::<Vec<_>>(), [&id], "{notes:?}");
    Ok(())
}

/// Ordinary restarts leave nothing behind: one asked while the agent is connected is not
/// noted, and one asked while it is away is noted until it registers, whose set carries it
/// (one above what it holds), so it restarts once.
#[tokio::test]
async fn a_restart_asked_while_a_node_is_away_is_one_restart() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    c.act("web", None, Action::Restart)?;
    assert!(
        c.lock().state.nodes["a"].restarts_unseen.is_empty(),
        "its agent takes the set"
    );
    let held = held_of(&c, "a");
    assert_eq!(
        held.iter().map(|a| a.restart_epoch).collect::<Vec<_>>(),
        [1]
    );
    c.detach("a", a.session_id);
    c.act("web", None, Action::Restart)?;
    assert_eq!(c.lock().state.nodes["a"].restarts_unseen.len(), 1);
    let again = c.attach(
        &Registration {
            held,
            ..register("a")
        },
        None,
    )?;
    assert!(again.quarantine.is_empty());
    assert!(
        c.lock().state.nodes["a"].restarts_unseen.is_empty(),
        "checked once"
    );
    let set = again
        .desired
        .borrow()
        .clone()
        .ok_or(ControlError::NotFound("no set".into()))?;
    assert_eq!(
        set.assignments
            .iter()
            .map(|a| a.restart_epoch)
            .collect::<Vec<_>>(),
        [2],
        "one restart above the one the agent ran"
    );
    // It took that one; away and back again with nothing asked meanwhile, nothing is raised.
    let took = held_of(&c, "a");
    c.detach("a", again.session_id);
    let third = c.attach(
        &Registration {
            held: took,
            ..register("a")
        },
        None,
    )?;
    let set = third
        .desired
        .borrow()
        .clone()
        .ok_or(ControlError::NotFound("no set".into()))?;
    assert_eq!(
        set.assignments
            .iter()
            .map(|a| a.restart_epoch)
            .collect::<Vec<_>>(),
        [2]
    );
    Ok(())
}

/// A store that is behind the agent (restored from an old copy) quarantines it too.
#[test]
fn issue9_an_agent_ahead_of_the_store_is_quarantined() {
    let mut state = Persisted {
        cluster_id: "c1".into(),
        ..Persisted::default()
    };
    state.nodes.insert(
        "a".into(),
        NodeRecord {
            name: "a".into(),
            labels: BTreeMap::new(),
            cores: 1,
            memory_bytes: 1,
            hostname: String::new(),
            agent_version: String::new(),
            generation: 5,
            drain: false,
            address: String::new(),
            sent_generation: None,
            restarts_unseen: Default::default(),
        },
    );
    let reg = |cluster: &str, generation: u64| Registration {
        cluster_id: cluster.into(),
        generation,
        ..register("a")
    };
    // (agent's cluster, agent's generation) -> quarantined?
    let cases = [
        ("c1", 5, false),
        ("c1", 3, false),
        ("", 0, false),
        ("c1", 6, true),
        ("c2", 5, true),
        ("c2", 0, true),
    ];
    for (cluster, generation, want) in cases {
        assert_eq!(
            quarantine_reason(&state, &registration(&reg(cluster, generation))).is_some(),
            want,
            "{cluster} {generation}"
        );
    }
}

/// A rolling restart of an app with instances on a quarantined node: the replacements go to
/// the node that takes sets and the rollout finishes; the quarantined agent's old processes are
/// listed as not managed until adoption, which stops them (their indices are taken) and imports
/// none of them.
#[tokio::test]
async fn a_rolling_restart_around_a_quarantined_node_finishes_and_adoption_stops_the_old()
-> Result<()> {
    use crate::clock::ManualClock;
    use crate::model::State;
    let clock = Arc::new(ManualClock::new(1_000_000, 11));
    let store = Arc::new(MemoryStore::default());
    let c = Control::open_with(store.clone(), ControlConfig::default(), clock.clone())?;
    let _a = c.attach(&register("a"), None)?;
    let _b = c.attach(&register("b"), None)?;
    // Never moved for a node being away: only the rollout moves a's indices.
    c.apply(AppSpec {
        reschedule: pmcluster_spec::app::Reschedule::Never,
        ..web(4)
    })?;
    let backup = store.load()?;
    // One restart on a moves its generation beyond the copy's; b's stays.
    let on_a = held_of(&c, "a")[0].index;
    c.act("web", Some(on_a), Action::Restart)?;
    let (reg_a, reg_b) = (registration_of(&c, "a"), registration_of(&c, "b"));
    assert_eq!(reg_a.held.len(), 2, "{:?}", reg_a.held);
    drop(c);

    let c = Control::open_with(
        Arc::new(MemoryStore::holding(backup)),
        ControlConfig::default(),
        clock.clone(),
    )?;
    let a = c.attach(&reg_a, None)?;
    let b = c.attach(&reg_b, None)?;
    assert!(!a.quarantine.is_empty(), "a is ahead of the restored store");
    assert!(b.quarantine.is_empty(), "b is not");
    report_running(&c, "a", &a, &reg_a.held);
    report_running(&c, "b", &b, &held_of(&c, "b"));

    let d = c.restart_rolling("web")?;
    for _ in 0..120 {
        clock.advance_ms(1_000);
        // The quarantined agent keeps running what it held, and says so.
        report_running(&c, "a", &a, &reg_a.held);
        report_running(&c, "b", &b, &held_of(&c, "b"));
        c.tick();
        if c.rollouts("web")?
            .current
            .is_some_and(|r| r.state != State::Running)
        {
            break;
        }
    }
    let current = c.rollouts("web")?.current;
    assert_eq!(
        current.as_ref().map(|r| (r.state, r.done)),
        Some((State::Succeeded, 4)),
        "{current:?}"
    );
    let rows = c.list_instances("web")?;
    let managed: Vec<_> = rows.iter().filter(|i| !i.unmanaged).collect();
    assert_eq!(managed.len(), 4, "{rows:?}");
    assert!(managed.iter().all(|i| i.node == "b"), "{rows:?}");
    let held_ids: Vec<String> = reg_a.held.iter().map(|h| h.id.to_string()).collect();
    let mut unmanaged: Vec<&str> = rows
        .iter()
        .filter(|i| i.unmanaged)
        .map(|i| i.id.as_str())
        .collect();
    unmanaged.sort();
    let mut want: Vec<&str> = held_ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(unmanaged, want, "a's old processes listed, not managed");
    let set = held_of(&c, "b");
    assert!(
        set.iter().all(|s| s.restart_epoch == d.restart_epoch),
        "{set:?}"
    );

    let adopted = c.adopt_node("a")?;
    assert_eq!(
        held_of(&c, "a"),
        [],
        "adoption imports no index the rollout replaced"
    );
    // The answer says what happens to the processes not taken.
    assert!(
        adopted.iter().any(|n| n.name == "a"
            && n.message.contains("0 of the 2 instance(s) it ran")
            && n.message.contains("the other 2 are stopped")),
        "{adopted:?}"
    );
    let rows = c.list_instances("web")?;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows.iter().all(|i| i.node == "b" && !i.unmanaged),
        "{rows:?}"
    );
    Ok(())
}

/// An adoption's answer counts what the node keeps: the instances this cluster had records of
/// already (the restored store knew web[0]) beside those it adopts. A trial's answer counted
/// only the adopted ones, and said every other process was stopped: "0 of the 2 ... the other
/// 2 are stopped", where only web[1] (beyond the restored count) was.
#[tokio::test]
async fn an_adoption_counts_the_instances_already_known_as_kept() -> Result<()> {
    use crate::clock::ManualClock;
    let clock = Arc::new(ManualClock::new(1_000_000, 13));
    let store = Arc::new(MemoryStore::default());
    let c = Control::open_with(store.clone(), ControlConfig::default(), clock.clone())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let backup = store.load()?;
    c.scale("web", 2)?;
    let reg_a = registration_of(&c, "a");
    assert_eq!(reg_a.held.len(), 2, "{:?}", reg_a.held);
    drop(c);

    let c = Control::open_with(
        Arc::new(MemoryStore::holding(backup)),
        ControlConfig::default(),
        clock.clone(),
    )?;
    let a = c.attach(&reg_a, None)?;
    assert!(!a.quarantine.is_empty(), "a is ahead of the restored store");
    let adopted = c.adopt_node("a")?;
    assert!(
        adopted.iter().any(|n| n.name == "a"
            && n.message.contains("1 of the 2 instance(s) it ran")
            && n.message.contains("the other 1 are stopped")),
        "{adopted:?}"
    );
    assert_eq!(held_of(&c, "a").len(), 1);
    Ok(())
}

/// A node forgotten while its agent was away, whose agent comes back (a coordinator restart in
/// between, so from the store): it joins unquarantined, its tombstone goes, and its first set
/// holds none of what it ran (their indices were placed on the other node when it was
/// forgotten), at a generation its agent takes. Without the tombstone it was quarantined.
#[tokio::test]
async fn a_forgotten_node_that_comes_back_joins_afresh() -> Result<()> {
    let store = Arc::new(MemoryStore::default());
    let c = Control::open(store.clone(), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    let b = c.attach(&register("b"), None)?;
    c.apply(web(2))?;
    let held = held_of(&c, "b");
    assert_eq!(held.len(), 1, "web spreads over both nodes");
    let returning = registration_of(&c, "b");
    c.detach("b", b.session_id);
    c.forget_node("b")?;
    let placed: Vec<String> = records(&c, "web")?.into_iter().map(|i| i.node).collect();
    assert_eq!(placed, ["a", "a"]);
    let index = held[0].index;
    let moved = |c: &Control| -> Vec<String> {
        (c.recent_events("web", Some(EventKind::InstanceMoved), 10)
            .into_iter())
        .map(|e| e.message)
        .collect()
    };
    assert_eq!(
        moved(&c),
        [format!("web[{index}] moved from b to a: node b forgotten")]
    );
    drop(c);

    let c = Control::open(store.clone(), ControlConfig::default())?;
    assert!(
        store.load()?.forgotten.contains_key("b"),
        "kept in the store"
    );
    let back = c.attach(&returning, None)?;
    assert!(back.quarantine.is_empty(), "{}", back.quarantine);
    let set = back.desired.borrow().clone().ok_or(ControlError::NotFound(
        "no set for the returning node".into(),
    ))?;
    assert!(set.assignments.is_empty(), "{:?}", set.assignments);
    assert!(
        set.generation > returning.generation,
        "a set its agent applies, under a generation of its own"
    );
    assert!(store.load()?.forgotten.is_empty(), "the tombstone goes");
    let said: Vec<String> = (c.recent_events("", Some(EventKind::NodeUp), 10).into_iter())
        .map(|e| e.message)
        .collect();
    assert!(
        said.iter()
            .any(|m| m.contains("it had been forgotten")
                && m.contains("removes the 1 instance it held")),
        "{said:?}"
    );
    assert_eq!(
        moved(&c),
        [format!(
            "web[{index}] on b stopped: replaced on a after b was forgotten"
        )]
    );
    Ok(())
}

/// Tombstones are bounded: a forget with `MAX_FORGOTTEN` kept lets the oldest go, and an agent
/// of that oldest node is then quarantined as one the store never knew.
#[tokio::test]
async fn the_oldest_tombstone_makes_room() -> Result<()> {
    let mut state = Persisted {
        cluster_id: "c1".into(),
        ..Persisted::default()
    };
    for i in 0..MAX_FORGOTTEN {
        let name = format!("gone-{i:04}");
        state.forgotten.insert(
            name.clone(),
            ForgottenNode {
                name,
                sent_up_to: 3,
                generation: 3,
                forgotten_ms: i64::try_from(i).unwrap_or(i64::MAX),
            },
        );
    }
    let store = Arc::new(MemoryStore::holding(state));
    let c = Control::open(store.clone(), ControlConfig::default())?;
    let b = c.attach(&register("b"), None)?;
    c.detach("b", b.session_id);
    c.forget_node("b")?;
    let kept = store.load()?.forgotten;
    assert_eq!(kept.len(), MAX_FORGOTTEN);
    assert!(kept.contains_key("b") && !kept.contains_key("gone-0000"));
    let old = |name: &str| Registration {
        cluster_id: "c1".into(),
        generation: 3,
        ..register(name)
    };
    assert!(!c.attach(&old("gone-0000"), None)?.quarantine.is_empty());
    assert!(c.attach(&old("gone-0001"), None)?.quarantine.is_empty());
    Ok(())
}
