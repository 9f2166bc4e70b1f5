//! The verbs that follow a server stream, `logs` and `events`, and the loop they share, which
//! opens the stream again on the leader after a failover.

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt;
use pmcluster_proto::v1 as pb;
use tonic::Code;

use super::Ctx;
use crate::args::{EventsArgs, LogsArgs};
use crate::client::Client;
use crate::error::ApiError;
use crate::failover::{Conn, call, open};
use crate::output;

/// `logs APP`: history, then new lines with `--follow`, until the stream ends or Ctrl-C.
pub async fn logs(args: LogsArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let req = pb::StreamLogsRequest {
        app: args.app.clone(),
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
    let structured = ctx.structured();
    let mut last: HashMap<(u32, i32), String> = HashMap::new();
    let mut seen: HashMap<(u32, i32), String> = HashMap::new();
    // Notices that some instances were not read (their node is down, say): printed in place, and
    // the exit says the answer is partial, as a script or a person scanning for `$?` expects.
    let mut unread = 0usize;
    let open = |mut client: Client, req| async move { client.stream_logs(req).await };
    watch(
        &mut conn,
        req,
        open,
        args.follow.then_some(resume),
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
            let key = (line.index, line.stream);
            if seen.remove(&key).is_some_and(|prev| prev == line.line) {
                return Ok(());
            }
            last.insert(key, line.line.clone());
            unread += usize::from(line.unread);
            if structured {
                ctx.stream_item(&output::log_json(&line))
            } else {
                ctx.line(&output::log_line(&line, args.raw))
            }
        },
    )
    .await?;
    // A follower saw each notice as it came, and the node may be back since: Ctrl-C ends it
    // as usual.
    match unread {
        0 => Ok(()),
        _ if args.follow => Ok(()),
        1 => anyhow::bail!(
            "some logs of {} were not read: see the notice above",
            args.app
        ),
        n => anyhow::bail!(
            "some logs of {} were not read: see the {n} notices above",
            args.app
        ),
    }
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
/// stream lost with UNAVAILABLE (a leader stepping down, a coordinator gone) is opened again
/// through `conn`, which dials the leader the refusal named or the next coordinator of the list;
/// `resume` adjusts the request first.
async fn watch<Q, T, F, Fut>(
    conn: &mut Conn,
    mut message: Q,
    mut open: F,
    resume: Option<fn(&mut Q)>,
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
    loop {
        let status = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => match next {
                None => return Ok(()),
                Some(Ok(m)) => {
                    resumes = 0;
                    each(Watched::Message(m))?;
                    continue;
                }
                Some(Err(status)) => status,
            },
        };
        let adjust = match resume {
            Some(adjust) if status.code() == Code::Unavailable && resumes < MAX_RESUMES => adjust,
            _ => return Err(ApiError::from(status).into()),
        };
        resumes += 1;
        eprintln!(
            "lost the coordinator at {} ({}); reconnecting",
            conn.url(),
            status.message()
        );
        conn.lost(&status);
        adjust(&mut message);
        stream = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            s = conn.stream(message.clone(), &mut open) => s?,
        };
        each(Watched::Resumed)?;
    }
}
