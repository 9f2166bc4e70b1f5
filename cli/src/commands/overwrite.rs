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
/// so that a script that runs `start` and then `scale` can run again. `derived` says the name
/// came from the program rather than from `--name`.
pub(super) async fn refuse_to_overwrite(
    conn: &mut Conn,
    spec: &AppSpec,
    derived: bool,
) -> anyhow::Result<Option<AppSpec>> {
    let req = pb::GetAppRequest {
        name: spec.name.clone(),
    };
    let existing = match call!(conn, get_app, req).await {
        Err(e) if e.code == Code::NotFound => return Ok(None),
        other => other?,
    };
    // The coordinator shows secrets as `<secret>`: compare what it can show.
    let wanted = spec.shown(true);
    let differs = match existing.spec.map(AppSpec::try_from) {
        Some(Ok(current)) if current == wanted => return Ok(None),
        Some(Ok(current)) if same_but_adjusted(&current, &wanted) => return Ok(Some(current)),
        Some(Ok(current)) => differing_fields(&current, &wanted),
        Some(Err(e)) => {
            return Err(UsageError::new(format!(
                "an app named {:?} exists, and its stored spec cannot be read here ({e}); see \
                 `pmcluster info {}`",
                spec.name, spec.name
            ))
            .into());
        }
        None => Vec::new(),
    };
    Err(UsageError::new(overwrite_refusal(&spec.name, derived, &differs)).into())
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
