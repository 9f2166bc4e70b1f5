//! Answers the coordinator's `LogRequest`s with `LogChunk`s: history from [`super::tail`], then
//! (with follow) new lines as they come, through the link's bounded log queue.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use pmcluster_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::tail::{Follower, read_last_lines_rotated};
use super::{
    CHUNK_BYTES, CHUNK_LINES, DEFAULT_LINES, FOLLOW_BEHIND_POLL, FOLLOW_MIN_SHARE, FOLLOW_POLL,
    FOLLOW_POLL_LINES, MAX_LINES, log_path, log_streams,
};
use crate::model::InstanceId;
use crate::state::{Agent, LogSource};

/// The log requests of one link session. Dropping it aborts every task (the session ended).
pub(crate) struct LogRequests {
    agent: Arc<Agent>,
    out: mpsc::Sender<pb::AgentMessage>,
    /// Each task returns its request id and its serial number.
    tasks: JoinSet<(u64, u64)>,
    /// Cancel handles of running requests, with the serial of the task that owns the id.
    cancels: BTreeMap<u64, (u64, CancellationToken)>,
    next_serial: u64,
}
impl LogRequests {
    pub fn new(agent: Arc<Agent>, out: mpsc::Sender<pb::AgentMessage>) -> LogRequests {
        LogRequests {
            agent,
            out,
            tasks: JoinSet::new(),
            cancels: BTreeMap::new(),
            next_serial: 0,
        }
    }

    /// Starts answering one request.
    pub fn start(&mut self, req: pb::LogRequest) {
        let ids: Vec<InstanceId> = req.instance_ids.iter().map(InstanceId::new).collect();
        let cancel = CancellationToken::new();
        self.next_serial += 1;
        let serial = self.next_serial;
        if let Some((_, old)) = self
            .cancels
            .insert(req.request_id, (serial, cancel.clone()))
        {
            // The coordinator reused an id: the new request replaces the old one.
            old.cancel();
        }
        let job = Job {
            request_id: req.request_id,
            node: self.agent.node_name.clone(),
            logs_dir: self.agent.logs_dir.clone(),
            sources: self.agent.state.log_sources(&ids),
            lines: match (req.no_history, req.lines) {
                (true, _) => 0,
                (false, 0) => DEFAULT_LINES,
                (false, n) => n.min(MAX_LINES),
            },
            follow: req.follow,
            out: self.out.clone(),
            cancel,
        };
        let request_id = req.request_id;
        self.tasks.spawn(async move {
            job.run().await;
            (request_id, serial)
        });
    }

    pub fn cancel(&mut self, request_id: u64) {
        if let Some((_, cancel)) = self.cancels.remove(&request_id) {
            cancel.cancel();
        }
    }

    /// Waits for a task to finish and forgets it; pending forever when there is none.
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok((request_id, serial))) => {
                // Only forget the handle if no newer request took over the id.
                if self
                    .cancels
                    .get(&request_id)
                    .is_some_and(|(owner, _)| *owner == serial)
                {
                    self.cancels.remove(&request_id);
                }
            }
            Some(Err(e)) => tracing::error!("log task failed: {e}"),
            None => std::future::pending().await,
        }
    }
}
impl Drop for LogRequests {
    fn drop(&mut self) {
        for (_, cancel) in self.cancels.values() {
            cancel.cancel();
        }
    }
}
/// One request being answered.
struct Job {
    request_id: u64,
    node: String,
    logs_dir: PathBuf,
    /// The instances asked that this agent knows, and those it does not.
    sources: (Vec<LogSource>, Vec<InstanceId>),
    lines: u32,
    follow: bool,
    out: mpsc::Sender<pb::AgentMessage>,
    cancel: CancellationToken,
}
/// One followed file and what its lines are labelled with.
struct Stream {
    source: LogSource,
    stream: pb::LogStream,
    follower: Follower,
}
impl Job {
    async fn run(self) {
        let (sources, unknown) = &self.sources;
        if sources.is_empty() && !unknown.is_empty() {
            let ids: Vec<&str> = unknown.iter().map(InstanceId::as_str).collect();
            let error = format!("unknown instance on this node: {}", ids.join(", "));
            self.send(Vec::new(), true, error).await;
            return;
        }
        let mut history = Vec::new();
        // An id not known beside known ones is most likely a copy of one of their indices
        // that this agent has not started yet (a rollout's replacement): the others are read,
        // and it is said. It has no index known here; the notice takes the first copy's.
        if let Some(first) = sources.first() {
            for id in unknown {
                let line = format!(
                    "[pmcluster] node {} does not run instance {} (not started here yet, or \
                     gone): it is not read",
                    self.node,
                    id.as_str()
                );
                history.push(self.line(first, pb::LogStream::Unspecified, line));
            }
        }
        let mut streams = Vec::new();
        // Two copies of an index on this node (a rollout's, a restart's) write the same files:
        // each file is read once, or every line would come twice. The copies may differ in
        // `merge_logs`, so the files read are those of either.
        let mut read_paths: HashSet<PathBuf> = HashSet::new();
        for source in sources {
            if pmcluster_spec::app::validate_name(&source.app).is_err() {
                // An invalid spec never ran, so it has no files; its name may not be a safe path.
                continue;
            }
            for &stream in log_streams(source.merged) {
                let path = log_path(&self.logs_dir, &source.app, source.index, stream);
                if !read_paths.insert(path.clone()) {
                    continue;
                }
                let n = usize::try_from(self.lines).unwrap_or(usize::MAX);
                let read_path = path.clone();
                let follow = self.follow;
                let read = tokio::task::spawn_blocking(move || {
                    let tail = read_last_lines_rotated(&read_path, n)?;
                    let follower = follow.then(|| Follower::new(read_path, &tail));
                    io::Result::Ok((tail, follower))
                });
                let (mut tail, follower) = match read.await {
                    Ok(Ok(read)) => read,
                    Ok(Err(e)) => {
                        let error = format!("cannot read {}: {e}", path.display());
                        self.send(history, true, error).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!("log reader failed: {e}");
                        self.send(history, true, "log reader failed".into()).await;
                        return;
                    }
                };
                let label = |line: String| self.line(source, stream, line);
                let mut lines = std::mem::take(&mut tail.lines);
                let partial = follower.is_none() && !tail.partial.is_empty() && n > 0;
                if partial && lines.len() >= n {
                    // The line still being written is one of the `n` asked for: a trial's
                    // `logs flood -n 2` printed three lines, the last one cut.
                    lines.remove(0);
                }
                history.extend(lines.into_iter().map(&label));
                if let Some(follower) = follower {
                    streams.push(Stream {
                        source: source.clone(),
                        stream,
                        follower,
                    });
                } else if partial {
                    // A line still being written is history too: with none asked, none is sent.
                    history.push(label(std::mem::take(&mut tail.partial)));
                }
            }
        }
        if !self.follow {
            self.send(history, true, String::new()).await;
            return;
        }
        if !history.is_empty() && !self.send(history, false, String::new()).await {
            return;
        }
        self.follow(streams).await;
    }

    async fn follow(&self, mut streams: Vec<Stream>) {
        // Each stream's share of a poll's lines; a stream that took all of it is behind its
        // file, and the next poll comes sooner.
        let share = (FOLLOW_POLL_LINES / streams.len().max(1)).max(FOLLOW_MIN_SHARE);
        let mut behind = false;
        loop {
            let wait = if behind {
                FOLLOW_BEHIND_POLL
            } else {
                FOLLOW_POLL
            };
            tokio::select! {
                () = self.cancel.cancelled() => {
                    // Tell the coordinator the request is closed; it may not be listening any more,
                    // so do not wait for room.
                    let _ = self.out.try_send(self.chunk(Vec::new(), true, String::new()));
                    return;
                }
                () = tokio::time::sleep(wait) => {}
            }
            let node = self.node.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                let mut behind = false;
                for s in &mut streams {
                    let polled = s.follower.poll_at_most(share);
                    behind |= polled.as_ref().is_ok_and(|l| l.len() >= share);
                    if s.follower.take_gap() {
                        lines.push(pb::LogLine {
                            app: s.source.app.clone(),
                            index: s.source.index,
                            node: node.clone(),
                            stream: pb::LogStream::Unspecified.into(),
                            line: format!(
                                "[pmcluster] {}[{}] {}: the log rotated past log_retain before \
                                 it was read; lines may be missing here",
                                s.source.app,
                                s.source.index,
                                match s.stream {
                                    pb::LogStream::Stderr => "stderr",
                                    _ => "stdout",
                                }
                            ),
                            unread: false,
                        });
                    }
                    match polled {
                        Ok(new) => lines.extend(new.into_iter().map(|line| pb::LogLine {
                            app: s.source.app.clone(),
                            index: s.source.index,
                            node: node.clone(),
                            stream: s.stream.into(),
                            line,
                            unread: false,
                        })),
                        Err(e) => tracing::debug!("following {}: {e}", s.follower.path().display()),
                    }
                }
                (streams, lines, behind)
            })
            .await;
            let lines;
            (streams, lines, behind) = match polled {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("log follower failed: {e}");
                    return;
                }
            };
            if !lines.is_empty() && !self.send(lines, false, String::new()).await {
                return;
            }
        }
    }

    fn line(&self, source: &LogSource, stream: pb::LogStream, line: String) -> pb::LogLine {
        pb::LogLine {
            app: source.app.clone(),
            index: source.index,
            node: self.node.clone(),
            stream: stream.into(),
            line,
            unread: false,
        }
    }

    fn chunk(&self, lines: Vec<pb::LogLine>, eof: bool, error: String) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::LogChunk(pb::LogChunk {
                request_id: self.request_id,
                lines,
                eof,
                error,
            })),
        }
    }

    /// Sends `lines` in chunks of at most [`CHUNK_LINES`] lines and [`CHUNK_BYTES`] bytes, `eof`
    /// and `error` on the last one. Returns false when the request was cancelled or the link is
    /// gone.
    async fn send(&self, lines: Vec<pb::LogLine>, eof: bool, error: String) -> bool {
        let mut chunks: Vec<Vec<pb::LogLine>> = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0usize;
        for line in lines {
            if current.len() >= CHUNK_LINES || bytes + line.line.len() > CHUNK_BYTES {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += line.line.len();
            current.push(line);
        }
        if !current.is_empty() || chunks.is_empty() {
            chunks.push(current);
        }
        let last = chunks.len() - 1;
        for (i, lines) in chunks.into_iter().enumerate() {
            let msg = if i == last {
                self.chunk(lines, eof, error.clone())
            } else {
                self.chunk(lines, false, String::new())
            };
            let sent = tokio::select! {
                () = self.cancel.cancelled() => false,
                r = self.out.send(msg) => r.is_ok(),
            };
            if !sent {
                return false;
            }
        }
        true
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a history request for `sources` and returns what it sent: each line's stream and
    /// text, and the error.
    async fn history(
        logs_dir: &std::path::Path,
        sources: (Vec<LogSource>, Vec<InstanceId>),
    ) -> (Vec<(pb::LogStream, String)>, String) {
        let (out, mut rx) = mpsc::channel(64);
        let job = Job {
            request_id: 7,
            node: "a".into(),
            logs_dir: logs_dir.to_path_buf(),
            sources,
            lines: 10,
            follow: false,
            out,
            cancel: CancellationToken::new(),
        };
        job.run().await;
        let mut lines = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            let Some(pb::agent_message::Msg::LogChunk(chunk)) = msg.msg else {
                continue;
            };
            lines.extend(chunk.lines.into_iter().map(|l| {
                (
                    pb::LogStream::try_from(l.stream).unwrap_or_default(),
                    l.line,
                )
            }));
            if chunk.eof {
                return (lines, chunk.error);
            }
        }
        panic!("no end of the answer: {lines:?}");
    }

    /// Two copies of an index on one node (a rollout's old one with `merge_logs`, its
    /// replacement without) share their files: each file is read once, the union of both
    /// copies' streams. A third copy the agent does not run yet is said, and does not fail
    /// the request. Before, the coordinator asked for one copy (an arbitrary one), which could
    /// miss the other's stderr file, and an id unknown here failed the node's whole answer.
    #[tokio::test]
    async fn copies_of_an_index_read_each_file_once() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            log_path(dir.path(), "web", 0, pb::LogStream::Stdout),
            "o1\no2\n",
        )?;
        std::fs::write(
            log_path(dir.path(), "web", 0, pb::LogStream::Stderr),
            "e1\n",
        )?;
        let copy = |merged| LogSource {
            app: "web".into(),
            index: 0,
            merged,
        };
        let (lines, error) = history(
            dir.path(),
            (
                vec![copy(true), copy(false), copy(true)],
                vec![InstanceId::new("not-yet")],
            ),
        )
        .await;
        assert_eq!(error, "");
        let text = |stream| -> Vec<&str> {
            lines
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, l)| l.as_str())
                .collect()
        };
        assert_eq!(text(pb::LogStream::Stdout), ["o1", "o2"]);
        assert_eq!(text(pb::LogStream::Stderr), ["e1"]);
        let notices = text(pb::LogStream::Unspecified);
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("not-yet"), "{notices:?}");
        // Only ids unknown here: the request fails, as before.
        let (lines, error) = history(dir.path(), (Vec::new(), vec![InstanceId::new("x")])).await;
        assert!(lines.is_empty());
        assert!(error.contains("unknown instance"), "{error}");
        Ok(())
    }

    /// A line still being written counts as one of the lines asked for: ten asked, ten given,
    /// the cut one last. A trial's `logs flood -n 2` printed three.
    #[tokio::test]
    async fn a_line_being_written_is_one_of_the_lines_asked_for() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let text: String = (1..=12).map(|i| format!("l{i}\n")).collect();
        std::fs::write(
            log_path(dir.path(), "web", 0, pb::LogStream::Stdout),
            format!("{text}cut"),
        )?;
        let source = LogSource {
            app: "web".into(),
            index: 0,
            merged: true,
        };
        let (lines, error) = history(dir.path(), (vec![source], Vec::new())).await;
        assert_eq!(error, "");
        let got: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            got,
            [
                "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11", "l12", "cut"
            ]
        );
        Ok(())
    }
}
