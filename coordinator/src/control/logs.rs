//! Log routing: requests to agents, their lines to readers, never waiting for a slow reader.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::model::{LogChunk, LogLine, LogRequest, LogStream, LogsQuery};

use super::{AgentCommand, Control, ControlError, LogRoute, Result, find_app};

/// Lines a reader's route holds at least: what an agent's poll of a followed file sends at once
/// in a flood (up to 1 MiB of lines per stream), so that a reader who keeps up loses none of a
/// burst. A reader that falls behind loses lines past it (said). Memory: a few MiB with
/// ordinary lines (about 100 bytes); at worst, lines of the agent's longest (16 KiB), 256 MiB.
const ROUTE_LINES: usize = 16_384;

/// The most lines a route holds for a history, whatever was asked: the 10,000 lines of both
/// streams of 10 instances. Past it, lines are dropped (said). At worst (16 KiB lines) about
/// 3 GiB for a reader that stops reading; with ordinary lines, some tens of MiB.
const ROUTE_HISTORY_LINES: usize = 200_000;

/// The route's size for `lines` of history from each of `instances`: the whole answer, both
/// streams of each, with room for the notes of nodes that cannot answer, so that no line of
/// it is dropped however fast the agents send it (at most [`ROUTE_HISTORY_LINES`]). A slot
/// costs nothing until a line fills it. With `follow`, lines that come later may still be
/// dropped for a reader that falls behind, and each drop is said.
pub(super) fn route_capacity(lines: u32, instances: usize) -> usize {
    let history = (lines as usize)
        .saturating_mul(2)
        .saturating_mul(instances)
        .saturating_add(instances)
        .saturating_add(16);
    history.clamp(ROUTE_LINES, ROUTE_HISTORY_LINES)
}

/// How long an agent has to start answering a log request (without `follow`). An agent that is
/// connected but not answering (a stopped process, a host that stalls) would otherwise keep the
/// reader waiting until its heartbeat lapses, and then end the answer as if there were no logs.
pub const LOG_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Control {
    /// Asks the agents of the app's instances for their logs. The returned receiver ends when
    /// every agent has sent all it had (without `follow`), or never (with `follow`), until the
    /// reader goes away.
    pub fn stream_logs(&self, req: &LogsQuery) -> Result<mpsc::Receiver<LogLine>> {
        let inner = self.lock();
        let app = find_app(&inner.state, &req.app)?;
        if let Some(i) = req.index
            && i >= app.spec.instances
        {
            return Err(ControlError::NotFound(format!(
                "app {:?} has no instance {i}: it has {}",
                req.app, app.spec.instances
            )));
        }
        let lines = match req.lines {
            0 => 20,
            n => n.min(10_000),
        };
        let mut by_node: BTreeMap<String, Vec<(uuid::Uuid, u32)>> = BTreeMap::new();
        for inst in inner.state.app_instances(&req.app) {
            if req.index.is_some_and(|i| i != inst.index) {
                continue;
            }
            if let Some(node) = &inst.node {
                // Two copies of an index on one node (a rollout's, a restart's) write the same
                // files: both are asked, and the agent reads each file once. It knows which
                // files each copy has (`merge_logs` may differ) and which copies it runs.
                by_node
                    .entry(node.clone())
                    .or_default()
                    .push((inst.id, inst.index));
            }
        }
        // The requests go out after `inner` is let go: routing them needs only the routes'
        // own lock, and a chunk answering one may come back at once.
        let mut requests = Vec::new();
        for (node, instances) in by_node {
            let commands = inner
                .nodes
                .get(&node)
                .and_then(|l| l.session.as_ref())
                .map(|s| s.commands.clone());
            requests.push((node, instances, commands));
        }
        drop(inner);
        let answer_by = (!req.follow).then(|| {
            self.now()
                .saturating_add(i64::try_from(LOG_ANSWER_WAIT.as_millis()).unwrap_or(i64::MAX))
        });
        let asked: usize = requests.iter().map(|(_, i, _)| i.len()).sum();
        let (tx, rx) = mpsc::channel(route_capacity(lines, asked));
        let mut routes = self.log_routes.lock();
        for (node, instances, commands) in requests {
            let request_id = self.ids.fetch_add(1, Ordering::Relaxed);
            let mut indices: Vec<u32> = instances.iter().map(|(_, index)| *index).collect();
            indices.sort_unstable();
            indices.dedup();
            let request = LogRequest {
                request_id,
                instance_ids: instances.into_iter().map(|(id, _)| id).collect(),
                lines,
                follow: req.follow,
                no_history: req.no_history,
            };
            // The route is in place before the request leaves, so no early chunk misses it.
            // What is not asked for is said rather than left out: an answer without those lines
            // would read as instances that wrote nothing.
            let Some(commands) = commands else {
                unread(&tx, &req.app, &node, &indices, "is not connected");
                continue;
            };
            if commands.try_send(AgentCommand::Logs(request)).is_err() {
                unread(
                    &tx,
                    &req.app,
                    &node,
                    &indices,
                    "is not reading requests now",
                );
                continue;
            }
            routes.insert(
                request_id,
                LogRoute {
                    node,
                    commands,
                    lines: tx.clone(),
                    dropped: 0,
                    dropped_unread: false,
                    app: req.app.clone(),
                    indices,
                    answer_by,
                    answered: false,
                },
            );
        }
        Ok(rx)
    }

    /// Routes lines an agent sent; drops the route at end of stream or when the reader is gone.
    /// Takes only the routes' lock: a chunk never waits behind a reconcile or a commit.
    pub fn log_chunk(&self, node: &str, chunk: LogChunk) {
        let mut routes = self.log_routes.lock();
        let Some(route) = routes.get_mut(&chunk.request_id) else {
            return;
        };
        if route.node != node {
            return;
        }
        route.answer_by = None;
        route.answered = true;
        let mut lines = chunk.lines;
        if !chunk.error.is_empty() {
            tracing::warn!(node, error = %chunk.error, "agent could not read logs");
            // The reader is told too: without it, the answer reads as logs that are empty.
            lines.push(LogLine {
                app: lines.last().map(|l| l.app.clone()).unwrap_or_default(),
                node: node.to_string(),
                stream: LogStream::Unspecified,
                line: format!(
                    "[pmcluster] node {node} could not read logs: {}",
                    chunk.error
                ),
                unread: true,
                ..LogLine::default()
            });
        }
        let mut gone = route_lines(route, lines);
        if chunk.eof && route.dropped > 0 && !gone {
            // The end of a request: announce what was dropped at its tail, if there is room.
            gone = announce_dropped(route, None);
        }
        if (gone || chunk.eof)
            && let Some(route) = routes.remove(&chunk.request_id)
            && gone
            && !chunk.eof
        {
            cancel(&route, chunk.request_id);
        }
    }

    /// Drops log routes whose reader went away (telling their agents to stop following), those
    /// whose session ended and those whose agent did not start answering by their deadline
    /// (their readers are told, and their streams end).
    pub fn reap_log_routes(&self) {
        let now = self.now();
        let mut routes = self.log_routes.lock();
        routes.retain(|id, r| {
            if r.lines.is_closed() {
                cancel(r, *id);
                return false;
            }
            if r.commands.is_closed() {
                ended(r, "disconnected");
                return false;
            }
            if r.answer_by.is_some_and(|by| now >= by) {
                let why = format!("did not answer within {}s", LOG_ANSWER_WAIT.as_secs());
                unread(&r.lines, &r.app, &r.node, &r.indices, &why);
                cancel(r, *id);
                return false;
            }
            if announce_pending(r) {
                cancel(r, *id);
                return false;
            }
            true
        });
    }

    /// The earliest deadline of a log request still waiting for its agent's first answer: the
    /// control loop ticks then, so the reader hears of it on time.
    pub fn next_log_deadline(&self) -> Option<i64> {
        self.log_routes
            .lock()
            .values()
            .filter_map(|r| r.answer_by)
            .min()
    }

    /// Ends the log routes of a node's session(s): their readers are told why (`why`: "missed
    /// heartbeats", ...), and their streams end.
    pub(super) fn drop_log_routes(&self, node: &str, why: &str) {
        self.log_routes.lock().retain(|_, r| {
            if r.node != node {
                return true;
            }
            ended(r, why);
            false
        });
    }
}

impl Control {
    /// Ends the log requests of `app`, which was deleted: a follow would otherwise wait for ever
    /// on instances that are gone. Each reader is told once, in a plain line (its answer is
    /// whole, not partial), and its stream ends with its last route.
    pub(super) fn end_log_routes_of(&self, app: &str) {
        let mut told: Vec<mpsc::Sender<LogLine>> = Vec::new();
        self.log_routes.lock().retain(|request_id, r| {
            if r.app != app {
                return true;
            }
            cancel(r, *request_id);
            if !told.iter().any(|t| t.same_channel(&r.lines)) {
                let _ = r.lines.try_send(LogLine {
                    app: app.to_string(),
                    index: r.indices.first().copied().unwrap_or(0),
                    node: r.node.clone(),
                    stream: LogStream::Unspecified,
                    line: format!("[pmcluster] app {app} was deleted: no more logs"),
                    unread: false,
                });
                told.push(r.lines.clone());
            }
            false
        });
    }
}

/// Tells a reader that a node's instances were not asked for their logs, and why.
fn unread(tx: &mpsc::Sender<LogLine>, app: &str, node: &str, indices: &[u32], why: &str) {
    notice(tx, app, node, indices, why, "no logs of");
}

/// `[pmcluster] node a {why}: {what} web[0], web[1] (see `pmcluster nodes`)`, marked unread.
fn notice(
    tx: &mpsc::Sender<LogLine>,
    app: &str,
    node: &str,
    indices: &[u32],
    why: &str,
    what: &str,
) {
    let list: Vec<String> = indices.iter().map(|i| format!("{app}[{i}]")).collect();
    let notice = LogLine {
        app: app.to_string(),
        index: indices.first().copied().unwrap_or(0),
        node: node.to_string(),
        stream: LogStream::Unspecified,
        line: format!(
            "[pmcluster] node {node} {why}: {what} {} (see `pmcluster nodes`)",
            list.join(", ")
        ),
        unread: true,
    };
    // A fresh channel of 1,024 has room for one notice per node of an app.
    let _ = tx.try_send(notice);
}

/// Tells a reader that the session its request went out on ended before the answer did.
fn ended(route: &LogRoute, why: &str) {
    let what = if route.answered {
        "no more logs of"
    } else {
        "no logs of"
    };
    notice(
        &route.lines,
        &route.app,
        &route.node,
        &route.indices,
        why,
        what,
    );
}

fn cancel(route: &LogRoute, request_id: u64) {
    // A full queue means the agent is not reading; its session will be replaced anyway.
    let _ = route
        .commands
        .try_send(AgentCommand::CancelLogs(request_id));
}

/// Hands lines to a log reader without ever waiting for it: the agent's link also carries
/// heartbeats. What does not fit is dropped and counted, and the reader is told how many lines it
/// missed (a line of its own, stream UNSPECIFIED) as soon as it has room.
/// Returns whether the reader is gone.
pub(super) fn route_lines(route: &mut LogRoute, lines: Vec<LogLine>) -> bool {
    for line in lines {
        if route.dropped > 0 {
            if route.lines.capacity() < 2 {
                route.dropped += 1;
                route.dropped_unread |= line.unread;
                continue;
            }
            if announce_dropped(route, Some(&line)) {
                return true;
            }
        }
        match route.lines.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(line)) => {
                route.dropped += 1;
                route.dropped_unread |= line.unread;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return true,
        }
    }
    false
}

/// Announces the lines dropped for a reader once it has room again, on the control loop's
/// tick: a burst followed by silence never brings the next line that [`route_lines`] announces
/// them before, and the reader was never told that the end of the burst was lost. Returns
/// whether the reader is gone.
pub(super) fn announce_pending(route: &mut LogRoute) -> bool {
    if route.dropped == 0 || route.lines.capacity() == 0 {
        return false;
    }
    announce_dropped(route, None)
}

/// Sends the "N lines dropped" notice (app and node of `next`, when known) and resets the count.
/// Returns whether the reader is gone.
pub(super) fn announce_dropped(route: &mut LogRoute, next: Option<&LogLine>) -> bool {
    let n = route.dropped;
    let notice = LogLine {
        app: next.map_or_else(|| route.app.clone(), |l| l.app.clone()),
        index: next.map_or_else(|| route.indices.first().copied().unwrap_or(0), |l| l.index),
        node: next.map_or_else(|| route.node.clone(), |l| l.node.clone()),
        stream: LogStream::Unspecified,
        line: format!("[pmcluster] {n} lines dropped here: this reader fell behind"),
        // They were read and this reader did not keep up: it can ask again, with fewer lines.
        // Unless a notice that logs were not read was among them.
        unread: route.dropped_unread,
    };
    match route.lines.try_send(notice) {
        Ok(()) => {
            route.dropped = 0;
            route.dropped_unread = false;
            false
        }
        Err(mpsc::error::TrySendError::Full(_)) => false,
        Err(mpsc::error::TrySendError::Closed(_)) => true,
    }
}
