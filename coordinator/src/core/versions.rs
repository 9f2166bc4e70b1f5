//! Version bookkeeping of an app record: a new version keeps the last ten specs, a rollback
//! runs an old process with today's count and policies, and a new deployment pushes the one it
//! replaces into the history. Pure.

use pmcluster_spec::AppSpec;

use crate::model::{AppRecord, Deployment, InstanceRecord, Kind, State};

/// Earlier specs kept per app (for instances still on them and for `rollout undo`).
pub const VERSIONS_KEPT: usize = 10;
/// Finished deployments kept per app.
pub const HISTORY_KEPT: usize = 20;

/// An earlier process (`spec`) with the app's current count and policies: what a rollback runs.
pub fn with_current_policies(app: &AppRecord, spec: AppSpec) -> AppSpec {
    AppSpec {
        instances: app.spec.instances,
        autoscale: app.spec.autoscale.clone(),
        update: app.spec.update.clone(),
        ..spec
    }
}

pub fn start_deployment(
    app: &AppRecord,
    kind: Kind,
    from: u64,
    to: u64,
    epoch: u64,
    now: i64,
) -> Deployment {
    Deployment {
        id: app
            .history
            .last()
            .map(|d| d.id)
            .max(app.deployment.as_ref().map(|d| d.id))
            .unwrap_or(0)
            + 1,
        kind,
        from_version: from,
        to_version: to,
        restart_epoch: epoch,
        state: State::Running,
        started_ms: now,
        updated_ms: now,
        progress_ms: now,
        promoted: false,
        message: String::new(),
        done: 0,
        total: app.spec.instances,
    }
}

/// The app with `d` as its deployment; a deployment it replaces goes to the history.
pub fn with_deployment(mut app: AppRecord, d: Deployment) -> AppRecord {
    if let Some(old) = app.deployment.take()
        && old.id != d.id
    {
        let old = if old.state.active() {
            Deployment {
                state: State::Superseded,
                ..old
            }
        } else {
            old
        };
        app.history.push(old);
        let excess = app.history.len().saturating_sub(HISTORY_KEPT);
        app.history.drain(..excess);
    }
    app.deployment = Some(d);
    app
}

/// The app at a new version running `spec`; with running instances, a rollout to it starts.
/// Of the earlier specs, the oldest go beyond [`VERSIONS_KEPT`], but never one that a record
/// still runs (`in_use`): a failed rollout leaves the indices it did not reach on the version
/// before it, and without its spec they would be given the app's (see [`AppRecord::spec_of`]).
pub fn new_version(
    old: AppRecord,
    spec: AppSpec,
    now: i64,
    kind: Kind,
    roll: bool,
    in_use: &std::collections::BTreeSet<u64>,
) -> AppRecord {
    // After a failed rollout left standing, what serves is the version before it: the next
    // rollout starts from there, so that its rollback returns to what served.
    let from = old.held_version().unwrap_or(old.version);
    let to = old
        .versions
        .keys()
        .copied()
        .max()
        .unwrap_or(0)
        .max(old.version)
        + 1;
    let mut app = AppRecord {
        versions: old.versions.clone(),
        ..old.clone()
    };
    app.versions.insert(old.version, old.spec.clone());
    while app.versions.len() > VERSIONS_KEPT {
        let Some(first) = app.versions.keys().find(|v| !in_use.contains(v)).copied() else {
            break;
        };
        app.versions.remove(&first);
    }
    app.spec = spec;
    app.version = to;
    app.updated_at_ms = now;
    if roll {
        let d = start_deployment(&app, kind, from, to, 0, now);
        app = with_deployment(app, d);
    }
    app
}

/// The records a new version runs already, relabelled to it, so that its rollout keeps them:
/// those of an earlier version with the same process (an undo, an automatic rollback, an apply
/// of an older config), as a Kubernetes rollback keeps the pods of the template it returns to.
/// Left to the rollout as outdated: a replacement started for one of them (the rollout being
/// undone drains it once the kept one has been healthy for `min_healthy_time`, as for any
/// replacement, so an index is never left without a serving copy), a record already draining,
/// and one whose version's spec is no longer kept. Of a pair that both run the process (a
/// rolling restart's, a drain's handoff), only the side that served first is kept.
pub fn kept_records(app: &AppRecord, records: &[&InstanceRecord]) -> Vec<InstanceRecord> {
    let runs_it = |r: &&&InstanceRecord| {
        r.app == app.spec.name
            && r.app_version != app.version
            && r.draining_since.is_none()
            && app
                .versions
                .get(&r.app_version)
                .is_some_and(|s| s.same_process(&app.spec))
    };
    let candidates: Vec<&&InstanceRecord> = records.iter().filter(runs_it).collect();
    candidates
        .iter()
        .filter(|r| {
            !r.replaces
                .is_some_and(|old| candidates.iter().any(|c| c.id == old))
        })
        .map(|r| InstanceRecord {
            app_version: app.version,
            ..(**r).clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn app(instances: u32) -> AppRecord {
        let mut spec = AppSpec::new("web", "v1", &[]);
        spec.instances = instances;
        AppRecord::new(spec, 0)
    }

    fn spec(script: &str) -> AppSpec {
        AppSpec::new("web", script, &[])
    }

    /// A version some record still runs (left by failed rollouts) is kept past the ten: its
    /// instances would otherwise be given the app's latest spec.
    #[test]
    fn a_version_in_use_is_never_dropped() {
        let mut rec = app(2);
        let in_use: BTreeSet<u64> = [1].into();
        for i in 0..15 {
            rec = new_version(rec, spec(&format!("v{i}")), i, Kind::Update, true, &in_use);
        }
        assert!(rec.versions.contains_key(&1));
        assert_eq!(rec.versions.len(), VERSIONS_KEPT);
        assert!(!rec.versions.contains_key(&2), "the oldest not in use went");
    }

    /// The record after `steps` (each a new process applied at time i+1, rolling or not) as text:
    /// `version kept=[versions] deployment history`.
    fn check(steps: &[(&str, bool)], want: &str) {
        let mut rec = app(2);
        for (i, (script, roll)) in steps.iter().enumerate() {
            rec = new_version(
                rec,
                spec(script),
                i as i64 + 1,
                Kind::Update,
                *roll,
                &BTreeSet::new(),
            );
        }
        let kept: Vec<String> = rec.versions.keys().map(|v| v.to_string()).collect();
        let d = rec
            .deployment
            .as_ref()
            .map(|d| {
                format!(
                    "d{}:{}->{}:{}",
                    d.id,
                    d.from_version,
                    d.to_version,
                    d.state.name()
                )
            })
            .unwrap_or_else(|| "-".into());
        let h: Vec<String> = rec
            .history
            .iter()
            .map(|d| format!("d{}:{}", d.id, d.state.name()))
            .collect();
        let got = format!(
            "v{} kept=[{}] {d} history=[{}]",
            rec.version,
            kept.join(","),
            h.join(",")
        );
        assert_eq!(got, want, "{steps:?}");
    }

    #[test]
    fn new_versions() {
        check(&[], "v1 kept=[] - history=[]");
        check(&[("v2", false)], "v2 kept=[1] - history=[]");
        check(&[("v2", true)], "v2 kept=[1] d1:1->2:running history=[]");
        // A second rollout supersedes the first, which goes to the history.
        check(
            &[("v2", true), ("v3", true)],
            "v3 kept=[1,2] d2:2->3:running history=[d1:superseded]",
        );
        // Ten earlier specs are kept, the oldest go.
        let many: Vec<(&str, bool)> = (0..12).map(|_| ("vn", false)).collect();
        check(&many, "v13 kept=[3,4,5,6,7,8,9,10,11,12] - history=[]");
    }

    #[test]
    fn a_new_version_number_is_above_every_kept_one() {
        // After a rollback to 1 the app is at version 3, not 2 again.
        let mut rec = new_version(app(1), spec("v2"), 1, Kind::Update, false, &BTreeSet::new());
        let old = rec.spec_of(1).clone();
        rec = new_version(
            rec,
            with_current_policies(&app(1), old),
            2,
            Kind::Rollback,
            true,
            &BTreeSet::new(),
        );
        assert_eq!(rec.version, 3);
        assert_eq!(rec.spec.script, "v1");
        assert_eq!(
            rec.deployment.as_ref().map(|d| d.kind),
            Some(Kind::Rollback)
        );
    }

    /// Found by a review: after the rollout to 2 failed and was left standing (1 serves), the
    /// rollout to 3 started from 2, so its rollback would have returned to the failed spec.
    #[test]
    fn a_rollout_after_a_failure_left_standing_starts_from_what_serves() {
        let mut rec = new_version(app(2), spec("v2"), 1, Kind::Update, true, &BTreeSet::new());
        let failed = rec.deployment.clone().map(|d| Deployment {
            state: State::Failed,
            ..d
        });
        rec.deployment = failed;
        assert_eq!(rec.held_version(), Some(1));
        let next = new_version(
            rec.clone(),
            spec("v3"),
            2,
            Kind::Update,
            true,
            &BTreeSet::new(),
        );
        let d = next
            .deployment
            .as_ref()
            .map(|d| (d.from_version, d.to_version));
        assert_eq!(d, Some((1, 3)));
        assert_eq!(next.spec_of(1).script, "v1");
        assert_eq!(
            next.spec_of(2).script,
            "v2",
            "the failed spec is kept as a version"
        );
        assert_eq!(next.held_version(), None, "the new rollout is running");
        // Without the spec of what served, there is nothing to start from but the app's.
        rec.versions.clear();
        let next = new_version(rec, spec("v3"), 2, Kind::Update, true, &BTreeSet::new());
        let d = next.deployment.as_ref().map(|d| d.from_version);
        assert_eq!(d, Some(2));
    }

    #[test]
    fn a_rollback_keeps_the_current_count_and_policies() {
        let mut current = app(7);
        current.spec.update.max_surge = 3;
        let old = spec("v0");
        let got = with_current_policies(&current, old);
        assert_eq!(
            (got.script.as_str(), got.instances, got.update.max_surge),
            ("v0", 7, 3)
        );
    }

    #[test]
    fn history_is_bounded_and_ids_grow() {
        let mut rec = app(1);
        for i in 0..30 {
            let d = start_deployment(&rec, Kind::Restart, 1, 1, i, i as i64);
            assert_eq!(d.id, i + 1);
            rec = with_deployment(rec, d);
        }
        assert_eq!(rec.history.len(), HISTORY_KEPT);
        assert_eq!(rec.history.first().map(|d| d.id), Some(10));
        assert!(rec.history.iter().all(|d| d.state == State::Superseded));
    }

    /// `kept_records` over records written `name:version`, with `+` for a draining one and
    /// `>old` for a replacement of `old`: the relabelled records, as `name:version`. The app went v1 -> v2 (script "v2") -> v3 (script "v1" again), with
    /// v0 (script "v0") kept too.
    fn kept(records: &str) -> String {
        let mut rec = app(2);
        rec.versions.insert(0, spec("v0"));
        rec = new_version(rec, spec("v2"), 1, Kind::Update, true, &BTreeSet::new());
        rec = new_version(rec, spec("v1"), 2, Kind::Rollback, true, &BTreeSet::new());
        let ids: BTreeMap<&str, uuid::Uuid> = records
            .split_whitespace()
            .zip(1u128..)
            .map(|(w, n)| {
                (
                    w.split([':', '>', '+']).next().unwrap_or(w),
                    uuid::Uuid::from_u128(n),
                )
            })
            .collect();
        let parsed: Vec<InstanceRecord> = records
            .split_whitespace()
            .map(|w| {
                let (head, old) = w.split_once('>').unwrap_or((w, ""));
                let draining = head.ends_with('+');
                let (name, version) = head.trim_end_matches('+').split_once(':').expect("name:v");
                InstanceRecord {
                    id: ids[name],
                    app: "web".into(),
                    index: 0,
                    node: Some("n1".into()),
                    port: None,
                    app_version: version.parse().expect("version"),
                    restart_epoch: 0,
                    stopped: false,
                    replaces: ids.get(old).copied(),
                    draining_since: draining.then_some(1),
                    created_ms: 0,
                    avoid: Vec::new(),
                    disabled: false,
                }
            })
            .collect();
        let refs: Vec<&InstanceRecord> = parsed.iter().collect();
        let name_of = |id| ids.iter().find(|(_, v)| **v == id).map(|(k, _)| *k);
        kept_records(&rec, &refs)
            .iter()
            .map(|r| format!("{}:{}", name_of(r.id).unwrap_or("?"), r.app_version))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_version_keeps_the_records_that_run_it_already() {
        // Nothing replaced yet: every v1 record is v3's, nothing restarts.
        assert_eq!(kept("a:1 b:1"), "a:3 b:3");
        // A v2 replacement of a kept record is the rollout's to drain, once the kept one has
        // proven itself.
        assert_eq!(kept("a:1 b:1 c:2>a"), "a:3 b:3");
        assert_eq!(kept("a:1+ c:2>a"), "");
        // Of a pair that both run it (a rolling restart's, a drain's handoff), the side that
        // served first; a replacement of a record not kept is kept.
        assert_eq!(kept("a:1 b:1>a"), "a:3");
        assert_eq!(kept("a:1+ b:1>a"), "b:3");
        // Another process, a spec no longer kept, or one already on v3: left alone.
        assert_eq!(kept("a:0 b:2 d:7 e:3"), "");
        // A record draining already is on its way out.
        assert_eq!(kept("a:1+ b:1"), "b:3");
    }
}
