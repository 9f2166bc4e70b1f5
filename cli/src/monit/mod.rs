//! `pmcluster monit`: a live terminal view of the cluster, as `pm2 monit` gives for one host.
//!
//! `model` is the state and its rules (pure, table-tested), `view` draws it (tested on ratatui's
//! `TestBackend`), and this module is the loop: it lists instances and nodes every `--interval`,
//! follows the selected instance's logs, and reads keys on a thread of their own (crossterm's
//! reads block).

mod model;
mod view;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use pmcluster_proto::v1 as pb;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use crate::args::MonitArgs;
use crate::commands::{Ctx, list_instances};
use crate::error::UsageError;
use crate::failover::{Conn, call, open};
use crate::output;
use model::{Action, Key, Monitor};

/// How long the key thread waits for a key before it looks whether the loop has ended.
const KEY_POLL: Duration = Duration::from_millis(100);

pub async fn monit(args: MonitArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let interval = args.interval;
    if interval < Duration::from_millis(100) {
        return Err(UsageError("--interval: at least 100ms".into()).into());
    }
    // An app that is not there fails at once, as every verb naming one does, and before the
    // terminal check: it is the answer whatever the output is. In the view it would only be a
    // refresh error on an empty screen.
    let mut conn = match &args.app {
        Some(app) => {
            let mut conn = ctx.connect().await?;
            list_instances(&mut conn, app).await?;
            Some(conn)
        }
        None => None,
    };
    if !std::io::stdout().is_terminal() {
        return Err(UsageError(
            "monit draws on a terminal, and standard output is not one; for scripts use \
             `pmcluster list -o json` or `pmcluster events -o json`"
                .into(),
        )
        .into());
    }
    let mut conn = match conn.take() {
        Some(conn) => conn,
        None => ctx.connect().await?,
    };
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = run(
        &mut terminal,
        &mut conn,
        (args.app.as_deref().unwrap_or(""), args.instance),
        interval,
    )
    .await;
    ratatui::try_restore().context("restoring the terminal")?;
    result
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    conn: &mut Conn,
    (app, instance): (&str, Option<u32>),
    interval: Duration,
) -> anyhow::Result<()> {
    let (keys_tx, mut keys) = mpsc::channel(16);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || read_keys(keys_tx, &done))
    };
    let mut m = Monitor::default();
    let mut logs: Option<tonic::Streaming<pb::LogLine>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let action = tokio::select! {
            _ = tick.tick() => match fetch(conn, app, instance).await {
                Ok((instances, nodes)) => m.refresh(instances, nodes),
                Err(e) => {
                    m.refresh_failed(e.to_string());
                    Action::None
                }
            },
            key = keys.recv() => match key {
                Some(Ok(key)) => m.key(key),
                Some(Err(e)) => break Err(e).context("reading the terminal"),
                None => Action::Quit,
            },
            line = next_line(&mut logs) => {
                match line {
                    Some(Ok(line)) => m.log_line(output::log_line(&line, true)),
                    // The stream ended (the instance went away, or the coordinator): the next
                    // change of selection opens another.
                    Some(Err(status)) => {
                        m.log_line(format!("-- logs ended: {}", status.message()));
                        logs = None;
                    }
                    None => logs = None,
                }
                Action::None
            },
        };
        match action {
            Action::Quit => break Ok(()),
            Action::Follow(target) => {
                logs = None;
                if let Some((app, index)) = target {
                    match follow(conn, &app, index).await {
                        Ok(stream) => logs = Some(stream),
                        Err(e) => m.log_line(format!("-- cannot follow logs: {e}")),
                    }
                }
            }
            Action::None => {}
        }
        if let Err(e) = terminal.draw(|f| view::draw(f, &m, output::now_ms())) {
            break Err(e).context("drawing");
        }
    };
    done.store(true, Ordering::Relaxed);
    // Ends within KEY_POLL: it looks at `done` between polls.
    let _ = reader.join();
    result
}

/// The instances to show (of `app`, or every one with ""; only index `instance` if given) and
/// every node.
async fn fetch(
    conn: &mut Conn,
    app: &str,
    instance: Option<u32>,
) -> Result<(Vec<pb::Instance>, Vec<pb::Node>), crate::error::ApiError> {
    let mut instances = list_instances(conn, app).await?;
    if let Some(index) = instance {
        instances.retain(|i| i.index == index);
    }
    let nodes = call!(conn, list_nodes, pb::ListNodesRequest {})
        .await?
        .nodes;
    Ok((instances, nodes))
}

async fn follow(
    conn: &mut Conn,
    app: &str,
    index: u32,
) -> Result<tonic::Streaming<pb::LogLine>, crate::error::ApiError> {
    let req = pb::StreamLogsRequest {
        app: app.to_string(),
        index: Some(index),
        lines: 50,
        follow: true,
        no_history: false,
    };
    open!(conn, stream_logs, req).await
}

/// The next log line, or never when no stream is open (so `select!` waits on the others).
async fn next_line(
    logs: &mut Option<tonic::Streaming<pb::LogLine>>,
) -> Option<Result<pb::LogLine, tonic::Status>> {
    match logs {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

fn read_keys(tx: mpsc::Sender<std::io::Result<Key>>, done: &AtomicBool) {
    while !done.load(Ordering::Relaxed) {
        let key = match event::poll(KEY_POLL) {
            Ok(false) => continue,
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => decode(k.code, k.modifiers),
                Ok(_) => continue,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let failed = key.is_err();
        if tx.blocking_send(key).is_err() || failed {
            return;
        }
    }
}

fn decode(code: KeyCode, modifiers: KeyModifiers) -> std::io::Result<Key> {
    Ok(match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
        KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
        KeyCode::Up | KeyCode::Char('k') => Key::Up,
        KeyCode::Down | KeyCode::Char('j') => Key::Down,
        KeyCode::Home | KeyCode::Char('g') => Key::Home,
        KeyCode::End | KeyCode::Char('G') => Key::End,
        KeyCode::Tab | KeyCode::BackTab => Key::Tab,
        _ => Key::Other,
    })
}
