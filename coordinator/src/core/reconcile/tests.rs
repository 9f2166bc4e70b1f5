use super::*;
use pmcluster_spec::placement::Constraint;
use pmcluster_spec::{AppSpec, PortSpec};
use std::time::Duration;

/// name, labels, link, drain, cores, memory.
type FixtureNode = (String, BTreeMap<String, String>, Link, bool, u32, u64);

struct Fixture {
    apps: BTreeMap<String, AppRecord>,
    instances: BTreeMap<Uuid, InstanceRecord>,
    nodes: Vec<FixtureNode>,
    online: BTreeSet<Uuid>,
    exited: BTreeSet<Uuid>,
    unstartable: BTreeMap<Uuid, i64>,
}

/// The moves of a lost node's instances, and what their events need.
mod node_lost;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Apps: `name=count[@ports][vN][ mem=MiB][ max=N][ sd=MS][ hd=MS][ eu][ wait][ once][ failed]
/// [ rolling]` separated by `;` (`sd` shutdown delay, `hd` healthy deadline, `once` autorestart
/// off, `failed`/`rolling` the rollout to vN failed/runs).
/// Instances: `app/index@node[:port][*|%][~T][?T][^n1,n2][&T][>n][#][=V]` (`*` online, `%`
/// exited, `~T` draining since T, `?T` failing to start since T, `^` nodes to avoid, `&T` created
/// at T, `>n` replaces record n, `#` stopped, `=V` at version V, else 1), ids 1, 2, ...
/// Nodes: `name[:k=v][ down=T][ drain][ mem=MiB][ cores=N]` separated by `;`.
fn fixture(apps: &str, instances: &str, nodes: &str) -> Fixture {
    let apps = apps
        .split(';')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let mut words = a.split_whitespace();
            let head = words.next().unwrap_or_default();
            let (name, rest) = head.split_once('=').unwrap_or((head, "1"));
            let (rest, version) = rest.split_once('v').unwrap_or((rest, "1"));
            let (count, port) = rest.split_once('@').unwrap_or((rest, ""));
            let mut spec = AppSpec::new(name, "x", &[]);
            if count == "max" {
                spec.instances_max = true;
            } else {
                spec.instances = count.parse().unwrap();
            }
            spec.port = PortSpec::parse(port).unwrap();
            spec.reschedule = Reschedule::After(Duration::from_millis(1000));
            let (mut failed, mut rolling) = (false, false);
            let mut was_port = None;
            for w in words {
                match w.split_once('=') {
                    Some(("mem", v)) => {
                        spec.resources.memory_bytes = v.parse::<u64>().unwrap() << 20
                    }
                    Some(("max", v)) => spec.placement.max_per_node = Some(v.parse().unwrap()),
                    Some(("sd", v)) => {
                        spec.update.shutdown_delay = Duration::from_millis(v.parse().unwrap())
                    }
                    Some(("hd", v)) => {
                        spec.update.healthy_deadline = Duration::from_millis(v.parse().unwrap())
                    }
                    _ if w == "eu" => {
                        spec.placement.constraints =
                            vec![Constraint::parse("c", "region=eu").unwrap()]
                    }
                    _ if w == "wait" => spec.reschedule = Reschedule::Never,
                    _ if w == "once" => spec.autorestart = false,
                    // The rollout to this version failed, and was not rolled back.
                    _ if w == "failed" => failed = true,
                    // The version before the failed one had these ports.
                    Some(("was", v)) => was_port = Some(PortSpec::parse(v).unwrap()),
                    _ if w == "rolling" => rolling = true,
                    _ => panic!("bad app word {w}"),
                }
            }
            let mut rec = AppRecord {
                version: version.parse().unwrap(),
                ..AppRecord::new(spec, 0)
            };
            if failed || rolling {
                let d = crate::core::versions::start_deployment(
                    &rec,
                    crate::model::Kind::Update,
                    rec.version - 1,
                    rec.version,
                    0,
                    0,
                );
                let state = if failed {
                    crate::model::State::Failed
                } else {
                    crate::model::State::Running
                };
                rec.deployment = Some(crate::model::Deployment { state, ..d });
                let mut before = rec.spec.clone();
                if let Some(p) = was_port {
                    before.port = p;
                }
                rec.versions.insert(rec.version - 1, before);
            }
            (name.to_string(), rec)
        })
        .collect();
    let mut online = BTreeSet::new();
    let mut exited = BTreeSet::new();
    let mut unstartable = BTreeMap::new();
    let instances = instances
        .split_whitespace()
        .enumerate()
        .map(|(n, s)| {
            let (s, version) = s
                .split_once('=')
                .map_or((s, 1), |(s, v)| (s, v.parse().unwrap()));
            let (s, stopped) = s.strip_suffix('#').map_or((s, false), |s| (s, true));
            let (s, replaces) = s
                .split_once('>')
                .map_or((s, None), |(s, r)| (s, Some(id(r.parse().unwrap()))));
            let (s, created_ms) = s
                .split_once('&')
                .map_or((s, 0), |(s, t)| (s, t.parse().unwrap()));
            let (s, avoid) = s.split_once('^').map_or((s, vec![]), |(s, a)| {
                (s, a.split(',').map(str::to_string).collect())
            });
            let (s, failing_since) = s
                .split_once('?')
                .map_or((s, None), |(s, t)| (s, Some(t.parse::<i64>().unwrap())));
            let (s, draining_since) = s
                .split_once('~')
                .map_or((s, None), |(s, t)| (s, Some(t.parse().unwrap())));
            let (s, is_online) = s.strip_suffix('*').map_or((s, false), |s| (s, true));
            let (s, is_exited) = s.strip_suffix('%').map_or((s, false), |s| (s, true));
            let (ai, node) = s.split_once('@').unwrap_or((s, "-"));
            let (node, port) = node
                .split_once(':')
                .map_or((node, None), |(n, p)| (n, Some(p.parse().unwrap())));
            let (app, index) = ai.split_once('/').unwrap();
            let rec = InstanceRecord {
                id: id(n as u128 + 1),
                app: app.into(),
                index: index.parse().unwrap(),
                node: (node != "-").then(|| node.to_string()),
                port,
                app_version: version,
                restart_epoch: 0,
                stopped,
                replaces,
                draining_since,
                created_ms,
                avoid,
                disabled: false,
            };
            if is_online {
                online.insert(rec.id);
            }
            if is_exited {
                exited.insert(rec.id);
            }
            if let Some(t) = failing_since {
                unstartable.insert(rec.id, t);
            }
            (rec.id, rec)
        })
        .collect();
    let nodes = nodes
        .split(';')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            let mut words = n.split_whitespace();
            let head = words.next().unwrap_or_default();
            let (name, labels) = head.split_once(':').unwrap_or((head, ""));
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (mut link, mut drain, mut cores, mut mem) = (Link::Up, false, 2, 4096u64 << 20);
            for w in words {
                match w.split_once('=') {
                    Some(("down", t)) => link = Link::Down(t.parse().unwrap()),
                    Some(("mem", v)) => mem = v.parse::<u64>().unwrap() << 20,
                    Some(("cores", v)) => cores = v.parse().unwrap(),
                    _ if w == "drain" => drain = true,
                    _ => panic!("bad node word {w}"),
                }
            }
            (name.to_string(), labels, link, drain, cores, mem)
        })
        .collect();
    Fixture {
        apps,
        instances,
        nodes,
        online,
        exited,
        unstartable,
    }
}

/// Renders a plan: `+app/index@node[:port][^avoid][>id][(stopped)]`, `=id@node`, `~id vN pP`,
/// `!id` (drain), `-id`, `moved(id from>to why)`, `pending(app: reason)`, `stays(id: reason)`
/// (cannot leave its draining node), `followup@T`.
fn render(plan: &Plan) -> String {
    let short = |u: &Uuid| u.as_u128().to_string();
    let mut out = Vec::new();
    for c in &plan.create {
        let port = c.port.map(|p| format!(":{p}")).unwrap_or_default();
        let rep = c
            .replaces
            .map(|r| format!(">{}", short(&r)))
            .unwrap_or_default();
        let avoid = if c.avoid.is_empty() {
            String::new()
        } else {
            format!("^{}", c.avoid.join(","))
        };
        let stopped = if c.stopped { "(stopped)" } else { "" };
        let version = c.version.map(|v| format!(" v{v}")).unwrap_or_default();
        out.push(format!(
            "+{}/{}@{}{port}{avoid}{rep}{stopped}{version}",
            c.app,
            c.index,
            c.node.as_deref().unwrap_or("-")
        ));
    }
    for (i, n) in &plan.assign {
        out.push(format!("={}@{n}", short(i)));
    }
    for (i, v, p) in &plan.refresh {
        out.push(format!(
            "~{} v{v} p{}",
            short(i),
            p.map(|p| p.to_string()).unwrap_or("-".into())
        ));
    }
    for i in &plan.drain {
        out.push(format!("!{}", short(i)));
    }
    for i in &plan.remove {
        out.push(format!("-{}", short(i)));
    }
    for m in &plan.moved {
        let why = match m.why {
            Why::Unstartable => "unstartable".to_string(),
            Why::Finished => "finished".to_string(),
            Why::Overdue { replacement } => format!("overdue {}", short(&replacement)),
            Why::ReplacementLost => "lost".to_string(),
            Why::Abandoned => "abandoned".to_string(),
            Why::NodeLost { since: Some(t) } => format!("nodelost down@{t}"),
            Why::NodeLost { since: None } => "nodelost gone".to_string(),
        };
        out.push(format!(
            "moved({} {}>{} {why})",
            short(&m.old),
            m.from,
            m.to
        ));
    }
    for (app, why) in &plan.pending {
        out.push(format!("pending({app}: {why})"));
    }
    for (id, why) in plan.unmovable.values().flatten() {
        out.push(format!("stays({}: {why})", short(id)));
    }
    if let Some(t) = plan.followup_at {
        out.push(format!("followup@{t}"));
    }
    out.join(" ")
}

fn check(apps: &str, instances: &str, nodes: &str, now_ms: i64, want: &str) {
    let f = fixture(apps, instances, nodes);
    let views: Vec<NodeView<'_>> = f
        .nodes
        .iter()
        .map(|(name, labels, link, drain, cores, mem)| NodeView {
            name,
            labels,
            cores: *cores,
            memory_bytes: *mem,
            link: *link,
            drain: *drain,
        })
        .collect();
    let snap = Snapshot {
        apps: &f.apps,
        instances: &f.instances,
        nodes: &views,
        online: &f.online,
        exited: &f.exited,
        now_ms,
        unstartable: &f.unstartable,
        max_instances_per_app: u32::MAX,
        scope: None,
        index: None,
    };
    let plan = reconcile(snap);
    assert_eq!(
        render(&plan),
        want,
        "apps {apps:?} instances {instances:?} nodes {nodes:?}"
    );
    assert_eq!(reconcile(snap), plan, "not deterministic");
}

/// A finished job (exited, autorestart off) on node `a`, `nodes` at `now_ms` moving it off:
/// it moves to `b` stopped, not run again, and its move says it finished.
fn check_finished_job_moves(nodes: &str, now_ms: i64) {
    let want = "+job/0@b(stopped) -1 moved(1 a>b finished)";
    check("job=1 once", "job/0@a%", nodes, now_ms, want);
}

#[test]
fn placement_and_scaling() {
    check("web=2", "web/0@a web/1@b", "a; b", 0, "");
    check("", "", "a", 0, "");
    check(
        "web=4",
        "",
        "a; b; c",
        0,
        "+web/0@a +web/1@b +web/2@c +web/3@a",
    );
    check(
        "web=2",
        "",
        "",
        0,
        "+web/0@- +web/1@- pending(web: 2 pending: no node has registered yet)",
    );
    check("web=2", "web/0@- web/1@-", "b", 0, "=1@b =2@b");
    check("web=3", "web/0@a web/1@a", "a; b", 0, "+web/2@b");
    check("web=1; api=1", "api/0@a", "a; b", 0, "+web/0@b");
    check("web=1", "web/0@a web/1@b web/2@c", "a; b; c", 0, "-2 -3");
    check("", "web/0@a web/1@b", "a; b", 0, "-1 -2");
    check("web=2@4100-4199", "", "a", 0, "+web/0@a:4100 +web/1@a:4101");
    check("web=1v2", "web/0@a", "a", 0, "~1 v2 p-");
    // A version whose rollout failed (not rolled back): what still runs the version before it
    // keeps running it, as the old side of a failed Kubernetes deployment keeps serving;
    // moving it to the failed version would take down what serves.
    check("web=2v2 failed", "web/0@a* web/1@b*", "a; b", 0, "");
    // Nor may a drain's handoff or a lost node's replacement bring it in: they keep the
    // version of the record they replace. A new index (a scale-up meanwhile) runs what serves.
    check(
        "web=2v2 failed",
        "web/0@a* web/1@b*",
        "a drain; b; c",
        0,
        "+web/0@c>1 v1",
    );
    check(
        "web=2v2 failed",
        "web/0@a* web/1@b*",
        "a down=0; b; c",
        5000,
        "+web/0@c v1 -1 moved(1 a>c nodelost down@0)",
    );
    check(
        "web=3v2 failed",
        "web/0@a* web/1@b*",
        "a; b; c",
        0,
        "+web/2@c v1",
    );
    // A stopped instance the failed rollout moved onto its version (it had nothing to hand
    // over) goes back to what serves: a start would otherwise bring the failed version up
    // (found by a trial).
    check(
        "web=2v2 failed",
        "web/0@a* web/1@b#=2",
        "a; b",
        0,
        "~2 v1 p-",
    );
    // Once there it stays: no pass moves it again.
    check("web=2v2 failed", "web/0@a* web/1@b#=1", "a; b", 0, "");
    check(
        "web=2@4200-4299v2 failed was=4100-4199",
        "web/0@a:4100* web/1@b:4201#=2",
        "a; b",
        0,
        "~2 v1 p4101",
    );
    // The failed version moved the app to other ports: what runs the version before keeps its
    // own (found by a review: a v1 process was given the failed v2's port).
    check(
        "web=3@4200-4299v2 failed was=4100-4199",
        "web/0@a:4100* web/1@b:4101*",
        "a; b; c",
        0,
        "+web/2@c:4102 v1",
    );
    check(
        "web=2@4200-4299v2 failed was=4100-4199",
        "web/0@a:4100?0 web/1@b:4101*",
        "a; b; c",
        5000,
        "+web/0@c:4100^a v1 -1 moved(1 a>c unstartable)",
    );
    // One that cannot start where it is moves as a current one would, on its own version.
    check(
        "web=2v2 failed",
        "web/0@a?0 web/1@b*",
        "a; b; c",
        5000,
        "+web/0@c^a v1 -1 moved(1 a>c unstartable)",
    );
    // instances "max": one per core of the usable nodes (drained ones excluded).
    check(
        "web=max",
        "",
        "a cores=2; b cores=1; c cores=4 drain",
        0,
        "+web/0@a +web/1@b +web/2@a",
    );
}

#[test]
fn constraints_resources_and_pending_reasons() {
    check(
        "web=3 eu",
        "",
        "a:region=eu; b:region=us",
        0,
        "+web/0@a +web/1@a +web/2@a",
    );
    check(
        "web=3 eu mem=512",
        "",
        "a:region=eu mem=1024; b:region=us",
        0,
        "+web/0@a +web/1@a +web/2@- pending(web: 1 pending: no ready node with 512 MiB memory free matching region=eu (2 nodes: 1 not matching region=eu, 1 short of memory))",
    );
    // Capacity appears: the pending record is placed.
    check("web=1 mem=512", "web/0@-", "a mem=1024", 0, "=1@a");
    check("web=2 max=1", "", "a; b; c", 0, "+web/0@a +web/1@b");
}

#[test]
fn node_loss() {
    // Down, but not for long enough: wait, and say when to look again.
    check(
        "web=2",
        "web/0@a web/1@b",
        "a down=500; b",
        1000,
        "followup@1500",
    );
    // Down long enough: replaced on a ready node, old record removed, and the move says why:
    // its node has been down since 0.
    check(
        "web=2",
        "web/0@a web/1@b",
        "a down=0; b",
        1000,
        "+web/0@b -1 moved(1 a>b nodelost down@0)",
    );
    // Apps that wait for their node are left alone.
    check("web=2 wait", "web/0@a web/1@b", "a down=0; b", 99_999, "");
    // Scaling while a node is down: new instances go to ready nodes only.
    check(
        "web=3",
        "web/0@a web/1@b",
        "a down=900; b",
        1000,
        "+web/2@b followup@1900",
    );
    // Nowhere to go: the replacement waits as pending.
    check(
        "web=1",
        "web/0@a",
        "a down=0",
        5000,
        "+web/0@- -1 moved(1 a> nodelost down@0) pending(web: 1 pending: no ready node (1 node: 1 not ready))",
    );
    // Node back after its instances moved: nothing of it is in any plan (the records are gone).
    check("web=1", "web/0@b", "a; b", 0, "");
    // Conflicting reports: two records for one index; the online one on an up node stays.
    check("web=1", "web/0@a web/0@b*", "a; b", 0, "-1");
    check("web=1", "web/0@a web/0@b", "a down=0; b", 0, "-1");
}

#[test]
fn unstartable_instances_move_on() {
    // Failing to start, not for long enough yet (reschedule_after is 1 s here): look again
    // when it will have.
    check(
        "web=2",
        "web/0@a?0 web/1@b",
        "a; b; c",
        500,
        "followup@1000",
    );
    // Long enough: a new record on a node it has not failed on, the old one removed.
    check(
        "web=2",
        "web/0@a?0 web/1@b",
        "a; b; c",
        1000,
        "+web/0@c^a -1 moved(1 a>c unstartable)",
    );
    // Fixed ports: the port comes along.
    check(
        "web=1@4300-4399",
        "web/0@a:4300?0",
        "a; b",
        1000,
        "+web/0@b:4300^a -1 moved(1 a>b unstartable)",
    );
    // It failed on c before: b is the one left, and both are avoided from now on.
    check(
        "web=1",
        "web/0@c?0^a",
        "a; b; c",
        1000,
        "+web/0@b^a,c -1 moved(1 c>b unstartable)",
    );
    // Failed everywhere: it stays, and its agent keeps retrying.
    check("web=1", "web/0@b?0^a", "a; b", 5000, "");
    // Nowhere else to go at all: stays (not pending: the cause may pass).
    check("web=1", "web/0@a?0", "a; b down=0", 5000, "");
    // An app that waits for its nodes waits here too.
    check("web=1 wait", "web/0@a?0", "a; b", 99_999, "");
    // A new version may start: refreshed first, not moved.
    check("web=1v2", "web/0@a?0", "a; b", 5000, "~1 v2 p-");
    // A drain's replacement that cannot start moves on, still replacing the old copy.
    check(
        "web=1",
        "web/0@a* web/0@b?0>1",
        "a drain; b; c",
        1000,
        "+web/0@c^b>1 -2 moved(2 b>c unstartable) followup@300000",
    );
    // On a draining node the drain moves it, as before.
    check("web=1", "web/0@a?0", "a drain; b", 1000, "+web/0@b>1");
}

/// Found by a user trial: an instance no other node takes held its draining node's one handoff
/// slot, pass after pass, while the instances other nodes do take stayed put. It now stays on
/// its own, with the placer's reason, and the next one moves.
#[test]
fn drain_moves_what_fits_past_what_cannot_move() {
    // `job` only fits region=eu, which only the draining node is; `web` fits b.
    check(
        "job=1 eu; web=2",
        "job/0@a web/0@a web/1@a",
        "a:region=eu drain; b",
        0,
        "+web/0@b>2 stays(1: no ready node matching region=eu (2 nodes: 1 not ready, \
         1 not matching region=eu))",
    );
    // Still one handoff at a time: while web[0]'s is under way, web[1] waits, and job says why
    // it cannot move.
    check(
        "job=1 eu; web=2",
        "job/0@a web/0@a web/1@a web/0@b>2",
        "a:region=eu drain; b",
        0,
        "stays(1: no ready node matching region=eu (2 nodes: 1 not ready, \
         1 not matching region=eu)) followup@300000",
    );
    // Once web[0]'s replacement is online, web[1]'s starts; job stays.
    check(
        "job=1 eu; web=2",
        "job/0@a web/0@a web/1@a web/0@b*>2",
        "a:region=eu drain; b",
        0,
        "+web/1@b>3 -2 stays(1: no ready node matching region=eu (2 nodes: 1 not ready, \
         1 not matching region=eu))",
    );
    // The same within one app: an index whose fixed port no other node has free stays, the
    // next index moves.
    check(
        "web=2@8000-8001; other=1@8000",
        "web/0@a:8000 web/1@a:8001 other/0@b:8000",
        "a drain; b",
        0,
        "+web/1@b:8001>2 stays(1: no ready node (2 nodes: 1 not ready, 1 with port 8000 in use))",
    );
}

#[test]
fn drain() {
    // One migration at a time per draining node; the replacement goes elsewhere.
    check("web=2", "web/0@a web/1@a", "a drain; b", 0, "+web/0@b>1");
    // Waiting for the replacement to come online: nothing new, until the healthy deadline
    // (5 minutes by default) from its placement.
    check(
        "web=2",
        "web/0@a web/1@a web/0@b>1",
        "a drain; b",
        0,
        "followup@300000",
    );
    // Replacement online: the old record goes; the next migration starts.
    check(
        "web=2",
        "web/0@a web/1@a web/0@b*>1",
        "a drain; b",
        0,
        "+web/1@b>2 -1",
    );
    // Done.
    check("web=2", "web/0@b* web/1@b*", "a drain; b", 0, "");
    // A replacement not online by the app's healthy deadline from its placement (a crash loop,
    // a port it never opens) does not hold the drain up: the old copy retires (draining first
    // while it serves), the event names both, and the next migration starts on the next pass, once it is gone.
    check(
        "web=2 hd=1000",
        "web/0@a web/1@a web/0@b&500>1",
        "a drain; b",
        1499,
        "followup@1500",
    );
    check(
        "web=2 hd=1000",
        "web/0@a web/1@a web/0@b&500>1",
        "a drain; b",
        1500,
        "-1 moved(1 a>b overdue 3)",
    );
    check(
        "web=2 hd=1000",
        "web/0@b&500>9 web/1@a",
        "a drain; b",
        1500,
        "+web/1@b>2",
    );
    check(
        "web=2 hd=1000 sd=200",
        "web/0@a* web/1@a* web/0@b&500>1",
        "a drain; b",
        1500,
        "!1 moved(1 a>b overdue 3) followup@1700",
    );
    // The replacement's node is down (or not back after a coordinator restart): it may be
    // online for all the reports say, so the copy that serves is kept, and the deadline does
    // not retire it; until the replacement's node is lost for the app (down for its
    // reschedule_after, 1000 here): then the replacement goes, the old copy stays, and the next
    // pass starts the handoff anew.
    check(
        "web=1 hd=1000",
        "web/0@a* web/0@b&500>1",
        "a drain; b down=900",
        1899,
        "followup@1900",
    );
    check(
        "web=1 hd=1000",
        "web/0@a* web/0@b&500>1",
        "a drain; b down=900",
        9000,
        "-2 moved(2 b>a lost)",
    );
    check(
        "web=1",
        "web/0@a*",
        "a drain; b down=900; c",
        9000,
        "+web/0@c>1",
    );
    // The same for a replacement on a node that is gone (forgotten), at once; on a draining
    // node, once it is down; and never for an app that waits for its nodes.
    check(
        "web=1",
        "web/0@a* web/0@z>1",
        "a drain; b",
        0,
        "-2 moved(2 z>a lost)",
    );
    check(
        "web=1",
        "web/0@a* web/0@b>1",
        "a drain; b drain down=900",
        900,
        "-2 moved(2 b>a lost)",
    );
    check(
        "web=1 wait",
        "web/0@a* web/0@b>1",
        "a drain; b down=900",
        9000,
        "",
    );
    // Undrained meanwhile (or a scale-down's rebalance move): the copy that serves is kept, and
    // a replacement not online by the healthy deadline is given up; one lost with its node
    // goes.
    check(
        "web=1 hd=1000",
        "web/0@a* web/0@b&500>1",
        "a; b",
        1499,
        "followup@1500",
    );
    check(
        "web=1 hd=1000",
        "web/0@a* web/0@b&500>1",
        "a; b",
        1500,
        "-2 moved(2 b>a abandoned)",
    );
    check(
        "web=1 hd=1000",
        "web/0@a* web/0@b*&500>1",
        "a; b",
        1500,
        "-1",
    );
    check(
        "web=1",
        "web/0@a* web/0@b>1",
        "a; b down=900",
        9000,
        "-2 moved(2 b>a lost)",
    );
    // Stopped, or finished (exited with autorestart off): nothing to hand over, so it moves at
    // once and stays stopped, not run again.
    check_finished_job_moves("a drain; b", 0);
    // Finished while its handoff was under way: the handoff goes on (no stopped copy beside
    // the replacement), and the replacement takes over once online.
    check(
        "job=1 once",
        "job/0@a% job/0@b>1",
        "a drain; b",
        0,
        "followup@300000",
    );
    check("job=1 once", "job/0@a% job/0@b*>1", "a drain; b", 0, "-1");
    // Exited with autorestart on is a process between restarts: a migration as any other.
    check("job=1", "job/0@a%", "a drain; b", 0, "+job/0@b>1");
    // The same on a lost node: the job is not run again elsewhere.
    check_finished_job_moves("a down=0; b", 5000);
    // No other node: the migration does not start, and the instance keeps running.
    check(
        "web=1",
        "web/0@a",
        "a drain",
        0,
        "stays(1: no ready node (1 node: 1 not ready))",
    );
    // Draining node goes down: its instances are replaced at once, and the move says why.
    check(
        "web=1",
        "web/0@a",
        "a drain down=0; b",
        1,
        "+web/0@b -1 moved(1 a>b nodelost down@0)",
    );
    // Drained nodes take nothing new.
    check("web=2", "", "a drain; b", 0, "+web/0@b +web/1@b");
    // With a shutdown delay the old record drains before it goes.
    check(
        "web=1 sd=500",
        "web/0@a* web/0@b*>1",
        "a drain; b",
        100,
        "!1 followup@600",
    );
    check(
        "web=1 sd=500",
        "web/0@a*~100 web/0@b*>1",
        "a drain; b",
        400,
        "followup@600",
    );
    check(
        "web=1 sd=500",
        "web/0@a*~100 web/0@b*>1",
        "a drain; b",
        600,
        "-1",
    );
    // The replacement's node is drained too while the old side still drains: the old side
    // keeps retiring, the serving copy is never weighed against it, and the next migration
    // (to c) proceeds as a pair.
    check(
        "web=1 sd=500",
        "web/0@a*~100 web/0@b*>1 web/0@c>2",
        "a drain; b drain; c",
        300,
        "followup@600",
    );
    check(
        "web=1 sd=500",
        "web/0@a*~100 web/0@b*>1 web/0@c*>2",
        "a drain; b drain; c",
        300,
        "!2 followup@600",
    );
}

#[test]
fn graceful_scale_down() {
    // No shutdown delay (the default): excess records go at once.
    check("web=1", "web/0@a* web/1@b*", "a; b", 0, "-2");
    // A serving instance drains for the delay, then goes.
    check(
        "web=1 sd=1000",
        "web/0@a* web/1@b*",
        "a; b",
        0,
        "!2 followup@1000",
    );
    check(
        "web=1 sd=1000",
        "web/0@a* web/1@b*~0",
        "a; b",
        999,
        "followup@1000",
    );
    check("web=1 sd=1000", "web/0@a* web/1@b*~0", "a; b", 1000, "-2");
    // Not serving (launching, or its node is down): nothing to drain.
    check("web=1 sd=1000", "web/0@a* web/1@b", "a; b", 0, "-2");
    check(
        "web=1 sd=1000",
        "web/0@a* web/1@b*~0",
        "a; b down=0",
        10,
        "-2",
    );
    // Scaled back up while one drains: it finishes retiring, then the index comes back.
    check(
        "web=2 sd=1000",
        "web/0@a* web/1@b*~0",
        "a; b",
        500,
        "followup@1000",
    );
    check("web=2 sd=1000", "web/0@a*", "a; b", 1000, "+web/1@b");
    // A deleted app's records go at once (its spec is gone).
    check("", "web/0@a*", "a", 0, "-1");
}

#[test]
fn a_rolling_update_keeps_the_spread() {
    // Six instances 2/2/2 over a, b, c, being updated to v2 (the fixture's records are all v1:
    // versions do not weigh in placement). A replacement (`@->n`) waits unplaced until this
    // plan places it; its old copy serves until it is healthy, and then drains. The copy being
    // replaced is on its way out: counted, it tied its node with the one that had already lost
    // a copy, and the tie went by name, so the update ended 3/2/1 or worse.
    let six = "web/0@a* web/1@b* web/2@c* web/3@a* web/4@b* web/5@c*";
    // Index 0 done (on a), its old copy gone; index 1's replacement goes back to b.
    check(
        "web=6v2 rolling",
        &format!("{six} web/1@->2"),
        "a; b; c",
        0,
        "=7@b",
    );
    // Two at once (surge 2): each to the node its old copy leaves.
    check(
        "web=6v2 rolling",
        &format!("{six} web/1@->2 web/2@->3"),
        "a; b; c",
        0,
        "=7@b =8@c",
    );
    // Stop-then-start: the old copy drains before its replacement is placed.
    check(
        "web=6v2 rolling",
        "web/0@a* web/1@b*~0 web/2@c* web/3@a* web/4@b* web/5@c* web/1@->2",
        "a; b; c",
        0,
        "=7@b",
    );
    // The first wave: counting index 0's old copy made a tie of three that a won by name, so
    // this one was right by luck.
    check(
        "web=6v2 rolling",
        &format!("{six} web/0@->1"),
        "a; b; c",
        0,
        "=7@a",
    );
    // Index 0's old copy drains beside its replacement on a: neither it nor index 2's old copy
    // weighs, so c, not b, gets index 2 back.
    check(
        "web=6v2 rolling",
        "web/0@a*~0 web/0@a*>1 web/1@b* web/2@c* web/3@a* web/4@b* web/5@c* web/2@->4",
        "a; b; c",
        0,
        "=8@c",
    );
}
