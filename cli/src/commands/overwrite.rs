//! `start` of a command line under the name of an app that exists: started as it is, or
//! refused when it would change the app.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use pmcluster_spec::config::to_config;
use tonic::Code;

use crate::error::UsageError;
use crate::failover::{Conn, call};

/// Refuses a `start` of a command line under the name of an app that exists with another spec
/// (exit 2): `start` would otherwise replace it, resetting every flag left out. An app with the
/// same spec is fine: `start` then starts it, as PM2 does. So is one that differs only in what
/// commands change after its start (the count `scale` and the autoscaler set, the policies
/// `restart --rolling` and `autoscale` save): the stored spec is returned, to start as it is,
/// so that a script that runs `start` and then `scale` can run again. `stored` is the app's
/// spec as [`stored`] fetched it (`None`: no such app); `derived` says the name came from the
/// program rather than from `--name`.
pub(super) fn refuse_to_overwrite(
    stored: Option<&AppSpec>,
    spec: &AppSpec,
    derived: bool,
) -> anyhow::Result<Option<AppSpec>> {
    let Some(current) = stored else {
        return Ok(None);
    };
    // The coordinator shows secrets as `<secret>`: compare what it can show.
    let wanted = spec.shown(true);
    if *current == wanted {
        return Ok(None);
    }
    if same_but_adjusted(current, &wanted) {
        return Ok(Some(current.clone()));
    }
    let differs = differing_fields(current, &wanted);
    Err(UsageError::new(overwrite_refusal(&spec.name, derived, &differs)).into())
}

/// The spec of app `name` as the coordinator shows it (secrets masked); `None` for no such app.
pub(super) async fn stored(conn: &mut Conn, name: &str) -> anyhow::Result<Option<AppSpec>> {
    let req = pb::GetAppRequest {
        name: name.to_string(),
    };
    let app = match call!(conn, get_app, req).await {
        Err(e) if e.code == Code::NotFound => return Ok(None),
        other => other?,
    };
    let spec = AppSpec::try_from(app.spec.unwrap_or_default()).map_err(|e| {
        UsageError::new(format!(
            "an app named {name:?} exists, and its stored spec cannot be read here ({e}); see \
             `pmcluster info {name}`"
        ))
    })?;
    Ok(Some(spec))
}

/// Of the ways to read one command line (`candidates`, most wanted first), the one `stored` was
/// made from: the first that `start` would run as it is, else the one that differs from it in
/// the fewest fields (whose refusal then names the fewest).
pub(super) fn closest(stored: &AppSpec, candidates: Vec<AppSpec>) -> Option<AppSpec> {
    let fits = |wanted: &AppSpec| {
        let wanted = wanted.shown(true);
        *stored == wanted || same_but_adjusted(stored, &wanted)
    };
    if let Some(i) = candidates.iter().position(fits) {
        return candidates.into_iter().nth(i);
    }
    candidates
        .into_iter()
        .min_by_key(|c| differing_fields(stored, &c.shown(true)).len())
}

/// Whether `current` is `wanted` but for its count and the policies commands change once it
/// runs (see [`refuse_to_overwrite`]).
pub(super) fn same_but_adjusted(current: &AppSpec, wanted: &AppSpec) -> bool {
    let adjusted = AppSpec {
        instances: current.instances,
        instances_max: current.instances_max,
        update: current.update.clone(),
        autoscale: current.autoscale.clone(),
        ..wanted.clone()
    };
    adjusted == *current
}

/// How to change what an app that `start` left as it is kept: `scale` with the count asked for
/// when `--instances` (`count_given`) asked for another one, which is what a user of `pm2
/// start app.js -i 4` over a running app wants; else the verbs that change the rest.
pub(super) fn kept_note(stored: &AppSpec, wanted: &AppSpec, count_given: bool) -> String {
    let other_count = wanted.instances != stored.instances || stored.instances_max;
    if count_given && !wanted.instances_max && other_count {
        return format!(
            "`pmcluster scale {} {}` runs {}",
            wanted.name,
            wanted.instances,
            super::plural(wanted.instances, "instance")
        );
    }
    "change them with `pmcluster scale` or `pmcluster reload`".to_string()
}

/// The top-level config fields (`script`, `instances`, `update`, ...) in which two specs differ.
pub(super) fn differing_fields(current: &AppSpec, wanted: &AppSpec) -> Vec<String> {
    let (a, b) = (to_config(current), to_config(wanted));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Why `start` will not run a command line as `name`, and what to use instead.
pub(super) fn overwrite_refusal(name: &str, derived: bool, differs: &[String]) -> String {
    let how = match differs {
        [] => String::new(),
        fields => format!(" (it differs in {})", fields.join(", ")),
    };
    if derived {
        return format!(
            "an app named {name:?} already exists with another spec{how}; give this one its own \
             name with --name, or change that app with `pmcluster reload {name} ...` or \
             `pmcluster apply -f FILE`"
        );
    }
    format!(
        "--name {name}: an app of that name already exists with another spec{how}, and `start` \
         does not change an app; to change it: `pmcluster reload {name} --set KEY=VALUE` (or \
         `-f FILE`, `--instances N`) or `pmcluster apply -f FILE`; to start it as it is: \
         `pmcluster start {name}`; to replace it: `pmcluster delete {name}` first"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app made by `start www/server.py` before `start` set a cwd holds the interpreter
    /// but no cwd: the same command line now fits it by that reading, not the newest one.
    #[test]
    fn the_closest_reading_of_a_command_line_is_the_one_the_app_was_made_from() {
        let raw = AppSpec::new("py", "www/server.py", &[]);
        let interpreted = AppSpec::new("py", "python3", &["www/server.py"]);
        let here = AppSpec {
            cwd: Some("/home/me/proj".into()),
            ..interpreted.clone()
        };
        let ways = || vec![here.clone(), interpreted.clone(), raw.clone()];
        for stored in [&here, &interpreted, &raw] {
            assert_eq!(closest(stored, ways()).as_ref(), Some(stored));
        }
        // Another count is no other reading: the app is started as it is.
        let scaled = AppSpec {
            instances: 4,
            ..interpreted.clone()
        };
        assert_eq!(closest(&scaled, ways()), Some(interpreted.clone()));
        // None fits: the one with the fewest fields to name in the refusal.
        let elsewhere = AppSpec {
            cwd: Some("/srv".into()),
            ..interpreted.clone()
        };
        assert_eq!(closest(&elsewhere, ways()), Some(here.clone()));
    }

    /// `start app.py -i 2` over a running `app` of another count points to `scale` with that
    /// count; without `-i` (the count 1 is then no wish) or with `-i max`, to the verbs.
    #[test]
    fn a_count_kept_points_to_scale() {
        let stored = AppSpec::new("app", "python3", &["./app.py"]);
        let two = AppSpec {
            instances: 2,
            ..stored.clone()
        };
        assert_eq!(
            kept_note(&stored, &two, true),
            "`pmcluster scale app 2` runs 2 instances"
        );
        let general = "change them with `pmcluster scale` or `pmcluster reload`";
        assert_eq!(kept_note(&two, &stored, false), general);
        assert_eq!(kept_note(&stored, &stored, true), general);
        let max = AppSpec {
            instances: 0,
            instances_max: true,
            ..stored.clone()
        };
        assert_eq!(kept_note(&stored, &max, true), general);
    }
}
