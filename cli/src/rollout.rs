//! Rolling updates from the command line: `reload`, `restart --rolling` and `rollout ...`.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::Context;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::config::{Format, parse_config, to_config};
use pmcluster_spec::update::UpdatePolicy;
use pmcluster_spec::wire::{update_from_wire, update_to_wire};
use pmcluster_spec::{AppSpec, SpecError};
use serde_json::{Value, json};

use crate::args::{ReloadArgs, RestartArgs, RolloutArgs, RolloutCommand};
use crate::commands::Ctx;
use crate::error::ApiError;
use crate::error::UsageError;
use crate::failover::{Conn, TAKEOVER_WAIT, call, poll};
use crate::output;
use crate::validate::PolicyChanges;
use crate::wait;

mod note;
use note::rollout_note;

/// Sets `key` (dotted for nested blocks: `update.max_surge`, `env.NODE_ENV`) in a config object.
/// The value is read as JSON when it parses (numbers, booleans, lists), else as a string.
pub fn set_field(config: &mut Value, assignment: &str) -> Result<(), UsageError> {
    let Some((key, raw)) = assignment.split_once('=') else {
        return Err(UsageError::new(format!(
            "--set: {assignment:?} is not KEY=VALUE"
        )));
    };
    let value =
        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = config;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(UsageError::new(format!("--set: {key:?} has an empty part")));
        }
        let Value::Object(map) = node else {
            return Err(UsageError::new(format!(
                "--set: {key:?}: {} is not a block",
                parts[..i].join(".")
            )));
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return Ok(());
        }
        node = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}

/// What the spec parser refuses after `reload --set KEY=VALUE` (or `--instances N`) edited an
/// app's config: named by the option and the field, as there is no file to name. The app is the
/// one `reload` was given, so it is not repeated.
fn edit_error(e: &SpecError, sets: &[String], instances: bool) -> UsageError {
    let field = e.field.as_str();
    let edited = |key: &str| {
        key == field
            || field
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
            || key
                .strip_prefix(field)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    let message = &e.message;
    let edited_by = sets
        .iter()
        .filter_map(|s| s.split_once('='))
        .find(|(key, _)| edited(key));
    if let Some((key, raw)) = edited_by {
        // A value that reads as JSON is taken as such (`false`, `1001`, `null`): a field that
        // wants text then refuses it, and a trial did not see why `script=false` failed.
        let typed = serde_json::from_str::<Value>(raw).is_ok_and(|v| !v.is_string());
        let hint = match typed && message.contains("string") {
            true => format!(
                " (the value is read as JSON; for the text, quote it: --set '{key}=\"{raw}\"')"
            ),
            false => String::new(),
        };
        UsageError::new(format!("--set {field}: {message}{hint}"))
    } else if instances && field == "instances" {
        UsageError::new(format!("--instances: {message}"))
    } else {
        // Another field refuses what was edited (a port range too small for the new count),
        // named by the option that edited it.
        let by = match sets.is_empty() && instances {
            true => "--instances",
            false => "--set",
        };
        UsageError::new(format!("{by}: {field}: {message}"))
    }
}

/// Unchanged lines shown around each change by [`diff`].
const DIFF_CONTEXT: usize = 2;

/// One line of a line diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Same,
    Removed,
    Added,
}

/// An order-aware line diff: the longest common subsequence of `a` and `b`, as the edits that turn
/// `a` into `b`, removals before additions at each change. Quadratic in the lines that differ
/// after the common head and tail, which is nothing for an app's spec.
fn line_edits<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Edit, &'a str)> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    // lcs[i][j]: length of the longest common subsequence of am[i..] and bm[j..].
    let mut lcs = vec![vec![0u32; bm.len() + 1]; am.len() + 1];
    for i in (0..am.len()).rev() {
        for j in (0..bm.len()).rev() {
            lcs[i][j] = if am[i] == bm[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out: Vec<(Edit, &str)> = a[..head].iter().map(|l| (Edit::Same, *l)).collect();
    let (mut i, mut j) = (0, 0);
    while i < am.len() || j < bm.len() {
        if i < am.len() && j < bm.len() && am[i] == bm[j] {
            out.push((Edit::Same, am[i]));
            (i, j) = (i + 1, j + 1);
        } else if j == bm.len() || (i < am.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push((Edit::Removed, am[i]));
            i += 1;
        } else {
            out.push((Edit::Added, bm[j]));
            j += 1;
        }
    }
    out.extend(a[a.len() - tail..].iter().map(|l| (Edit::Same, *l)));
    out
}

/// What changes from `old` to `new`, as a line diff of their pretty JSON: `- line` removed,
/// `+ line` added, in order (so a reordered list shows), with up to [`DIFF_CONTEXT`] unchanged
/// lines (`  line`) around each change and `  ...` where unchanged lines are left out.
/// Empty when nothing changes.
/// Two config forms with every secret env value (`{"secret": VALUE}`) replaced for showing:
/// `<secret>`, or `<secret> (changed)` in the new one when its value differs, so a diff still
/// shows that a secret changes, never what it is.
pub fn hide_secrets(old: &Value, new: &Value) -> (Value, Value) {
    use pmcluster_spec::app::SECRET_SHOWN;
    let secret_of = |v: &Value, key: &str| v["env"][key]["secret"].clone();
    let hide = |config: &Value, other: &Value, mark: bool| {
        let mut shown = config.clone();
        if let Some(env) = shown.get_mut("env").and_then(Value::as_object_mut) {
            for (key, value) in env.iter_mut() {
                if value.get("secret").is_none() {
                    continue;
                }
                let text = if !mark || secret_of(config, key) == secret_of(other, key) {
                    SECRET_SHOWN.to_string()
                } else {
                    format!("{SECRET_SHOWN} (changed)")
                };
                *value = serde_json::json!({ "secret": text });
            }
        }
        shown
    };
    (hide(old, new, false), hide(new, old, true))
}

pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let (a, b) = (pretty(old), pretty(new));
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let edits = line_edits(&a, &b);
    let changed: Vec<usize> = (0..edits.len())
        .filter(|&k| edits[k].0 != Edit::Same)
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let near_change = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= DIFF_CONTEXT);
    let mut out = Vec::new();
    let mut last_shown: Option<usize> = None;
    for (k, (edit, line)) in edits.iter().enumerate() {
        if !near_change(k) {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 < k) {
            out.push("  ...".to_string());
        }
        last_shown = Some(k);
        let mark = match edit {
            Edit::Same => ' ',
            Edit::Removed => '-',
            Edit::Added => '+',
        };
        out.push(format!("{mark} {line}"));
    }
    out
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(
            UsageError::new("not asking on a non-interactive input; add --yes to apply").into(),
        );
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `reload APP [-f FILE | --set K=V... | --instances N] [update-policy flags] [--yes]`.
pub async fn reload(args: ReloadArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let policy = PolicyChanges::parse(&args.update)?;
    // `pm2 reload web` restarts an app without downtime: with no change given, so does this.
    // Update flags alone still change only the policy, as they always did here.
    if args.file.is_none() && args.set.is_empty() && args.instances.is_none() && policy.is_empty() {
        // An app that is not there is said first, not after a line on what would be done.
        let mut conn = ctx.connect().await?;
        let req = pb::GetAppRequest {
            name: args.app.clone(),
        };
        call!(conn, get_app, req).await?;
        if !ctx.structured() {
            ctx.line(&format!(
                "{}: no change given (-f, --set, --instances or update flags), so a rolling \
                 restart, as `pm2 reload` does (the same as: pmcluster restart {} --rolling)",
                args.app, args.app
            ))?;
        }
        let restart = crate::args::RestartArgs {
            target: crate::args::TargetArgs {
                app: args.app,
                instance: None,
            },
            rolling: true,
            update: args.update,
            wait: args.wait,
        };
        return rolling_restart(restart, ctx).await;
    }
    policy.check_sets(&args.set)?;
    let mut conn = ctx.connect().await?;
    let app = call!(
        conn,
        get_app,
        pb::GetAppRequest {
            name: args.app.clone(),
        }
    )
    .await?;
    let current = AppSpec::try_from(app.spec.clone().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("the coordinator sent an invalid spec: {e}"))?;
    let old_config = to_config(&current);
    let mut config = match &args.file {
        Some(path) => {
            let text = crate::import::read_config(path)?;
            let specs = crate::import::config_apps(&text, Format::from_path(path), path, path)?;
            let spec = specs
                .into_iter()
                .find(|s| s.name == args.app)
                .ok_or_else(|| {
                    UsageError::new(format!("{path} has no app named {:?}", args.app))
                })?;
            // Read as `apply -f` reads the same file: a trial's reload of the file it had
            // applied dropped the `cwd` apply had found beside it, and every replacement
            // failed to find its script.
            let spec = match crate::commands::config_dir(path).filter(|_| conn.on_this_host()) {
                Some(dir) => crate::commands::beside_file(&mut conn, spec, &dir).await?,
                None => spec,
            };
            to_config(&spec)
        }
        None => old_config.clone(),
    };
    for assignment in &args.set {
        set_field(&mut config, assignment)?;
    }
    if let Some(n) = args.instances {
        set_field(&mut config, &format!("instances={n}"))?;
    }
    let mut new = parse_config(config)
        .map_err(|e| edit_error(&e, &args.set, args.instances.is_some()))?
        .remove(0);
    if !policy.is_empty() {
        new.update = policy.apply(&new.update)?;
    }
    if new.name != args.app {
        return Err(
            UsageError::new("--set: the name cannot change; start a new app instead").into(),
        );
    }
    let (shown_old, shown_new) = hide_secrets(&old_config, &to_config(&new));
    let changes = diff(&shown_old, &shown_new);
    if changes.is_empty() {
        // The shape of an applied reload, so that a script reads one document either way.
        if ctx.structured() {
            return ctx.value(&serde_json::json!({
                "app": args.app, "version": app.version, "deployment": null, "changed": false,
            }));
        }
        return ctx.line(&format!(
            "{}: nothing to change (version {}); to restart it without downtime: pmcluster \
             reload {} (no options), or pmcluster restart {} --rolling",
            args.app, app.version, args.app, args.app
        ));
    }
    if !ctx.structured() {
        ctx.line(&format!("{} version {} -> changes:", args.app, app.version))?;
        for line in &changes {
            ctx.line(&format!("  {line}"))?;
        }
    }
    // The changes are shown against the app's spec; after a failed rollout left standing,
    // that is the failed version's, while the instances run the one before, and the rollout
    // starts from there: what the failed version changed comes along unseen (found by a trial).
    let status = call!(
        conn,
        get_rollout,
        pb::RolloutRequest {
            app: args.app.clone()
        }
    )
    .await
    .ok();
    if let Some(note) = status.as_ref().and_then(|s| held_note(&args.app, s)) {
        eprintln!("{note}");
    }
    if !args.yes && !confirm("apply these changes?")? {
        return ctx.line("nothing applied");
    }
    // Unless this reload sets the count, the count stays whatever it is when the coordinator
    // applies it: a scale or autoscaler change since the spec was read is not undone.
    let sets_count = args.file.is_some()
        || args.instances.is_some()
        || args
            .set
            .iter()
            .any(|s| s.split('=').next().is_some_and(|k| k.trim() == "instances"));
    let reply = call!(
        conn,
        apply_app,
        pb::ApplyAppRequest {
            spec: Some(pb::AppSpec::from(&new)),
            keep_instances: !sets_count,
        }
    )
    .await?;
    let applied = reply.app.clone().unwrap_or_default();
    let version = applied.version;
    let policy_changed = new.update != current.update;
    let note = match &reply.deployment {
        Some(_) => rollout_note(&mut conn, &args.app, &new).await,
        None => None,
    };
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let mut lines = vec![match &reply.deployment {
        Some(d) if args.wait.wait => format!(
            "{}: rolling out version {} (from {})",
            args.app, d.to_version, d.from_version
        ),
        Some(d) => format!(
            "{}: rolling out version {} (from {}); follow it with: pmcluster rollout status {} --wait",
            args.app, d.to_version, d.from_version, args.app
        ),
        None => format!(
            "{}: updated (version {version}, no instance restarts)",
            args.app
        ),
    }];
    if policy_changed {
        lines.push(policy_kept(&args.app, &current.update, &new.update));
    }
    let said = wait::Said {
        value: json!({
            "app": args.app, "version": version,
            "deployment": reply.deployment.as_ref().map(output::deployment_json),
            "update": policy_changed.then(|| policy_json(&new.update)),
        }),
        lines,
    };
    // As `apply --wait`: the new version on every instance the spec asks for, and a failure or
    // rollback of the rollout this reload started fails the wait.
    let goal = wait::Goal {
        version: reply.deployment.as_ref().map_or(0, |d| d.to_version),
        rollout: reply.deployment.as_ref().map(|d| d.id),
        ..wait::goal_of(&args.app, &applied, None)
    };
    wait::finish(&mut conn, ctx, &args.wait, said, Ok(Some(goal))).await
}

/// What `reload` and `restart --rolling` say of an update policy their flags changed: it is
/// stored with the app, not used for this rollout only, and how to go back. A user trial gave
/// `reload api --canary 1` once; a later plain `reload` then stopped half-done, waiting for
/// `rollout promote`, and nothing had said the canary was kept.
fn policy_kept(app: &str, old: &UpdatePolicy, new: &UpdatePolicy) -> String {
    format!(
        "{app}: update policy changed: {} (kept for later rollouts; to go back: pmcluster reload \
         {app} {})",
        policy_changes(old, new).join(", "),
        policy_flags(old, new).join(" ")
    )
}

/// The update flags that set the fields in which `new` differs from `old` back to `old`'s.
fn policy_flags(old: &UpdatePolicy, new: &UpdatePolicy) -> Vec<String> {
    policy_fields(old, new)
        .into_iter()
        .filter(|(_, _, a, b)| a != b)
        .map(|(_, flag, a, _)| format!("{flag} {a}"))
        .collect()
}

/// Each field of the update policy: its name, its flag, and its value in `old` and in `new`.
fn policy_fields(
    old: &UpdatePolicy,
    new: &UpdatePolicy,
) -> [(&'static str, &'static str, String, String); 8] {
    let d = |d: Duration| pmcluster_spec::config::duration_text(d);
    let both = |f: &dyn Fn(&UpdatePolicy) -> String| (f(old), f(new));
    let field = |name, flag, (a, b): (String, String)| (name, flag, a, b);
    [
        field(
            "max_surge",
            "--max-surge",
            both(&|p| p.max_surge.to_string()),
        ),
        field(
            "max_unavailable",
            "--max-unavailable",
            both(&|p| p.max_unavailable.to_string()),
        ),
        field(
            "min_healthy_time",
            "--min-healthy-time",
            both(&|p| d(p.min_healthy_time)),
        ),
        field(
            "healthy_deadline",
            "--healthy-deadline",
            both(&|p| d(p.healthy_deadline)),
        ),
        field(
            "progress_deadline",
            "--progress-deadline",
            both(&|p| d(p.progress_deadline)),
        ),
        field(
            "auto_rollback",
            "--auto-rollback",
            both(&|p| p.auto_rollback.to_string()),
        ),
        field("canary", "--canary", both(&|p| p.canary.to_string())),
        field(
            "shutdown_delay",
            "--shutdown-delay",
            both(&|p| d(p.shutdown_delay)),
        ),
    ]
}

/// `restart APP --rolling [update-policy flags]`. With flags, the app's update policy is changed
/// first (ApplyApp with only `update` changed: the same process, so no version and no restart),
/// then the rolling restart follows the new policy. Nothing is applied when a flag is refused.
pub async fn rolling_restart(args: RestartArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let app = args.target.app.as_str();
    let changes = PolicyChanges::parse(&args.update)?;
    let mut conn = ctx.connect().await?;
    let mut changed_policy: Option<(UpdatePolicy, UpdatePolicy)> = None;
    if !changes.is_empty() {
        let current = call!(
            conn,
            get_app,
            pb::GetAppRequest {
                name: app.to_string(),
            }
        )
        .await?;
        let mut spec = current
            .spec
            .ok_or_else(|| anyhow::anyhow!("the coordinator sent no spec for {app:?}"))?;
        let old = update_from_wire(spec.update.unwrap_or_default()).map_err(|e| {
            anyhow::anyhow!("the coordinator sent an invalid update policy for {app:?}: {e}")
        })?;
        let new = changes.apply(&old)?;
        if new != old {
            // The coordinator refuses a rolling restart while an instance is stopped: the policy
            // stays as it was rather than change for a restart that would not follow.
            if current.stopped > 0 {
                anyhow::bail!(
                    "{app}: {} instance(s) stopped, and a rolling restart only replaces running \
                     instances: start them first (pmcluster start {app}), then restart in waves, \
                     or restart every instance at once, which starts stopped ones too \
                     (pmcluster restart {app}); the update policy was not changed",
                    current.stopped
                );
            }
            // The spec as the coordinator sent it, but for the policy.
            spec.update = Some(update_to_wire(&new));
            // Only the policy changes: the count stays whatever it is by then.
            let req = pb::ApplyAppRequest {
                spec: Some(spec),
                keep_instances: true,
            };
            call!(conn, apply_app, req)
                .await
                .with_context(|| format!("changing the update policy of {app}"))?;
            changed_policy = Some((old, new));
        }
    }
    // What is there now is what the waves replace: it does not count as up for --wait.
    let before = match args.wait.wait {
        true => Some(wait::snapshot(&mut conn, app, None).await?),
        false => None,
    };
    let target = pb::InstanceTarget {
        app: app.to_string(),
        index: None,
        rolling: true,
    };
    let restarted = call!(conn, restart, target).await;
    let reply = match (restarted, &changed_policy) {
        (Ok(reply), _) => reply,
        (Err(e), None) => return Err(e.into()),
        (Err(e), Some(_)) => {
            return Err(anyhow::Error::from(e).context(format!(
                "the update policy of {app} was changed, but the rolling restart failed"
            )));
        }
    };
    let mut lines = Vec::new();
    if let Some((old, new)) = &changed_policy {
        lines.push(policy_kept(app, old, new));
    }
    let follow = match args.wait.wait {
        true => String::new(),
        false => format!("; follow it with: pmcluster rollout status {app} --wait"),
    };
    lines.push(format!(
        "rolling restart of {app}: {} instances, in waves{follow}",
        reply.affected
    ));
    let said = wait::Said {
        value: json!({
            "app": app, "action": "rolling restart", "affected": reply.affected,
            "update": changed_policy.as_ref().map(|(_, new)| policy_json(new)),
        }),
        lines,
    };
    if reply.deployment.is_some() {
        let req = pb::GetAppRequest {
            name: app.to_string(),
        };
        let spec = match call!(conn, get_app, req).await {
            Ok(a) => a.spec.and_then(|s| AppSpec::try_from(s).ok()),
            Err(_) => None,
        };
        if let Some(spec) = spec
            && let Some(note) = rollout_note(&mut conn, app, &spec).await
        {
            eprintln!("{note}");
        }
    }
    let started = reply.deployment.as_ref().map(|d| d.id);
    let goal = match before {
        Some(replaced) => restart_goal(&mut conn, app, replaced, started)
            .await
            .map(Some),
        None => Ok(None),
    };
    wait::finish(&mut conn, ctx, &args.wait, said, goal).await
}

/// What `restart --rolling --wait` waits for: new processes in place of `replaced`, and the
/// rollout the restart started (its failure or rollback fails the wait). `started` is that
/// rollout as the restart's reply named it; a coordinator too old to name it is asked for the
/// app's current rollout, which may by then be a later one.
async fn restart_goal(
    conn: &mut Conn,
    app: &str,
    replaced: Vec<(String, u32, i32)>,
    started: Option<u64>,
) -> Result<wait::Goal, ApiError> {
    let rollout = match started {
        Some(id) => Some(id),
        None => {
            let req = pb::RolloutRequest {
                app: app.to_string(),
            };
            // After the restart was made: a failover meanwhile is waited out.
            let until = tokio::time::Instant::now() + TAKEOVER_WAIT;
            let status = poll!(conn, until, get_rollout, req).await?;
            status
                .current
                .filter(output::deployment_active)
                .map(|d| d.id)
        }
    };
    Ok(wait::Goal {
        replaced,
        rollout,
        ..wait::goal(conn, app, None).await?
    })
}

/// An update policy as JSON, durations in milliseconds as in the wire type.
fn policy_json(p: &UpdatePolicy) -> Value {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    json!({
        "max_surge": p.max_surge, "max_unavailable": p.max_unavailable,
        "min_healthy_time_ms": ms(p.min_healthy_time),
        "healthy_deadline_ms": ms(p.healthy_deadline),
        "progress_deadline_ms": ms(p.progress_deadline),
        "auto_rollback": p.auto_rollback, "canary": p.canary,
        "shutdown_delay_ms": ms(p.shutdown_delay),
    })
}

/// The fields that differ, as `max_surge 1 -> 2`.
fn policy_changes(old: &UpdatePolicy, new: &UpdatePolicy) -> Vec<String> {
    policy_fields(old, new)
        .into_iter()
        .filter(|(_, _, a, b)| a != b)
        .map(|(name, _, a, b)| format!("{name} {a} -> {b}"))
        .collect()
}

/// `rollout status|pause|resume|promote|history|undo APP`.
pub async fn rollout(args: RolloutArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    match args.command {
        RolloutCommand::Status { app, wait } => {
            // With --wait, each look is asked again through a failover: a rollout goes on at
            // the new leader, and the wait with it.
            let patience = if wait { TAKEOVER_WAIT } else { Duration::ZERO };
            let look = || tokio::time::Instant::now() + patience;
            let req = pb::RolloutRequest { app: app.clone() };
            let status = poll!(conn, look(), get_rollout, req).await?;
            let Some(mut d) = status.current else {
                return ctx.line(&format!(
                    "{app} has not rolled out anything yet (version {})",
                    status.version
                ));
            };
            if wait && output::deployment_active(&d) {
                let bar = (!ctx.structured() && std::io::stderr().is_terminal()).then(|| {
                    let bar = indicatif::ProgressBar::new(u64::from(d.total.max(1)));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {pos}/{len} {msg}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(format!("{app} v{}", d.to_version));
                    bar
                });
                // Without a terminal for the bar, a line each time the progress changes, as
                // `kubectl rollout status` prints: a log or a CI job shows where it stands.
                let lines = bar.is_none() && !ctx.structured();
                let mut said = None;
                // Bounded: the coordinator fails a stuck rollout at its progress deadline.
                while output::deployment_active(&d) {
                    if let Some(bar) = &bar {
                        bar.set_length(u64::from(d.total.max(1)));
                        bar.set_position(u64::from(d.done));
                        bar.set_message(d.state.clone());
                    }
                    // By its step, not its message, which may count seconds.
                    let step = (d.state.clone(), d.done, d.total);
                    if lines && said.as_ref() != Some(&step) {
                        ctx.line(&output::deployment_line(&d))?;
                        said = Some(step);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let req = pb::RolloutRequest { app: app.clone() };
                    let status = poll!(conn, look(), get_rollout, req).await?;
                    let Some(next) = status.current else { break };
                    // A rollback replaces the failed rollout: report the failure.
                    if next.id != d.id {
                        if let Some(bar) = &bar {
                            bar.finish_and_clear();
                        }
                        let failed = status
                            .history
                            .iter()
                            .find(|h| h.id == d.id)
                            .cloned()
                            .unwrap_or(d.clone());
                        ctx.line(&output::deployment_line(&failed))?;
                        ctx.line(&output::deployment_line(&next))?;
                        anyhow::bail!(
                            "the rollout of version {} failed: {}",
                            failed.to_version,
                            failed.message
                        );
                    }
                    d = next;
                }
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
            }
            if ctx.structured() {
                ctx.value(&output::deployment_json(&d))?;
            } else {
                ctx.line(&output::deployment_line(&d))?;
            }
            if matches!(d.state.as_str(), "failed" | "rolled back") {
                let next = if d.state == "failed" {
                    crate::wait::left_standing(&d)
                } else {
                    String::new()
                };
                anyhow::bail!(
                    "the rollout of version {} {}: {}{next}",
                    d.to_version,
                    d.state,
                    d.message
                );
            }
            Ok(())
        }
        RolloutCommand::Pause { app } => control(&mut conn, ctx, &app, "pause").await,
        RolloutCommand::Resume { app } => control(&mut conn, ctx, &app, "resume").await,
        RolloutCommand::Promote { app } => control(&mut conn, ctx, &app, "promote").await,
        RolloutCommand::History { app } => {
            let status = call!(conn, get_rollout, pb::RolloutRequest { app: app.clone() }).await?;
            let mut all = status.history.clone();
            all.extend(status.current.clone());
            if ctx.structured() {
                return ctx.value(&Value::Array(
                    all.iter().map(output::deployment_json).collect(),
                ));
            }
            if all.is_empty() {
                return ctx.line(&format!(
                    "{app}: no rollouts yet (version {})",
                    status.version
                ));
            }
            ctx.text(&output::deployments_table(&all))?;
            let versions: Vec<String> = status.versions.iter().map(|v| v.to_string()).collect();
            ctx.line(&format!(
                "current version {}; versions kept for undo: {}",
                status.version,
                versions.join(", ")
            ))
        }
        RolloutCommand::Undo { app, to_version } => {
            // Only to say which spec the undo restores and how that version fared: the undo
            // goes ahead without it.
            let before = call!(conn, get_rollout, pb::RolloutRequest { app: app.clone() })
                .await
                .ok();
            let d = call!(
                conn,
                undo_rollout,
                pb::UndoRolloutRequest {
                    app: app.clone(),
                    to_version,
                }
            )
            .await?;
            if ctx.structured() {
                return ctx.value(&output::deployment_json(&d));
            }
            ctx.line(&undo_line(&app, to_version, before.as_ref(), &d))
        }
    }
}

/// The warning a reload gets while a failed rollout stands: its changes go on top of the
/// failed version's spec, whose own changes the instances never ran.
fn held_note(app: &str, s: &pb::RolloutStatus) -> Option<String> {
    let from = held_from(s).filter(|from| *from != s.version)?;
    Some(format!(
        "note: the rollout of version {to} failed, and the instances it did not replace run \
         version {from}: these changes go on top of version {to}'s spec, with what it changed; \
         to start from version {from}'s instead: pmcluster rollout undo {app}, then reload",
        to = s.version,
    ))
}

/// The version a failed rollout to the app's version started from, which the instances it did
/// not replace still run: as the coordinator's `AppRecord::held_by_failure` reads the status.
/// A failed rolling restart holds nothing: its instances all run the app's version.
fn held_from(s: &pb::RolloutStatus) -> Option<u64> {
    s.current
        .as_ref()
        .filter(|c| c.state == "failed" && c.to_version == s.version && c.kind != "restart")
        .map(|c| c.from_version)
}

/// What `rollout undo` started: the version whose spec comes back and, when that version's own
/// rollout failed or was rolled back, a warning. Right after an automatic rollback the version
/// before the current one is the bad one, and an undo silently re-deployed it.
fn undo_line(
    app: &str,
    to_version: Option<u64>,
    before: Option<&pb::RolloutStatus>,
    d: &pb::Deployment,
) -> String {
    // The coordinator goes back to what still serves after a failed rollout left standing
    // (the version that rollout started from), else to the newest kept version below the
    // current one; judged from the status read just before, and only if no other change came
    // in between (the undo then starts from that same version).
    let held = before.and_then(|s| held_from(s).filter(|v| s.versions.contains(v)));
    let before = before.filter(|s| held.unwrap_or(s.version) == d.from_version);
    let source = to_version.or_else(|| {
        before.and_then(|s| {
            held.or_else(|| s.versions.iter().copied().filter(|v| *v < s.version).max())
        })
    });
    let Some(source) = source else {
        return format!(
            "{app}: rolling back to the previous spec as version {}; follow it with: pmcluster \
             rollout status {app} --wait",
            d.to_version
        );
    };
    // The rollout that made `source` (a rolling restart also ends on it, but does not make it).
    let fate = before
        .and_then(|s| {
            s.history
                .iter()
                .chain(s.current.as_ref())
                .filter(|h| h.to_version == source && h.from_version != source)
                .max_by_key(|h| h.id)
        })
        .and_then(|h| {
            let what = match h.state.as_str() {
                "failed" => "failed",
                "rolled back" => "was rolled back",
                _ => return None,
            };
            Some(if h.message.is_empty() {
                format!(" (version {source}'s rollout {what})")
            } else {
                format!(" (version {source}'s rollout {what}: {})", h.message)
            })
        })
        .unwrap_or_default();
    format!(
        "{app}: rolling back to the spec of version {source} as version {}{fate}; follow it \
         with: pmcluster rollout status {app} --wait",
        d.to_version
    )
}

async fn control(
    conn: &mut Conn,
    ctx: &mut Ctx<'_>,
    app: &str,
    action: &str,
) -> anyhow::Result<()> {
    let req = pb::ControlRolloutRequest {
        app: app.to_string(),
        action: action.to_string(),
    };
    let d = call!(conn, control_rollout, req).await?;
    if ctx.structured() {
        return ctx.value(&output::deployment_json(&d));
    }
    ctx.line(&output::deployment_line(&d))
}

#[cfg(test)]
mod tests;
