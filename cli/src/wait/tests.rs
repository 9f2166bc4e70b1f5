use pb::{HealthState as H, InstanceState as S};
use pmcluster_proto::v1 as pb;

use super::{
    Goal, Progress, not_stopped, progress, rollout_failed, rollout_held, rollout_running,
    with_rollout,
};

fn inst(index: u32, state: S) -> pb::Instance {
    pb::Instance {
        app: "web".into(),
        id: format!("id-{index}"),
        index,
        state: state as i32,
        port: 3000 + index,
        app_version: 1,
        ..pb::Instance::default()
    }
}

fn with(mut i: pb::Instance, f: impl FnOnce(&mut pb::Instance)) -> pb::Instance {
    f(&mut i);
    i
}

fn goal(count: Option<u32>) -> Goal {
    Goal {
        app: "web".into(),
        count,
        index: None,
        autorestart: true,
        version: 0,
        min_uptime: std::time::Duration::from_secs(1),
        replaced: Vec::new(),
        rollout: None,
        created: false,
    }
}

fn waiting(text: &str) -> Progress {
    Progress::Waiting(text.to_string())
}

fn failed(text: &str) -> Progress {
    Progress::Failed(text.to_string())
}

#[test]
fn instances_are_up_when_online_healthy_and_at_the_version_asked_for() {
    let online = |i| inst(i, S::Online);
    let exited = with(inst(1, S::Exited), |i| {
        i.restarts = 3;
        i.message = "exit code 1".into();
    });
    let errored = with(inst(1, S::Errored), |i| {
        i.message = "user \"nope\" does not exist on this host".into();
    });
    let no_restart = Goal {
        autorestart: false,
        ..goal(Some(2))
    };
    let only_1 = Goal {
        index: Some(1),
        ..goal(Some(2))
    };
    let version_2 = Goal {
        version: 2,
        ..goal(Some(2))
    };
    let other_app = with(inst(0, S::Launching), |i| i.app = "api".into());
    // Neither a port nor a health check: online says only that it was started.
    let portless = |i, id: &str| {
        with(online(i), |x| {
            x.port = 0;
            x.id = id.into();
        })
    };
    let cases: Vec<(&str, Goal, Vec<pb::Instance>, Progress)> = vec![
        (
            "all online",
            goal(Some(2)),
            vec![online(0), online(1)],
            Progress::Up(2),
        ),
        (
            "one still launching",
            goal(Some(2)),
            vec![online(0), inst(1, S::Launching)],
            waiting("1 of 2 up; web[1] launching"),
        ),
        (
            "one not listed yet",
            goal(Some(2)),
            vec![online(0)],
            waiting("1 of 2 up; web[1] not placed yet"),
        ),
        (
            "another app's instances do not count",
            goal(Some(1)),
            vec![other_app.clone(), online(0)],
            Progress::Up(1),
        ),
        (
            "one a quarantined node holds is not this app's",
            goal(Some(1)),
            vec![
                with(online(0), |i| {
                    i.unmanaged = true;
                    i.id = "held".into();
                }),
                inst(0, S::Pending),
            ],
            waiting("0 of 1 up; web[0] pending"),
        ),
        (
            "a new app under a deleted one's name: the old processes are not its own",
            Goal {
                created: true,
                ..goal(Some(1))
            },
            vec![
                online(0),
                with(inst(1, S::Stopping), |i| {
                    i.removed = true;
                    i.id = "old-1".into();
                }),
            ],
            Progress::Up(1),
        ),
        (
            "scaled down: the removed ones above the count are waited for",
            goal(Some(1)),
            vec![online(0), with(inst(1, S::Stopping), |i| i.removed = true)],
            waiting("1 of 1 up; 1 instance(s) above the new count still stopping"),
        ),
        (
            "pending says why",
            goal(Some(1)),
            vec![with(inst(0, S::Pending), |i| {
                i.message = "no node has room".into();
            })],
            waiting("0 of 1 up; web[0] pending: no node has room"),
        ),
        (
            "a crash loop is waited on (autorestart)",
            goal(Some(2)),
            vec![online(0), exited.clone()],
            waiting("1 of 2 up; web[1] exited (restarts 3): exit code 1"),
        ),
        (
            "an exit is final without autorestart",
            no_restart,
            vec![online(0), exited],
            failed("web[1] exited and autorestart is off: exit code 1"),
        ),
        (
            "an error the agent retries is not final",
            goal(Some(1)),
            vec![with(inst(0, S::Errored), |i| {
                i.message = "port 3000 is already in use on this host; retrying in 1.6s".into();
            })],
            waiting(
                "0 of 1 up; web[0] errored: port 3000 is already in use on this host; \
                 retrying in 1.6s",
            ),
        ),
        (
            "errored is final",
            goal(Some(2)),
            vec![online(0), errored],
            failed("web[1] errored: user \"nope\" does not exist on this host"),
        ),
        (
            "an instance asked for that is stopped will not come up by itself",
            Goal {
                index: Some(1),
                ..goal(Some(2))
            },
            vec![online(0), with(inst(1, S::Stopped), |i| i.stopped = true)],
            failed("web[1] is stopped; start it with: pmcluster start web --instance 1"),
        ),
        (
            // A trial's `stop tom --instance 1`, then `reload tom ... --wait`, failed at once
            // while the rollout went on to succeed.
            "one a user stopped is left out of a wait for the whole app",
            goal(Some(2)),
            vec![online(0), with(inst(1, S::Stopped), |i| i.stopped = true)],
            Progress::Up(1),
        ),
        (
            "a health check not passed yet",
            goal(Some(1)),
            vec![with(online(0), |i| i.health = H::Unknown as i32)],
            waiting("0 of 1 up; web[0] online, not healthy yet"),
        ),
        (
            "unhealthy",
            goal(Some(1)),
            vec![with(online(0), |i| i.health = H::Unhealthy as i32)],
            waiting("0 of 1 up; web[0] online, not healthy yet"),
        ),
        (
            "healthy",
            goal(Some(1)),
            vec![with(online(0), |i| i.health = H::Healthy as i32)],
            Progress::Up(1),
        ),
        (
            "the old version is not up",
            version_2.clone(),
            vec![with(online(0), |i| i.app_version = 2), online(1)],
            waiting("1 of 2 up; web[1] online at version 1 of 2"),
        ),
        (
            "a replaced instance draining beside its replacement",
            version_2.clone(),
            vec![
                with(online(0), |i| i.app_version = 2),
                with(inst(1, S::Draining), |i| i.app_version = 1),
                with(online(1), |i| i.app_version = 2),
            ],
            waiting("1 of 2 up; web[1] up, the process it replaces still draining"),
        ),
        (
            "the replaced instance gone",
            version_2.clone(),
            vec![
                with(online(0), |i| i.app_version = 2),
                with(online(1), |i| i.app_version = 2),
            ],
            Progress::Up(2),
        ),
        (
            "a replacement still launching beside the draining one",
            version_2,
            vec![
                with(online(0), |i| i.app_version = 2),
                with(inst(1, S::Draining), |i| i.app_version = 1),
                with(inst(1, S::Launching), |i| i.app_version = 2),
            ],
            waiting("1 of 2 up; web[1] launching"),
        ),
        (
            "scaled down: the instances above go first",
            goal(Some(1)),
            vec![online(0), inst(1, S::Stopping)],
            waiting("1 of 1 up; 1 instance(s) above the new count still stopping"),
        ),
        (
            "scaled down and gone",
            goal(Some(1)),
            vec![online(0)],
            Progress::Up(1),
        ),
        (
            "one index only",
            only_1,
            vec![inst(0, S::Launching), online(1)],
            Progress::Up(1),
        ),
        (
            "instances: max takes the indices listed",
            goal(None),
            vec![online(0), online(1), online(2)],
            Progress::Up(3),
        ),
        (
            "instances: max, one launching",
            goal(None),
            vec![online(0), inst(1, S::Launching)],
            waiting("1 of 2 up; web[1] launching"),
        ),
        (
            "a long list names three",
            goal(Some(5)),
            vec![online(0)],
            waiting(
                "1 of 5 up; web[1] not placed yet; web[2] not placed yet; web[3] not placed \
                 yet; and 1 more",
            ),
        ),
        (
            "without a port or check, online for less than min_uptime",
            goal(Some(2)),
            vec![portless(0, "steady"), portless(1, "new")],
            waiting("1 of 2 up; web[1] online for less than min_uptime (1s)"),
        ),
        (
            "without a port or check, online for min_uptime",
            goal(Some(1)),
            vec![portless(0, "steady")],
            Progress::Up(1),
        ),
        (
            "a health check stands for the port",
            goal(Some(1)),
            vec![with(portless(0, "new"), |i| i.health = H::Healthy as i32)],
            Progress::Up(1),
        ),
        (
            "restarted: the old process is not up",
            Goal {
                replaced: vec![
                    ("id-0".into(), 100, S::Online as i32),
                    ("id-1".into(), 101, S::Online as i32),
                ],
                ..goal(Some(2))
            },
            vec![
                with(online(0), |i| i.pid = 200),
                with(online(1), |i| i.pid = 101),
            ],
            waiting("1 of 2 up; web[1] online, not restarted yet"),
        ),
        (
            "restarted in waves: the old one still online beside its replacement",
            Goal {
                replaced: vec![("id-0".into(), 100, S::Online as i32)],
                ..goal(Some(1))
            },
            vec![
                with(online(0), |i| i.pid = 100),
                with(online(0), |i| {
                    i.id = "id-new".into();
                    i.pid = 200;
                }),
            ],
            waiting("0 of 1 up; web[0] up, the process it replaces still online"),
        ),
        (
            "restarted in waves: the old one listed as stopping until its process ends",
            Goal {
                replaced: vec![("id-0".into(), 100, S::Online as i32)],
                ..goal(Some(1))
            },
            vec![
                with(inst(0, S::Stopping), |i| {
                    i.pid = 100;
                    i.removed = true;
                }),
                with(online(0), |i| {
                    i.id = "id-new".into();
                    i.pid = 200;
                }),
            ],
            waiting("0 of 1 up; web[0] up, the process it replaces still stopping"),
        ),
        (
            "instances: max, right after a restart: all of them still the old ones",
            Goal {
                replaced: vec![
                    ("id-0".into(), 100, S::Online as i32),
                    ("id-1".into(), 101, S::Online as i32),
                ],
                ..goal(None)
            },
            vec![
                with(online(0), |i| i.pid = 100),
                with(online(1), |i| i.pid = 101),
            ],
            waiting(
                "0 of 2 up; web[0] online, not restarted yet; web[1] online, not restarted yet",
            ),
        ),
        (
            "instances: max, all at the old version",
            Goal {
                version: 2,
                ..goal(None)
            },
            vec![online(0)],
            waiting("0 of 1 up; web[0] online at version 1 of 2"),
        ),
        (
            // The coordinator shows a restarted instance as launching until its agent tries
            // again; the snapshot holds running processes only.
            "restarted from errored: the new attempt failed for good",
            Goal {
                replaced: vec![("id-1".into(), 101, S::Online as i32)],
                ..goal(Some(1))
            },
            vec![with(inst(0, S::Errored), |i| {
                i.message = "user \"nope\" does not exist on this host".into();
            })],
            failed("web[0] errored: user \"nope\" does not exist on this host"),
        ),
        (
            "a node that is not connected",
            goal(Some(1)),
            vec![with(inst(0, S::Unknown), |i| {
                i.message = "node a is not connected".into();
            })],
            waiting("0 of 1 up; web[0] unknown: node a is not connected"),
        ),
        (
            "scaled to 0: until the last one is gone",
            goal(Some(0)),
            vec![inst(0, S::Stopping)],
            waiting("0 of 0 up; 1 instance(s) above the new count still stopping"),
        ),
        (
            "no instances asked for",
            goal(Some(0)),
            vec![],
            Progress::Up(0),
        ),
    ];
    for (name, g, list, want) in cases {
        let steady = |i: &pb::Instance| i.id == "steady";
        assert_eq!(progress(&g, &list, steady), want, "{name}");
    }
}

#[test]
fn a_rollout_that_will_not_bring_its_version_up_fails_the_wait() {
    let d = |id: u64, state: &str| pb::Deployment {
        id,
        app: "web".into(),
        from_version: 1,
        to_version: 2,
        state: state.into(),
        message: if state == "running" {
            String::new()
        } else {
            "web[1] did not become healthy".into()
        },
        ..pb::Deployment::default()
    };
    let status =
        |current: Option<pb::Deployment>, history: Vec<pb::Deployment>| pb::RolloutStatus {
            current,
            history,
            ..pb::RolloutStatus::default()
        };
    let cases = [
        ("running", status(Some(d(7, "running")), vec![]), None),
        (
            "awaiting promotion",
            status(Some(d(7, "awaiting promotion")), vec![]),
            None,
        ),
        ("succeeded", status(Some(d(7, "succeeded")), vec![]), None),
        (
            "failed",
            status(Some(d(7, "failed")), vec![]),
            Some(
                "the rollout of version 2 failed: web[1] did not become healthy; the instances \
                 it did not replace keep running version 1: `pmcluster rollout undo web` \
                 returns every instance to it, or apply a fixed spec",
            ),
        ),
        (
            "rolled back: the rollback is current",
            status(Some(d(8, "running")), vec![d(7, "rolled back")]),
            Some("the rollout of version 2 was rolled back: web[1] did not become healthy"),
        ),
        (
            "superseded",
            status(Some(d(8, "running")), vec![d(7, "superseded")]),
            Some(
                "the rollout of version 2 was superseded by a later change: web[1] did not \
                 become healthy",
            ),
        ),
        (
            "replaced while its record says running",
            status(Some(d(8, "running")), vec![d(7, "running")]),
            Some("the rollout of version 2 was replaced by another rollout"),
        ),
        (
            "succeeded, and a later one runs",
            status(Some(d(8, "running")), vec![d(7, "succeeded")]),
            None,
        ),
        (
            "no longer listed",
            status(Some(d(8, "running")), vec![]),
            None,
        ),
    ];
    for (name, st, want) in cases {
        assert_eq!(rollout_failed(7, &st).as_deref(), want, "{name}");
    }
    // A failed rolling restart leaves no other version standing.
    let restart = pb::Deployment {
        kind: "restart".into(),
        from_version: 2,
        ..d(7, "failed")
    };
    assert_eq!(
        rollout_failed(7, &status(Some(restart), vec![])).as_deref(),
        Some("the rollout of version 2 failed: web[1] did not become healthy")
    );
    let held = [
        (
            "awaiting promotion",
            Some(
                "the rollout of version 2 waits for `pmcluster rollout promote web` after its canary",
            ),
        ),
        (
            "paused",
            Some("the rollout of version 2 is paused: `pmcluster rollout resume web`"),
        ),
        ("running", None),
    ];
    for (state, want) in held {
        let st = status(Some(d(7, state)), vec![]);
        assert_eq!(rollout_held(7, &st).as_deref(), want, "{state}");
        assert_eq!(rollout_held(8, &st), None, "another rollout: {state}");
    }
}

/// A rolling restart on one node with a fixed port goes stop-then-start: its replacement is up
/// at once, while the rollout waits `min_healthy_time` (and may yet fail, the new process
/// crashing). The wait ends with the rollout, not when the instances first look up.
#[test]
fn instances_up_while_the_rollout_runs_are_not_the_end_of_the_wait() {
    let d = |id: u64, state: &str, done: u32| pb::Deployment {
        id,
        app: "web".into(),
        kind: "restart".into(),
        from_version: 1,
        to_version: 1,
        state: state.into(),
        done,
        total: 1,
        ..pb::Deployment::default()
    };
    let status = |current: pb::Deployment, history: Vec<pb::Deployment>| pb::RolloutStatus {
        current: Some(current),
        history,
        ..pb::RolloutStatus::default()
    };
    let cases = [
        (
            "running",
            status(d(7, "running", 0), vec![]),
            Some("the rollout of version 1 is running, 0 of 1 on it"),
        ),
        (
            "paused",
            status(d(7, "paused", 0), vec![]),
            Some("the rollout of version 1 is paused, 0 of 1 on it"),
        ),
        ("succeeded", status(d(7, "succeeded", 1), vec![]), None),
        ("failed", status(d(7, "failed", 0), vec![]), None),
        (
            "another one runs",
            status(d(8, "running", 0), vec![d(7, "succeeded", 1)]),
            None,
        ),
    ];
    for (name, st, want) in cases {
        assert_eq!(rollout_running(7, &st).as_deref(), want, "{name}");
    }
    let running = rollout_running(7, &status(d(7, "running", 0), vec![]));
    assert_eq!(
        with_rollout(Progress::Up(1), running.clone()),
        waiting("1 of 1 up; the rollout of version 1 is running, 0 of 1 on it")
    );
    assert_eq!(with_rollout(Progress::Up(1), None), Progress::Up(1));
    let still = waiting("0 of 1 up; web[0] launching");
    assert_eq!(with_rollout(still.clone(), running.clone()), still);
    let broke = failed("web[0] errored: boom");
    assert_eq!(with_rollout(broke.clone(), running), broke);
}

/// `stop --wait` waits for the targeted instances the coordinator does not list as stopped yet;
/// those of a quarantined node, a removed record's process and other apps are none of its
/// business.
#[test]
fn stop_waits_for_what_is_not_stopped_yet() {
    let pid = |i: pb::Instance, p: u32| with(i, |i| i.pid = p);
    let cases: Vec<(Vec<pb::Instance>, Option<u32>, Vec<&str>)> = vec![
        (vec![inst(0, S::Stopped), inst(1, S::Stopped)], None, vec![]),
        (
            vec![pid(inst(0, S::Stopping), 4711), inst(1, S::Stopped)],
            None,
            vec!["web[0] stopping, pid 4711"],
        ),
        (
            vec![pid(inst(0, S::Online), 7), inst(1, S::Unknown)],
            None,
            vec!["web[0] online, pid 7", "web[1] unknown"],
        ),
        // One index: the others may run.
        (
            vec![pid(inst(0, S::Online), 7), inst(1, S::Stopped)],
            Some(1),
            vec![],
        ),
        (
            vec![
                with(inst(0, S::Online), |i| i.unmanaged = true),
                with(inst(1, S::Stopping), |i| i.removed = true),
                with(inst(2, S::Online), |i| i.app = "api".into()),
            ],
            None,
            vec![],
        ),
    ];
    for (instances, index, want) in cases {
        assert_eq!(not_stopped("web", index, &instances), want, "{index:?}");
    }
}
