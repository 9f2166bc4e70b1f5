//! The `pmcluster` command-line client: parses verbs, talks to the coordinator over the
//! `pmcluster.v1.Cluster` gRPC API, and renders answers as tables or JSON. `up`/`down` run a
//! local single-machine cluster as background daemons.
//!
//! It owns no cluster state: every verb except `up`/`down`, `certs`, `import`, `completions` and `man`
//! (files or text on this machine) is one or a few coordinator calls.
//! `main.rs` only parses, calls [`run`] and maps the error to an exit code with
//! [`error::exit_code`].

pub mod args;
pub mod certs;
pub mod client;
pub mod commands;
pub mod endpoints;
pub mod error;
pub mod failover;
pub mod import;
pub mod local;
pub mod monit;
pub mod nodes;
pub mod output;
pub mod pm2;
pub mod rollout;
pub mod shell;
pub mod status;
pub mod stdout;
pub mod tls;
pub mod token;
pub mod validate;
pub mod verbs;
pub mod wait;

use std::io::Write;

use args::{Cli, Command, NodesAction};
use commands::Ctx;

/// Runs one parsed command line, writing human output to `out`.
pub async fn run(cli: Cli, env: &local::Environment, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut out = stdout::Stdout::new(out, unread(&cli.command));
    let out: &mut dyn Write = &mut out;
    let command = match cli.command {
        Command::Up(a) => return local::up(a, env, cli.output, out).await,
        Command::Down(a) => return local::down(a, env, out),
        Command::Certs(a) => return certs::run(a, cli.output, out),
        Command::Completions(a) => return shell::completions(a, out),
        Command::Man(a) => return shell::man(a, out),
        Command::Import(source) => return import::run(source, cli.output, out),
        other => other,
    };
    // Neither --coordinator nor PMCLUSTER_COORDINATOR: the coordinator `pmcluster up` started
    // from this user's data dir, wherever it listens, as PM2 talks to its local daemon; the
    // default address only for a data dir `up` never used.
    let coordinator = match cli.coordinator_defaulted {
        true => local::local_coordinator_url(env)?.unwrap_or(cli.coordinator),
        false => cli.coordinator,
    };
    let urls = failover::parse_urls(&coordinator)?;
    let tls = tls::load(
        &urls,
        cli.ca.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
    )?;
    let token = cli
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(client::Token::parse)
        .transpose()?;
    let mut ctx = Ctx {
        urls,
        creds: client::Credentials { tls, token },
        output: cli.output,
        out,
    };
    let ctx = &mut ctx;
    if let Some((app, verb)) = all_verb(&command)
        && let Some(names) = commands::all::expand(app, verb, ctx).await?
    {
        return commands::all::each(names, verb, ctx).await;
    }
    // An app named like a PM2 id (`stop 0`) that is not found says that apps have names here.
    let app = pm2::app_named(&command).map(str::to_string);
    let done = match command {
        Command::Start(a) => commands::start(*a, ctx).await,
        Command::Apply(a) => commands::apply(a, ctx).await,
        Command::Scale(a) => commands::scale(a, ctx).await,
        Command::List(a) => commands::list(a, ctx).await,
        Command::Info(a) => commands::info(a, ctx).await,
        Command::Stop(a) => commands::stop(a, ctx).await,
        Command::Restart(a) if a.rolling => rollout::rolling_restart(a, ctx).await,
        Command::Restart(a) => {
            validate::check_restart(&a)?;
            commands::restart(a.target, &a.wait, ctx).await
        }
        Command::Signal(a) => verbs::signal(a, ctx).await,
        Command::Stats(a) => verbs::stats(a, false, ctx).await,
        Command::Compare(a) => verbs::stats(a, true, ctx).await,
        Command::Send(a) => verbs::send(a, ctx).await,
        Command::Disable(a) => verbs::rotation(a.app, Some(a.instance), false, ctx).await,
        Command::Enable(a) => verbs::rotation(a.app, a.instance, true, ctx).await,
        Command::Reload(a) => rollout::reload(a, ctx).await,
        Command::Rollout(a) => rollout::rollout(a, ctx).await,
        Command::Endpoints(a) => endpoints::endpoints(a, ctx).await,
        Command::Delete(a) => commands::delete(a, ctx).await,
        Command::Logs(a) => commands::logs(a, ctx).await,
        Command::Nodes(a) => match a.action {
            None => nodes::nodes(ctx).await,
            Some(NodesAction::Adopt(a)) => nodes::adopt(a, ctx).await,
            Some(NodesAction::Forget(a)) => nodes::forget(a, ctx).await,
        },
        Command::Apps => commands::apps(ctx).await,
        Command::Export(a) => commands::export(a, ctx).await,
        Command::Status => status::status(ctx).await,
        Command::Token(a) => token::run(a.command, ctx).await,
        Command::Whoami => token::whoami(ctx).await,
        Command::Topology(a) => nodes::topology(a, ctx).await,
        Command::Drain(a) => nodes::drain(a, true, ctx).await,
        Command::Undrain(a) => nodes::drain(a, false, ctx).await,
        Command::Events(a) => commands::events(a, ctx).await,
        Command::Monit(a) => monit::monit(a, ctx).await,
        Command::Autoscale(a) => commands::autoscale(a, ctx).await,
        Command::Up(_)
        | Command::Down(_)
        | Command::Certs(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Import(_) => unreachable!("handled above"),
    };
    pm2::with_id_hint(done, app.as_deref())
}

/// What a closed stdout does to `command` (see [`stdout`]): a read ends, a change finishes.
fn unread(command: &Command) -> stdout::Unread {
    use args::{RolloutCommand, TokenCommand};
    use stdout::Unread::{Ends, Finishes};
    match command {
        Command::List(_)
        | Command::Info(_)
        | Command::Endpoints(_)
        | Command::Logs(_)
        | Command::Stats(_)
        | Command::Compare(_)
        | Command::Apps
        | Command::Export(_)
        | Command::Status
        | Command::Whoami
        | Command::Topology(_)
        | Command::Events(_)
        | Command::Monit(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Nodes(args::NodesArgs { action: None, .. }) => Ends,
        Command::Rollout(a) => match &a.command {
            RolloutCommand::Status { .. } | RolloutCommand::History { .. } => Ends,
            RolloutCommand::Pause { .. }
            | RolloutCommand::Resume { .. }
            | RolloutCommand::Promote { .. }
            | RolloutCommand::Undo { .. } => Finishes,
        },
        Command::Token(a) => match &a.command {
            TokenCommand::List => Ends,
            TokenCommand::Create { .. } | TokenCommand::Revoke { .. } => Finishes,
        },
        Command::Start(_)
        | Command::Apply(_)
        | Command::Scale(_)
        | Command::Stop(_)
        | Command::Restart(_)
        | Command::Signal(_)
        | Command::Send(_)
        | Command::Disable(_)
        | Command::Enable(_)
        | Command::Reload(_)
        | Command::Delete(_)
        | Command::Nodes(_)
        | Command::Drain(_)
        | Command::Undrain(_)
        | Command::Autoscale(_)
        | Command::Up(_)
        | Command::Down(_)
        | Command::Certs(_)
        | Command::Import(_) => Finishes,
    }
}

/// The app and verb of a command PM2's `all` may stand in for: `start`, `stop`, `restart` (not
/// rolling) and `delete` of a whole app.
fn all_verb(command: &Command) -> Option<(&str, commands::all::Verb<'_>)> {
    use commands::all::Verb;
    match command {
        Command::Start(a) => match validate::plan_start(a) {
            Ok(validate::StartPlan::Existing { app, index: None }) if app == "all" => {
                Some((a.target.as_str(), Verb::Start(&a.wait)))
            }
            _ => None,
        },
        Command::Stop(a) if a.target.instance.is_none() => {
            Some((a.target.app.as_str(), Verb::Stop(a)))
        }
        Command::Restart(a)
            if !a.rolling && a.target.instance.is_none() && validate::check_restart(a).is_ok() =>
        {
            Some((a.target.app.as_str(), Verb::Restart(&a.wait)))
        }
        Command::Delete(a) => Some((a.app.as_str(), Verb::Delete(a))),
        _ => None,
    }
}
