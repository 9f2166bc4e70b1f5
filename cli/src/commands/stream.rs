//! The verbs that follow a server stream, `logs` and `events`, and the loop they share, which
//! opens the stream again on the leader after a failover.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use tokio::time::Instant;

use futures::StreamExt;
use pmcluster_proto::v1 as pb;
use tonic::Code;

use super::Ctx;
use crate::args::{EventsArgs, LogsArgs};
use crate::client::Client;
use crate::error::{ApiError, UsageError};
use crate::failover::{Conn, RETRY_PAUSE, TAKEOVER_WAIT, call, connection_lost, open};
use crate::output;

/// `logs APP`, and `logs` or `logs all` for every app, as `pm2 logs` shows: history, then new
/// lines with `--follow`, until the streams end or Ctrl-C. The coordinator streams one app's
/// lines at a time, so every app is one stream per app, its lines prefixed with `app[index]` as
/// one app's are: read one app after the other, or followed side by side. An app created later
/// is not followed (the list is taken once, as `stop all` takes it).
pub async fn logs(args: LogsArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let one_app = "--instance picks an instance of one app: pmcluster logs APP --instance N";
    if args.app.is_none() && args.instance.is_some() {
        return Err(UsageError::new(one_app).into());
    }
    let (names, every) = match args.app.as_deref() {
        Some(app) if app != "all" => (vec![app.to_string()], false),
        named => {
            let mut conn = ctx.connect().await?;
            let names: Vec<String> = super::list_apps(&mut conn)
                .await?
                .into_iter()
                .filter_map(|a| a.spec.map(|s| s.name))
                .collect();
            // As `stop all`: an app named `all` is that app.
            match named {
                Some(all) if names.iter().any(|n| n == all) => (vec![all.to_string()], false),
                _ => (names, true),
            }
        }
    };
    if every && args.instance.is_some() {
        return Err(UsageError::new(one_app).into());
    }
    if names.is_empty() {
        return match ctx.structured() {
            true => Ok(()),
            false => ctx.line(output::NO_APPS),
        };
    }
    // One connection, its streams side by side on it: a thousand apps are not a thousand
    // connections.
    let first = ctx.connect().await?;
    let mut conns = vec![first; names.len()];
    let out = RefCell::new(ctx);
    let results = match args.follow {
        // Each app's stream is open for good: side by side, as their lines come. What ends one
        // early is said then, not when the others end (at Ctrl-C); a reader gone (`| head`)
        // ends them all, or the apps that print nothing would be followed for ever.
        true => {
            let each = names.iter().zip(conns.iter_mut()).enumerate();
            let mut running: futures::stream::FuturesUnordered<_> = each
                .map(|(n, (app, conn))| {
                    let (args, out) = (&args, &out);
                    async move { (n, app_logs(app, args, conn, out).await) }
                })
                .collect();
            let mut results: Vec<Option<anyhow::Result<usize>>> =
                (0..names.len()).map(|_| None).collect();
            while let Some((n, result)) = running.next().await {
                if let Err(e) = &result {
                    if crate::error::Class::of(e) == crate::error::Class::ClosedStdout {
                        return result.map(|_| ());
                    }
                    if every && code(e) != Some(Code::NotFound) {
                        eprintln!("note: the logs of {} are not followed: {e:#}", names[n]);
                    }
                }
                results[n] = Some(result);
            }
            results.into_iter().flatten().collect()
        }
        // One after the other, so that each app's history reads in one piece.
        false => {
            let mut results = Vec::with_capacity(names.len());
            for (app, conn) in names.iter().zip(conns.iter_mut()) {
                let result = app_logs(app, &args, conn, &out).await;
                if let Err(e) = &result
                    && crate::error::Class::of(e) == crate::error::Class::ClosedStdout
                {
                    return result.map(|_| ());
                }
                results.push(result);
            }
            results
        }
    };
    let mut unread = 0;
    let mut stopped = Vec::new();
    let mut denied = Vec::new();
    let mut first_denial = None;
    for (app, result) in names.iter().zip(results) {
        match result {
            Ok(n) => unread += n,
            // An app deleted since the list was taken has no logs to show.
            Err(e) if every && code(&e) == Some(Code::NotFound) => {}
            // A token for some apps lists them all but reads the logs of its own: every app
            // is every app it may read.
            Err(e) if every && code(&e) == Some(Code::PermissionDenied) => {
                denied.push(app.as_str());
                first_denial.get_or_insert(e);
            }
            // Said as it happened (above).
            Err(_) if every && args.follow => stopped.push(app.as_str()),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = first_denial {
        if denied.len() == names.len() {
            return Err(e);
        }
        // A follower said so as each was refused.
        if !args.follow {
            eprintln!(
                "note: not shown, as your credentials may not read their logs: {}",
                denied.join(", ")
            );
        }
    }
    if !stopped.is_empty() {
        anyhow::bail!(
            "the logs of {} were not followed to the end: see above",
            stopped.join(", ")
        );
    }
    // A follower saw each notice as it came, and the node may be back since: Ctrl-C ends it
    // as usual.
    let whose = match every {
        true => "some logs".to_string(),
        false => format!("some logs of {}", names.join(", ")),
    };
    match unread {
        0 => Ok(()),
        _ if args.follow => Ok(()),
        1 => anyhow::bail!("{whose} were not read: see the notice above"),
        n => anyhow::bail!("{whose} were not read: see the {n} notices above"),
    }
}

fn code(e: &anyhow::Error) -> Option<Code> {
    e.downcast_ref::<ApiError>().map(|e| e.code)
}

/// One app's lines, written through `out` (shared with the other apps' streams); the count of
/// notices of instances that were not read.
async fn app_logs(
    app: &str,
    args: &LogsArgs,
    conn: &mut Conn,
    out: &RefCell<&mut Ctx<'_>>,
) -> anyhow::Result<usize> {
    let req = pb::StreamLogsRequest {
        app: app.to_string(),
        index: args.instance,
        lines: args.lines.unwrap_or(0),
        follow: args.follow,
        no_history: args.lines == Some(0),
    };
    // Asked for again after a failover: the last line of each instance and stream, printed only
    // when it is not the line printed last (one line is the least history a request can ask).
    // With `--lines 0` none: a stream that printed nothing yet has no line to tell an old one
    // by, and the user asked for no old lines (as `events` resumes, a line written during the
    // switch may then be missed).
    // (`lines` stays 1 for a coordinator older than `no_history`, which would read 0 as its
    // default of 20.)
    fn resume(req: &mut pb::StreamLogsRequest) {
        req.lines = 1;
    }
    let no_history = req.no_history;
    let wanted = match (args.err, args.out) {
        (true, _) => Some(pb::LogStream::Stderr),
        (_, true) => Some(pb::LogStream::Stdout),
        _ => None,
    };
    let structured = out.borrow().structured();
    let mut last: HashMap<(u32, i32), String> = HashMap::new();
    let mut seen: HashMap<(u32, i32), String> = HashMap::new();
    // Notices that some instances were not read (their node is down, say): printed in place, and
    // the exit says the answer is partial, as a script or a person scanning for `$?` expects.
    let mut unread = 0usize;
    let open = |mut client: Client, req| async move { client.stream_logs(req).await };
    watch(
        conn,
        req,
        open,
        args.follow.then_some(resume),
        |line| line.unread,
        |item| {
            let line = match item {
                Watched::Resumed => {
                    // Without history nothing old comes to match: a new line equal to the
                    // last one printed is new.
                    seen = if no_history {
                        HashMap::new()
                    } else {
                        last.clone()
                    };
                    return Ok(());
                }
                Watched::Message(line) => line,
            };
            // The request has no stream filter: the other stream's lines are left out here.
            // pmcluster's own notices (no stream) are shown either way.
            if wanted.is_some_and(|w| line.stream != w as i32)
                && line.stream != pb::LogStream::Unspecified as i32
            {
                return Ok(());
            }
            let key = (line.index, line.stream);
            if seen.remove(&key).is_some_and(|prev| prev == line.line) {
                return Ok(());
            }
            last.insert(key, line.line.clone());
            unread += usize::from(line.unread);
            let mut ctx = out.borrow_mut();
            if structured {
                ctx.stream_item(&output::log_json(&line))
            } else {
                ctx.line(&output::log_line(&line, args.raw))
            }
        },
    )
    .await?;
    Ok(unread)
}

/// `events [APP]`: until Ctrl-C. After a failover it subscribes again, without history.
pub async fn events(args: EventsArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    if let Some(app) = &args.app {
        known_app(&mut conn, app).await?;
    }
    let req = pb::WatchEventsRequest {
        app: args.app.unwrap_or_default(),
        history: args.history,
        no_follow: args.no_follow,
    };
    fn resume(req: &mut pb::WatchEventsRequest) {
        req.history = 0;
    }
    let structured = ctx.structured();
    let open = |mut client: Client, req| async move { client.watch_events(req).await };
    watch(
        &mut conn,
        req,
        open,
        (!args.no_follow).then_some(resume),
        |_| false,
        |item| {
            let Watched::Message(event) = item else {
                return Ok(());
            };
            if structured {
                ctx.stream_item(&output::event_json(&event))
            } else {
                ctx.line(&output::event_line(&event))
            }
        },
    )
    .await
}

/// An app that is not there fails as every verb naming one does (NOT_FOUND, exit 1), rather than
/// a watch of nothing; one deleted whose events the coordinator still keeps is there to watch.
async fn known_app(conn: &mut Conn, app: &str) -> anyhow::Result<()> {
    let req = pb::GetAppRequest {
        name: app.to_string(),
    };
    let missing = match call!(conn, get_app, req).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code == Code::NotFound => e,
        Err(e) => return Err(e.into()),
    };
    let req = pb::WatchEventsRequest {
        app: app.to_string(),
        history: 1,
        no_follow: true,
    };
    let mut past = open!(conn, watch_events, req).await?;
    match past.next().await {
        Some(Ok(_)) => Ok(()),
        _ => Err(missing.into()),
    }
}

/// What a watch hands its consumer.
enum Watched<T> {
    Message(T),
    /// The stream was lost and opened again (on the leader, after a failover): what follows may
    /// repeat what came before.
    Resumed,
}

/// Reopenings in a row, without a message in between, before a watch gives up.
const MAX_RESUMES: u32 = 5;

/// Opens a server stream through `conn` and feeds each message to `each` until the stream ends,
/// fails, or the user presses Ctrl-C (a normal way to end, so not an error). With `resume`, a
/// stream lost with its coordinator (a leader stepping down ends it with UNAVAILABLE and names
/// the new leader when it knows it; a leader killed breaks the connection) is opened again
/// through `conn`, which dials the leader named or the next coordinator of the list, for up to
/// [`TAKEOVER_WAIT`] while none leads yet; `resume` adjusts the request first.
///
/// `notice` tells the messages that only say what could not be read (a node not connected). A
/// new leader's agents take a moment to reconnect, and until then its stream has nothing to
/// follow: it says so and ends. Within the takeover's wait, such a stream is opened again, its
/// notices held back until something else comes (and then given, as they still hold).
async fn watch<Q, T, F, Fut>(
    conn: &mut Conn,
    mut message: Q,
    mut open: F,
    resume: Option<fn(&mut Q)>,
    notice: fn(&T) -> bool,
    mut each: impl FnMut(Watched<T>) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    Q: Clone,
    F: FnMut(Client, tonic::Request<Q>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stream = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        s = conn.stream(message.clone(), &mut open) => s?,
    };
    let mut resumes = 0;
    // Set from a loss of the coordinator until the stream, opened again, gives a message that is
    // not a notice.
    let mut lost_at: Option<Instant> = None;
    let mut held: Vec<T> = Vec::new();
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => next,
        };
        let status = match next {
            Some(Ok(m)) if lost_at.is_some() && notice(&m) => {
                held.push(m);
                continue;
            }
            Some(Ok(m)) => {
                lost_at = None;
                resumes = 0;
                for h in held.drain(..) {
                    each(Watched::Message(h))?;
                }
                each(Watched::Message(m))?;
                continue;
            }
            Some(Err(status)) => Some(status),
            None => None,
        };
        let adjust = match (&status, resume) {
            (Some(status), Some(adjust)) if connection_lost(status) && resumes < MAX_RESUMES => {
                Some(adjust)
            }
            (None, _) if lost_at.is_some_and(|at| at.elapsed() + RETRY_PAUSE < TAKEOVER_WAIT) => {
                None
            }
            _ => {
                for h in held.drain(..) {
                    each(Watched::Message(h))?;
                }
                return match status {
                    Some(status) => Err(ApiError::from(status).into()),
                    None => Ok(()),
                };
            }
        };
        if let (Some(status), Some(adjust)) = (&status, adjust) {
            resumes += 1;
            eprintln!(
                "lost the coordinator at {} ({}); reconnecting",
                conn.url(),
                status.message()
            );
            conn.lost(status);
            adjust(&mut message);
            lost_at.get_or_insert_with(Instant::now);
        } else {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
        // The notices of the next opening replace these.
        held.clear();
        // Until a coordinator leads again: the standby takes over once the old leader's lease
        // ends, and a refusal meanwhile is no reason to stop following.
        let until = lost_at.map_or_else(Instant::now, |at| at + TAKEOVER_WAIT);
        let mut told = false;
        stream = loop {
            let opened = tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                s = conn.stream_or_lost(message.clone(), &mut open) => s,
            };
            // A connection that broke as the stream opened (the coordinator killed, starting
            // again, or its standby taking over) is waited out as a refusal is: found by a
            // trial, where `logs -f` gave up at once after a `kill -9`.
            match opened {
                Ok(s) => break s,
                Err((e, lost))
                    if (e.code == Code::Unavailable || lost)
                        && Instant::now() + RETRY_PAUSE < until =>
                {
                    if !told {
                        eprintln!("{e}; asking again until a coordinator leads");
                        told = true;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        };
        if status.is_some() {
            eprintln!("reconnected to the coordinator at {}", conn.url());
        }
        each(Watched::Resumed)?;
    }
}
