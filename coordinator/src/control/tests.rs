use std::collections::BTreeSet;

use pmcluster_spec::AppSpec;
use pmcluster_spec::supervise::RETRYING;

use super::sessions::registration;
use super::*;
use crate::core::adoption::quarantine_reason;
use crate::core::quota::Caps;
use crate::model::{
    AppView, InstanceObserved, InstanceRecord, InstanceState, InstanceView, LogStream, NodeRecord,
    NodeStatus, Registration,
};
use crate::store::MemoryStore;
use pmcluster_spec::PortSpec;
use uuid::Uuid;

/// The nodes a coordinator that loaded the store awaits, and the one that never returns.
mod awaited;
/// A drain that a new leader (or a restarted coordinator) takes over.
mod drain;
/// Cluster identity: quarantine, adoption, and a store restored from an older copy.
mod identity;
/// Log routes: requests to agents, lines to readers, and what a reader is told.
mod logs;
/// A lost node's instances moved elsewhere, and its old copies stopped when it returns: what
/// the events say of both.
mod node_loss;
/// Rollouts stepped by the control loop in manual time.
mod rollout;
/// Scale commands: relative counts, and an apply that keeps a count set meanwhile.
mod scale;

pub(super) fn register(name: &str) -> Registration {
    Registration {
        node_name: name.into(),
        cores: 2,
        memory_bytes: 1 << 30,
        ..Registration::default()
    }
}

pub(super) fn web(instances: u32) -> AppSpec {
    let mut spec = AppSpec::new("web", "testapp", &[]);
    spec.instances = instances;
    spec.port = PortSpec::Range(4100, 4199);
    spec
}

/// The instances `list` shows of `app` that have records: not the removed ones whose agents
/// have not reported their ends (these tests' agents send no reports).
fn records(c: &Control, app: &str) -> Result<Vec<InstanceView>> {
    Ok(c.list_instances(app)?
        .into_iter()
        .filter(|i| !i.removed)
        .collect())
}

/// Per-node instance counts of `app`, as text like "a:4 b:4 c:4".
fn spread(c: &Control, app: &str) -> String {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in records(c, app).unwrap_or_default() {
        *counts
            .entry(if i.node.is_empty() {
                "-".into()
            } else {
                i.node
            })
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n}:{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn pending_until_nodes_then_spread_and_scale_down() -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let c = Control::open(store.clone(), ControlConfig::default())?;
    c.apply(web(3))?;
    assert_eq!(spread(&c, "web"), "-:3");
    let _a = c.attach(&register("a"), None)?;
    let _b = c.attach(&register("b"), None)?;
    let _c = c.attach(&register("c"), None)?;
    assert_eq!(
        spread(&c, "web"),
        "a:3",
        "pending instances go to the first node that appears"
    );
    c.delete_app("web")?;
    c.apply(web(1))?;
    c.scale("web", 12)?;
    assert_eq!(spread(&c, "web"), "a:4 b:4 c:4");
    let ports: Vec<u32> = records(&c, "web")?.iter().map(|i| i.port).collect();
    assert_eq!(ports, (4100..4112).collect::<Vec<u32>>());
    c.scale("web", 5)?;
    assert_eq!(spread(&c, "web"), "a:2 b:2 c:1");
    let indices: Vec<u32> = records(&c, "web")?.iter().map(|i| i.index).collect();
    assert_eq!(indices, vec![0, 1, 2, 3, 4]);

    // A coordinator restart from the same store keeps every assignment and generation.
    let before = records(&c, "web")?;
    let gens: Vec<u64> = store.load()?.nodes.values().map(|n| n.generation).collect();
    drop(c);
    let c2 = Control::open(store.clone(), ControlConfig::default())?;
    let after = records(&c2, "web")?;
    let ids = |v: &[InstanceView]| {
        v.iter()
            .map(|i| (i.id.clone(), i.node.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after));
    let gens2: Vec<u64> = store.load()?.nodes.values().map(|n| n.generation).collect();
    assert_eq!(gens, gens2);
    Ok(())
}

#[tokio::test]
async fn desired_sets_follow_commands() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let mut a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert_eq!(set.assignments.len(), 2);
    assert!(set.assignments.iter().all(|x| x.run));
    let g1 = set.generation;
    // Applies to, and changed: a stop of what is stopped changes nothing.
    assert_eq!(c.act("web", Some(1), Action::Stop)?, (1, 1));
    assert_eq!(c.act("web", None, Action::Stop)?, (2, 1));
    assert_eq!(c.act("web", Some(1), Action::Stop)?, (1, 0));
    assert_eq!(c.act("web", Some(0), Action::Start)?, (1, 1));
    let said = c.recent_events("web", Some(EventKind::AppStop), 3);
    let said: Vec<&str> = said.iter().map(|e| e.message.as_str()).collect();
    let already = "stop web: 1 of 2 instances changed, the others already were";
    let none = "stop web: 1 instance, nothing changed";
    assert_eq!(said, ["stop web: 1 instance", already, none]);
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert!(set.generation > g1);
    let stopped: Vec<u32> = set
        .assignments
        .iter()
        .filter(|x| !x.run)
        .map(|x| x.index)
        .collect();
    assert_eq!(stopped, vec![1]);
    c.act("web", None, Action::Restart)?;
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert!(
        set.assignments
            .iter()
            .all(|x| x.run && x.restart_epoch == 1)
    );
    // Unchanged apply: no new generation.
    let g = set.generation;
    let (_, created, changed, _) = c.apply(web(2))?;
    assert!(!created && !changed);
    assert_eq!(a.desired.borrow().as_ref().map(|s| s.generation), Some(g));
    // Changed spec: new version reaches the agent.
    let mut v2 = web(2);
    v2.env.insert("X".into(), "1".into());
    let (app, _, changed, deployment) = c.apply(v2)?;
    assert!(changed);
    assert_eq!(app.version, 2);
    // A new process rolls out in waves: nothing is replaced in place.
    let d = deployment.expect("a rollout starts");
    assert_eq!(
        (d.from_version, d.to_version, d.state.name()),
        (1, 2, "running")
    );
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert!(set.assignments.iter().all(|x| x.app_version == 1));
    let old_spec = set
        .assignments
        .iter()
        .find(|x| x.index == 1)
        .map(|x| x.spec.clone());
    // Its first step creates a replacement for index 0. Port 4100 is held by the old one on
    // the only node, so the old one goes first (stop-then-start), then the new one starts.
    for _ in 0..3 {
        c.tick();
    }
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    let versions: Vec<(u32, u64)> = set
        .assignments
        .iter()
        .map(|x| (x.index, x.app_version))
        .collect();
    assert!(
        versions.contains(&(0, 2)) && versions.contains(&(1, 1)),
        "{versions:?}"
    );
    assert_eq!(set.assignments.len(), 2);
    // The instance still on version 1 keeps version 1's spec, so its agent leaves it running.
    let still_old = set.assignments.iter().find(|x| x.index == 1);
    assert_eq!(still_old.map(|x| x.spec.clone()), old_spec);
    let new = set.assignments.iter().find(|x| x.index == 0);
    assert_ne!(new.map(|x| x.spec.clone()), old_spec);
    c.delete_app("web")?;
    let set = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert!(set.assignments.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_same_agent_replaces_its_stale_session_and_another_is_refused() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let with_id = |id: &str| Registration {
        agent_id: id.into(),
        ..register("a")
    };
    let first = c.attach(&with_id("agent-1"), None)?;
    // Same agent id (the agent restarted; its old connection still looks alive).
    let second = c.attach(&with_id("agent-1"), None)?;
    assert!(c.is_connected("a"));
    // Another agent configured with the same node name, or one that sends no id.
    for other in ["agent-2", ""] {
        assert!(matches!(
            c.attach(&with_id(other), None),
            Err(ControlError::AlreadyExists(_))
        ));
    }
    // The replaced session ending later does not take the node down.
    c.detach("a", first.session_id);
    assert!(c.is_connected("a"));
    c.detach("a", second.session_id);
    assert!(!c.is_connected("a"));
    Ok(())
}

#[tokio::test]
async fn pages_cover_every_instance_once_in_order() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(7))?;
    let mut other = web(3);
    other.name = "api".into();
    other.port = PortSpec::Range(4300, 4399);
    c.apply(other)?;
    let all = c.list_instances("")?;
    let key = |i: &InstanceView| (i.app.clone(), i.index, i.id.clone());
    // (app filter, page size) -> every page's length.
    let cases: &[(&str, u32, &[usize])] = &[
        ("", 0, &[10]),
        ("", 3, &[3, 3, 3, 1]),
        ("", 5, &[5, 5]),
        ("", 10, &[10]),
        ("web", 2, &[2, 2, 2, 1]),
        ("api", 2, &[2, 1]),
        ("api", 9, &[3]),
    ];
    for (app, size, lengths) in cases {
        let (mut got, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
        for _ in 0..20 {
            let (page, next) = c.list_instances_page(app, *size, &token)?;
            pages.push(page.len());
            got.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(&pages, lengths, "app {app:?} size {size}");
        let want: Vec<_> = all
            .iter()
            .filter(|i| app.is_empty() || i.app == *app)
            .map(key)
            .collect();
        assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want);
    }
    // The app part too must be one an app could have.
    let id = Uuid::nil();
    for token in [
        "not a token",
        &format!("0/{id}/bad name!"),
        &format!("0/{id}/"),
    ] {
        assert!(
            matches!(
                c.list_instances_page("", 2, token),
                Err(ControlError::InvalidArgument(m)) if m.starts_with("page_token:")
            ),
            "{token}"
        );
    }
    assert!(
        c.list_instances_page("", 2, &format!("0/{id}/gone"))?
            .0
            .len()
            <= 2
    );
    let (apps, next) = c.list_apps_page(1, "")?;
    assert_eq!((apps.len(), next.as_str()), (1, "app/api"));
    let (apps, next) = c.list_apps_page(1, &next)?;
    assert_eq!(apps.first().map(|a| a.spec.name.as_str()), Some("web"));
    assert_eq!(apps.first().map(|a| a.online + a.pending), Some(0));
    assert!(next.is_empty());
    Ok(())
}

/// A `ListApps` token names the last app of its page, which may be deleted before the next
/// call: such a token goes on where that app would sort. One that no page could have ended with
/// is refused, as `ListInstances` refuses one.
#[test]
fn app_pages_go_on_past_a_deleted_app_and_refuse_a_made_up_token() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    for (name, port) in [("api", 4100), ("web", 4200), ("worker", 4300)] {
        let mut spec = web(1);
        spec.name = name.into();
        spec.port = PortSpec::Range(port, port + 99);
        c.apply(spec)?;
    }
    let names = |apps: &[AppView]| apps.iter().map(|a| a.spec.name.clone()).collect::<Vec<_>>();
    let (page, next) = c.list_apps_page(1, "")?;
    assert_eq!(
        (names(&page), next.as_str()),
        (vec!["api".into()], "app/api")
    );
    c.delete_app("api")?;
    let (page, next) = c.list_apps_page(1, &next)?;
    assert_eq!(
        (names(&page), next.as_str()),
        (vec!["web".into()], "app/web")
    );
    c.delete_app("web")?;
    let (page, next) = c.list_apps_page(1, &next)?;
    assert_eq!((names(&page), next.as_str()), (vec!["worker".into()], ""));

    // (token, the apps of the page it gives; None: refused)
    let long = format!("app/{}", "a".repeat(65));
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("", Some(&["worker"])),
        // Well-formed, of an app that never was: as stale as a deleted one's.
        ("app/a", Some(&["worker"])),
        ("app/x", Some(&[])),
        // The bare name, as tokens were before they carried the prefix.
        ("web", None),
        ("app/", None),
        ("app", None),
        ("App/web", None),
        ("app/bad name", None),
        ("app/../web", None),
        ("app/web/x", None),
        (&long, None),
        // A `ListInstances` token.
        ("1/0191e2a4-7c1d-7000-8000-000000000001/web", None),
    ];
    for (token, want) in cases {
        match (c.list_apps_page(0, token), want) {
            (Ok((page, next)), Some(want)) => {
                assert_eq!(names(&page), *want, "token {token:?}");
                assert!(next.is_empty(), "token {token:?}");
            }
            (Err(ControlError::InvalidArgument(m)), None) => {
                assert!(m.starts_with("page_token:"), "token {token:?}: {m}");
            }
            (got, _) => panic!("token {token:?}: {got:?}"),
        }
    }
    // An app token is no instance token either.
    assert!(matches!(
        c.list_instances_page("", 0, "app/web"),
        Err(ControlError::InvalidArgument(m)) if m.starts_with("page_token:")
    ));
    Ok(())
}

#[tokio::test]
async fn a_desired_set_over_budget_is_refused_and_changes_nothing() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let mut a = c.attach(&register("a"), None)?;
    let mut small = web(2);
    small.name = "small".into();
    c.apply(small)?;
    // Just under the spec limit: a few fit in one node's set, twenty do not.
    let mut big = web(1);
    big.name = "big".into();
    big.port = PortSpec::None;
    big.env.insert("BIG".into(), "x".repeat(900 << 10));
    c.apply(big.clone())?;
    let before = a.desired.borrow_and_update().clone().unwrap_or_default();
    let err = c
        .scale("big", 20)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for want in [
        "instances:",
        "node \"a\"",
        "over the 12 MiB limit",
        "env.BIG (900 KiB)",
    ] {
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
    // Refused as a whole: nothing stored, nothing sent, the app keeps its count.
    assert!(!a.desired.has_changed().unwrap_or(true));
    assert_eq!(a.desired.borrow().clone().unwrap_or_default(), before);
    assert_eq!(c.get_app("big")?.spec.instances, 1);
    // The same through an apply of the count.
    let err = c
        .apply(big.with_instances(20)?)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.starts_with("instances:")));
    // A spec over its own limit names its largest field, whatever else it changes.
    big.env.insert("BIG".into(), "x".repeat(3 << 19));
    let err = c
        .apply(big)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("env.BIG: app \"big\" encodes to 1.5 MiB, over the 1 MiB limit"),
        "{err}"
    );
    assert_eq!(spread(&c, "small"), "a:2");
    Ok(())
}

/// Item 5 of issue 12: a new app past `--max-apps` and a count past `--max-instances-per-app`
/// are refused as RESOURCE_EXHAUSTED naming the flag, and store nothing; a count that follows
/// the nodes stops at the cap.
#[tokio::test]
async fn caps_refuse_without_change_and_hold_a_derived_count() -> Result<()> {
    let config = ControlConfig {
        caps: Caps {
            max_apps: 2,
            max_instances_per_app: 4,
        },
        ..ControlConfig::default()
    };
    let c = Control::open(Arc::new(MemoryStore::default()), config)?;
    let _nodes = [
        c.attach(&register("a"), None)?,
        c.attach(&register("b"), None)?,
        c.attach(&register("c"), None)?,
    ];
    c.apply(web(2))?;
    let mut every_core = AppSpec::new("cores", "sleep", &["600"]);
    every_core.instances_max = true;
    c.apply(every_core)?;
    // Six cores, held to four.
    assert_eq!(c.persisted().app_instances("cores").len(), 4);
    let before = c.persisted();
    let mut third = web(1);
    third.name = "third".into();
    let mut autoscaled = web(2);
    autoscaled.autoscale = Some(pmcluster_spec::autoscale::AutoscalePolicy::new(1, 9, 50.0));
    let refusals = [
        (
            c.apply(third).map(|_| ()),
            "apps: creating \"third\" would make 3 apps, over the limit of 2 (--max-apps)",
        ),
        (
            c.scale("web", 5).map(|_| ()),
            "instances: 5 is over the limit of 4 per app (--max-instances-per-app)",
        ),
        (
            c.apply(web(50)).map(|_| ()),
            "instances: 50 is over the limit of 4 per app",
        ),
        (
            c.apply(autoscaled).map(|_| ()),
            "autoscale.max: 9 is over the limit of 4 per app",
        ),
    ];
    for (got, want) in refusals {
        match got {
            Err(ControlError::ResourceExhausted(e)) => assert!(e.starts_with(want), "{e}"),
            other => panic!("want {want:?}, got {other:?}"),
        }
    }
    assert_eq!(c.persisted(), before, "a refused write stores nothing");
    assert_eq!(c.scale("web", 4)?, (2, 4));
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_without_change() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let cases: Vec<(Result<(u32, u32)>, &str)> = vec![
        (c.scale("web", -1), "negative"),
        (c.scale("nope", 1), "not found"),
        (c.scale("web", 101), "port"),
        (c.scale("", 1), "empty"),
    ];
    for (got, want) in cases {
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
    assert!(matches!(
        c.act("web", Some(2), Action::Restart),
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        c.attach(&register("a"), None),
        Err(ControlError::AlreadyExists(_))
    ));
    let labelled = |key: &str, value: &str| Registration {
        labels: BTreeMap::from([(key.to_string(), value.to_string())]),
        ..register("b")
    };
    let refused: Vec<(Registration, &str)> = vec![
        (register("bad name"), "node_name: \"bad name\""),
        (register("../etc"), "node_name: \"../etc\""),
        (register(&"n".repeat(65)), "node_name:"),
        (
            Registration {
                renamed_from: "a/b".into(),
                ..register("b")
            },
            "renamed_from: \"a/b\"",
        ),
        (
            labelled("zone", "a\0b"),
            "labels.zone: \"a\\0b\" contains a NUL",
        ),
        (
            labelled("zo\0ne", "a"),
            "labels: \"zo\\0ne\" contains a NUL",
        ),
        (labelled("", "a"), "labels: a label key is empty"),
        (
            labelled("zone", &"v".repeat(300)),
            "more than the limit of 256",
        ),
        (
            Registration {
                hostname: "h\0".into(),
                ..register("b")
            },
            "hostname:",
        ),
        (
            Registration {
                agent_id: "i".repeat(1 << 20),
                ..register("b")
            },
            "agent_id:",
        ),
        (
            Registration {
                advertise_address: "10.0.0.1:80".into(),
                ..register("b")
            },
            "advertise_address: \"10.0.0.1:80\"",
        ),
        (
            Registration {
                advertise_address: "a_b.lan".into(),
                ..register("b")
            },
            "advertise_address:",
        ),
    ];
    for (reg, want) in refused {
        match c.attach(&reg, None) {
            Err(ControlError::InvalidArgument(m)) => {
                assert!(m.contains(want), "want {want:?} in {m:?}");
                assert!(m.len() < 400, "{} bytes", m.len());
            }
            Err(e) => panic!("{want}: {e}"),
            Ok(_) => panic!("{want}: accepted"),
        }
    }
    assert!(c.list_nodes().iter().all(|n| n.name == "a"));
    assert_eq!(spread(&c, "web"), "a:2");
    Ok(())
}

/// Issue 10 item 2: the control loop wakes when work is due, not on a fixed poll. The wake-up
/// time follows the state: a due reconcile (now), a heartbeat that may lapse, a running rollout's
/// next step, or the safety tick; a commit rings `changed`.
#[tokio::test]
async fn issue10_the_loop_wakes_when_work_is_due() -> Result<()> {
    use super::tick::SAFETY_TICK_MS;
    use crate::clock::ManualClock;
    let t0 = 1_000_000;
    let clock = Arc::new(ManualClock::new(t0, 7));
    let config = ControlConfig {
        heartbeat_timeout: Duration::from_millis(1500),
        ..ControlConfig::default()
    };
    let c = Control::open_with(Arc::new(MemoryStore::default()), config, clock.clone())?;
    // A new control has not reconciled yet.
    assert_eq!(c.next_tick_at(), t0);
    c.tick();
    assert_eq!(
        c.next_tick_at(),
        t0 + SAFETY_TICK_MS,
        "idle: the safety tick"
    );
    let _a = c.attach(&register("a"), None)?;
    c.tick();
    assert_eq!(
        c.next_tick_at(),
        t0 + 1501,
        "the heartbeat of a could lapse then"
    );
    let changed = || tokio::time::timeout(Duration::ZERO, c.changed());
    // Drain what the attach rang.
    let _ = changed().await;
    assert!(changed().await.is_err(), "nothing changed since");
    c.apply(web(2))?;
    assert!(changed().await.is_ok(), "a commit rings");
    c.tick();
    clock.advance_ms(100);
    let mut next = web(2);
    next.script = "testapp2".into();
    c.apply(next)?;
    // Paused, it still steps (a paused rollout resumes on its own clock).
    c.steer_rollout("web", RolloutAction::Pause)?;
    assert_eq!(c.next_tick_at(), t0 + 100, "a commit: tick again at once");
    c.tick();
    assert_eq!(c.next_tick_at(), t0 + 100 + 250, "a running rollout steps");
    Ok(())
}

#[test]
fn issue11_a_new_leader_resumes_the_autoscalers_last_change() -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let c = Control::open(store.clone(), ControlConfig::default())?;
    c.apply(web(2))?;
    // A decision as the autoscaler stores it with the app.
    let mut app = store.load()?.apps["web"].clone();
    app.scaled.push(crate::model::ScaleDecision {
        at_ms: 1_000,
        reason: "cpu avg 90% > 70% for 30s: 1 -> 2".into(),
    });
    store.commit(&crate::model::Batch::app(app))?;
    drop(c);
    // The next leader loads the store: its cooldown starts from that change, not from nothing.
    let next = Control::open(store, ControlConfig::default())?;
    let inner = next.lock();
    let scaling = inner
        .scaling
        .get("web")
        .map(|s| (s.last_change_ms, s.last_reason.clone()));
    assert_eq!(
        scaling,
        Some((Some(1_000), "cpu avg 90% > 70% for 30s: 1 -> 2".to_string()))
    );
    Ok(())
}

/// An instance coming online needs no reconcile unless something waits on it: here a drain's
/// replacement, whose old side must then retire.
#[test]
fn only_an_awaited_instance_coming_online_asks_for_a_pass() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let (a, b) = (
        c.attach(&register("a"), None)?,
        c.attach(&register("b"), None)?,
    );
    let mut spec = web(1);
    spec.port = PortSpec::None;
    c.apply(spec)?;
    c.tick();
    let report_online = |node: &str, session: &Attached| {
        let online = crate::model::InstanceState::Online;
        let instances = super::report_tests::statuses(&c, node, online, 0).unwrap_or_default();
        super::report_tests::send(&c, node, session, instances);
    };
    let first = c.list_instances("web")?;
    let (from, to) = if first[0].node == "a" {
        (("a", &a), ("b", &b))
    } else {
        (("b", &b), ("a", &a))
    };
    report_online(from.0, from.1);
    assert!(
        !c.lock().reconcile_due,
        "a plain instance online changes no plan"
    );
    c.set_drain(from.0, true)?;
    c.tick();
    let pair = c.list_instances("web")?;
    assert_eq!(pair.len(), 2, "a replacement beside the old one: {pair:?}");
    report_online(to.0, to.1);
    assert!(
        c.lock().reconcile_due,
        "the replacement online: its old side retires"
    );
    c.tick();
    // The old side's record is gone; its process is listed as stopping until its agent's report
    // no longer holds it.
    let after = c.list_instances("web")?;
    let stopping = crate::model::InstanceState::Stopping;
    let removed: Vec<&InstanceView> = after.iter().filter(|i| i.removed).collect();
    assert!(
        removed.len() == 1 && removed[0].node == from.0 && removed[0].state == stopping,
        "{after:?}"
    );
    assert!(
        after.iter().all(|i| i.node == to.0 || i.removed),
        "{after:?}"
    );
    super::report_tests::send(&c, from.0, from.1, Vec::new());
    let after = c.list_instances("web")?;
    assert!(after.iter().all(|i| i.node == to.0), "{after:?}");
    Ok(())
}

/// `scale N` of an app at `instances: "max"` gives it N, as `pm2 scale` does, from the count
/// max came to (it was read as 0, and the count stayed max); the same count again writes nothing.
#[test]
fn scaling_an_app_at_max_sets_its_count_from_what_max_came_to() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    let mut spec = web(0);
    spec.instances_max = true;
    c.apply(spec)?;
    c.tick();
    assert_eq!(spread(&c, "web"), "a:2", "one per core");
    assert_eq!(
        c.get_app("web")?.spec.instances,
        2,
        "the view shows what max is"
    );
    assert_eq!(c.scale("web", 3)?, (2, 3));
    c.tick();
    assert_eq!(spread(&c, "web"), "a:3");
    let app = c.get_app("web")?;
    assert!(
        !app.spec.instances_max && app.spec.instances == 3,
        "{app:?}"
    );
    let scaled = |c: &Control| c.recent_events("web", Some(EventKind::AppScaled), 10).len();
    let before = scaled(&c);
    assert_eq!(c.scale("web", 3)?, (3, 3));
    assert_eq!(scaled(&c), before, "a scale to the same count is no event");
    assert_eq!(c.scale("web", 1)?, (3, 1));
    c.tick();
    assert_eq!(spread(&c, "web"), "a:1");
    Ok(())
}

/// Every listing shows what `instances: "max"` comes to for each app, as `get_app` does: over
/// the nodes its constraints allow and not draining, within its port range.
#[tokio::test]
async fn lists_show_what_max_comes_to_for_each_app() -> Result<()> {
    use pmcluster_spec::placement::Constraint;
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let node = |name: &str, cores: u32, zone: &str| Registration {
        cores,
        labels: [("zone".to_string(), zone.to_string())].into(),
        ..register(name)
    };
    let _sessions = (
        c.attach(&node("a", 2, "x"), None)?,
        c.attach(&node("b", 4, "y"), None)?,
        c.attach(&node("c", 8, "y"), None)?,
    );
    c.set_drain("c", true)?;
    // (name, at max, zone it is held to, ports, the count it shows)
    let cases: &[(&str, bool, Option<&str>, PortSpec, u32)] = &[
        ("anywhere", true, None, PortSpec::None, 6),
        ("capped", true, None, PortSpec::Range(5000, 5002), 3),
        ("nowhere", true, Some("z"), PortSpec::None, 0),
        ("plain", false, None, PortSpec::None, 3),
        ("zone-y", true, Some("y"), PortSpec::None, 4),
    ];
    for (name, max, zone, port, _) in cases {
        let mut spec = web(3);
        spec.name = (*name).into();
        spec.instances_max = *max;
        spec.port = *port;
        if let Some(zone) = zone {
            spec.placement.constraints = vec![Constraint::Eq("zone".into(), (*zone).into())];
        }
        c.apply(spec)?;
    }
    let want: Vec<(String, u32)> = cases
        .iter()
        .map(|(name, _, _, _, count)| ((*name).to_string(), *count))
        .collect();
    let shown = |apps: Vec<AppView>| -> Vec<(String, u32)> {
        apps.into_iter()
            .map(|a| (a.spec.name, a.spec.instances))
            .collect()
    };
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (page, next) = c.list_apps_page(2, &token)?;
        paged.extend(shown(page));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(paged, want, "pages of two");
    assert_eq!(shown(c.list_apps_page(0, "")?.0), want, "one page");
    assert_eq!(shown(c.list_apps()), want, "list_apps");
    for (name, count) in &want {
        assert_eq!(c.get_app(name)?.spec.instances, *count, "get_app {name}");
    }
    Ok(())
}

/// `log_retain` over its bound is refused as a new value, naming the field; a spec stored with
/// one before the bound existed is applied back as it is (a `reload` of another field).
#[test]
fn log_retain_over_its_bound_is_refused_unless_stored() -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let c = Control::open(store.clone(), ControlConfig::default())?;
    let mut spec = web(1);
    spec.supervision.log_keep = 5_000;
    match c.apply(spec.clone()) {
        Err(ControlError::InvalidSpec(e)) => {
            assert_eq!(e.field, "log_retain");
            assert!(e.message.starts_with("5000 rotated files"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // As an older coordinator stored it.
    c.apply(web(1))?;
    let mut app = store.load()?.apps["web"].clone();
    app.spec.supervision.log_keep = 5_000;
    store.commit(&crate::model::Batch::app(app))?;
    drop(c);
    let c = Control::open(store.clone(), ControlConfig::default())?;
    spec.instances = 2;
    c.apply(spec.clone())?;
    assert_eq!(store.load()?.apps["web"].spec.instances, 2);
    spec.supervision.log_keep = 6_000;
    assert!(matches!(c.apply(spec), Err(ControlError::InvalidSpec(_))));
    Ok(())
}
