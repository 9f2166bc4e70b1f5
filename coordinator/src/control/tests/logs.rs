//! Log routes: requests to agents, lines to readers, and what a reader is told when lines are
//! dropped or cannot be read.

use super::*;
use crate::control::logs::route_lines;

#[test]
fn a_slow_log_reader_loses_lines_visibly_and_never_blocks() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut route = LogRoute {
        node: "a".into(),
        commands: mpsc::channel(1).0,
        lines: tx,
        dropped: 0,
        dropped_unread: false,
        app: "web".into(),
        indices: vec![0],
        answer_by: None,
        answered: true,
    };
    let lines = |from: u32, n: u32| -> Vec<LogLine> {
        (from..from + n)
            .map(|i| LogLine {
                app: "web".into(),
                line: format!("line {i}"),
                stream: LogStream::Stdout,
                ..LogLine::default()
            })
            .collect()
    };
    // Ten lines into room for four: four arrive, six are counted, nothing waits.
    assert!(!route_lines(&mut route, lines(0, 10)));
    assert_eq!(route.dropped, 6);
    let mut got = Vec::new();
    while let Ok(l) = rx.try_recv() {
        got.push(l.line);
    }
    assert_eq!(got, ["line 0", "line 1", "line 2", "line 3"]);
    // Room again: the gap is announced before the next line.
    assert!(!route_lines(&mut route, lines(10, 1)));
    let notice = rx.try_recv().unwrap_or_default();
    assert_eq!(notice.stream, LogStream::Unspecified);
    assert!(notice.line.contains("6 lines dropped"), "{}", notice.line);
    assert!(
        !notice.unread,
        "dropped lines were read: the reader fell behind"
    );
    let next = rx.try_recv().unwrap_or_default();
    assert_eq!(next.line, "line 10");
    assert_eq!(route.dropped, 0);
    // A notice that logs were not read, dropped with the lines around it: the announcement of
    // the gap says so in its place.
    let mut flood = lines(11, 8);
    if let Some(l) = flood.get_mut(6) {
        l.unread = true;
    }
    assert!(!route_lines(&mut route, flood));
    while rx.try_recv().is_ok() {}
    assert!(!route_lines(&mut route, lines(19, 1)));
    let notice = rx.try_recv().unwrap_or_default();
    assert!(notice.line.contains("lines dropped"), "{}", notice.line);
    assert!(
        notice.unread,
        "an unread notice was among the dropped lines"
    );
    assert!(!route.dropped_unread);
    // A burst, then silence: what was dropped at its end is announced once the reader has
    // room, without waiting for a next line that may never come. Before, the reader got the
    // head of the burst and nothing more, with no word of the rest.
    while rx.try_recv().is_ok() {}
    assert!(!route_lines(&mut route, lines(20, 10)));
    assert_eq!(route.dropped, 6);
    assert!(
        !crate::control::logs::announce_pending(&mut route),
        "the reader is still there"
    );
    assert_eq!(route.dropped, 6, "no room yet: the count waits");
    for want in 20..24 {
        assert_eq!(
            rx.try_recv().unwrap_or_default().line,
            format!("line {want}")
        );
    }
    assert!(!crate::control::logs::announce_pending(&mut route));
    let notice = rx.try_recv().unwrap_or_default();
    assert!(notice.line.contains("6 lines dropped"), "{}", notice.line);
    assert_eq!((notice.app.as_str(), notice.index), ("web", 0));
    assert_eq!(route.dropped, 0);
    // The reader went away.
    drop(rx);
    assert!(route_lines(&mut route, lines(11, 1)));
}

/// The history a reader asks for arrives whole, however fast its agent sends it: a route
/// holds both streams' `lines` of each instance asked. Before, it held 1,024 lines, and
/// `logs --lines 2000` lost the newest lines and the whole other stream without a word.
/// (That two copies of an index on one node are read once is the agent's part: it reads each
/// file once.)
#[test]
fn a_log_history_arrives_whole() -> Result<()> {
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let c = Control::open_with(
        Arc::new(MemoryStore::default()),
        ControlConfig::default(),
        clock,
    )?;
    let mut a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let query = crate::model::LogsQuery {
        app: "web".into(),
        index: None,
        lines: 2000,
        follow: false,
        no_history: false,
    };
    let mut rx = c.stream_logs(&query)?;
    let request = match a.commands.try_recv() {
        Ok(AgentCommand::Logs(r)) => r,
        other => panic!("the agent was not asked for logs: {other:?}"),
    };
    assert_eq!(request.instance_ids.len(), 1);
    let lines: Vec<LogLine> = [LogStream::Stdout, LogStream::Stderr]
        .into_iter()
        .flat_map(|stream| {
            (0..2000).map(move |i| LogLine {
                app: "web".into(),
                line: format!("line {i}"),
                stream,
                ..LogLine::default()
            })
        })
        .collect();
    c.log_chunk(
        "a",
        crate::model::LogChunk {
            request_id: request.request_id,
            lines,
            eof: true,
            error: String::new(),
        },
    );
    let mut got = Vec::new();
    while let Ok(l) = rx.try_recv() {
        got.push(l);
    }
    assert_eq!(got.len(), 4000, "{:?}", got.last());
    assert!(got.iter().all(|l| l.stream != LogStream::Unspecified));
    Ok(())
}

/// A route's room for a history is bounded whatever is asked (lines of up to 16 KiB each):
/// the most lines of the most instances do not make a reader that stops reading hold
/// gigabytes upon gigabytes. A follow keeps the room of a flood's poll.
#[test]
fn a_route_holds_a_bounded_history() {
    use crate::control::logs::route_capacity;
    assert_eq!(route_capacity(2000, 1), 16_384);
    assert_eq!(route_capacity(10_000, 2), 40_018);
    assert_eq!(route_capacity(10_000, 10), 200_000);
    assert_eq!(route_capacity(10_000, 500), 200_000);
    assert_eq!(route_capacity(u32::MAX, usize::MAX), 200_000);
}

/// A control with a manual clock and a 1.5 s heartbeat timeout, node "a" attached and running
/// web[0], and a log request for web made: the agent's session and the reader's stream.
struct LogRequest {
    clock: Arc<crate::clock::ManualClock>,
    c: Control,
    /// Bind it by name where used (`_a`): the session lives as long as this.
    _a: Attached,
    query: crate::model::LogsQuery,
    lines: mpsc::Receiver<LogLine>,
    request_id: u64,
}
fn log_request(follow: bool) -> Result<LogRequest> {
    log_request_with(follow, Duration::from_millis(1500))
}
fn log_request_with(follow: bool, heartbeat_timeout: Duration) -> Result<LogRequest> {
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000, 7));
    let config = ControlConfig {
        heartbeat_timeout,
        ..ControlConfig::default()
    };
    let c = Control::open_with(Arc::new(MemoryStore::default()), config, clock.clone())?;
    let mut a = c.attach(&register("a"), None)?;
    c.apply(web(1))?;
    let query = crate::model::LogsQuery {
        app: "web".into(),
        index: None,
        lines: 5,
        follow,
        no_history: false,
    };
    let lines = c.stream_logs(&query)?;
    let request_id = match a.commands.try_recv() {
        Ok(AgentCommand::Logs(r)) => r.request_id,
        other => panic!("the agent was not asked for logs: {other:?}"),
    };
    Ok(LogRequest {
        clock,
        c,
        _a: a,
        query,
        lines,
        request_id,
    })
}

/// Issue 10: log routes live under a lock of their own. A chunk is routed while another thread
/// holds the state lock, and a follow stream ends when its node's heartbeat lapses (before, its
/// route outlived the session and the reader waited until it gave up).
#[tokio::test]
async fn log_routes_need_no_state_lock_and_end_with_their_session() -> Result<()> {
    use crate::model::LogChunk;
    let LogRequest {
        clock,
        c,
        mut lines,
        request_id,
        _a,
        ..
    } = log_request(true)?;
    let chunk = |text: &str| LogChunk {
        request_id,
        lines: vec![LogLine {
            app: "web".into(),
            line: text.into(),
            stream: LogStream::Stdout,
            ..LogLine::default()
        }],
        ..LogChunk::default()
    };
    {
        let _held = c.lock();
        c.log_chunk("a", chunk("while the state lock is held"));
    }
    let first = lines.try_recv().map(|l| l.line);
    assert_eq!(first.as_deref(), Ok("while the state lock is held"));
    // Another node cannot answer this request.
    c.log_chunk("b", chunk("not from a"));
    assert!(lines.try_recv().is_err());
    clock.advance_ms(2_000);
    c.tick();
    assert!(!c.is_connected("a"), "a's heartbeat lapsed");
    let notice = lines.try_recv().map(|l| (l.line, l.unread));
    assert_eq!(
        notice,
        Ok((
            "[pmcluster] node a missed heartbeats: no more logs of web[0] (see `pmcluster nodes`)"
                .to_string(),
            true
        )),
        "the reader is told why its stream ends"
    );
    assert!(
        matches!(
            lines.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ),
        "the reader's stream ends with the session"
    );
    Ok(())
}

/// `logs web -f` while web is deleted: the reader is told once, as a whole answer (not an unread
/// notice), the agent is told to drop the request, and the stream ends. Before, it waited for
/// ever on instances that no longer existed.
#[tokio::test]
async fn a_follow_ends_when_its_app_is_deleted() -> Result<()> {
    let LogRequest {
        c,
        mut lines,
        request_id,
        mut _a,
        ..
    } = log_request(true)?;
    c.delete_app("web")?;
    let said = lines.try_recv().map(|l| (l.line, l.unread));
    assert_eq!(
        said,
        Ok((
            "[pmcluster] app web was deleted: no more logs".to_string(),
            false
        ))
    );
    assert!(matches!(
        lines.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    let cancelled = std::iter::from_fn(|| _a.commands.try_recv().ok())
        .any(|cmd| matches!(cmd, AgentCommand::CancelLogs(id) if id == request_id));
    assert!(cancelled, "the agent was told to drop the request");
    Ok(())
}

/// An agent that is connected but does not answer a log request (a stopped process) gets
/// LOG_ANSWER_WAIT: then its reader is told, the agent is told to drop the request, and the
/// stream ends. Before, the reader waited for the heartbeat to lapse and then got nothing, which
/// read as an app without logs (exit 0).
#[tokio::test]
async fn a_log_request_the_agent_does_not_answer_ends_with_a_notice() -> Result<()> {
    use crate::control::logs::LOG_ANSWER_WAIT;
    use crate::model::LogChunk;
    let LogRequest {
        clock,
        c,
        mut lines,
        request_id,
        _a: mut a,
        query,
    } = log_request_with(false, Duration::from_secs(60))?;
    let wait = i64::try_from(LOG_ANSWER_WAIT.as_millis()).unwrap_or(i64::MAX);
    assert!(
        c.next_tick_at() <= 1_000_000 + wait,
        "the loop ticks by the deadline"
    );
    clock.advance_ms(wait - 1);
    c.tick();
    assert!(lines.try_recv().is_err(), "not yet");
    clock.advance_ms(1);
    c.tick();
    assert!(c.is_connected("a"), "the node is still up");
    let notice = lines
        .try_recv()
        .map(|l| (l.app, l.index, l.node, l.line, l.unread));
    assert_eq!(
        notice,
        Ok((
            "web".to_string(),
            0,
            "a".to_string(),
            "[pmcluster] node a did not answer within 5s: no logs of web[0] (see `pmcluster nodes`)"
                .to_string(),
            true
        ))
    );
    assert!(matches!(
        lines.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    assert!(
        matches!(a.commands.try_recv(), Ok(AgentCommand::CancelLogs(id)) if id == request_id),
        "the agent is told to drop the request"
    );
    // A late answer goes nowhere.
    c.log_chunk(
        "a",
        LogChunk {
            request_id,
            eof: true,
            ..LogChunk::default()
        },
    );

    // An agent that answers in time: no notice, whatever the clock does after.
    let mut lines = c.stream_logs(&query)?;
    let request_id = match a.commands.try_recv() {
        Ok(AgentCommand::Logs(r)) => r.request_id,
        other => panic!("the agent was not asked for logs: {other:?}"),
    };
    c.log_chunk(
        "a",
        LogChunk {
            request_id,
            lines: vec![LogLine {
                app: "web".into(),
                line: "hello".into(),
                stream: LogStream::Stdout,
                ..LogLine::default()
            }],
            ..LogChunk::default()
        },
    );
    clock.advance_ms(wait * 2);
    c.tick();
    assert_eq!(lines.try_recv().map(|l| l.line).as_deref(), Ok("hello"));
    assert!(
        lines.try_recv().is_err(),
        "no notice for an answer that came"
    );
    Ok(())
}

/// A log request says which instances it could not read, and why, rather than ending with
/// fewer lines (which reads as an instance that wrote nothing): a node that is not connected,
/// and an agent that could not read a file.
#[tokio::test]
async fn a_log_reader_is_told_what_could_not_be_read() -> Result<()> {
    use crate::model::LogChunk;
    let LogRequest {
        clock,
        c,
        query,
        mut lines,
        request_id,
        _a,
    } = log_request(false)?;
    c.log_chunk(
        "a",
        LogChunk {
            request_id,
            eof: true,
            error: "cannot read /x/web-0-out.log: Permission denied".into(),
            ..LogChunk::default()
        },
    );
    let notice = lines.try_recv().map(|l| (l.stream, l.line, l.unread));
    assert_eq!(
        notice,
        Ok((
            LogStream::Unspecified,
            "[pmcluster] node a could not read logs: cannot read /x/web-0-out.log: Permission \
             denied"
                .to_string(),
            true
        ))
    );
    assert!(matches!(
        lines.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));

    clock.advance_ms(2_000);
    c.tick();
    assert!(!c.is_connected("a"), "a's heartbeat lapsed");
    let mut lines = c.stream_logs(&query)?;
    let notice = lines.try_recv().map(|l| (l.app, l.node, l.line, l.unread));
    assert_eq!(
        notice,
        Ok((
            "web".to_string(),
            "a".to_string(),
            "[pmcluster] node a is not connected: no logs of web[0] (see `pmcluster nodes`)"
                .to_string(),
            true
        ))
    );
    assert!(matches!(
        lines.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    Ok(())
}

/// A follow whose reader fell behind a burst, and the burst ended: once the reader has taken
/// what its route held, the control loop's tick tells it how many lines it lost. Before, it
/// was told only before a next line, which may never come.
#[test]
fn a_tick_announces_what_a_burst_lost_once_the_reader_has_room() -> Result<()> {
    let LogRequest {
        c,
        _a,
        mut lines,
        request_id,
        ..
    } = log_request(true)?;
    let burst: Vec<LogLine> = (0..20_000)
        .map(|i| LogLine {
            app: "web".into(),
            line: format!("line {i}"),
            stream: LogStream::Stdout,
            ..LogLine::default()
        })
        .collect();
    c.log_chunk(
        "a",
        crate::model::LogChunk {
            request_id,
            lines: burst,
            eof: false,
            error: String::new(),
        },
    );
    c.tick();
    let mut got = Vec::new();
    while let Ok(l) = lines.try_recv() {
        got.push(l.line);
    }
    assert_eq!(got.len(), 16_384, "no room, no notice yet");
    c.tick();
    let notice = lines.try_recv().map(|l| l.line).unwrap_or_default();
    assert!(notice.contains("3616 lines dropped"), "{notice:?}");
    Ok(())
}
