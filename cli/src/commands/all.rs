//! `start all`, `stop all`, `restart all`, `delete all`: PM2's `all`, the verb once per app, in
//! name order. An app named `all` is that app: `all` means every app only where none has the name.

use pmcluster_proto::v1 as pb;

use super::{Ctx, list_apps};
use crate::args::{DeleteArgs, StopArgs, TargetArgs, WaitFlags};
use crate::error::UsageError;

/// The verb `all` stands for, with its flags.
#[derive(Debug, Clone, Copy)]
pub enum Verb<'a> {
    Start(&'a WaitFlags),
    Stop(&'a StopArgs),
    Restart(&'a WaitFlags),
    Delete(&'a DeleteArgs),
}

impl Verb<'_> {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Start(_) => "start",
            Verb::Stop(_) => "stop",
            Verb::Restart(_) => "restart",
            Verb::Delete(_) => "delete",
        }
    }
}

/// The verb for each of `names`, going on past a failure (as `pm2 restart all` does) and failing
/// at the end, naming the apps that failed.
pub async fn each(names: Vec<String>, verb: Verb<'_>, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if names.is_empty() {
        return ctx.line(crate::output::NO_APPS);
    }
    let mut failures = Vec::new();
    for app in names {
        let target = || TargetArgs {
            app: app.clone(),
            instance: None,
        };
        let done = match verb {
            Verb::Start(wait) => super::start_app(&app, wait, ctx).await,
            Verb::Stop(s) => {
                let args = StopArgs {
                    target: target(),
                    wait: s.wait,
                    wait_timeout: s.wait_timeout,
                };
                super::stop(args, ctx).await
            }
            Verb::Restart(wait) => super::restart(target(), wait, ctx).await,
            Verb::Delete(d) => {
                let args = DeleteArgs {
                    app: app.clone(),
                    wait: d.wait,
                    wait_timeout: d.wait_timeout,
                };
                super::delete(args, ctx).await
            }
        };
        if let Err(e) = done {
            failures.push((app, e));
        }
    }
    failed(verb, &failures)
}

/// Every app's name if `app` is `all` and no app has that name; `None` otherwise (the verb then
/// runs for `app` itself). One document per app would not be one JSON value, so scripts list the
/// apps themselves.
pub async fn expand(
    app: &str,
    verb: Verb<'_>,
    ctx: &mut Ctx<'_>,
) -> anyhow::Result<Option<Vec<String>>> {
    if app != "all" {
        return Ok(None);
    }
    let mut conn = ctx.connect().await?;
    let names: Vec<String> = list_apps(&mut conn)
        .await?
        .into_iter()
        .filter_map(|a: pb::App| a.spec.map(|s| s.name))
        .collect();
    if names.iter().any(|n| n == "all") {
        return Ok(None);
    }
    if ctx.structured() {
        return Err(UsageError::new(format!(
            "{} all: -o json/yaml takes one app; list them with `pmcluster apps -o json` and run \
             the verb for each",
            verb.as_str()
        ))
        .into());
    }
    Ok(Some(names))
}

fn failed(verb: Verb<'_>, failures: &[(String, anyhow::Error)]) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let which: Vec<String> = failures
        .iter()
        .map(|(app, e)| format!("{app}: {e:#}"))
        .collect();
    Err(anyhow::anyhow!(
        "{} all: {} of the apps failed: {}",
        verb.as_str(),
        failures.len(),
        which.join("; ")
    ))
}
