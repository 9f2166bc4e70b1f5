//! One function per verb that talks to the coordinator: check the input, connect, call, render.
//!
//! Input is validated before connecting, so bad input gets its own message (exit 2) whether or
//! not a coordinator is running. Rendering is delegated to `output`; this module only chooses what
//! to render and writes it to `out`, propagating write errors so a closed pipe ends the command.

use std::io::Write;

use anyhow::Context;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use serde_json::{Value, json};

use crate::args::{
    AutoscaleArgs, DeleteArgs, ListArgs, OutputFormat, ScaleArgs, StartArgs, StopArgs, TargetArgs,
    WaitFlags,
};
use crate::error::{ApiError, UsageError};
use crate::failover::{Conn, call, poll};
use crate::output;
use crate::validate::{ScaleTo, StartPlan, parse_scale, plan_start};
use crate::wait;

pub mod all;
mod apply;
mod overwrite;
mod start;
mod stream;
pub use apply::{apply, export};
pub(crate) use apply::{beside_file, config_dir};
use overwrite::refuse_to_overwrite;
#[cfg(test)]
use overwrite::{differing_fields, overwrite_refusal, same_but_adjusted};
use start::{already_running, start_existing};
pub use stream::{events, logs};

/// Where a verb writes and how.
pub struct Ctx<'a> {
    /// Coordinator URLs (`--coordinator`, a list for an HA pair), already normalised.
    pub urls: Vec<String>,
    /// Mutual TLS for `https://` URLs (`--ca`, `--cert`, `--key`).
    /// Mutual TLS and token.
    pub creds: crate::client::Credentials,
    pub output: OutputFormat,
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// The first coordinator of the list that answers; calls through it follow a standby's
    /// leader hint (see [`crate::failover`]).
    pub(crate) async fn connect(&self) -> Result<Conn, ApiError> {
        Conn::open(self.urls.clone(), self.creds.clone()).await
    }

    /// Whether the output is for scripts (`-o json` or `-o yaml`) rather than people.
    pub(crate) fn structured(&self) -> bool {
        matches!(self.output, OutputFormat::Json | OutputFormat::Yaml)
    }

    pub(crate) fn line(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.out, "{text}").context("writing to stdout")
    }

    pub(crate) fn text(&mut self, text: &str) -> anyhow::Result<()> {
        self.out
            .write_all(text.as_bytes())
            .context("writing to stdout")
    }

    /// Pretty JSON, or YAML, for one-shot answers.
    pub(crate) fn value(&mut self, value: &Value) -> anyhow::Result<()> {
        let text = output::document(value, self.output)?;
        self.text(&text)
    }

    /// One item of a stream (logs, events): a compact JSON object per line, or a YAML document
    /// per item.
    pub(crate) fn stream_item(&mut self, value: &Value) -> anyhow::Result<()> {
        let text = output::stream_item(value, self.output)?;
        self.text(&text)
    }
}

pub(crate) fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// "4 instances of web" or "web[2]".
fn describe_target(app: &str, index: Option<u32>, affected: u32) -> String {
    match index {
        Some(i) => format!("{app}[{i}]"),
        None => format!("{} of {app}", plural(affected, "instance")),
    }
}

/// What an action did, counting only the instances it changed (`ActionReply.changed`; an older
/// coordinator says only `affected`): "stopped 2 instances of web", "stopped 1 instance of web
/// (2 were already stopped)", "web[1] was already stopped; nothing changed". `already` is the
/// state of those it left as they were.
pub(crate) fn acted(
    verb: &str,
    already: &str,
    app: &str,
    index: Option<u32>,
    reply: &pb::ActionReply,
) -> String {
    let changed = reply.changed.unwrap_or(reply.affected);
    let rest = reply.affected.saturating_sub(changed);
    let was = |n: u32| if n == 1 { "was" } else { "were" };
    match index {
        _ if rest == 0 => format!("{verb} {}", describe_target(app, index, changed)),
        Some(i) if changed == 0 => format!("{app}[{i}] was {already}; nothing changed"),
        // Some of the index's records (a drain handoff's two copies, say).
        Some(_) => format!("{verb} {}", describe_target(app, index, changed)),
        None if changed == 0 => format!(
            "{} of {app} {} {already}; nothing changed",
            plural(rest, "instance"),
            was(rest)
        ),
        None => format!(
            "{verb} {} ({rest} {} {already})",
            describe_target(app, None, changed),
            was(rest)
        ),
    }
}

fn instance_count(app: &pb::App) -> u32 {
    app.spec.as_ref().map(|s| s.instances).unwrap_or_default()
}

/// "4 instances", or "max instances (4 now)" for `instances: "max"`.
fn count_phrase(app: &pb::App) -> String {
    let n = instance_count(app);
    if app.spec.as_ref().is_some_and(|s| s.instances_max) {
        format!("max instances ({n} now)")
    } else {
        plural(n, "instance")
    }
}

/// The word `apply` uses for an ApplyApp answer.
fn apply_result(reply: &pb::ApplyAppReply) -> &'static str {
    if reply.created {
        "created"
    } else if reply.changed {
        "configured"
    } else {
        "unchanged"
    }
}

fn apply_json(name: &str, reply: &pb::ApplyAppReply) -> Value {
    let app = reply.app.clone().unwrap_or_default();
    json!({
        "app": name,
        "result": apply_result(reply),
        "version": app.version,
        "instances": instance_count(&app),
        "rollout": reply.deployment.as_ref().map(output::deployment_json),
    })
}

async fn apply_one(conn: &mut Conn, spec: &AppSpec) -> anyhow::Result<pb::ApplyAppReply> {
    let req = pb::ApplyAppRequest {
        spec: Some(pb::AppSpec::from(spec)),
        keep_instances: false,
    };
    Ok(call!(conn, apply_app, req).await?)
}

/// `start "command line" --name web ...` or `start web [--instance N]`.
pub async fn start(args: StartArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let plan = plan_start(&args)?;
    if let StartPlan::Apply { .. } = plan {
        start::refuse_config_file(&args)?;
    }
    let mut conn = ctx.connect().await?;
    let plan = start::file_here(&args, plan, &mut conn).await?;
    let (said, goal) = start_only(&args, plan, &mut conn).await?;
    wait::finish(&mut conn, ctx, &args.wait, said, goal).await
}

/// `start APP` of an app that exists, as `start all` runs it for each.
async fn start_app(app: &str, wait: &WaitFlags, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let said = start_existing(&mut conn, app, None).await?;
    let goal = match wait.wait {
        true => wait::goal(&mut conn, app, None).await.map(Some),
        false => Ok(None),
    };
    wait::finish(&mut conn, ctx, wait, said, goal).await
}

/// `start` but for `--wait`: what it did, and what `--wait` waits for when given.
async fn start_only(
    args: &StartArgs,
    plan: StartPlan,
    conn: &mut Conn,
) -> anyhow::Result<(wait::Said, Result<Option<wait::Goal>, ApiError>)> {
    match plan {
        StartPlan::Existing { app, index } => {
            let said = start_existing(conn, &app, index).await?;
            let goal = match args.wait.wait {
                true => wait::goal(conn, &app, index).await.map(Some),
                false => Ok(None),
            };
            Ok((said, goal))
        }
        StartPlan::Apply { spec, derived_name } => {
            // A script here by its interpreter, and (with the coordinator on this machine) in
            // this directory, as PM2 runs it: for a new app. An app that exists is taken as it
            // was made, whichever of the ways to read this command line that was.
            // Fetched once: it picks the reading of the command line, then decides whether
            // `start` may run it.
            let stored = overwrite::stored(conn, &spec.name).await?;
            let (here, notes) = start::for_here((*spec).clone(), conn.on_this_host());
            let (spec, interpreted) = match &stored {
                _ if here == *spec => (*spec, notes),
                None => (here, notes),
                Some(stored) => {
                    let interpreted = start::with_interpreter((*spec).clone()).0;
                    let before = start::as_before_paths((*spec).clone(), conn.on_this_host());
                    let ways = vec![here, before, interpreted, (*spec).clone()];
                    (
                        overwrite::closest(stored, ways).unwrap_or(*spec),
                        Vec::new(),
                    )
                }
            };
            // `start` creates an app, or starts one as it is: it never changes an app that
            // exists, which would reset every flag left out of this command line.
            let kept = refuse_to_overwrite(stored.as_ref(), &spec, derived_name)?;
            let kept_note = match &kept {
                Some(stored) => overwrite::kept_note(stored, &spec, args.instances.is_some()),
                None => String::new(),
            };
            let spec = kept.clone().unwrap_or(spec);
            if kept.is_none() {
                // As `apply -f` warns: a trial's `start ... --env PORT=33110 --instances 2`
                // crash-looped on "address in use" with no word before.
                for warning in crate::import::apply_warnings(std::slice::from_ref(&spec)) {
                    eprintln!("warning: {warning}");
                }
            }
            let reply = apply_one(conn, &spec).await?;
            let app = reply.app.clone().unwrap_or_default();
            let unchanged = !reply.created && !reply.changed;
            let running = match unchanged {
                true => already_running(conn, &spec.name, None).await?,
                false => None,
            };
            if unchanged && running.is_none() {
                // PM2's `start` on an app that exists starts it; an unchanged spec alone would
                // leave instances a user stopped down.
                let target = pb::InstanceTarget {
                    app: spec.name.clone(),
                    index: None,
                    rolling: false,
                };
                call!(conn, start, target).await?;
            }
            let line = match (unchanged, running, &kept) {
                (true, Some(running), kept) => format!(
                    "{} is already running ({}, version {}); nothing changed{}{}",
                    spec.name,
                    count_phrase(&app),
                    app.version,
                    running.errored_note(&spec.name),
                    match kept {
                        Some(_) => format!(": it keeps its count and policies ({kept_note})"),
                        None => String::new(),
                    },
                ),
                _ => {
                    let verb = if reply.created || unchanged {
                        "started"
                    } else {
                        "updated"
                    };
                    let note = match (unchanged, &kept) {
                        (true, Some(_)) => {
                            format!(", its count and policies as they are: {kept_note}")
                        }
                        (true, None) => ", spec unchanged".to_string(),
                        (false, _) => String::new(),
                    };
                    // Placed or not is known by now: an app no node can take must not read as
                    // started (a trial's `--memory 100G` did).
                    let pending = match app.pending {
                        0 => String::new(),
                        n => format!("; {n} pending: `pmcluster list {}` says why", spec.name),
                    };
                    format!(
                        "{verb} app {}: {} (version {}{note}){pending}",
                        spec.name,
                        count_phrase(&app),
                        app.version,
                    )
                }
            };
            let mut value = apply_json(&spec.name, &reply);
            if let Some(object) = value.as_object_mut() {
                object.insert("already_running".to_string(), json!(running.is_some()));
            }
            let said = wait::Said {
                value,
                lines: interpreted.into_iter().chain([line]).collect(),
            };
            // A rollout the change started replaces every instance: they are up at its
            // version, once it succeeded.
            let goal = wait::Goal {
                version: reply.deployment.as_ref().map_or(0, |d| d.to_version),
                rollout: reply.deployment.as_ref().map(|d| d.id),
                created: reply.created,
                ..wait::goal_of(&spec.name, &app, None)
            };
            Ok((said, Ok(args.wait.wait.then_some(goal))))
        }
    }
}

/// `scale APP max`, which PM2 users type: "max" is a spec's count (one per core, counted by the
/// coordinator as nodes come and go), not a number `scale` could set, so the spec changes.
pub(crate) fn scale_max(app: &str) -> String {
    let app = shell_words::quote(app);
    format!(
        "scale {app} max: `scale` sets a number of instances; for one per CPU core of the \
         eligible nodes (PM2's -i max), change the app's spec in a rolling update: pmcluster \
         reload {app} --set instances=max (its port must then be a range or auto:A-B)"
    )
}

/// `scale APP N`.
pub async fn scale(args: ScaleArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if args.instances.trim() == "max" {
        return Err(UsageError::new(scale_max(&args.app)).into());
    }
    let (instances, relative) = match parse_scale(&args.instances).map_err(UsageError::new)? {
        ScaleTo::To(n) => (i64::from(n), false),
        ScaleTo::By(change) => (change, true),
    };
    let mut conn = ctx.connect().await?;
    let req = pb::ScaleRequest {
        app: args.app.clone(),
        instances,
        relative,
    };
    let reply = call!(conn, scale, req).await?;
    let said = wait::Said {
        value: json!({
            "app": args.app, "previous": reply.previous, "instances": reply.instances,
        }),
        lines: vec![match reply.previous == reply.instances {
            // (An app at "max" scaled to its count now is fixed at it: a change all the same.)
            true => format!(
                "{}: {}, as before",
                args.app,
                plural(reply.instances, "instance")
            ),
            false => format!(
                "scaled {}: {} -> {}",
                args.app, reply.previous, reply.instances
            ),
        }],
    };
    let goal = match args.wait.wait {
        true => wait::goal(&mut conn, &args.app, None).await.map(|goal| {
            Some(wait::Goal {
                count: Some(reply.instances),
                ..goal
            })
        }),
        false => Ok(None),
    };
    wait::finish(&mut conn, ctx, &args.wait, said, goal).await
}

pub(crate) async fn list_instances(
    conn: &mut Conn,
    app: &str,
) -> Result<Vec<pb::Instance>, ApiError> {
    list_instances_until(conn, app, None).await
}

/// [`list_instances`] for a wait's look: with `until`, each page is asked again through a
/// failover until then (see [`Conn::poll`]).
pub(crate) async fn list_instances_until(
    conn: &mut Conn,
    app: &str,
    until: Option<tokio::time::Instant>,
) -> Result<Vec<pb::Instance>, ApiError> {
    let mut instances = Vec::new();
    let mut page_token = String::new();
    // Bounded: 1000 pages of 5000 is far beyond any cluster; a token that does not move would
    // otherwise loop forever.
    for _ in 0..MAX_PAGES {
        let req = pb::ListInstancesRequest {
            app: app.to_string(),
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
        };
        let reply = match until {
            Some(until) => poll!(conn, until, list_instances, req).await?,
            None => call!(conn, list_instances, req).await?,
        };
        instances.extend(reply.instances);
        if reply.next_page_token.is_empty() || reply.next_page_token == page_token {
            return Ok(instances);
        }
        page_token = reply.next_page_token;
    }
    Err(too_many_pages())
}

/// Instances (or apps) asked for per page: the most the coordinator gives.
const PAGE_SIZE: u32 = 5000;
/// Pages followed at most by one listing.
const MAX_PAGES: usize = 1000;

fn too_many_pages() -> ApiError {
    ApiError {
        code: tonic::Code::OutOfRange,
        message: format!("the listing did not end after {MAX_PAGES} pages; list one app at a time"),
    }
}

async fn list_apps(conn: &mut Conn) -> Result<Vec<pb::App>, ApiError> {
    let mut apps = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let req = pb::ListAppsRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
        };
        let reply = call!(conn, list_apps, req).await?;
        apps.extend(reply.apps);
        if reply.next_page_token.is_empty() || reply.next_page_token == page_token {
            return Ok(apps);
        }
        page_token = reply.next_page_token;
    }
    Err(too_many_pages())
}

/// `list [APP]`.
pub async fn list(args: ListArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let app = args.app.unwrap_or_default();
    let instances = list_instances(&mut conn, &app).await?;
    let now = output::now_ms();
    if ctx.structured() {
        return ctx.value(&output::instances_json(&instances, now));
    }
    if instances.is_empty() {
        return if app.is_empty() {
            ctx.line(output::NO_INSTANCES)
        } else {
            ctx.line(&format!(
                "app {app} has no instances; scale it up with: pmcluster scale {app} 2"
            ))
        };
    }
    ctx.text(&output::instances_table(&instances, now))
}

/// `info APP`.
pub async fn info(args: TargetArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let req = pb::GetAppRequest {
        name: args.app.clone(),
    };
    let app = call!(conn, get_app, req).await?;
    let mut instances = list_instances(&mut conn, &args.app).await?;
    if let Some(index) = args.instance {
        instances.retain(|i| i.index == index);
        let count = app.spec.as_ref().map_or(0, |s| s.instances);
        if instances.is_empty() && index >= count {
            // The coordinator's words for the same mistake in `stop` or `restart`.
            let message = match count {
                0 => format!("app {:?} has no instance {index}: it has none", args.app),
                n => format!(
                    "app {:?} has no instance {index}: it has {n} (indices 0-{})",
                    args.app,
                    n - 1
                ),
            };
            return Err(crate::error::ApiError {
                code: tonic::Code::NotFound,
                message,
            }
            .into());
        }
    }
    let now = output::now_ms();
    if ctx.structured() {
        return ctx.value(&output::app_info_json(&app, &instances, now));
    }
    ctx.text(&output::app_info_text(&app, &instances, now))
}

#[derive(Clone, Copy)]
enum Action {
    Stop,
    Restart,
}

/// `stop APP [--instance N] [--wait]`.
pub async fn stop(args: StopArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let said = action(Action::Stop, &args.target, &mut conn).await?;
    if !args.wait {
        return wait::say(ctx, said);
    }
    let target = &args.target;
    wait::finish_stop(
        &mut conn,
        ctx,
        said,
        &target.app,
        target.instance,
        args.wait_timeout,
    )
    .await
}

/// `restart APP [--instance N] [--wait]`.
pub async fn restart(args: TargetArgs, wait: &WaitFlags, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    // What is there now is what the restart replaces: it does not count as up.
    let before = match wait.wait {
        true => Some(wait::snapshot(&mut conn, &args.app, args.instance).await?),
        false => None,
    };
    let said = action(Action::Restart, &args, &mut conn).await?;
    let goal = match before {
        Some(replaced) => wait::goal(&mut conn, &args.app, args.instance)
            .await
            .map(|goal| Some(wait::Goal { replaced, ..goal })),
        None => Ok(None),
    };
    wait::finish(&mut conn, ctx, wait, said, goal).await
}

/// A line per quarantined node an action reached: the count is of records changed, and on such a
/// node nothing happens until it is adopted, which a user reading only the count would miss.
fn waits_for_adoption(nodes: &[String], does: &str) -> Vec<String> {
    nodes
        .iter()
        .map(|node| {
            format!(
                "node {node} is quarantined: its instances {does} once it is adopted \
                 (`pmcluster nodes adopt {node}`; `pmcluster nodes` says why)"
            )
        })
        .collect()
}

async fn action(action: Action, args: &TargetArgs, conn: &mut Conn) -> anyhow::Result<wait::Said> {
    let target = pb::InstanceTarget {
        app: args.app.clone(),
        index: args.instance,
        rolling: false,
    };
    let (reply, verb, does) = match action {
        Action::Stop => (call!(conn, stop, target).await?, "stopped", "stop"),
        Action::Restart => (call!(conn, restart, target).await?, "restarted", "restart"),
    };
    let mut lines = vec![acted(
        verb,
        "already stopped",
        &args.app,
        args.instance,
        &reply,
    )];
    lines.extend(waits_for_adoption(&reply.quarantined_nodes, does));
    Ok(wait::Said {
        value: json!({
            "app": args.app, "action": verb, "index": args.instance, "affected": reply.affected,
            "changed": reply.changed, "quarantined_nodes": reply.quarantined_nodes,
        }),
        lines,
    })
}

/// `delete APP`.
pub async fn delete(args: DeleteArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    // What --wait waits for: the instances there before, not any made later under the name,
    // nor those a quarantined node holds (nothing here stops them).
    let mut before = match args.wait {
        true => list_instances(&mut conn, &args.app).await?,
        false => Vec::new(),
    };
    before.retain(|i| !i.unmanaged);
    let running = before.iter().filter(|i| i.pid != 0).count();
    let before: std::collections::HashSet<String> = before.into_iter().map(|i| i.id).collect();
    let req = pb::DeleteAppRequest {
        name: args.app.clone(),
    };
    let reply = call!(conn, delete_app, req).await?;
    let mut value = json!({"app": args.app, "action": "deleted", "removed": reply.removed});
    if !ctx.structured() {
        ctx.line(&format!(
            "deleted {}: {} removed",
            args.app,
            plural(reply.removed, "instance")
        ))?;
    }
    if !args.wait {
        return match ctx.structured() {
            true => ctx.value(&value),
            false => Ok(()),
        };
    }
    let started = tokio::time::Instant::now();
    let ended = wait::until_gone(&mut conn, &args.app, &before, args.wait_timeout).await;
    let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    if ctx.structured() {
        value["wait"] = match &ended {
            Ok(()) => json!({"ended": running, "seconds": seconds}),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        ctx.value(&value)?;
    } else if ended.is_ok() {
        ctx.line(&format!(
            "{}: every process ended after {seconds:.2}s",
            args.app
        ))?;
    }
    ended
}

/// `apps`.
pub async fn apps(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let apps = list_apps(&mut conn).await?;
    if ctx.structured() {
        return ctx.value(&output::apps_json(&apps));
    }
    if apps.is_empty() {
        return ctx.line(output::NO_APPS);
    }
    ctx.text(&output::apps_table(&apps))
}

/// `autoscale APP [options]`: changes the policy when options are given, then shows it.
pub async fn autoscale(args: AutoscaleArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let app = args.app.clone();
    let changing = args.off || crate::validate::autoscale_changes(&args);
    // With --off, the policy switched off: the line to turn it back on restates it.
    let mut switched_off = None;
    let status = if changing {
        let current = call!(
            conn,
            get_autoscale,
            pb::GetAutoscaleRequest { app: app.clone() }
        )
        .await?;
        let policy = crate::validate::autoscale_policy(&args, current.policy.as_ref())
            .map_err(anyhow::Error::from)?;
        if args.off {
            switched_off = current.policy.filter(|p| p.enabled);
        }
        call!(
            conn,
            set_autoscale,
            pb::SetAutoscaleRequest {
                app,
                policy: Some(policy),
            }
        )
        .await?
    } else {
        call!(conn, get_autoscale, pb::GetAutoscaleRequest { app }).await?
    };
    if let Some(p) = &switched_off
        && !ctx.structured()
    {
        let off = format!(
            "{}: autoscaling is off ({} instances)\n",
            status.app, status.instances
        );
        return ctx.text(&(off + &output::turn_back_on(&status.app, p)));
    }
    if ctx.structured() {
        return ctx.value(&output::autoscale_json(&status));
    }
    // For the hint to turn it on, which must fit the app's ports; the status goes without it.
    let port = match status.policy.as_ref().is_some_and(|p| p.enabled) {
        true => None,
        false => {
            let req = pb::GetAppRequest {
                name: status.app.clone(),
            };
            call!(conn, get_app, req).await.ok().and_then(|a| a.spec)
        }
    };
    let port = port.as_ref().map(|s| s.port.as_str());
    ctx.text(&output::autoscale_text(&status, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmcluster_spec::PortSpec;

    #[test]
    fn phrases() {
        let cases = [
            (("web", None, 4), "4 instances of web"),
            (("web", None, 1), "1 instance of web"),
            (("web", None, 0), "0 instances of web"),
            (("web", Some(2), 1), "web[2]"),
        ];
        for ((app, index, affected), want) in cases {
            assert_eq!(describe_target(app, index, affected), want);
        }
        // Only the instances an action changed are said to be changed.
        let reply = |affected, changed| pb::ActionReply {
            affected,
            changed,
            ..Default::default()
        };
        let cases = [
            ((None, 3, Some(3)), "stopped 3 instances of web"),
            ((None, 3, None), "stopped 3 instances of web"),
            (
                (None, 3, Some(1)),
                "stopped 1 instance of web (2 were already stopped)",
            ),
            (
                (None, 2, Some(1)),
                "stopped 1 instance of web (1 was already stopped)",
            ),
            (
                (None, 3, Some(0)),
                "3 instances of web were already stopped; nothing changed",
            ),
            ((Some(1), 1, Some(1)), "stopped web[1]"),
            (
                (Some(1), 1, Some(0)),
                "web[1] was already stopped; nothing changed",
            ),
            // Index 1's two records in a drain handoff, one of them changed.
            ((Some(1), 2, Some(1)), "stopped web[1]"),
        ];
        for ((index, affected, changed), want) in cases {
            let got = acted(
                "stopped",
                "already stopped",
                "web",
                index,
                &reply(affected, changed),
            );
            assert_eq!(got, want);
        }
        let reply = |created, changed| pb::ApplyAppReply {
            app: None,
            created,
            changed,
            deployment: None,
        };
        assert_eq!(apply_result(&reply(true, true)), "created");
        assert_eq!(apply_result(&reply(false, true)), "configured");
        assert_eq!(apply_result(&reply(false, false)), "unchanged");
    }

    #[test]
    fn a_start_over_another_spec_names_what_differs_and_what_to_use() {
        let web = AppSpec {
            instances: 3,
            port: PortSpec::parse("33100-33102").expect("a port range"),
            ..AppSpec::new("web", "pmcluster-testapp", &[])
        };
        let sleep = AppSpec::new("web", "sleep", &["100"]);
        assert_eq!(
            differing_fields(&web, &sleep),
            ["args", "instances", "port", "script"]
        );
        assert!(differing_fields(&web, &web.clone()).is_empty());
        // What `scale`, `restart --rolling --max-surge` and `autoscale` change since is kept;
        // anything else is another spec.
        let mut scaled = web.clone();
        scaled.instances = 5;
        scaled.update.max_surge = 2;
        assert!(same_but_adjusted(&scaled, &web));
        scaled.args.push("--verbose".into());
        assert!(!same_but_adjusted(&scaled, &web));
        assert!(!same_but_adjusted(&sleep, &web));

        let named = overwrite_refusal("web", false, &differing_fields(&web, &sleep));
        for want in [
            "--name web: an app of that name already exists with another spec (it differs in \
             args, instances, port, script)",
            "`pmcluster reload web --set KEY=VALUE`",
            "`pmcluster apply -f FILE`",
            "`pmcluster start web`",
            "`pmcluster delete web` first",
        ] {
            assert!(named.contains(want), "{want:?} in {named}");
        }
        // What `start` makes of the stored spec it fetched.
        let kept = |stored: Option<&AppSpec>, wanted: &AppSpec| {
            refuse_to_overwrite(stored, wanted, false).map_err(|e| {
                assert_eq!(crate::error::exit_code(&e), 2, "{e}");
                e.to_string()
            })
        };
        assert_eq!(kept(None, &web).ok(), Some(None));
        assert_eq!(kept(Some(&web), &web).ok(), Some(None));
        let scaled = AppSpec {
            instances: 5,
            ..web.clone()
        };
        assert_eq!(kept(Some(&scaled), &web).ok(), Some(Some(scaled.clone())));
        let refused = kept(Some(&web), &sleep).err().unwrap_or_default();
        assert!(
            refused.contains("differs in args, instances, port, script"),
            "{refused}"
        );
        let derived = overwrite_refusal("sleep", true, &[]);
        assert!(
            derived.starts_with(
                "an app named \"sleep\" already exists with another spec; give this one its own \
                 name with --name"
            ),
            "{derived}"
        );
    }
}
