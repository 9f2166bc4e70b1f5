//! A report passes by the statuses it already took in full (an agent reports its whole set
//! after any change), and only those: a status that came with a registration, or one of a
//! record that changed since, is taken in full again.

use super::tests::{register, web};
use super::*;
use crate::model::{
    AppView, Health, InstanceObserved, InstanceState, NodeStatus, Registration, Report,
};
use crate::store::MemoryStore;

/// What an agent on `node` says of each instance of `web` there.
pub(super) fn statuses(
    c: &Control,
    node: &str,
    state: InstanceState,
    start_failures: u32,
) -> Result<Vec<InstanceObserved>> {
    let mut out = Vec::new();
    for i in c.list_instances("web")? {
        // A removed one still ending is no instance of the agent's set.
        if i.node != node || i.removed {
            continue;
        }
        let id =
            i.id.parse()
                .map_err(|e| ControlError::InvalidArgument(format!("{}: {e}", i.id)))?;
        out.push(InstanceObserved {
            id,
            state,
            pid: 100 + i.index,
            start_failures,
            ..InstanceObserved::default()
        });
    }
    Ok(out)
}

/// Sends `instances` as `node`'s report on `session`.
pub(super) fn send(c: &Control, node: &str, session: &Attached, instances: Vec<InstanceObserved>) {
    let generation = session
        .desired
        .borrow()
        .as_ref()
        .map_or(0, |s| s.generation);
    c.report(
        node,
        session.session_id,
        Report {
            generation,
            instances,
            host: None,
        },
    );
}

/// The events of `web` at the ends of its removed instances' processes.
fn removed_events(c: &Control) -> Vec<String> {
    c.recent_events("web", Some(EventKind::InstanceState), 100)
        .into_iter()
        .map(|e| e.message)
        .filter(|m| m.contains("removed"))
        .collect()
}

fn endpoints(c: &Control) -> Result<usize> {
    Ok(c.endpoints("web")?.endpoints.len())
}

/// A new coordinator learns an agent's statuses from its registration, which does not start
/// their online times: the agent's next report, the same statuses, must, or the instances would
/// never become endpoints.
#[test]
fn a_status_a_registration_brought_is_taken_in_full_by_the_next_report() -> Result<()> {
    let store = Arc::new(MemoryStore::default());
    let first = Control::open(store.clone(), ControlConfig::default())?;
    let a = first.attach(&register("a"), None)?;
    first.apply(web(2))?;
    let online = statuses(&first, "a", InstanceState::Online, 0)?;
    assert_eq!(online.len(), 2);
    send(&first, "a", &a, online.clone());
    assert_eq!(endpoints(&first)?, 2);
    // The same report again changes nothing.
    send(&first, "a", &a, online.clone());
    assert_eq!(endpoints(&first)?, 2);
    drop(first);

    let second = Control::open(store, ControlConfig::default())?;
    let reg = Registration {
        instances: online.clone(),
        ..register("a")
    };
    let a = second.attach(&reg, None)?;
    assert_eq!(
        endpoints(&second)?,
        0,
        "online since the registration is not yet known"
    );
    send(&second, "a", &a, online);
    assert_eq!(
        endpoints(&second)?,
        2,
        "the first report after it starts their online times"
    );
    Ok(())
}

/// An instance whose agent cannot start it counts as failing until a user stops it; the same
/// status after the stop (a changed record) is read again and ends the failing time.
#[test]
fn a_status_of_a_changed_record_is_read_again() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let failing = statuses(&c, "a", InstanceState::Errored, 3)?;
    let id = failing
        .first()
        .map(|s| s.id)
        .ok_or(ControlError::NotFound("web[0]".into()))?;
    send(&c, "a", &a, failing.clone());
    assert!(c.lock().unstartable_since.contains_key(&id));
    c.act("web", Some(0), Action::Stop)?;
    send(&c, "a", &a, failing);
    assert!(
        !c.lock().unstartable_since.contains_key(&id),
        "a stopped instance is not failing, whatever its last start said"
    );
    Ok(())
}

/// An agent that comes back with an instance starting again (it restarted while cut off)
/// registers that status; the same status in its next report ends the instance's online time,
/// though an earlier report had taken the instance online in full.
#[test]
fn a_status_a_reregistration_brought_is_taken_in_full_by_the_next_report() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let online = statuses(&c, "a", InstanceState::Online, 0)?;
    let id = online
        .first()
        .map(|s| s.id)
        .ok_or(ControlError::NotFound("web[0]".into()))?;
    send(&c, "a", &a, online);
    assert!(c.lock().online_since.contains_key(&id));
    c.detach("a", a.session_id);
    let launching = statuses(&c, "a", InstanceState::Launching, 0)?;
    let reg = Registration {
        instances: launching.clone(),
        ..register("a")
    };
    let a = c.attach(&reg, None)?;
    send(&c, "a", &a, launching);
    assert!(
        !c.lock().online_since.contains_key(&id),
        "a launching instance has no online time"
    );
    Ok(())
}

/// A restart between two reports (the instance online in both, with a new pid and one more
/// restart) is an event, with the agent's reason; a report that repeats itself is none.
#[test]
fn a_restart_no_report_caught_is_an_event() -> Result<()> {
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let store = Arc::new(MemoryStore::default());
    let c = Control::open_with(store, ControlConfig::default(), clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    // A report launching, then online: the two state events.
    send(&c, "a", &a, statuses(&c, "a", InstanceState::Launching, 0)?);
    let first = statuses(&c, "a", InstanceState::Online, 0)?;
    send(&c, "a", &a, first.clone());
    let state_events = |c: &Control| {
        c.recent_events("web", Some(EventKind::InstanceState), 100)
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        state_events(&c),
        ["web[0] is launching", "web[0] is online"]
    );
    send(&c, "a", &a, first.clone());
    assert_eq!(state_events(&c).len(), 2, "{:?}", state_events(&c));
    let again: Vec<InstanceObserved> = first
        .into_iter()
        .map(|o| InstanceObserved {
            pid: o.pid + 1000,
            restarts: 1,
            message: "restarted: memory 65 MiB over max_memory_restart 64 MiB".into(),
            ..o
        })
        .collect();
    let online_since = |c: &Control| c.lock().online_since.values().copied().collect::<Vec<_>>();
    assert_eq!(online_since(&c), [1_000_000]);
    clock.advance_ms(5_000);
    send(&c, "a", &a, again);
    // Online since the new process: an endpoint's and a rollout's healthy time start again.
    assert_eq!(online_since(&c), [1_005_000]);
    let events = state_events(&c);
    assert_eq!(
        events.last().map(String::as_str),
        Some("web[0] is online: restarted: memory 65 MiB over max_memory_restart 64 MiB"),
        "{events:?}"
    );
    Ok(())
}

/// A health check's verdict that changes while the instance stays online is an event; a first
/// result or a verdict repeated is none, and neither is a check that has no result yet.
#[test]
fn a_health_verdict_that_changes_is_an_event() -> Result<()> {
    let store = Arc::new(MemoryStore::default());
    let c = Control::open(store, ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let with = |health: Health, message: &str| -> Result<Vec<InstanceObserved>> {
        Ok(statuses(&c, "a", InstanceState::Online, 0)?
            .into_iter()
            .map(|o| InstanceObserved {
                health,
                message: message.to_string(),
                ..o
            })
            .collect())
    };
    let state_events = |c: &Control| {
        c.recent_events("web", Some(EventKind::InstanceState), 100)
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
    };
    // (report, the events after it)
    let steps: &[(Health, &str, &[&str])] = &[
        (Health::Unknown, "", &["web[0] is online"]),
        (
            Health::Healthy,
            "",
            &["web[0] is online", "web[0] is online, healthy"],
        ),
        (
            Health::Healthy,
            "",
            &["web[0] is online", "web[0] is online, healthy"],
        ),
        (
            Health::Unhealthy,
            "unhealthy: its health check failed",
            &[
                "web[0] is online",
                "web[0] is online, healthy",
                "web[0] is online, unhealthy: its health check failed",
            ],
        ),
        (
            Health::Unknown,
            "",
            &[
                "web[0] is online",
                "web[0] is online, healthy",
                "web[0] is online, unhealthy: its health check failed",
            ],
        ),
        (
            Health::Healthy,
            "",
            &[
                "web[0] is online",
                "web[0] is online, healthy",
                "web[0] is online, unhealthy: its health check failed",
                "web[0] is online, healthy",
            ],
        ),
    ];
    for (i, (health, message, want)) in steps.iter().enumerate() {
        send(&c, "a", &a, with(*health, message)?);
        assert_eq!(state_events(&c), *want, "step {i}: {health:?}");
    }
    Ok(())
}

/// A record removed while its agent still runs the process (a scale-down) stays listed, as
/// stopping, until a report no longer holds the process running; its end is an event. So
/// `list` shows what is still ending, and `scale --wait` waits for it.
#[test]
fn a_removed_instance_is_listed_until_its_process_ends() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(3))?;
    let online = statuses(&c, "a", InstanceState::Online, 0)?;
    assert_eq!(online.len(), 3);
    send(&c, "a", &a, online.clone());
    c.scale("web", 1)?;
    c.tick();
    let listed = |c: &Control| -> Result<Vec<String>> {
        Ok(c.list_instances("web")?
            .iter()
            .map(|i| format!("{}:{}:{}", i.index, i.state.name(), i.pid))
            .collect())
    };
    let paged = |c: &Control| -> Result<Vec<String>> {
        let (mut out, mut token) = (Vec::new(), String::new());
        loop {
            let (page, next) = c.list_instances_page("", 1, &token)?;
            out.extend(
                page.iter()
                    .map(|i| format!("{}:{}:{}", i.index, i.state.name(), i.pid)),
            );
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    };
    assert_eq!(c.lock().state.app_instances("web").len(), 1, "records gone");
    let all = ["0:online:100", "1:stopping:101", "2:stopping:102"];
    assert_eq!(listed(&c)?, all);
    assert_eq!(paged(&c)?, all, "page by page too");
    // Its agent stopping them: still listed.
    let stopping: Vec<InstanceObserved> = online
        .iter()
        .map(|o| InstanceObserved {
            state: if o.pid == 100 {
                InstanceState::Online
            } else {
                InstanceState::Stopping
            },
            ..o.clone()
        })
        .collect();
    send(&c, "a", &a, stopping.clone());
    assert_eq!(listed(&c)?, all);
    // web[1] reported stopped, web[2] no longer reported at all: both have ended.
    let mut ended = stopping;
    ended.truncate(2);
    ended[1].state = InstanceState::Stopped;
    send(&c, "a", &a, ended);
    assert_eq!(listed(&c)?, ["0:online:100"]);
    assert_eq!(paged(&c)?, ["0:online:100"]);
    let events = removed_events(&c);
    assert_eq!(
        events,
        [
            "web[1] removed: its process 101 has ended",
            "web[2] removed: its process 102 has ended",
        ]
    );

    // A deleted app's processes are listed while they end, under its name too; a node that
    // goes away takes its with it (no report will say when they end).
    c.delete_app("web")?;
    c.tick();
    assert_eq!(listed(&c)?, ["0:stopping:100"]);
    c.detach("a", a.session_id);
    assert!(c.list_instances("web").is_err(), "gone with its node");
    assert!(c.list_instances("")?.is_empty());
    Ok(())
}

/// A node whose heartbeats lapse takes its removed processes' entries with it: no report will
/// say when they end, and a host that never comes back must not leave them listed.
#[test]
fn a_lapsed_node_takes_its_removed_processes_with_it() -> Result<()> {
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let c = Control::open_with(
        Arc::new(MemoryStore::default()),
        ControlConfig::default(),
        clock.clone(),
    )?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    send(&c, "a", &a, statuses(&c, "a", InstanceState::Online, 0)?);
    c.scale("web", 1)?;
    c.tick();
    let removed = |c: &Control| -> Result<usize> {
        Ok(c.list_instances("web")?
            .iter()
            .filter(|i| i.removed)
            .count())
    };
    assert_eq!(removed(&c)?, 1);
    clock.advance_ms(60_000);
    c.tick();
    assert_eq!(removed(&c)?, 0, "{:?}", c.list_instances("web")?);
    assert!(c.lock().leaving.is_empty());
    Ok(())
}

/// A record removed before its agent reported its process (a scale-down right after a
/// scale-up) is listed too: the agent may have started the process since. A report of the
/// older set, which may not hold it yet, ends nothing; one of the set without it does. Only a
/// process some report held running gets an event at its end.
#[test]
fn a_removed_instance_its_agent_never_reported_is_listed_until_a_newer_report() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(3))?;
    let started = statuses(&c, "a", InstanceState::Launching, 0)?;
    let older = a.desired.borrow().as_ref().map_or(0, |s| s.generation);
    c.scale("web", 1)?;
    c.tick();
    let newer = a.desired.borrow().as_ref().map_or(0, |s| s.generation);
    assert!(newer > older, "the scale-down sent a newer set");
    let listed = |c: &Control| -> Result<Vec<String>> {
        Ok(c.list_instances("web")?
            .iter()
            .map(|i| format!("{}:{}:{}:{}", i.index, i.state.name(), i.pid, i.removed))
            .collect())
    };
    let report = |generation: u64, instances: Vec<InstanceObserved>| {
        c.report(
            "a",
            a.session_id,
            Report {
                generation,
                instances,
                host: None,
            },
        );
    };
    assert_eq!(
        listed(&c)?,
        [
            "0:launching:0:false",
            "1:stopping:0:true",
            "2:stopping:0:true"
        ],
        "listed before any report"
    );
    // The agent's report of the older set: web[1] has a process, web[2] none yet.
    report(older, started[..2].to_vec());
    assert_eq!(
        listed(&c)?,
        [
            "0:launching:100:false",
            "1:stopping:101:true",
            "2:stopping:0:true"
        ],
    );
    // Of the newer set: both being spawned as the report went out (no pid yet: web[1]'s
    // process exited and its agent starts another), then neither held. The event at web[1]'s
    // end names the last process seen.
    let mut stopping = started.clone();
    stopping[1].pid = 0;
    stopping[2].pid = 0;
    report(newer, stopping.clone());
    assert_eq!(
        listed(&c)?,
        [
            "0:launching:100:false",
            "1:stopping:0:true",
            "2:stopping:0:true"
        ]
    );
    report(newer, stopping[..1].to_vec());
    assert_eq!(listed(&c)?, ["0:launching:100:false"]);
    let events = removed_events(&c);
    assert_eq!(events, ["web[1] removed: its process 101 has ended"]);

    // A stopped record no report held running leaves nothing behind: its agent starts nothing.
    c.scale("web", 2)?;
    c.tick();
    c.act("web", Some(1), Action::Stop)?;
    assert!(c.lock().state.instances.values().any(|r| r.stopped));
    c.scale("web", 1)?;
    c.tick();
    assert_eq!(listed(&c)?, ["0:launching:100:false"]);
    Ok(())
}

/// A state event names the state once: the agent's "exited with code 0" follows the instance
/// rather than "is exited:"; another message follows the state.
#[test]
fn a_state_event_says_its_state_once() {
    use super::sessions::state_text;
    let cases = [
        ("exited", "", "job[0] is exited"),
        ("exited", "exited with code 0", "job[0] exited with code 0"),
        (
            "exited",
            "exited with code 0; autorestart is off",
            "job[0] exited with code 0; autorestart is off",
        ),
        (
            "online",
            "restarted: memory over",
            "job[0] is online: restarted: memory over",
        ),
        ("errored", "errors: 3", "job[0] is errored: errors: 3"),
    ];
    for (state, message, want) in cases {
        assert_eq!(state_text("job", 0, state, message), want, "{message}");
    }
}

/// A trial's errored app read "1 desired: 0 online, 0 pending, 0 stopped": an app counts its
/// errored, restarting (crash-looping) and exited instances too, in `get_app` and `list_apps`.
#[test]
fn an_app_counts_its_errored_restarting_and_exited_instances() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let a = c.attach(&register("a"), None)?;
    c.apply(web(5))?;
    let states = [
        InstanceState::Online,
        InstanceState::Errored,
        InstanceState::Restarting,
        InstanceState::Exited,
        InstanceState::Errored,
    ];
    let mut reported = statuses(&c, "a", InstanceState::Online, 0)?;
    assert_eq!(reported.len(), states.len());
    let indices: BTreeMap<String, u32> = c
        .list_instances("web")?
        .into_iter()
        .map(|i| (i.id, i.index))
        .collect();
    for o in &mut reported {
        let index = indices.get(&o.id.to_string()).copied().unwrap_or_default();
        o.state = states[index as usize];
    }
    send(&c, "a", &a, reported);
    let counts = |v: &AppView| {
        (
            v.online,
            v.pending,
            v.stopped,
            v.errored,
            v.restarting,
            v.exited,
        )
    };
    assert_eq!(counts(&c.get_app("web")?), (1, 0, 0, 2, 1, 1));
    let listed: Vec<_> = c.list_apps().iter().map(counts).collect();
    assert_eq!(listed, [(1, 0, 0, 2, 1, 1)]);
    Ok(())
}

/// A trial read a down node's last CPU and memory in `nodes` as current: a node that is not
/// connected has no figures in use, as its instances have none.
#[test]
fn a_down_node_shows_no_figures_in_use() -> Result<()> {
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let store = Arc::new(MemoryStore::default());
    let c = Control::open_with(store, ControlConfig::default(), clock.clone())?;
    let a = c.attach(&register("a"), None)?;
    let generation = a.desired.borrow().as_ref().map_or(0, |s| s.generation);
    c.report(
        "a",
        a.session_id,
        Report {
            generation,
            instances: Vec::new(),
            host: Some(crate::model::HostMetrics {
                cpu_percent: 97.5,
                memory_used_bytes: 1 << 30,
                ..Default::default()
            }),
        },
    );
    let figures = |c: &Control| -> Vec<(NodeStatus, f64, u64)> {
        c.list_nodes()
            .into_iter()
            .map(|n| (n.status, n.cpu_percent, n.memory_used_bytes))
            .collect()
    };
    assert_eq!(figures(&c), [(NodeStatus::Ready, 97.5, 1 << 30)]);
    clock.advance_ms(3_600_000);
    c.tick();
    assert_eq!(figures(&c), [(NodeStatus::Down, 0.0, 0)]);
    Ok(())
}
