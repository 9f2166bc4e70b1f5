//! Adoption: taking over instance processes a previous agent left running. Those of the local
//! state (same pid and start time as recorded) are adopted at startup; the others wait for the
//! coordinator, or for the grace period to pass (static stability). Orphans (see
//! [`crate::orphans`]: processes of this agent that no record names) are settled by the
//! coordinator's first desired set, the authority: an orphan whose instance id the set holds with
//! `run`, and whose one leader still runs, is adopted like a recorded one; every other orphan is
//! stopped (its stop signal, or SIGTERM, to its processes and group; SIGKILL and `cgroup.kill`
//! after its kill timeout). Each decision is logged at warn. So a wiped data dir neither leaves
//! removed instances running nor starts a second copy of one that runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_spec::supervise::Probe;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::launch::{health_target, run_as};
use super::stop::{AFTER_KILL_WAIT, stop_signal};
use super::{Running, apply_local, spawn_supervisor};
use crate::cgroup;
use crate::logs::pump::keep_pumping;
use crate::model::{Assignment, DesiredSet, InstanceId, InstanceState, Status};
use crate::orphans::{self, Orphan};
use crate::persist::{EndState, Saved, SavedEnd, SavedProcess, SavedPump};
use crate::process::{self, ExitWatch, ProcId, unix_ms};
use crate::state::{Agent, Carried};

/// How often a stopping orphan is checked.
const POLL: Duration = Duration::from_millis(20);

/// Reads the local state: adopts every instance whose process still runs (same pid, same start
/// time) and returns the assignments of the others, which must wait for the coordinator.
pub(crate) fn adopt_local(agent: &Arc<Agent>) -> Vec<Assignment> {
    let (saved, bad) = match agent.records.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(
                "cannot read the local state in {}: {e}; starting empty",
                agent.records.dir().display()
            );
            return Vec::new();
        }
    };
    for (path, why) in bad {
        tracing::warn!("ignoring {}: {why}", path.display());
    }
    let mut waiting = Vec::new();
    let mut carried = BTreeMap::new();
    let mut adopted = BTreeSet::new();
    // Cgroups of instances that run (left alone) and of those whose process ended while no
    // agent ran (what is left in them goes: nothing supervises it).
    let mut running_cgroups = BTreeSet::new();
    let mut dead_cgroups = BTreeSet::new();
    for s in saved {
        let cgroup = s
            .process
            .as_ref()
            .and_then(|p| p.cgroup.clone())
            .or_else(|| agent.cgroups.path_for(&InstanceId::new(&s.instance_id)));
        let alive = s.process.as_ref().and_then(|p| {
            let id = ProcId {
                pid: p.pid,
                start_ticks: p.start_ticks,
            };
            id.alive().then_some((p, id))
        });
        match (&cgroup, alive.is_some()) {
            (Some(path), true) => running_cgroups.insert(path.clone()),
            (Some(path), false) => dead_cgroups.insert(path.clone()),
            (None, _) => false,
        };
        let assignment = match s.assignment() {
            Ok(a) => a,
            Err(why) => {
                // Nothing to supervise it with. Left alone (and reported in the log): the
                // coordinator may place a new copy, which then finds its port taken.
                tracing::error!(
                    instance = %s.instance_id,
                    pid = alive.map(|(_, id)| id.pid),
                    "cannot read the saved spec ({why}); not adopting it"
                );
                continue;
            }
        };
        match alive {
            Some((p, id)) => {
                adopted.insert(assignment.instance_id.clone());
                adopt(agent, &s, assignment, p, id);
            }
            None => match ended_status(&s).map(|st| (s.clone(), st)).or_else(|| {
                let unseen = unseen_end(&s, &assignment)?;
                ended_status(&unseen).map(|st| (unseen, st))
            }) {
                Some((s, status)) => keep_ended(agent, &s, assignment, status),
                None => {
                    if let Some(p) = &s.process {
                        tracing::info!(
                            instance = %s.instance_id,
                            pid = p.pid,
                            "ended while the agent was down"
                        );
                    }
                    carried.insert(
                        assignment.instance_id.clone(),
                        Carried {
                            restarts: s.restarts,
                            last_exit_code: s.last_exit_code,
                        },
                    );
                    waiting.push(assignment);
                }
            },
        }
    }
    let unknown_cgroups = agent
        .cgroups
        .sweep_at_start(&running_cgroups, &dead_cgroups);
    let found = orphans::find(&agent.marker, &unknown_cgroups, &adopted);
    for o in &found {
        tracing::warn!(
            instance = %o.instance_id,
            pids = ?o.members.iter().map(|p| p.pid).collect::<Vec<_>>(),
            "running, but no local record names it; the coordinator's first desired set \
             decides whether it is adopted or stopped"
        );
    }
    *agent
        .orphans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(found);
    *agent
        .unclaimed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = carried;
    waiting
}
/// The status to keep for a record whose process does not run, when that instance ended for
/// good (see [`Saved::ended`]): as the previous agent reported it, restarts and exit code
/// included. `None` for one that is to run again (it died while no agent ran, or an older
/// agent wrote the record) and for one kept stopped (its desired set says so anyway).
fn ended_status(saved: &Saved) -> Option<Status> {
    let end = saved.ended.as_ref().filter(|_| saved.run)?;
    let state = match end.state {
        EndState::Exited => InstanceState::Exited,
        EndState::Errored => InstanceState::Errored,
    };
    let mut status = Status::new(state, saved.restart_epoch);
    status.restarts = saved.restarts;
    status.last_exit_code = saved.last_exit_code;
    status.message.clone_from(&end.message);
    Some(status)
}
/// `saved` as ended for good when its process ended while no agent watched it and its
/// autorestart is off: as that autorestart would have, it stays exited. A job that finished just
/// as the last agent left (its end not recorded) must not run a second time; one with
/// autorestart on is started again, as ever.
fn unseen_end(saved: &Saved, assignment: &Assignment) -> Option<Saved> {
    let autorestart = assignment.spec.as_ref().map_or(true, |s| s.autorestart);
    (saved.process.is_some() && saved.ended.is_none() && !autorestart).then(|| Saved {
        ended: Some(SavedEnd {
            state: EndState::Exited,
            message: "exited while no agent ran; autorestart is off".into(),
        }),
        ..saved.clone()
    })
}
/// Supervises an instance that ended for good before the agent restarted, without starting it:
/// the desired-set diff then sees the assignment it ended under, so only a start or restart
/// asked since (a new restart epoch, version or spec, `run` set again) starts it. A host reboot
/// is no exception: the agent treats one as any restart that finds its processes gone, and a
/// job that finished (or an instance given up on) must not run again unasked either way.
fn keep_ended(agent: &Arc<Agent>, saved: &Saved, assignment: Assignment, status: Status) {
    tracing::info!(
        instance = %assignment.instance_id,
        app = %saved.app,
        index = saved.index,
        "{:?} before the agent restarted ({}); not starting it until it is started or \
         restarted",
        status.state,
        status.message
    );
    let ended = saved.ended.clone();
    let mut inner = agent.state.lock();
    // Start sequence 0: nothing asked for a start yet (see `Target::start_seq`).
    spawn_supervisor(agent, &mut inner, assignment, status, 0, None, ended);
}
/// Starts the instances of the local state that do not run if the coordinator has not sent a
/// desired set within `grace` (static stability: a host keeps its services up when the
/// coordinator is down), and not at all if it has (it knows whether they moved elsewhere).
pub(crate) async fn start_local_after(
    agent: Arc<Agent>,
    waiting: Vec<Assignment>,
    grace: Duration,
    cancel: CancellationToken,
) {
    let mut cleared = agent.cleared.subscribe();
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = cleared.wait_for(|c| *c) => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                "no desired set from the coordinator within {grace:?}; starting the {} instance(s) \
                 of the last desired set that do not run",
                waiting.len()
            );
            let mut assignments: Vec<Assignment> = {
                let inner = agent.state.lock();
                inner
                    .instances
                    .values()
                    .map(|e| e.target.borrow().assignment.clone())
                    .collect()
            };
            assignments.extend(waiting);
            // The last set applied, again: its generation is the remembered one (a lower one
            // would be stale).
            let generation = agent.state.generation();
            apply_local(&agent, DesiredSet { generation, assignments });
        }
    }
}
/// Takes over a process a previous agent started and left running (same pid, same start time).
pub(super) fn adopt(
    agent: &Arc<Agent>,
    saved: &Saved,
    assignment: Assignment,
    process: &SavedProcess,
    id: ProcId,
) {
    let spec = match &assignment.spec {
        Ok(spec) => Arc::clone(spec),
        Err(_) => return,
    };
    let now_ms = unix_ms();
    let uptime = Duration::from_millis(u64::try_from(now_ms - process.started_at_ms).unwrap_or(0));
    let started = Instant::now()
        .checked_sub(uptime)
        .unwrap_or_else(Instant::now);
    let run_as = run_as(&spec);
    let exec_probe = spec
        .supervision
        .health_check
        .as_ref()
        .is_some_and(|c| matches!(c.probe, Probe::Exec { .. }));
    if let Err(e) = &run_as {
        if exec_probe {
            tracing::warn!(
                instance = %assignment.instance_id,
                "{e}: its exec health checks fail until it is restarted, rather than run as \
                 the agent"
            );
        } else {
            tracing::warn!(instance = %assignment.instance_id, "{e}");
        }
    }
    let health_target = health_target(
        &spec,
        saved.index,
        process.port,
        agent.host(),
        run_as.as_ref(),
    );
    let mut running = Running::new(
        id,
        ExitWatch::adopt(id),
        started,
        assignment.clone(),
        Arc::clone(&spec),
        process.port,
        &health_target,
    );
    if run_as.is_err() && exec_probe {
        // It ran before the agent did; a probe that cannot run must not hold it launching
        // until its listen timeout restarts it (nor can a start do better without the user).
        running.ready = true;
    }
    // Found again by its record, or by its instance id (records of older agents).
    running.cgroup = process
        .cgroup
        .clone()
        .or_else(|| agent.cgroups.path_for(&assignment.instance_id))
        .filter(|path| cgroup::contains(path, id.pid));
    running.pumps = keep_pumping(
        agent,
        &assignment.instance_id,
        id.pid,
        &saved.app,
        saved.index,
        &spec,
        &process.pumps,
    );
    let mut status = Status::new(
        if running.ready {
            InstanceState::Online
        } else {
            InstanceState::Launching
        },
        saved.restart_epoch,
    );
    status.pid = Some(id.pid);
    status.port = process.port;
    status.started_at_ms = process.started_at_ms;
    status.restarts = saved.restarts;
    status.last_exit_code = saved.last_exit_code;
    status.health = running.health_state();
    status.message = match &run_as {
        Ok(_) => "adopted after an agent restart".to_string(),
        Err(e) => format!("adopted after an agent restart; {e}"),
    };
    tracing::info!(instance = %assignment.instance_id, app = %saved.app, index = saved.index, pid = id.pid, "adopted");
    let mut inner = agent.state.lock();
    // A Start action would restart it; the adopted process *is* the started one.
    spawn_supervisor(
        agent,
        &mut inner,
        assignment,
        status,
        0,
        Some(running),
        None,
    );
}
/// Settles the orphans found at startup against the coordinator's first desired set: adopts
/// those it holds with `run` whose leader still runs (and that the agent does not supervise
/// already), stops the others. Called before the set's own actions, so that an adopted orphan
/// is not started a second time.
pub(super) fn settle(agent: &Arc<Agent>, set: &DesiredSet, orphans: Vec<Orphan>) {
    let wanted: BTreeMap<&InstanceId, &Assignment> = set
        .assignments
        .iter()
        .map(|a| (&a.instance_id, a))
        .collect();
    for orphan in orphans {
        let assignment = wanted.get(&orphan.instance_id).copied();
        let supervised = agent
            .state
            .lock()
            .instances
            .contains_key(&orphan.instance_id);
        let adoptable = match (assignment, orphan.leader) {
            (Some(a), Some(leader)) if a.run && a.spec.is_ok() && !supervised => {
                leader.alive().then_some((a, leader))
            }
            _ => None,
        };
        match adoptable {
            Some((a, leader)) => adopt_orphan(agent, a.clone(), &orphan, leader),
            None => {
                let why = match (assignment, orphan.leader) {
                    (None, _) => "not in the coordinator's desired set",
                    (Some(_), _) if supervised => "a second copy of an instance the agent runs",
                    (Some(a), _) if !a.run => "stopped in the coordinator's desired set",
                    (Some(_), None) => "no single leader process to adopt",
                    (Some(_), Some(_)) => "its leader ended or its spec is invalid",
                };
                tracing::warn!(
                    instance = %orphan.instance_id,
                    pids = ?orphan.members.iter().map(|p| p.pid).collect::<Vec<_>>(),
                    cgroup = ?orphan.cgroup,
                    "stopping an instance of no local record: {why}"
                );
                let (signal, grace) = assignment.and_then(|a| a.spec.as_ref().ok()).map_or(
                    (Signal::SIGTERM, pmcluster_spec::app::DEFAULT_KILL_TIMEOUT),
                    |s| (stop_signal(s.supervision.stop_signal), s.kill_timeout),
                );
                agent.supervisors.spawn(stop_orphan(orphan, signal, grace));
            }
        }
    }
}
fn adopt_orphan(agent: &Arc<Agent>, assignment: Assignment, orphan: &Orphan, leader: ProcId) {
    let Some(mut saved) = Saved::of(&assignment) else {
        return;
    };
    let fds: &[u32] = match assignment.spec.as_ref() {
        Ok(spec) if spec.merge_logs => &[1],
        _ => &[1, 2],
    };
    // One pump reads every pipe of an instance; two pumps would mean a later agent's repair.
    let pumps = match orphan.pumps.as_slice() {
        [pump] => fds
            .iter()
            .map(|fd| SavedPump {
                pid: pump.pid,
                start_ticks: pump.start_ticks,
                fd: *fd,
            })
            .collect(),
        _ => Vec::new(),
    };
    let process = SavedProcess {
        pid: leader.pid,
        start_ticks: leader.start_ticks,
        port: orphan.port.or(assignment.port),
        started_at_ms: process::started_at_ms(leader.start_ticks),
        pumps,
        cgroup: orphan
            .cgroup
            .clone()
            .filter(|path| cgroup::contains(path, leader.pid)),
    };
    tracing::warn!(
        instance = %orphan.instance_id,
        pid = leader.pid,
        "adopting an instance of no local record: the coordinator's desired set holds it"
    );
    saved.process = Some(process.clone());
    adopt(agent, &saved, assignment, &process, leader);
}
/// Stops an orphan: `signal` to every process of it and to its leader's group, SIGKILL (and
/// `cgroup.kill`) to what is left after `grace`, then removes its cgroup.
async fn stop_orphan(orphan: Orphan, signal: Signal, grace: Duration) {
    let send = |sig: Signal| {
        if let Some(leader) = orphan.leader.filter(ProcId::alive) {
            process::signal_group(leader.pid, sig);
        }
        for p in &orphan.members {
            p.signal(sig);
        }
    };
    let alive = || {
        orphan.members.iter().any(ProcId::alive)
            || orphan.cgroup.as_deref().is_some_and(cgroup::populated)
    };
    send(signal);
    let deadline = Instant::now() + grace;
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    if alive() {
        tracing::warn!(instance = %orphan.instance_id, "still running {grace:?} after {}; sending SIGKILL", signal.as_str());
        send(Signal::SIGKILL);
        if let Some(path) = &orphan.cgroup {
            cgroup::kill(path);
        }
        let deadline = Instant::now() + AFTER_KILL_WAIT;
        while orphan.members.iter().any(ProcId::alive) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
    }
    if let Some(path) = &orphan.cgroup {
        cgroup::end(path).await;
    }
    tracing::warn!(instance = %orphan.instance_id, "stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pmcluster_spec::AppSpec;

    use super::*;

    fn record(run: bool, ended: Option<(EndState, &str)>) -> Saved {
        let a = Assignment {
            instance_id: InstanceId::new("i"),
            app: "once".into(),
            index: 0,
            app_version: 2,
            spec: Ok(Arc::new(AppSpec::new("once", "sh", &["-c", "exit 0"]))),
            port: None,
            run,
            restart_epoch: 5,
        };
        let mut s = Saved::of(&a).unwrap_or_else(|| panic!("valid spec"));
        s.restarts = 3;
        s.last_exit_code = Some(0);
        s.ended = ended.map(|(state, message)| SavedEnd {
            state,
            message: message.to_string(),
        });
        s
    }

    #[test]
    fn what_ended_for_good_is_kept_as_it_was() {
        let kept = |s: &Saved| {
            ended_status(s).map(|st| {
                (
                    st.state,
                    st.message,
                    st.restarts,
                    st.last_exit_code,
                    st.restart_epoch,
                    st.pid,
                )
            })
        };
        let exited = "exited with code 0; autorestart is off";
        assert_eq!(
            kept(&record(true, Some((EndState::Exited, exited)))),
            Some((InstanceState::Exited, exited.into(), 3, Some(0), 5, None))
        );
        let errored = "crashed 4 times within 60s (last: exited with code 1)";
        assert_eq!(
            kept(&record(true, Some((EndState::Errored, errored)))),
            Some((InstanceState::Errored, errored.into(), 3, Some(0), 5, None))
        );
        // A record of an older agent, or of one that died while no agent ran: started again.
        assert_eq!(kept(&record(true, None)), None);
        // Kept stopped by its assignment: the desired set reports it stopped.
        assert_eq!(kept(&record(false, Some((EndState::Exited, exited)))), None);
    }

    /// A process that ended while no agent watched: kept exited when its autorestart is off
    /// (it finished, as far as anyone can tell), started again otherwise.
    #[test]
    fn an_unseen_end_with_autorestart_off_is_kept_exited() {
        let assignment = |autorestart: bool| {
            let mut spec = AppSpec::new("once", "sh", &["-c", "exit 0"]);
            spec.autorestart = autorestart;
            Assignment {
                instance_id: InstanceId::new("i"),
                app: "once".into(),
                index: 0,
                app_version: 2,
                spec: Ok(Arc::new(spec)),
                port: None,
                run: true,
                restart_epoch: 5,
            }
        };
        let ran = |mut s: Saved| {
            s.process = Some(SavedProcess {
                pid: 1,
                start_ticks: 1,
                port: None,
                started_at_ms: 0,
                pumps: Vec::new(),
                cgroup: None,
            });
            s
        };
        let kept = |s: &Saved, autorestart| {
            let unseen = unseen_end(s, &assignment(autorestart))?;
            ended_status(&unseen).map(|st| (st.state, st.message, st.restart_epoch))
        };
        let message = "exited while no agent ran; autorestart is off".to_string();
        assert_eq!(
            kept(&ran(record(true, None)), false),
            Some((InstanceState::Exited, message, 5))
        );
        // Autorestart on: started again. No process recorded: a start still to do.
        assert_eq!(kept(&ran(record(true, None)), true), None);
        assert_eq!(kept(&record(true, None), false), None);
        // Its end recorded: kept as recorded (ended_status), not through here.
        let exited = "exited with code 0; autorestart is off";
        let recorded = ran(record(true, Some((EndState::Exited, exited))));
        assert_eq!(unseen_end(&recorded, &assignment(false)), None);
    }
}
