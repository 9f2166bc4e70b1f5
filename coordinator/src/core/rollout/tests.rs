use super::*;
use std::time::Duration;

/// Records as `index:version[e=epoch][*since][~draining_since][@created][!][#][+]` separated
/// by spaces; ids are 1, 2, ... in order. `*T` means healthy since T, `!` not placed, `#`
/// stopped, `+` proven at an earlier step, `%` errored (its agent gave up restarting it), `^`
/// on a draining node.
fn records(text: &str) -> (Vec<InstanceRecord>, BTreeMap<Uuid, Facts<'static>>) {
    let mut recs = Vec::new();
    let mut facts = BTreeMap::new();
    for (n, word) in text.split_whitespace().enumerate() {
        let id = Uuid::from_u128(n as u128 + 1);
        let mut parts = word.split(['*', '~', '@', '!', '#', '+', '%', '^']);
        let head = parts.next().unwrap_or_default();
        let (index, version) = head.split_once(':').unwrap();
        let (version, epoch) = version.split_once('e').unwrap_or((version, "0"));
        let mut rec = InstanceRecord {
            id,
            app: "web".into(),
            index: index.parse().unwrap(),
            node: Some("a".into()),
            port: None,
            app_version: version.parse().unwrap(),
            restart_epoch: epoch.parse().unwrap(),
            stopped: false,
            replaces: None,
            draining_since: None,
            created_ms: 0,
            avoid: Vec::new(),
            disabled: false,
        };
        let mut f = Facts {
            healthy_since: None,
            node_up: true,
            placed: true,
            node_draining: false,
            proven: false,
            errored: None,
        };
        // Markers in order of appearance.
        let mut rest = &word[head.len()..];
        while !rest.is_empty() {
            let marker = rest.chars().next().unwrap_or(' ');
            let tail = &rest[1..];
            let end = tail
                .find(['*', '~', '@', '!', '#', '+', '%', '^'])
                .unwrap_or(tail.len());
            let value: i64 = tail[..end].parse().unwrap_or(0);
            match marker {
                '*' => f.healthy_since = Some(value),
                '~' => rec.draining_since = Some(value),
                '@' => rec.created_ms = value,
                '!' => f.placed = false,
                '#' => rec.stopped = true,
                '+' => f.proven = true,
                '%' => f.errored = Some(CRASHED),
                '^' => f.node_draining = true,
                _ => {}
            }
            rest = &tail[end..];
        }
        if rec.app_version == 2 || rec.restart_epoch > 0 {
            rec.replaces = Some(Uuid::from_u128(1));
        }
        facts.insert(id, f);
        recs.push(rec);
    }
    (recs, facts)
}

const CRASHED: &str = "crashed 16 times within 60s (last: exited with code 3)";

fn deployment(kind: Kind) -> Deployment {
    Deployment {
        id: 1,
        kind,
        from_version: 1,
        to_version: if kind == Kind::Restart { 1 } else { 2 },
        restart_epoch: if kind == Kind::Restart { 1 } else { 0 },
        state: State::Running,
        started_ms: 0,
        updated_ms: 0,
        progress_ms: 0,
        promoted: false,
        message: String::new(),
        done: 0,
        total: 0,
    }
}

fn policy() -> UpdatePolicy {
    UpdatePolicy {
        min_healthy_time: Duration::from_millis(100),
        healthy_deadline: Duration::from_millis(1000),
        progress_deadline: Duration::from_millis(5000),
        shutdown_delay: Duration::from_millis(50),
        ..UpdatePolicy::default()
    }
}

fn render(s: &Step) -> String {
    let ids = |v: &[Uuid]| {
        v.iter()
            .map(|u| u.as_u128().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = Vec::new();
    if !s.replace.is_empty() {
        out.push(format!("replace {}", ids(&s.replace)));
    }
    if !s.drain.is_empty() {
        out.push(format!("drain {}", ids(&s.drain)));
    }
    if !s.remove.is_empty() {
        out.push(format!("remove {}", ids(&s.remove)));
    }
    out.push(format!(
        "{} {}/{}",
        s.deployment.state.name(),
        s.deployment.done,
        s.deployment.total
    ));
    if s.rollback {
        out.push("rollback".into());
    }
    out.join("; ")
}

fn check(d: &Deployment, p: &UpdatePolicy, count: u32, recs: &str, now: i64, want: &str) {
    let (rs, facts) = records(recs);
    let refs: Vec<&InstanceRecord> = rs.iter().collect();
    let got = step("web", d, p, count, &refs, &facts, now);
    assert_eq!(render(&got), want, "records {recs:?} at {now}");
}

#[test]
fn rolling_update_one_at_a_time() {
    let d = deployment(Kind::Update);
    let p = policy();
    let base = "0:1*0 1:1*0 2:1*0";
    // Start: one replacement (max_surge 1), old ones keep serving.
    check(&d, &p, 3, base, 10, "replace 1; running 0/3");
    // Replacement not healthy long enough yet: wait.
    let wave = "0:1*0 1:1*0 2:1*0 0:2*50@20";
    check(&d, &p, 3, wave, 100, "running 0/3");
    // Healthy for min_healthy_time: the old one drains, and the next wave starts.
    check(&d, &p, 3, wave, 200, "replace 2; drain 1; running 0/3");
    // After shutdown_delay the drained one is removed.
    let draining = "0:1*0~200 1:1*0 2:1*0 0:2*50@20";
    check(&d, &p, 3, draining, 230, "replace 2; running 0/3");
    check(&d, &p, 3, draining, 260, "replace 2; remove 1; running 0/3");
    // Index 0 done.
    check(
        &d,
        &p,
        3,
        "1:1*0 2:1*0 0:2*50",
        300,
        "replace 1; running 1/3",
    );
    // All done.
    check(&d, &p, 3, "0:2*0 1:2*0 2:2*0", 900, "succeeded 3/3");
}

#[test]
fn surge_and_unavailable_budgets() {
    let d = deployment(Kind::Update);
    let p = UpdatePolicy {
        max_surge: 2,
        ..policy()
    };
    check(
        &d,
        &p,
        4,
        "0:1*0 1:1*0 2:1*0 3:1*0",
        10,
        "replace 1,2; running 0/4",
    );
    let p = UpdatePolicy {
        max_surge: 1,
        max_unavailable: 1,
        ..policy()
    };
    // The second one beyond the surge budget drains its old instance at once.
    check(
        &d,
        &p,
        4,
        "0:1*0 1:1*0 2:1*0 3:1*0",
        10,
        "replace 1,2; drain 2; running 0/4",
    );
}

#[test]
fn failure_and_rollback() {
    let d = deployment(Kind::Update);
    let p = policy();
    // The replacement never becomes healthy: fail after healthy_deadline, roll back.
    check(&d, &p, 2, "0:1*0 1:1*0 0:2@0", 999, "running 0/2");
    check(&d, &p, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2; rollback");
    let no_rollback = UpdatePolicy {
        auto_rollback: false,
        ..policy()
    };
    check(&d, &no_rollback, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2");
    // A rollback that fails does not roll back again.
    let rb = Deployment {
        kind: Kind::Rollback,
        ..deployment(Kind::Update)
    };
    check(&rb, &p, 2, "0:1*0 1:1*0 0:2@0", 1001, "failed 0/2");
    // Nor does a rolling restart: its rollback would be the same restart again.
    let restart = deployment(Kind::Restart);
    check(&restart, &p, 2, "0:1*0 1:1*0 0:1e1@0", 1001, "failed 0/2");
    // No progress at all for progress_deadline.
    let stuck = Deployment {
        progress_ms: 0,
        ..deployment(Kind::Update)
    };
    check(
        &stuck,
        &p,
        2,
        "0:1*0 1:1*0 0:2*4000@3000",
        5001,
        "failed 0/2; rollback",
    );
}

/// A replacement whose agent gave up restarting it fails the rollout at once, with the cause,
/// rather than at its healthy deadline: it will not come up on its own. One that proved itself
/// and crashed later, a kept one older than the deployment, and an old copy are the restart
/// policy's, not the rollout's.
#[test]
fn an_errored_replacement_fails_the_rollout_at_once() {
    let d = deployment(Kind::Update);
    let p = policy();
    let failed = |recs: &str| {
        let (rs, facts) = records(recs);
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        step("web", &d, &p, 2, &refs, &facts, 10)
    };
    // Beside its old copy, and with its old copy gone (stop-then-start).
    for recs in ["0:1*0 1:1*0 0:2@0%", "1:1*0 0:2@0%"] {
        let got = failed(recs);
        assert_eq!(render(&got), "failed 0/2; rollback", "{recs}");
        assert_eq!(
            got.deployment.message,
            format!("instance 0 of version 2 errored: {CRASHED}"),
            "{recs}"
        );
    }
    // Proven before it errored, a kept record older than the deployment, an old copy: each as
    // if it had not errored.
    let d_later = Deployment {
        started_ms: 5,
        ..deployment(Kind::Update)
    };
    for (d, recs) in [
        (&d, "0:1*0 1:1*0 0:2@0+"),
        (&d_later, "0:1*0 1:1*0 0:2@0"),
        (&d, "0:1*0 1:1*0"),
    ] {
        let (rs, facts) = records(recs);
        let refs: Vec<&InstanceRecord> = rs.iter().collect();
        let errored: BTreeMap<Uuid, Facts<'_>> = facts
            .iter()
            .map(|(id, f)| {
                let f = Facts {
                    errored: Some(CRASHED),
                    ..*f
                };
                (*id, f)
            })
            .collect();
        assert_eq!(
            step("web", d, &p, 2, &refs, &errored, 10),
            step("web", d, &p, 2, &refs, &facts, 10),
            "{recs}"
        );
    }
}

/// The canary's message is a command to copy: it names the app, whatever it is called.
#[test]
fn awaiting_promotion_names_the_app() {
    let p = UpdatePolicy {
        canary: 1,
        ..policy()
    };
    let d = deployment(Kind::Update);
    let (rs, facts) = records("1:1*0 2:1*0 0:2*0");
    let refs: Vec<&InstanceRecord> = rs.iter().collect();
    for app in ["web", "api-2", "all"] {
        let got = step(app, &d, &p, 3, &refs, &facts, 300).deployment;
        assert_eq!(got.state, State::AwaitingPromotion, "{app}");
        assert_eq!(
            got.message,
            format!("1 canary healthy; promote with: pmcluster rollout promote {app}")
        );
    }
}

#[test]
fn pause_canary_and_restart() {
    let paused = Deployment {
        state: State::Paused,
        ..deployment(Kind::Update)
    };
    // Paused: no new replacement, but the one in flight finishes.
    check(&paused, &policy(), 2, "0:1*0 1:1*0", 10, "paused 0/2");
    // Paused for longer than progress_deadline (5 s here): still paused, not failed.
    check(&paused, &policy(), 2, "0:1*0 1:1*0", 60_000, "paused 0/2");
    let waiting = Deployment {
        state: State::AwaitingPromotion,
        ..deployment(Kind::Update)
    };
    let canary = UpdatePolicy {
        canary: 1,
        ..policy()
    };
    check(
        &waiting,
        &canary,
        3,
        "1:1*0 2:1*0 0:2*0",
        60_000,
        "awaiting promotion 1/3",
    );
    check(
        &paused,
        &policy(),
        2,
        "0:1*0 1:1*0 0:2*0",
        200,
        "drain 1; paused 0/2",
    );
    let p = UpdatePolicy {
        canary: 1,
        ..policy()
    };
    let d = deployment(Kind::Update);
    check(&d, &p, 3, "0:1*0 1:1*0 2:1*0", 10, "replace 1; running 0/3");
    check(
        &d,
        &p,
        3,
        "1:1*0 2:1*0 0:2*0",
        300,
        "awaiting promotion 1/3",
    );
    let promoted = Deployment {
        promoted: true,
        ..d.clone()
    };
    check(
        &promoted,
        &p,
        3,
        "1:1*0 2:1*0 0:2*0",
        300,
        "replace 1; running 1/3",
    );
    // Rolling restart: same version, older epoch is outdated.
    let r = deployment(Kind::Restart);
    check(
        &r,
        &policy(),
        2,
        "0:1*0 1:1*0",
        10,
        "replace 1; running 0/2",
    );
    // The old copies are gone: done once the replacements have been healthy for
    // min_healthy_time (100 ms), not before.
    check(&r, &policy(), 2, "0:1e1*0 1:1e1*0", 10, "running 0/2");
    check(&r, &policy(), 2, "0:1e1*0 1:1e1*0", 200, "succeeded 2/2");
}

/// Stop-then-start past the surge (max_surge 0, max_unavailable 1): an index whose old copy
/// drained, or is already gone, holds the budget until its replacement is healthy, so at
/// most one index is unavailable at a time (the property tests found two).
#[test]
fn an_unavailable_index_holds_the_budget_until_healthy() {
    let p = UpdatePolicy {
        max_surge: 0,
        max_unavailable: 1,
        ..policy()
    };
    let d = deployment(Kind::Update);
    // Index 0 replaced, its old copy draining, the replacement not healthy: nothing more.
    check(&d, &p, 3, "0:1~0 1:1*0 2:1*0 0:2", 10, "running 0/3");
    // Its old copy removed, the replacement still not healthy: still nothing more.
    check(&d, &p, 3, "1:1*0 2:1*0 0:2", 100, "running 0/3");
    // Healthy long enough: the next index goes.
    check(
        &d,
        &p,
        3,
        "1:1*0 2:1*0 0:2*0",
        200,
        "replace 1; drain 1; running 1/3",
    );
}

#[test]
fn unplaceable_replacement_goes_stop_then_start() {
    // The replacement found no node (its port is held by the old one on the only node):
    // the old one drains now instead of the rollout stalling until its deadline.
    check(
        &deployment(Kind::Update),
        &policy(),
        1,
        "0:1*0 0:2@0!",
        10,
        "drain 1; running 0/1",
    );
}

/// On a draining node, stopping the old copy frees no room (nothing new goes there): the index
/// keeps serving and the rollout waits for room until its progress deadline. A drain of the
/// only node during a rolling update took each index down until `undrain`.
#[test]
fn an_unplaced_replacement_does_not_stop_a_copy_on_a_draining_node() {
    let d = deployment(Kind::Update);
    check(&d, &policy(), 1, "0:1*0^ 0:2@0!", 10, "running 0/1");
    check(
        &d,
        &policy(),
        1,
        "0:1*0^ 0:2@0!",
        5001,
        "failed 0/1; rollback",
    );
    // Its replacement placed elsewhere (the drain's other node): the handoff goes on as usual.
    check(
        &d,
        &policy(),
        1,
        "0:1*0^ 0:2*0@0",
        200,
        "drain 1; running 0/1",
    );
    // Past the surge budget (none; or the second of a wave of two unavailable), a copy on an
    // open node goes first, one on a draining node does not.
    let no_surge = UpdatePolicy {
        max_surge: 0,
        max_unavailable: 1,
        ..policy()
    };
    check(
        &d,
        &no_surge,
        1,
        "0:1*0",
        10,
        "replace 1; drain 1; running 0/1",
    );
    check(&d, &no_surge, 1, "0:1*0^", 10, "replace 1; running 0/1");
    let wave = UpdatePolicy {
        max_surge: 1,
        max_unavailable: 1,
        ..policy()
    };
    check(
        &d,
        &wave,
        2,
        "0:1*0 1:1*0",
        10,
        "replace 1,2; drain 2; running 0/2",
    );
    check(
        &d,
        &wave,
        2,
        "0:1*0^ 1:1*0^",
        10,
        "replace 1,2; running 0/2",
    );
}

/// Stop-then-start (one node, a fixed port): the replacement waits unplaced while its old copy
/// drains, and is placed once that is gone. It is held to `healthy_deadline` (1 s here) from
/// its placement, as one started beside its old copy is; a crash-looping one sat until the
/// progress deadline, its index down all the while.
#[test]
fn a_stop_then_start_replacement_is_held_to_the_healthy_deadline() {
    let d = deployment(Kind::Update);
    let p = UpdatePolicy {
        shutdown_delay: Duration::from_millis(3000),
        ..policy()
    };
    // Not placed while its old copy drains, past 1 s since it was made: waiting for room is not
    // being unhealthy.
    check(&d, &p, 2, "0:1*0~0 1:1*0 0:2@0!", 2000, "running 0/2");
    // Placed at 3000, once the old copy was removed: not late within 1 s of that...
    check(&d, &p, 2, "1:1*0 0:2@3000", 4000, "running 0/2");
    // ...and late after it.
    check(&d, &p, 2, "1:1*0 0:2@3000", 4001, "failed 0/2; rollback");
    // Healthy in time: no failure; once proven, the next index goes.
    check(
        &d,
        &p,
        2,
        "1:1*0 0:2*3500@3000",
        4001,
        "replace 1; running 1/2",
    );
    // No node has room for it: the progress deadline (5 s) is what bounds that.
    check(&d, &p, 2, "1:1*0 0:2@0!", 4001, "running 0/2");
    // A stopped replacement never runs, so it is never late (and it is done at once).
    check(&d, &p, 2, "1:1*0 0:2@0#", 4001, "replace 1; running 1/2");
}

/// The healthy deadline is for coming up: a replacement once healthy for `min_healthy_time`
/// that goes down later (a crash its agent restarts) holds the budget again, but fails nothing,
/// whether its old copy is gone or still draining. Otherwise one crash of any replaced
/// instance would roll back the whole update.
#[test]
fn a_proven_replacement_is_past_its_healthy_deadline() {
    let d = deployment(Kind::Update);
    let p = UpdatePolicy {
        shutdown_delay: Duration::from_millis(3000),
        ..policy()
    };
    // Healthy for min_healthy_time (100 ms): the step says so, for the shell to remember.
    let (rs, facts) = records("1:1*0 0:2*3500@3000");
    let refs: Vec<&InstanceRecord> = rs.iter().collect();
    let got = step("web", &d, &p, 2, &refs, &facts, 4001);
    assert_eq!(got.proven, [Uuid::from_u128(2)]);
    // Said once: what is remembered is not said again.
    let (rs, facts) = records("1:1*0 0:2*3500@3000+");
    let refs: Vec<&InstanceRecord> = rs.iter().collect();
    assert!(
        step("web", &d, &p, 2, &refs, &facts, 4001)
            .proven
            .is_empty()
    );
    // Down again past its deadline, its old copy gone: in progress, not failed.
    check(&d, &p, 2, "1:1*0 0:2@0+", 4001, "running 0/2");
    // The same with its old copy still draining.
    check(&d, &p, 2, "0:1*0~3000 1:1*0 0:2@0+", 4001, "running 0/2");
    // Never proven: late.
    check(&d, &p, 2, "1:1*0 0:2@0", 4001, "failed 0/2; rollback");
}

/// A stopped instance is replaced at once by a stopped record of the new version (nothing
/// runs to hand over), which is done from then on: it never runs, so it never proves itself,
/// and counting it in progress held the budget (max_surge 1 here) until the progress deadline.
#[test]
fn a_stopped_replacement_is_done_at_once() {
    let d = deployment(Kind::Update);
    let p = policy();
    check(&d, &p, 2, "0:1*0 1:1#", 10, "replace 2; running 0/2");
    check(&d, &p, 2, "0:1*0 1:2@10#", 20, "replace 1; running 1/2");
    check(&d, &p, 2, "0:2*20 1:2@10#", 200, "succeeded 2/2");
}

#[test]
fn node_loss_during_rollout() {
    let d = deployment(Kind::Update);
    // The old instance's node is down: drain (and so remove) it without waiting.
    let (mut rs, mut facts) = records("0:1*0 1:1*0 0:2@0");
    rs[0].draining_since = None;
    facts.insert(
        Uuid::from_u128(1),
        Facts {
            healthy_since: None,
            node_up: false,
            placed: true,
            node_draining: false,
            proven: false,
            errored: None,
        },
    );
    let refs: Vec<&InstanceRecord> = rs.iter().collect();
    let got = step("web", &d, &policy(), 2, &refs, &facts, 10);
    assert_eq!(render(&got), "drain 1; running 0/2");
    // Finished or failed deployments do nothing.
    let done = Deployment {
        state: State::Succeeded,
        ..deployment(Kind::Update)
    };
    check(&done, &policy(), 2, "0:1*0", 10, "succeeded 0/0");
}

#[test]
fn zero_unavailable_through_a_whole_update() {
    // Drive a 4-instance update step by step with instant health, checking that every
    // index always has a healthy, non-draining instance.
    let d0 = deployment(Kind::Update);
    let p = policy();
    let mut recs: Vec<InstanceRecord> = records("0:1*0 1:1*0 2:1*0 3:1*0").0;
    let mut facts: BTreeMap<Uuid, Facts> = recs
        .iter()
        .map(|r| {
            (
                r.id,
                Facts {
                    healthy_since: Some(0),
                    node_up: true,
                    placed: true,
                    node_draining: false,
                    proven: false,
                    errored: None,
                },
            )
        })
        .collect();
    let mut d = d0;
    let mut next_id = 100u128;
    for tick in 1..200 {
        let now = tick * 50;
        let refs: Vec<&InstanceRecord> = recs.iter().collect();
        assert!(
            unavailable(&refs, &facts, 4).is_empty(),
            "tick {tick}: {recs:?}"
        );
        let s = step("web", &d, &p, 4, &refs, &facts, now);
        for old in &s.replace {
            let o = recs.iter().find(|r| r.id == *old).cloned().unwrap();
            next_id += 1;
            let id = Uuid::from_u128(next_id);
            recs.push(InstanceRecord {
                id,
                app_version: 2,
                replaces: Some(o.id),
                draining_since: None,
                created_ms: now,
                avoid: Vec::new(),
                disabled: false,
                ..o
            });
            // Healthy right away (the step after next sees it past min_healthy_time).
            facts.insert(
                id,
                Facts {
                    healthy_since: Some(now),
                    node_up: true,
                    placed: true,
                    node_draining: false,
                    proven: false,
                    errored: None,
                },
            );
        }
        for id in &s.drain {
            if let Some(r) = recs.iter_mut().find(|r| r.id == *id) {
                r.draining_since = Some(now);
            }
        }
        recs.retain(|r| !s.remove.contains(&r.id));
        d = s.deployment;
        if d.state == State::Succeeded {
            assert!(recs.iter().all(|r| r.app_version == 2) && recs.len() == 4);
            return;
        }
    }
    panic!("the update did not finish: {d:?}");
}

/// `apply_step` over a hand-made step: the batch rendered as text.
fn check_apply(text: &str, step: Step, want: &str) {
    let (recs, _) = records(text);
    let d = deployment(Kind::Update);
    let mut spec = pmcluster_spec::AppSpec::new("web", "v2", &[]);
    spec.instances = 2;
    let mut app = AppRecord::new(spec, 0);
    app.version = 2;
    app.versions
        .insert(1, pmcluster_spec::AppSpec::new("web", "v1", &[]));
    app.deployment = Some(d.clone());
    let mut next_id = 100u128;
    let (batch, messages) = apply_step(&app, &d, &recs, &step, 7, &mut || {
        next_id += 1;
        Uuid::from_u128(next_id)
    });
    let puts: Vec<String> = batch
        .put_instances
        .iter()
        .map(|r| {
            format!(
                "{}:{}:v{}{}{}",
                r.id.as_u128(),
                r.index,
                r.app_version,
                r.replaces
                    .map(|o| format!("<{}", o.as_u128()))
                    .unwrap_or_default(),
                r.draining_since
                    .map(|t| format!("~{t}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let dels: Vec<String> = batch
        .del_instances
        .iter()
        .map(|id| id.as_u128().to_string())
        .collect();
    let apps: Vec<String> = batch
        .put_apps
        .iter()
        .map(|a| {
            let d = a.deployment.as_ref().map(|d| d.state.name()).unwrap_or("-");
            format!("v{} {d}", a.version)
        })
        .collect();
    let got = format!(
        "put [{}] del [{}] apps [{}] msgs {}",
        puts.join(" "),
        dels.join(" "),
        apps.join(" "),
        messages.len()
    );
    assert_eq!(got, want, "{text}");
}

#[test]
fn applying_a_step() {
    let d = deployment(Kind::Update);
    let step = |replace: &[u128], drain: &[u128], remove: &[u128], next: Deployment| Step {
        replace: replace.iter().map(|n| Uuid::from_u128(*n)).collect(),
        drain: drain.iter().map(|n| Uuid::from_u128(*n)).collect(),
        remove: remove.iter().map(|n| Uuid::from_u128(*n)).collect(),
        deployment: next,
        rollback: false,
        proven: Vec::new(),
    };
    // Nothing to do: an empty batch.
    check_apply(
        "0:1 1:1",
        step(&[], &[], &[], d.clone()),
        "put [] del [] apps [] msgs 0",
    );
    // Only the time of the step moved: still nothing to commit.
    let later = Deployment {
        updated_ms: 99,
        ..d.clone()
    };
    check_apply(
        "0:1 1:1",
        step(&[], &[], &[], later),
        "put [] del [] apps [] msgs 0",
    );
    // A replacement of the target version, linked to the old record.
    check_apply(
        "0:1 1:1",
        step(&[1], &[], &[], d.clone()),
        "put [101:0:v2<1] del [] apps [v2 running] msgs 0",
    );
    // Draining from now, and removal.
    check_apply(
        "0:1 0:2 1:1",
        step(
            &[],
            &[1],
            &[3],
            Deployment {
                done: 1,
                ..d.clone()
            },
        ),
        "put [1:0:v1~7] del [3] apps [v2 running] msgs 1",
    );
    // A failed step that asks for a rollback: a new version (3) rolling back, which keeps the
    // old process that still serves (now of version 3); its failed replacement is the
    // rollback's to drain.
    let failed = Deployment {
        state: State::Failed,
        ..d.clone()
    };
    check_apply(
        "0:1 0:2",
        Step {
            rollback: true,
            ..step(&[], &[], &[], failed.clone())
        },
        "put [1:0:v3] del [] apps [v3 running] msgs 2",
    );
    // An index the failed rollout had replaced already (index 0): its old copy is gone, so the
    // v2 process stays until the rollback replaces it; index 1's v1 is kept.
    check_apply(
        "0:2 1:1",
        Step {
            rollback: true,
            ..step(&[], &[], &[], failed)
        },
        "put [2:1:v3] del [] apps [v3 running] msgs 2",
    );
}

/// A rollback keeps the records that run its version already (`versions::kept_records`): they
/// are older than the deployment, so they are done, never late (one restarting is its restart
/// policy's, not a failed replacement), and no canaries; the copy they replace drains only once
/// the kept one has been healthy for `min_healthy_time`.
#[test]
fn a_rollback_holds_nothing_against_the_records_it_kept() {
    let d = Deployment {
        started_ms: 100,
        ..deployment(Kind::Rollback)
    };
    let p = policy();
    // Kept, down (restarting) long past the healthy deadline: done, not a failure.
    check(&d, &p, 2, "0:2@0 1:2*0@0", 5000, "succeeded 2/2");
    // Kept beside the undone copy (version 1 here), not healthy: the undone copy serves on.
    check(&d, &p, 1, "0:1*0 0:2@0", 2000, "running 0/1");
    // Healthy for min_healthy_time: the undone copy drains.
    check(&d, &p, 1, "0:1*0 0:2*1000@0", 2000, "drain 1; running 0/1");
    // With canaries in the policy, a rollback does not stop for a promotion.
    let canary = UpdatePolicy {
        canary: 1,
        ..policy()
    };
    check(
        &d,
        &canary,
        2,
        "0:2*0@0 1:1*0",
        200,
        "replace 2; running 1/2",
    );
    let update = deployment(Kind::Update);
    check(
        &update,
        &canary,
        2,
        "0:2*0 1:1*0",
        200,
        "awaiting promotion 1/2",
    );
    // A replacement this deployment made is still held to its deadline.
    check(&d, &p, 1, "0:1*0 0:2@150", 1200, "failed 0/1");
}
