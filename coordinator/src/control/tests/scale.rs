//! Scale commands: a count set or changed (`+N`, `-N`), an apply that keeps a count a scale
//! set meanwhile, and the moves a scale-down makes to keep a spread app spread.

use super::*;

/// `scale web +2` / `-1` change the count the coordinator has when it takes them, and a change
/// below 0 is refused naming what is there.
#[tokio::test]
async fn a_relative_scale_changes_the_current_count() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let by = |change| c.scale_app(ScaleCmd::by("web", change)?);
    assert_eq!(
        by(3)?,
        Scaled {
            previous: 2,
            instances: 5
        }
    );
    assert_eq!(
        by(-1)?,
        Scaled {
            previous: 5,
            instances: 4
        }
    );
    assert_eq!(
        by(0)?,
        Scaled {
            previous: 4,
            instances: 4
        }
    );
    match by(-5) {
        Err(ControlError::InvalidArgument(m)) => {
            assert!(m.contains("web has 4; -5 would leave -1"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get_app("web")?.spec.instances, 4);
    Ok(())
}

#[tokio::test]
async fn an_apply_can_keep_the_count_a_scale_set_meanwhile() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    // A client read the spec at 2 instances, then someone scaled to 5...
    let mut read = web(2);
    c.scale("web", 5)?;
    // ...and the client applies its edit: the count it read does not undo the scale.
    read.env.insert("X".into(), "1".into());
    let (app, _, changed, _) = c.apply_keeping(read.clone(), true)?;
    assert!(changed);
    assert_eq!(app.spec.instances, 5);
    // Without keep_instances the spec's count is the count.
    let (app, ..) = c.apply_keeping(read, false)?;
    assert_eq!(app.spec.instances, 2);
    // A new app takes its spec's count either way.
    let mut other = web(3);
    other.name = "other".into();
    other.port = PortSpec::Range(4300, 4399);
    let (app, created, ..) = c.apply_keeping(other, true)?;
    assert!(created);
    assert_eq!(app.spec.instances, 3);
    Ok(())
}

/// A scale-down's rebalance move is a handoff, with or without a shutdown delay: the index's
/// copy serves until the new one is online (a plain move stopped it first, so a scale-down
/// restarted instances it kept), and an event says why it moves.
#[tokio::test]
async fn a_rebalance_move_is_a_handoff() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    let _b = c.attach(&register("b"), None)?;
    c.apply(web(6))?;
    assert_eq!(spread(&c, "web"), "a:3 b:3");
    // A node joins; the scale-down to 3 would leave a:2 b:1 c:0, so one index moves to c.
    let _c = c.attach(&register("c"), None)?;
    let before = c.list_instances("web")?;
    c.scale("web", 3)?;
    // Every kept index still has its old copy; a moved one also has a new copy elsewhere,
    // which takes over once online (the old one then drains for the delay).
    let after = c.list_instances("web")?;
    assert!(after.iter().any(|i| i.node == "c"), "{after:?}");
    for index in 0..3 {
        let old = before
            .iter()
            .find(|i| i.index == index)
            .map(|i| i.id.clone());
        assert!(
            after
                .iter()
                .any(|i| i.index == index && Some(&i.id) == old.as_ref()),
            "index {index} lost its serving copy"
        );
    }
    let copies = |index: u32| after.iter().filter(|i| i.index == index).count();
    assert!((0..3).any(|i| copies(i) == 2), "a move was made: {after:?}");
    let said: Vec<String> = (c.recent_events("web", Some(EventKind::InstanceMoved), 5))
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        said.iter().any(
            |m| m.contains("to c to keep web spread after the scale-down")
                && m.contains("stops once the one on c is online")
        ),
        "{said:?}"
    );
    Ok(())
}

/// A second scale-down while the first one's moves are under way counts each moving index
/// once, where its new copy goes, and moves none of them again (it undid them: a third record
/// for the index, which the conflict rule then removed with the move); a stopped instance just
/// moves, since it would never come online to hand over.
#[tokio::test]
async fn rebalance_moves_under_way_are_not_moved_again_and_stopped_ones_just_move() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(5))?;
    let _b = c.attach(&register("b"), None)?;
    let _c = c.attach(&register("c"), None)?;
    c.scale("web", 4)?;
    c.scale("web", 3)?;
    let records = c.persisted().instances;
    for index in 0..3 {
        let active: Vec<&InstanceRecord> = records
            .values()
            .filter(|r| r.index == index && r.draining_since.is_none())
            .collect();
        assert!(active.len() <= 2, "index {index}: {active:?}");
        if let [one, two] = active.as_slice() {
            assert!(one.replaces == Some(two.id) || two.replaces == Some(one.id));
        }
    }

    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(4))?;
    let _b = c.attach(&register("b"), None)?;
    c.act("web", None, Action::Stop)?;
    c.scale("web", 2)?;
    let records: Vec<InstanceRecord> = c.persisted().instances.into_values().collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.stopped && r.replaces.is_none()));
    assert_eq!(spread(&c, "web"), "a:1 b:1");
    Ok(())
}
