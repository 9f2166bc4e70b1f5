//! Version bookkeeping of an app record: a new version keeps the last ten specs, a rollback
//! runs an old process with today's count and policies, and a new deployment pushes the one it
//! replaces into the history. Pure.

use pmcluster_spec::AppSpec;

use crate::model::{AppRecord, Deployment, Kind, State};

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
pub fn new_version(old: AppRecord, spec: AppSpec, now: i64, kind: Kind, roll: bool) -> AppRecord {
    let from = old.version;
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
    app.versions.insert(from, old.spec.clone());
    while app.versions.len() > VERSIONS_KEPT {
        let Some(first) = app.versions.keys().next().copied() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn app(instances: u32) -> AppRecord {
        let mut spec = AppSpec::new("web", "v1", &[]);
        spec.instances = instances;
        AppRecord::new(spec, 0)
    }

    fn spec(script: &str) -> AppSpec {
        AppSpec::new("web", script, &[])
    }

    /// The record after `steps` (each a new process applied at time i+1, rolling or not) as text:
    /// `version kept=[versions] deployment history`.
    fn check(steps: &[(&str, bool)], want: &str) {
        let mut rec = app(2);
        for (i, (script, roll)) in steps.iter().enumerate() {
            rec = new_version(rec, spec(script), i as i64 + 1, Kind::Update, *roll);
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
        let mut rec = new_version(app(1), spec("v2"), 1, Kind::Update, false);
        let old = rec.spec_of(1).clone();
        rec = new_version(
            rec,
            with_current_policies(&app(1), old),
            2,
            Kind::Rollback,
            true,
        );
        assert_eq!(rec.version, 3);
        assert_eq!(rec.spec.script, "v1");
        assert_eq!(
            rec.deployment.as_ref().map(|d| d.kind),
            Some(Kind::Rollback)
        );
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
}
