//! Draws a [`Monitor`] on a ratatui frame: the instances (or nodes) table on top, the selected
//! instance's CPU and memory sparklines and its logs below, the keys at the bottom.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table, TableState};

use super::model::{Monitor, View, spark};
use crate::output::{human_age, human_bytes, node_status_name, state_name};

/// Width of the in-row sparklines, in samples.
const ROW_SPARK: usize = 16;
const KEYS: &str = " ↑/↓ select · Home/End · Tab instances/nodes · q quit ";

pub fn draw(frame: &mut Frame, m: &Monitor, now_ms: i64) {
    let [top, bottom, footer] = Layout::vertical([
        Constraint::Percentage(55),
        Constraint::Min(8),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    match m.view {
        View::Instances => instances(frame, top, m, now_ms),
        View::Nodes => nodes(frame, top, m, now_ms),
    }
    let [detail, logs] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(bottom);
    self::detail(frame, detail, m);
    self::logs(frame, logs, m);
    let mut footer_spans = vec![Span::styled(
        KEYS,
        Style::new().add_modifier(Modifier::REVERSED),
    )];
    if let Some(error) = &m.error {
        footer_spans.push(Span::styled(
            format!(" {error}"),
            Style::new().fg(Color::Red),
        ));
    }
    frame.render_widget(Line::from(footer_spans), footer);
}

fn state_style(state: &str) -> Style {
    match state {
        "online" => Style::new().fg(Color::Green),
        "launching" | "stopping" | "draining" | "pending" => Style::new().fg(Color::Yellow),
        "errored" | "exited" | "restarting" => Style::new().fg(Color::Red),
        _ => Style::new(),
    }
}

fn instances(frame: &mut Frame, area: Rect, m: &Monitor, now_ms: i64) {
    let header = Row::new([
        "APP",
        "#",
        "STATUS",
        "NODE",
        "PID",
        "↺",
        "CPU",
        "CPU (1 min)",
        "MEM",
        "MEM (1 min)",
        "UPTIME",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = m.instances.iter().map(|i| {
        let state = state_name(i.state);
        let history = m.history.get(&i.id);
        let running = i.pid != 0;
        Row::new([
            i.app.clone(),
            i.index.to_string(),
            state.to_string(),
            if i.node.is_empty() {
                "-".into()
            } else {
                i.node.clone()
            },
            if running {
                i.pid.to_string()
            } else {
                "-".into()
            },
            i.restarts.to_string(),
            if running {
                format!("{:.1}%", i.cpu_percent)
            } else {
                "-".into()
            },
            history
                .map(|h| spark(&h.cpu, ROW_SPARK))
                .unwrap_or_default(),
            if running {
                human_bytes(i.memory_bytes)
            } else {
                "-".into()
            },
            history
                .map(|h| spark(&h.memory, ROW_SPARK))
                .unwrap_or_default(),
            if running && i.started_at_ms > 0 {
                human_age(now_ms - i.started_at_ms)
            } else {
                "-".into()
            },
        ])
        .style(state_style(state))
    });
    let widths = [
        Constraint::Min(8),
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(ROW_SPARK as u16),
        Constraint::Length(10),
        Constraint::Length(ROW_SPARK as u16),
        Constraint::Length(7),
    ];
    let apps = {
        let mut names: Vec<&str> = m.instances.iter().map(|i| i.app.as_str()).collect();
        names.dedup();
        names.len()
    };
    let count =
        |n: usize, word| crate::commands::plural(u32::try_from(n).unwrap_or(u32::MAX), word);
    let title = format!(
        " pmcluster monit · {} · {} · {} ",
        count(apps, "app"),
        count(m.instances.len(), "instance"),
        count(m.nodes.len(), "node")
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(Some(m.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn nodes(frame: &mut Frame, area: Rect, m: &Monitor, now_ms: i64) {
    let header = Row::new([
        "NODE",
        "STATUS",
        "ADDRESS",
        "CPU",
        "MEMORY",
        "INSTANCES",
        "ALLOCATED",
        "HEARTBEAT",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = m.nodes.iter().map(|n| {
        let status = node_status_name(n.status);
        Row::new([
            n.name.clone(),
            status.to_string(),
            if n.address.is_empty() {
                "-".into()
            } else {
                n.address.clone()
            },
            format!("{:.0}% of {}", n.cpu_percent, n.cores),
            format!(
                "{} / {}",
                human_bytes(n.memory_used_bytes),
                human_bytes(n.memory_bytes)
            ),
            n.instances.to_string(),
            format!(
                "{}m cpu, {}",
                n.allocated_cpu_millis,
                human_bytes(n.allocated_memory_bytes)
            ),
            if n.last_heartbeat_ms > 0 {
                format!("{} ago", human_age(now_ms - n.last_heartbeat_ms))
            } else {
                "-".into()
            },
        ])
        .style(if status == "ready" {
            Style::new().fg(Color::Green)
        } else {
            Style::new().fg(Color::Yellow)
        })
    });
    let widths = [
        Constraint::Min(10),
        Constraint::Length(12),
        Constraint::Min(10),
        Constraint::Length(12),
        Constraint::Length(22),
        Constraint::Length(10),
        Constraint::Length(20),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(format!(" nodes · {} ", m.nodes.len())))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(Some(m.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn detail(frame: &mut Frame, area: Rect, m: &Monitor) {
    let Some((app, index)) = &m.following else {
        frame.render_widget(
            Paragraph::new("no instance selected").block(Block::bordered().title(" detail ")),
            area,
        );
        return;
    };
    let current = m
        .instances
        .iter()
        .find(|i| &i.app == app && i.index == *index);
    let history = current.and_then(|i| m.history.get(&i.id));
    let [cpu, memory] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let (cpu_now, mem_now) = current.map_or(("-".into(), "-".into()), |i| {
        (
            format!("{:.1}%", i.cpu_percent),
            human_bytes(i.memory_bytes),
        )
    });
    let empty = Default::default();
    let h = history.unwrap_or(&empty);
    let width = usize::from(cpu.width.saturating_sub(2));
    let tail = |v: &std::collections::VecDeque<u64>| -> Vec<u64> {
        v.iter()
            .skip(v.len().saturating_sub(width))
            .copied()
            .collect()
    };
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" {app}[{index}] CPU {cpu_now} ")))
            .style(Style::new().fg(Color::Cyan))
            .data(tail(&h.cpu)),
        cpu,
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" {app}[{index}] memory {mem_now} ")))
            .style(Style::new().fg(Color::Magenta))
            .data(tail(&h.memory)),
        memory,
    );
}

fn logs(frame: &mut Frame, area: Rect, m: &Monitor) {
    let title = match &m.following {
        Some((app, index)) => format!(" logs {app}[{index}] "),
        None => " logs ".to_string(),
    };
    let height = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = m
        .logs
        .iter()
        .skip(m.logs.len().saturating_sub(height))
        .map(|l| Line::raw(l.as_str()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use pmcluster_proto::v1 as pb;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::monit::model::Key;

    const NOW: i64 = 1_800_000_000_000;

    fn screen(m: &Monitor) -> String {
        let mut terminal = Terminal::new(TestBackend::new(140, 40)).expect("test terminal");
        terminal.draw(|f| draw(f, m, NOW)).expect("draws");
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn instance(app: &str, index: u32, state: pb::InstanceState, cpu: f64) -> pb::Instance {
        pb::Instance {
            id: format!("{app}-{index}"),
            app: app.into(),
            index,
            node: "node-b".into(),
            state: state as i32,
            pid: if state == pb::InstanceState::Online {
                4242 + index
            } else {
                0
            },
            cpu_percent: cpu,
            memory_bytes: 50 << 20,
            restarts: 3,
            started_at_ms: NOW - 125_000,
            ..Default::default()
        }
    }

    fn monitor() -> Monitor {
        let mut m = Monitor::default();
        let node = pb::Node {
            name: "node-b".into(),
            status: pb::NodeStatus::Ready as i32,
            cores: 2,
            memory_bytes: 8 << 30,
            memory_used_bytes: 1 << 30,
            address: "10.0.0.2".into(),
            instances: 2,
            last_heartbeat_ms: NOW - 1000,
            ..Default::default()
        };
        for cpu in [1.0, 5.0, 20.0, 80.0] {
            m.refresh(
                vec![
                    instance("web", 0, pb::InstanceState::Online, cpu),
                    instance("web", 1, pb::InstanceState::Errored, 0.0),
                ],
                vec![node.clone()],
            );
        }
        m.log_line("listening on 3000".into());
        m
    }

    #[test]
    fn instances_view_shows_rows_sparklines_logs_and_keys() {
        let text = screen(&monitor());
        for want in [
            "pmcluster monit · 1 app · 2 instances · 1 node",
            "▶ web",
            "online",
            "errored",
            "node-b",
            "4242",
            "80.0%",
            "50.0 MiB",
            "2m",
            // The in-row CPU sparkline of 1, 5, 20, 80 % scaled to its max.
            "▁▁▃█",
            "web[0] CPU 80.0%",
            "web[0] memory 50.0 MiB",
            "logs web[0]",
            "listening on 3000",
            "q quit",
            "Tab instances/nodes",
        ] {
            assert!(text.contains(want), "{want:?} not on screen:\n{text}");
        }
    }

    #[test]
    fn node_view_and_selection() {
        let mut m = monitor();
        m.key(Key::Down);
        let text = screen(&m);
        assert!(text.contains("▶ web   "), "web[1] selected:\n{text}");
        assert!(text.contains("logs web[1]"), "{text}");
        m.key(Key::Tab);
        let text = screen(&m);
        for want in [
            "nodes · 1",
            "▶ node-b",
            "ready",
            "10.0.0.2",
            "1.0 GiB / 8.0 GiB",
            "1s ago",
        ] {
            assert!(text.contains(want), "{want:?} not on screen:\n{text}");
        }
        m.refresh_failed("coordinator unreachable".into());
        assert!(screen(&m).contains("coordinator unreachable"));
    }
}
