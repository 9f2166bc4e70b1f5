use super::*;

/// A stopped instance of a `sleep` app: applying it starts a supervisor and no process.
fn stopped(id: &str, generation: u64) -> DesiredSet {
    let spec = pmcluster_proto::v1::AppSpec {
        name: "web".to_string(),
        script: "sleep".to_string(),
        args: vec!["60".to_string()],
        instances: 1,
        ..Default::default()
    };
    let assignment = pmcluster_proto::v1::Assignment {
        instance_id: id.to_string(),
        index: 0,
        app_version: 1,
        spec: Some(spec),
        port: 0,
        run: false,
        restart_epoch: 0,
    };
    DesiredSet {
        generation,
        assignments: vec![Assignment::from(assignment)],
    }
}

#[tokio::test]
async fn a_set_that_arrives_while_the_agent_leaves_is_not_applied()
-> Result<(), Box<dyn std::error::Error>> {
    for leave in [
        |a: &Agent| a.detach.cancel(),
        |a: &Agent| a.stop_instances.cancel(),
    ] {
        let dir = tempfile::tempdir()?;
        let agent = Arc::new(Agent::for_test(dir.path()));
        assert!(apply(&agent, stopped("a", 1)));
        assert_eq!(agent.state.generation(), 1);
        leave(&agent);
        assert!(!apply(&agent, stopped("b", 2)));
        apply_local(&agent, stopped("c", 3));
        // Neither remembered nor reported as applied, and nothing new to supervise.
        assert_eq!(agent.state.generation(), 1);
        let ids: Vec<String> = agent
            .state
            .lock()
            .instances
            .keys()
            .map(|id| id.as_str().to_string())
            .collect();
        assert_eq!(ids, ["a"]);
        agent.supervisors.close();
        tokio::time::timeout(Duration::from_secs(10), agent.supervisors.wait()).await?;
    }
    Ok(())
}

/// An instance of an app whose user does not exist: a start of it fails before any process
/// runs (errored with "does not exist"), so the test sees whether a start happened
/// without running anything.
fn unstartable(generation: u64, restart_epoch: u64) -> DesiredSet {
    let spec = pmcluster_proto::v1::AppSpec {
        name: "cl".to_string(),
        script: "sh".to_string(),
        args: vec!["-c".to_string(), "exit 1".to_string()],
        instances: 1,
        user: "pmcluster-test-no-such-user".to_string(),
        ..Default::default()
    };
    let assignment = pmcluster_proto::v1::Assignment {
        instance_id: "cl0".to_string(),
        index: 0,
        app_version: 1,
        spec: Some(spec),
        port: 0,
        run: true,
        restart_epoch,
    };
    DesiredSet {
        generation,
        assignments: vec![Assignment::from(assignment)],
    }
}

/// The record an agent leaves of an instance it gave up on after `max_restarts`.
fn errored_record(set: &DesiredSet) -> Result<Saved, Box<dyn std::error::Error>> {
    let mut saved = Saved::of(&set.assignments[0]).ok_or("a valid spec")?;
    saved.restarts = 3;
    saved.last_exit_code = Some(1);
    saved.ended = Some(SavedEnd {
        state: crate::persist::EndState::Errored,
        message: "crashed 4 times within 60s (last: exited with code 1)".to_string(),
    });
    Ok(saved)
}

#[tokio::test]
async fn an_instance_that_ended_for_good_stays_so_after_an_agent_restart()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let agent = Arc::new(Agent::for_test(dir.path()));
    crate::persist::create_private_dir(agent.records.dir())?;
    let set = unstartable(1, 0);
    let saved = errored_record(&set)?;
    agent.records.write(&saved)?;
    let id = InstanceId::new("cl0");
    let start_seq = |agent: &Agent| {
        agent
            .state
            .lock()
            .instances
            .get(&id)
            .map(|e| e.target.borrow().start_seq)
    };

    // Held as it was, not waiting for a start.
    let waiting = adopt_local(&agent);
    assert_eq!(waiting, Vec::<Assignment>::new());
    let status = agent.state.status(&id).ok_or("cl0 held")?;
    assert_eq!(status.state, InstanceState::Errored);
    assert_eq!((status.restarts, status.last_exit_code), (3, Some(1)));
    assert!(status.message.starts_with("crashed 4 times"), "{status:?}");

    // The coordinator's first set, the same assignment: no start asked, and the grace
    // period's local set neither.
    assert!(apply(&agent, set.clone()));
    assert_eq!(start_seq(&agent), Some(0));
    apply_local(&agent, set);
    assert_eq!(start_seq(&agent), Some(0));
    assert_eq!(agent.state.status(&id), Some(status));
    let (records, _) = agent.records.load()?;
    assert_eq!(records, vec![saved]);

    // A restart (a new epoch) starts it; its record then no longer says it ended.
    assert!(apply(&agent, unstartable(2, 1)));
    assert_eq!(start_seq(&agent), Some(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !agent
        .state
        .status(&id)
        .is_some_and(|s| s.restart_epoch == 1 && s.message.contains("does not exist"))
    {
        assert!(tokio::time::Instant::now() < deadline, "no start attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while agent
        .records
        .load()?
        .0
        .first()
        .is_none_or(|r| r.ended.is_some())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "record not rewritten"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.detach.cancel();
    agent.supervisors.close();
    tokio::time::timeout(Duration::from_secs(10), agent.supervisors.wait()).await?;
    Ok(())
}

/// A start asked of an instance that ended for good just before the agent leaves (a
/// detach or a shutdown), before its supervisor acted on it: the record left must not pair
/// the new restart epoch with the end, or the next agent keeps it ended under the epoch that
/// asked for the start, and the coordinator's set (same epoch) never starts it.
#[tokio::test]
async fn a_start_asked_of_an_ended_instance_as_the_agent_leaves_is_not_lost()
-> Result<(), Box<dyn std::error::Error>> {
    for leave in [
        |a: &Agent| a.detach.cancel(),
        |a: &Agent| a.stop_instances.cancel(),
    ] {
        let dir = tempfile::tempdir()?;
        let agent = Arc::new(Agent::for_test(dir.path()));
        crate::persist::create_private_dir(agent.records.dir())?;
        let set = unstartable(1, 0);
        agent.records.write(&errored_record(&set)?)?;
        assert_eq!(adopt_local(&agent), Vec::<Assignment>::new());
        assert!(apply(&agent, set));
        // A restart, and the agent leaves before the supervisor runs at all.
        assert!(apply(&agent, unstartable(2, 1)));
        leave(&agent);
        agent.supervisors.close();
        tokio::time::timeout(Duration::from_secs(10), agent.supervisors.wait()).await?;
        if agent.stop_instances.is_cancelled() {
            // Not kept as it was: a start was asked, and this shutdown is what stopped it.
            let state = agent.state.status(&InstanceId::new("cl0")).map(|s| s.state);
            assert_eq!(state, Some(InstanceState::Stopped));
        }
        let (records, _) = agent.records.load()?;
        assert_eq!(
            records
                .iter()
                .map(|r| (r.restart_epoch, r.ended.is_some()))
                .collect::<Vec<_>>(),
            [(1, false)],
            "{records:?}"
        );
        drop(agent);

        // The next agent holds it back as waiting, and the coordinator's set starts it.
        let next = Arc::new(Agent::for_test(dir.path()));
        let waiting = adopt_local(&next);
        assert_eq!(
            waiting
                .iter()
                .map(|a| (a.instance_id.as_str(), a.restart_epoch))
                .collect::<Vec<_>>(),
            [("cl0", 1)]
        );
        assert!(apply(&next, unstartable(3, 1)));
        let id = InstanceId::new("cl0");
        let start_seq = next
            .state
            .lock()
            .instances
            .get(&id)
            .map(|e| e.target.borrow().start_seq);
        assert_eq!(start_seq, Some(1));
        next.detach.cancel();
        next.supervisors.close();
        tokio::time::timeout(Duration::from_secs(10), next.supervisors.wait()).await?;
    }
    Ok(())
}

#[test]
fn error_descriptions() {
    let cases = [
        (612 << 20, "612 MiB"),
        (5000, "4.9 KiB"),
        (100, "100 B"),
        (0, "0 B"),
        (1024, "1 KiB"),
        (1_700_000, "1.6 MiB"),
        (3 << 30, "3 GiB"),
        (150 << 20, "150 MiB"),
    ];
    for (n, want) in cases {
        assert_eq!(bytes(n), want, "{n}");
    }
}
