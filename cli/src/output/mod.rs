//! Rendering of coordinator answers as human tables and as JSON for scripts.
//!
//! Pure functions from wire types (plus `now_ms` where ages are shown) to strings or
//! `serde_json::Value`s. Nothing here writes, reads the clock or talks to the network, so every
//! format is pinned by a table-driven test.

use pmcluster_spec::secret::shown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{CellAlignment, Table, presets};
use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

/// Shown instead of a value that does not apply (no pid while stopped, no port, ...).
mod autoscale;
mod deploys;
mod status;

pub use autoscale::*;
pub use deploys::*;
pub use status::*;

const NONE: &str = "-";

/// Printed by `list` in table mode when there is nothing to show.
pub const NO_INSTANCES: &str =
    "no instances; start one with: pmcluster start \"node server.js\" --name web --instances 2";
/// Printed by `apps` in table mode when there is nothing to show.
pub const NO_APPS: &str =
    "no apps; start one with: pmcluster start \"node server.js\" --name web --instances 2";
/// Printed by `nodes` in table mode when no agent ever registered.
pub const NO_NODES: &str = "no nodes; start an agent on each host (pmcluster-agent --coordinator URL), \
     or a local cluster with: pmcluster up";

/// Lowercase state name without the enum prefix: `online`, `stopped`, ...
pub fn state_name(state: i32) -> &'static str {
    use pb::InstanceState as S;
    match S::try_from(state).unwrap_or(S::Unspecified) {
        S::Pending => "pending",
        S::Launching => "launching",
        S::Online => "online",
        S::Stopped => "stopped",
        S::Exited => "exited",
        S::Errored => "errored",
        S::Stopping => "stopping",
        S::Draining => "draining",
        S::Unknown | S::Unspecified => "unknown",
    }
}

/// An instance's health check result as `list` shows it: `healthy`, `unhealthy`, `unknown`
/// (checked, no result yet); `None` when it has no health check.
pub fn health_name(health: i32) -> Option<&'static str> {
    match pb::HealthState::try_from(health).unwrap_or(pb::HealthState::Unspecified) {
        pb::HealthState::Healthy => Some("healthy"),
        pb::HealthState::Unhealthy => Some("unhealthy"),
        pb::HealthState::Unknown => Some("unknown"),
        pb::HealthState::Unspecified => None,
    }
}

/// Lowercase node status without the enum prefix: `ready`, `down`, `draining`, ...
pub fn node_status_name(status: i32) -> &'static str {
    pb::NodeStatus::try_from(status)
        .ok()
        .and_then(|s| s.as_str_name().strip_prefix("NODE_STATUS_"))
        .map(|name| match name {
            "READY" => "ready",
            "DOWN" => "down",
            "DRAINING" => "draining",
            "INELIGIBLE" => "ineligible",
            "QUARANTINED" => "quarantined",
            _ => "unknown",
        })
        .unwrap_or("unknown")
}

fn stream_name(stream: i32) -> &'static str {
    match pb::LogStream::try_from(stream).unwrap_or(pb::LogStream::Unspecified) {
        pb::LogStream::Stderr => "stderr",
        pb::LogStream::Stdout | pb::LogStream::Unspecified => "stdout",
    }
}

/// Binary units with one decimal: `512 B`, `23.4 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The largest whole unit, as PM2 shows uptime: `5s`, `3m`, `2h`, `4d`. Negative ages (clock
/// skew between hosts) show as `0s`.
pub fn human_age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Milliseconds as humantime writes them: `2s`, `500ms`, `1m 30s`.
pub fn human_millis(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// A Unix time in milliseconds as RFC 3339 UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Now as Unix milliseconds, for the callers of the age-showing renderers.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

fn dash_if_zero(n: u32) -> String {
    if n == 0 {
        NONE.to_string()
    } else {
        n.to_string()
    }
}

fn running(i: &pb::Instance) -> bool {
    i.pid != 0 || i.started_at_ms != 0
}

/// [`render_table`] with every column left-aligned, for the verbs outside this module.
pub fn render_rows(header: &[&str], rows: Vec<Vec<String>>) -> String {
    render_table(header, rows, &[])
}

/// A borderless, kubectl-style table: uppercase headers, two spaces between columns, numeric
/// columns right-aligned, no trailing spaces.
fn render_table(header: &[&str], rows: Vec<Vec<String>>, right_aligned: &[usize]) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for row in rows {
        table.add_row(row);
    }
    for (idx, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right_aligned.contains(&idx) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = String::new();
    for line in table.lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The instance table of `list` and `info`, with notes for instances that carry a message
/// (why one is pending, why one errored).
pub fn instances_table(instances: &[pb::Instance], now_ms: i64) -> String {
    let rows = instances
        .iter()
        .map(|i| {
            let up = running(i);
            vec![
                i.app.clone(),
                i.index.to_string(),
                if i.node.is_empty() {
                    NONE.to_string()
                } else {
                    i.node.clone()
                },
                dash_if_zero(i.pid),
                dash_if_zero(i.port),
                state_name(i.state).to_string(),
                health_name(i.health).unwrap_or(NONE).to_string(),
                if up {
                    percent(i.cpu_percent)
                } else {
                    NONE.to_string()
                },
                // A process has memory: zero means its first sample has not come in yet.
                if up && i.memory_bytes > 0 {
                    human_bytes(i.memory_bytes)
                } else {
                    NONE.to_string()
                },
                i.restarts.to_string(),
                if i.started_at_ms > 0 {
                    human_age(now_ms - i.started_at_ms)
                } else {
                    NONE.to_string()
                },
            ]
        })
        .collect();
    let mut text = render_table(
        &[
            "app", "index", "node", "pid", "port", "status", "health", "cpu", "mem", "restarts",
            "uptime",
        ],
        rows,
        &[1, 3, 4, 7, 8, 9, 10],
    );
    // One note per app and message, so a hundred pending instances take one line.
    let mut notes: Vec<(&str, &str, Vec<u32>)> = Vec::new();
    for i in instances.iter().filter(|i| !i.message.is_empty()) {
        match notes
            .iter_mut()
            .find(|(app, message, _)| *app == i.app && *message == i.message)
        {
            Some((_, _, indices)) => indices.push(i.index),
            None => notes.push((&i.app, &i.message, vec![i.index])),
        }
    }
    if !notes.is_empty() {
        text.push('\n');
        for (app, message, indices) in notes {
            text.push_str(&format!("  {app}[{}]: {message}\n", index_ranges(&indices)));
        }
    }
    text
}

/// Indices as compact ranges: `0-3,5,7-8`.
pub fn index_ranges(indices: &[u32]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

fn zero_as_null(n: u32) -> Value {
    if n == 0 { Value::Null } else { json!(n) }
}

fn empty_as_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

/// One instance for `-o json`. `id` is the instance UUID; `index` is what `--instance` names.
pub fn instance_json(i: &pb::Instance, now_ms: i64) -> Value {
    json!({
        "app": i.app,
        "index": i.index,
        "id": i.id,
        "node": empty_as_null(&i.node),
        "pid": zero_as_null(i.pid),
        "port": zero_as_null(i.port),
        "status": state_name(i.state),
        "health": health_name(i.health),
        "cpu": i.cpu_percent,
        "memory": i.memory_bytes,
        "restarts": i.restarts,
        "uptime_ms": if i.started_at_ms > 0 { json!((now_ms - i.started_at_ms).max(0)) } else { Value::Null },
        "started_at_ms": if i.started_at_ms > 0 { json!(i.started_at_ms) } else { Value::Null },
        "version": i.app_version,
        "last_exit_code": i.last_exit_code,
        "stopped": i.stopped,
        "message": i.message,
    })
}

pub fn instances_json(instances: &[pb::Instance], now_ms: i64) -> Value {
    Value::Array(instances.iter().map(|i| instance_json(i, now_ms)).collect())
}

fn sorted_pairs(map: &std::collections::HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs
}

/// The node table of `nodes`.
pub fn nodes_table(nodes: &[pb::Node], now_ms: i64) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            let labels = sorted_pairs(&n.labels)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                n.name.clone(),
                node_status_name(n.status).to_string(),
                n.cores.to_string(),
                human_bytes(n.memory_bytes),
                percent(n.cpu_percent),
                human_bytes(n.memory_used_bytes),
                n.instances.to_string(),
                allocated(n),
                if labels.is_empty() {
                    NONE.to_string()
                } else {
                    labels
                },
                if n.last_heartbeat_ms > 0 {
                    format!("{} ago", human_age(now_ms - n.last_heartbeat_ms))
                } else {
                    "never".to_string()
                },
            ]
        })
        .collect();
    render_table(
        &[
            "node",
            "status",
            "cores",
            "memory",
            "cpu",
            "mem used",
            "instances",
            "allocated",
            "labels",
            "last heartbeat",
        ],
        rows,
        &[2, 3, 4, 5, 6],
    )
}

pub fn node_json(n: &pb::Node) -> Value {
    let labels: serde_json::Map<String, Value> = sorted_pairs(&n.labels)
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "name": n.name,
        "status": node_status_name(n.status),
        "hostname": n.hostname,
        "agent_version": n.agent_version,
        "cores": n.cores,
        "memory_bytes": n.memory_bytes,
        "cpu_percent": n.cpu_percent,
        "memory_used_bytes": n.memory_used_bytes,
        "instances": n.instances,
        "allocated_cpu_millis": n.allocated_cpu_millis,
        "allocated_memory_bytes": n.allocated_memory_bytes,
        "down_since_ms": if n.down_since_ms > 0 { json!(n.down_since_ms) } else { Value::Null },
        "labels": labels,
        "last_heartbeat_ms": if n.last_heartbeat_ms > 0 { json!(n.last_heartbeat_ms) } else { Value::Null },
        "message": n.message,
    })
}

/// Reserved resources of a node: `500m cpu, 1.0 GiB` or `-`.
fn allocated(n: &pb::Node) -> String {
    let mut parts = Vec::new();
    if n.allocated_cpu_millis > 0 {
        parts.push(format!("{}m cpu", n.allocated_cpu_millis));
    }
    if n.allocated_memory_bytes > 0 {
        parts.push(human_bytes(n.allocated_memory_bytes));
    }
    if parts.is_empty() {
        NONE.to_string()
    } else {
        parts.join(", ")
    }
}

/// `topology`: each node with its instances as a tree, then instances with no node.
pub fn topology_text(nodes: &[pb::Node], instances: &[pb::Instance]) -> String {
    let mut out = String::new();
    let line = |i: &pb::Instance| {
        let mut s = format!("{}[{}] {}", i.app, i.index, state_name(i.state));
        if i.pid != 0 {
            s.push_str(&format!(" pid {}", i.pid));
        }
        if i.port != 0 {
            s.push_str(&format!(" port {}", i.port));
        }
        s
    };
    let mut write_group = |title: String, members: Vec<&pb::Instance>| {
        out.push_str(&title);
        out.push('\n');
        let n = members.len();
        for (k, i) in members.into_iter().enumerate() {
            let branch = if k + 1 == n { "└─" } else { "├─" };
            out.push_str(&format!("  {branch} {}\n", line(i)));
        }
    };
    for node in nodes {
        let members: Vec<&pb::Instance> =
            instances.iter().filter(|i| i.node == node.name).collect();
        write_group(
            format!(
                "{} ({}, {} cores, {})",
                node.name,
                node_status_name(node.status),
                node.cores,
                plural_instances(members.len())
            ),
            members,
        );
    }
    let pending: Vec<&pb::Instance> = instances.iter().filter(|i| i.node.is_empty()).collect();
    if !pending.is_empty() {
        let why = pending
            .first()
            .map(|i| i.message.clone())
            .unwrap_or_default();
        write_group(format!("(no node) {why}"), pending);
    }
    if out.is_empty() {
        out.push_str(NO_NODES);
        out.push('\n');
    }
    out
}

fn plural_instances(n: usize) -> String {
    if n == 1 {
        "1 instance".into()
    } else {
        format!("{n} instances")
    }
}

pub fn topology_json(nodes: &[pb::Node], instances: &[pb::Instance]) -> Value {
    let now = now_ms();
    let mut list: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let mut v = node_json(n);
            let members: Vec<Value> = instances
                .iter()
                .filter(|i| i.node == n.name)
                .map(|i| instance_json(i, now))
                .collect();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("instance_list".into(), Value::Array(members));
            }
            v
        })
        .collect();
    let pending: Vec<Value> = instances
        .iter()
        .filter(|i| i.node.is_empty())
        .map(|i| instance_json(i, now))
        .collect();
    if !pending.is_empty() {
        list.push(json!({ "name": null, "status": "pending", "instance_list": pending }));
    }
    Value::Array(list)
}

pub fn nodes_json(nodes: &[pb::Node]) -> Value {
    Value::Array(nodes.iter().map(node_json).collect())
}

fn spec_of(app: &pb::App) -> pb::AppSpec {
    app.spec.clone().unwrap_or_default()
}

/// The app table of `apps`: instances read `online/desired`.
pub fn apps_table(apps: &[pb::App]) -> String {
    let rows = apps
        .iter()
        .map(|a| {
            let spec = spec_of(a);
            let command = std::iter::once(spec.script.clone())
                .chain(spec.args.iter().cloned())
                .collect::<Vec<_>>();
            vec![
                spec.name.clone(),
                a.version.to_string(),
                format!("{}/{}", a.online, spec.instances),
                a.pending.to_string(),
                a.stopped.to_string(),
                if spec.port.is_empty() {
                    NONE.to_string()
                } else {
                    spec.port.clone()
                },
                shell_words::join(command),
            ]
        })
        .collect();
    render_table(
        &[
            "app", "version", "online", "pending", "stopped", "port", "command",
        ],
        rows,
        &[1, 2, 3, 4],
    )
}

pub fn spec_json(s: &pb::AppSpec) -> Value {
    let env: serde_json::Map<String, Value> = sorted_pairs(&s.env)
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(shown(k, v, &s.secret_env))))
        .collect();
    json!({
        "name": s.name,
        "script": s.script,
        "args": s.args,
        "cwd": empty_as_null(&s.cwd),
        "env": env,
        "secret_env": s.secret_env,
        "instances": s.instances,
        "port": empty_as_null(&s.port),
        "instance_var": empty_as_null(&s.instance_var),
        "shell": s.shell,
        "autorestart": s.autorestart.unwrap_or(true),
        "restart_delay_ms": s.restart_delay_ms,
        "kill_timeout_ms": s.kill_timeout_ms,
        "exec_mode": empty_as_null(&s.exec_mode),
        "merge_logs": s.merge_logs,
        "instances_max": s.instances_max,
        "placement": s.placement.as_ref().map(|p| json!({
            "strategy": empty_as_null(&p.strategy),
            "constraints": p.constraints,
            "affinities": p.affinities.iter().map(|a| json!({"expr": a.expr, "weight": a.weight})).collect::<Vec<_>>(),
            "distinct_hosts": p.distinct_hosts,
            "max_per_node": zero_as_null(p.max_per_node),
        })),
        "resources": s.resources.as_ref().map(|r| json!({
            "cpu_millis": r.cpu_millis,
            "memory_bytes": r.memory_bytes,
            "overcommit": r.overcommit,
        })),
        "reschedule_after_ms": s.reschedule_after_ms,
        "wait_for_node": s.wait_for_node,
    })
}

/// `info`'s placement line: `spread; zone=a, disk!=hdd; prefers zone=b (50); 1 per node`.
fn placement_text(p: Option<&pb::Placement>) -> String {
    let Some(p) = p else {
        return "spread".to_string();
    };
    let mut parts = vec![if p.strategy.is_empty() {
        "spread".to_string()
    } else {
        p.strategy.clone()
    }];
    if !p.constraints.is_empty() {
        parts.push(format!("only {}", p.constraints.join(", ")));
    }
    if !p.affinities.is_empty() {
        let prefs: Vec<String> = p
            .affinities
            .iter()
            .map(|a| format!("{} ({})", a.expr, a.weight))
            .collect();
        parts.push(format!("prefers {}", prefs.join(", ")));
    }
    if p.distinct_hosts {
        parts.push("1 per node".to_string());
    } else if p.max_per_node > 0 {
        parts.push(format!("at most {} per node", p.max_per_node));
    }
    parts.join("; ")
}

/// `info`'s resources line: `500m cpu, 256.0 MiB (overcommit)`, or `-` for none reserved.
fn resources_text(r: Option<&pb::Resources>) -> String {
    let Some(r) = r.filter(|r| r.cpu_millis > 0 || r.memory_bytes > 0) else {
        return NONE.to_string();
    };
    let mut parts = Vec::new();
    if r.cpu_millis > 0 {
        parts.push(format!("{}m cpu", r.cpu_millis));
    }
    if r.memory_bytes > 0 {
        parts.push(human_bytes(r.memory_bytes));
    }
    let mut text = parts.join(", ");
    if r.overcommit {
        text.push_str(" (overcommit)");
    }
    text
}

/// `info`'s reschedule line.
fn reschedule_text(s: &pb::AppSpec) -> String {
    if s.wait_for_node {
        "never: waits for its node to come back".to_string()
    } else {
        format!(
            "after its node is down {}",
            human_millis(s.reschedule_after_ms.unwrap_or(30_000))
        )
    }
}

pub fn app_json(a: &pb::App) -> Value {
    let spec = spec_of(a);
    json!({
        "name": spec.name,
        "version": a.version,
        "updated_at_ms": a.updated_at_ms,
        "instances": spec.instances,
        "online": a.online,
        "pending": a.pending,
        "stopped": a.stopped,
        "spec": spec_json(&spec),
    })
}

pub fn apps_json(apps: &[pb::App]) -> Value {
    Value::Array(apps.iter().map(app_json).collect())
}

/// `info`: the app's fields, one per line, then its instances.
pub fn app_info_text(app: &pb::App, instances: &[pb::Instance], now_ms: i64) -> String {
    let s = spec_of(app);
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let or_dash = |v: &str| {
        if v.is_empty() {
            NONE.to_string()
        } else {
            v.to_string()
        }
    };
    let updated = if app.updated_at_ms > 0 {
        format!(
            "{} (updated {} ago)",
            app.version,
            human_age(now_ms - app.updated_at_ms)
        )
    } else {
        app.version.to_string()
    };
    let env = sorted_pairs(&s.env)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", shown(k, v, &s.secret_env)))
        .collect::<Vec<_>>();
    let kill_timeout = s
        .kill_timeout_ms
        .map_or_else(|| "5s".to_string(), human_millis);
    let fields: Vec<(&str, String)> = vec![
        ("app", s.name.clone()),
        ("version", updated),
        (
            "instances",
            format!(
                "{}{} desired: {} online, {} pending, {} stopped",
                s.instances,
                if s.instances_max { " (max)" } else { "" },
                app.online,
                app.pending,
                app.stopped
            ),
        ),
        ("script", s.script.clone()),
        ("args", or_dash(&shell_words::join(&s.args))),
        ("port", or_dash(&s.port)),
        ("cwd", or_dash(&s.cwd)),
        (
            "env",
            if env.is_empty() {
                NONE.to_string()
            } else {
                env.join("\n")
            },
        ),
        ("placement", placement_text(s.placement.as_ref())),
        ("resources", resources_text(s.resources.as_ref())),
        ("reschedule", reschedule_text(&s)),
        ("instance var", or_dash(&s.instance_var)),
        ("shell", yes_no(s.shell)),
        ("autorestart", yes_no(s.autorestart.unwrap_or(true))),
        ("restart delay", human_millis(s.restart_delay_ms)),
        ("kill timeout", kill_timeout),
        (
            "exec mode",
            if s.exec_mode.is_empty() {
                "fork".to_string()
            } else {
                s.exec_mode.clone()
            },
        ),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut text = String::new();
    for (key, value) in fields {
        // Multi-line values (env) continue under the value column.
        for (n, line) in value.lines().enumerate() {
            let label = if n == 0 {
                format!("{key}:")
            } else {
                String::new()
            };
            text.push_str(&format!("{label:<width$}{line}\n"));
        }
    }
    text.push('\n');
    if instances.is_empty() {
        text.push_str("no instances\n");
    } else {
        text.push_str(&instances_table(instances, now_ms));
    }
    text
}

/// `info -o json`: `{"app": {...}, "instances": [...]}`.
pub fn app_info_json(app: &pb::App, instances: &[pb::Instance], now_ms: i64) -> Value {
    json!({
        "app": app_json(app),
        "instances": instances_json(instances, now_ms),
    })
}

/// `app[index]`, or just `app` when no index applies; `-` when neither.
fn target(app: &str, index: Option<u32>) -> String {
    match (app.is_empty(), index) {
        (true, _) => NONE.to_string(),
        (false, Some(i)) => format!("{app}[{i}]"),
        (false, None) => app.to_string(),
    }
}

/// One event of `events`: `time kind app[index] node message`.
pub fn event_line(e: &pb::Event) -> String {
    let node = if e.node.is_empty() { NONE } else { &e.node };
    format!(
        "{}  {:<16} {:<16} {:<12} {}",
        timestamp(e.at_ms),
        e.kind,
        target(&e.app, e.index),
        node,
        e.message
    )
    .trim_end()
    .to_string()
}

pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "at_ms": e.at_ms,
        "kind": e.kind,
        "app": empty_as_null(&e.app),
        "index": e.index,
        "node": empty_as_null(&e.node),
        "message": e.message,
    })
}

/// One log line: `web[2] | text` for stdout, `web[2] err| text` for stderr, or the bare text.
pub fn log_line(l: &pb::LogLine, raw: bool) -> String {
    if raw {
        return l.line.clone();
    }
    let sep = if stream_name(l.stream) == "stderr" {
        "err|"
    } else {
        "|"
    };
    format!("{}[{}] {} {}", l.app, l.index, sep, l.line)
}

pub fn log_json(l: &pb::LogLine) -> Value {
    json!({
        "app": l.app,
        "index": l.index,
        "node": l.node,
        "stream": stream_name(l.stream),
        "line": l.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn instance(app: &str, index: u32, state: pb::InstanceState) -> pb::Instance {
        let online = state == pb::InstanceState::Online;
        pb::Instance {
            id: format!("id-{app}-{index}"),
            app: app.into(),
            index,
            node: if state == pb::InstanceState::Pending {
                String::new()
            } else {
                "node-a".into()
            },
            state: state as i32,
            pid: if online { 4100 + index } else { 0 },
            port: 3000 + index,
            cpu_percent: if online { 12.5 } else { 0.0 },
            memory_bytes: if online { 24_536_678 } else { 0 },
            restarts: index,
            started_at_ms: if online { NOW - 5_000 } else { 0 },
            app_version: 1,
            last_exit_code: None,
            message: String::new(),
            stopped: state == pb::InstanceState::Stopped,
            health: 0,
        }
    }

    #[test]
    fn endpoint_renderings() {
        let e = pb::Endpoints {
            app: "web".into(),
            endpoints: vec![
                pb::Endpoint {
                    host: "10.0.0.1".into(),
                    port: 4100,
                    index: 0,
                    node: "a".into(),
                    version: 2,
                    instance_id: "1e2d4b6c-0000-4000-8000-000000000001".into(),
                },
                pb::Endpoint {
                    host: "10.0.0.2".into(),
                    port: 4101,
                    index: 1,
                    node: "b".into(),
                    version: 2,
                    instance_id: "0b9c7e2a-0000-4000-8000-000000000002".into(),
                },
                pb::Endpoint {
                    host: "10.0.0.2".into(),
                    port: 4102,
                    index: 1,
                    node: "b".into(),
                    version: 2,
                    instance_id: "5f1d3a90-0000-4000-8000-000000000003".into(),
                },
            ],
        };
        assert_eq!(
            endpoints_plain(&e),
            "10.0.0.1:4100\n10.0.0.2:4101\n10.0.0.2:4102\n"
        );
        let nginx = endpoints_nginx(&e);
        assert!(nginx.contains("upstream web {\n"), "{nginx}");
        assert!(
            nginx.contains("    server 10.0.0.2:4101 max_fails=1 fail_timeout=1s;  # web[1] v2\n"),
            "{nginx}"
        );
        assert!(nginx.ends_with("}\n"));
        let haproxy = endpoints_haproxy(&e);
        assert!(haproxy.contains("backend web\n"), "{haproxy}");
        assert!(
            haproxy.contains("    server web-0-v2-1e2d4b6c 10.0.0.1:4100\n"),
            "{haproxy}"
        );
        // Two copies of index 1 (a handoff): distinct server names, as HAProxy requires.
        let names: std::collections::BTreeSet<&str> = haproxy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(names.len(), 3, "{haproxy}");
        assert_eq!(endpoints_json(&e)[1]["port"], 4101);
        // No endpoint: nginx needs a server line to accept the block.
        let none = pb::Endpoints {
            app: "web".into(),
            endpoints: vec![],
        };
        assert!(endpoints_nginx(&none).contains("server 127.0.0.1:9 down;"));
        assert!(!endpoints_haproxy(&none).contains("    server "));
    }

    #[test]
    fn topology_tree() {
        let nodes = vec![
            pb::Node {
                name: "node-a".into(),
                status: pb::NodeStatus::Ready as i32,
                cores: 2,
                ..Default::default()
            },
            pb::Node {
                name: "node-b".into(),
                status: pb::NodeStatus::Draining as i32,
                cores: 4,
                ..Default::default()
            },
        ];
        let mut pending = instance("web", 2, pb::InstanceState::Pending);
        pending.message = "1 pending: no ready node".into();
        let instances = vec![
            instance("web", 0, pb::InstanceState::Online),
            instance("web", 1, pb::InstanceState::Launching),
            pending,
        ];
        let want = "node-a (ready, 2 cores, 2 instances)\n  ├─ web[0] online pid 4100 port 3000\n  \
                    └─ web[1] launching port 3001\nnode-b (draining, 4 cores, 0 instances)\n\
                    (no node) 1 pending: no ready node\n  └─ web[2] pending port 3002\n";
        assert_eq!(topology_text(&nodes, &instances), want);
        let json = topology_json(&nodes, &instances);
        assert_eq!(json[0]["instance_list"].as_array().map(Vec::len), Some(2));
        assert_eq!(json[2]["status"], "pending");
        assert_eq!(topology_text(&[], &[]), format!("{NO_NODES}\n"));
    }

    #[test]
    fn human_units() {
        let bytes = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (24_536_678, "23.4 MiB"),
            (8 * 1024 * 1024 * 1024, "8.0 GiB"),
        ];
        for (input, want) in bytes {
            assert_eq!(human_bytes(input), want, "{input}");
        }
        let ages = [
            (-5_000, "0s"),
            (0, "0s"),
            (5_999, "5s"),
            (180_000, "3m"),
            (7_200_000, "2h"),
            (4 * 86_400_000, "4d"),
        ];
        for (input, want) in ages {
            assert_eq!(human_age(input), want, "{input}");
        }
        assert_eq!(human_millis(2000), "2s");
        assert_eq!(human_millis(0), "0s");
        assert_eq!(timestamp(NOW), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ranges() {
        let cases: &[(&[u32], &str)] = &[
            (&[], ""),
            (&[3], "3"),
            (&[0, 1, 2, 3], "0-3"),
            (&[8, 7, 0, 1, 5, 3, 2, 3], "0-3,5,7-8"),
        ];
        for (input, want) in cases {
            assert_eq!(index_ranges(input), *want, "{input:?}");
        }
    }

    #[test]
    fn state_names() {
        use pb::InstanceState as S;
        let cases = [
            (S::Unspecified as i32, "unknown"),
            (S::Pending as i32, "pending"),
            (S::Launching as i32, "launching"),
            (S::Online as i32, "online"),
            (S::Stopped as i32, "stopped"),
            (S::Exited as i32, "exited"),
            (S::Errored as i32, "errored"),
            (S::Stopping as i32, "stopping"),
            (S::Unknown as i32, "unknown"),
            (99, "unknown"),
        ];
        for (input, want) in cases {
            assert_eq!(state_name(input), want, "{input}");
        }
        assert_eq!(node_status_name(pb::NodeStatus::Ready as i32), "ready");
        assert_eq!(node_status_name(pb::NodeStatus::Down as i32), "down");
        assert_eq!(node_status_name(3), "draining");
        assert_eq!(node_status_name(4), "ineligible");
        assert_eq!(node_status_name(0), "unknown");
        assert_eq!(node_status_name(99), "unknown");
    }

    fn check_table(got: String, want: &str) {
        assert_eq!(got, want, "\ngot:\n{got}\nwant:\n{want}");
    }

    #[test]
    fn instance_table() {
        use pb::InstanceState as S;
        let mut pending = instance("web", 2, S::Pending);
        pending.message = "no ready node".into();
        pending.port = 0;
        let mut errored = instance("web", 3, S::Errored);
        errored.message = "cannot execute \"nod\": not found".into();
        let mut healthy = instance("web", 1, S::Online);
        healthy.health = pb::HealthState::Healthy as i32;
        let mut pending_too = instance("web", 4, S::Pending);
        pending_too.message = "no ready node".into();
        pending_too.port = 0;
        let cases: Vec<(Vec<pb::Instance>, &str)> = vec![
            (
                vec![instance("web", 0, S::Online)],
                "\
APP  INDEX  NODE     PID  PORT  STATUS  HEALTH    CPU       MEM  RESTARTS  UPTIME
web      0  node-a  4100  3000  online  -       12.5%  23.4 MiB         0      5s
",
            ),
            (
                vec![
                    instance("api", 0, S::Stopped),
                    healthy,
                    pending,
                    errored,
                    pending_too,
                ],
                "\
APP  INDEX  NODE     PID  PORT  STATUS   HEALTH     CPU       MEM  RESTARTS  UPTIME
api      0  node-a     -  3000  stopped  -            -         -         0       -
web      1  node-a  4101  3001  online   healthy  12.5%  23.4 MiB         1      5s
web      2  -          -     -  pending  -            -         -         2       -
web      3  node-a     -  3003  errored  -            -         -         3       -
web      4  -          -     -  pending  -            -         -         4       -

  web[2,4]: no ready node
  web[3]: cannot execute \"nod\": not found
",
            ),
        ];
        for (input, want) in cases {
            check_table(instances_table(&input, NOW), want);
        }
    }

    #[test]
    fn instance_json_shape() {
        use pb::InstanceState as S;
        let got = instances_json(
            &[
                instance("web", 1, S::Online),
                instance("web", 2, S::Pending),
            ],
            NOW,
        );
        let want = json!([
            {"app": "web", "index": 1, "id": "id-web-1", "node": "node-a", "pid": 4101,
             "port": 3001, "status": "online", "health": null, "cpu": 12.5, "memory": 24_536_678, "restarts": 1,
             "uptime_ms": 5000, "started_at_ms": NOW - 5000, "version": 1,
             "last_exit_code": null, "stopped": false, "message": ""},
            {"app": "web", "index": 2, "id": "id-web-2", "node": null, "pid": null,
             "port": 3002, "status": "pending", "health": null, "cpu": 0.0, "memory": 0, "restarts": 2,
             "uptime_ms": null, "started_at_ms": null, "version": 1,
             "last_exit_code": null, "stopped": false, "message": ""},
        ]);
        assert_eq!(got, want);
    }

    fn node(name: &str, status: pb::NodeStatus) -> pb::Node {
        pb::Node {
            name: name.into(),
            status: status as i32,
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("disk".into(), "ssd".into()),
            ]
            .into_iter()
            .collect(),
            cores: 8,
            memory_bytes: 16 * 1024 * 1024 * 1024,
            instances: 3,
            last_heartbeat_ms: NOW - 1_000,
            hostname: name.into(),
            agent_version: "0.1.0".into(),
            cpu_percent: 7.25,
            memory_used_bytes: 3 * 1024 * 1024 * 1024,
            ..Default::default()
        }
    }

    #[test]
    fn node_table_and_json() {
        let mut down = node("b", pb::NodeStatus::Down);
        down.labels.clear();
        down.last_heartbeat_ms = 0;
        check_table(
            nodes_table(&[node("a", pb::NodeStatus::Ready), down], NOW),
            "\
NODE  STATUS  CORES    MEMORY   CPU  MEM USED  INSTANCES  ALLOCATED  LABELS           LAST HEARTBEAT
a     ready       8  16.0 GiB  7.2%   3.0 GiB          3  -          disk=ssd,zone=a  1s ago
b     down        8  16.0 GiB  7.2%   3.0 GiB          3  -          -                never
",
        );
        let got = node_json(&node("a", pb::NodeStatus::Ready));
        assert_eq!(got["labels"], json!({"disk": "ssd", "zone": "a"}));
        assert_eq!(got["status"], "ready");
        assert_eq!(got["last_heartbeat_ms"], NOW - 1_000);
    }

    fn app(name: &str) -> pb::App {
        pb::App {
            spec: Some(pb::AppSpec {
                name: name.into(),
                script: "node".into(),
                args: vec!["server.js".into(), "--title".into(), "my app".into()],
                instances: 4,
                port: "3000-3003".into(),
                env: [("NODE_ENV".to_string(), "production".to_string())]
                    .into_iter()
                    .collect(),
                autorestart: Some(true),
                restart_delay_ms: 2000,
                ..Default::default()
            }),
            version: 2,
            updated_at_ms: NOW - 180_000,
            online: 3,
            pending: 1,
            stopped: 0,
        }
    }

    /// Issue 12 item 4: a secret env value is shown nowhere, its key and the others are.
    #[test]
    fn secret_env_values_are_hidden() {
        let mut spec = pmcluster_spec::AppSpec::new("web", "node", &["server.js"]);
        spec.env.insert("DB_PASS".into(), "hunter2".into());
        spec.env.insert("MODE".into(), "prod".into());
        spec.secret_env.insert("DB_PASS".into());
        let app = pb::App {
            spec: Some(pb::AppSpec::from(&spec)),
            version: 1,
            ..pb::App::default()
        };
        let instances = [instance("web", 0, pb::InstanceState::Online)];
        let outputs = [
            app_info_text(&app, &instances, NOW),
            app_info_json(&app, &instances, NOW).to_string(),
            apps_json(std::slice::from_ref(&app)).to_string(),
        ];
        for out in outputs {
            assert!(!out.contains("hunter2"), "{out}");
            assert!(out.contains("DB_PASS"), "{out}");
            assert!(out.contains("<secret>"), "{out}");
            assert!(out.contains("prod"), "{out}");
        }
    }

    #[test]
    fn app_table_and_info() {
        check_table(
            apps_table(&[app("web")]),
            "\
APP  VERSION  ONLINE  PENDING  STOPPED  PORT       COMMAND
web        2     3/4        1        0  3000-3003  node server.js --title 'my app'
",
        );
        check_table(
            app_info_text(&app("web"), &[], NOW),
            "\
app:           web
version:       2 (updated 3m ago)
instances:     4 desired: 3 online, 1 pending, 0 stopped
script:        node
args:          server.js --title 'my app'
port:          3000-3003
cwd:           -
env:           NODE_ENV=production
placement:     spread
resources:     -
reschedule:    after its node is down 30s
instance var:  -
shell:         no
autorestart:   yes
restart delay: 2s
kill timeout:  5s
exec mode:     fork

no instances
",
        );
        let got = app_json(&app("web"));
        assert_eq!(got["spec"]["env"], json!({"NODE_ENV": "production"}));
        assert_eq!(got["spec"]["cwd"], Value::Null);
        assert_eq!(got["instances"], 4);
        assert_eq!(got["online"], 3);

        let placed = pb::Placement {
            strategy: "binpack".into(),
            constraints: vec!["zone=a".into(), "disk!=hdd".into()],
            affinities: vec![pb::Affinity {
                expr: "gpu".into(),
                weight: -20,
            }],
            distinct_hosts: false,
            max_per_node: 2,
        };
        let cases = [
            (None, "spread"),
            (
                Some(placed),
                "binpack; only zone=a, disk!=hdd; prefers gpu (-20); at most 2 per node",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(placement_text(input.as_ref()), want);
        }
        let resources = |cpu_millis, memory_bytes, overcommit| pb::Resources {
            cpu_millis,
            memory_bytes,
            overcommit,
        };
        let cases = [
            (None, "-"),
            (Some(resources(0, 0, true)), "-"),
            (Some(resources(500, 0, false)), "500m cpu"),
            (
                Some(resources(250, 256 << 20, true)),
                "250m cpu, 256.0 MiB (overcommit)",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(resources_text(input.as_ref()), want);
        }
    }

    #[test]
    fn log_and_event_lines() {
        let line = |stream: pb::LogStream| pb::LogLine {
            app: "web".into(),
            index: 2,
            node: "a".into(),
            stream: stream as i32,
            line: "listening on 3002".into(),
        };
        let cases = [
            (
                line(pb::LogStream::Stdout),
                false,
                "web[2] | listening on 3002",
            ),
            (
                line(pb::LogStream::Stderr),
                false,
                "web[2] err| listening on 3002",
            ),
            (line(pb::LogStream::Stderr), true, "listening on 3002"),
        ];
        for (input, raw, want) in cases {
            assert_eq!(log_line(&input, raw), want);
        }
        assert_eq!(log_json(&line(pb::LogStream::Stderr))["stream"], "stderr");

        let event = |app: &str, index: Option<u32>, node: &str| pb::Event {
            at_ms: NOW,
            kind: "instance.state".into(),
            app: app.into(),
            node: node.into(),
            index,
            message: "online".into(),
        };
        let cases = [
            (
                event("web", Some(2), "a"),
                "2023-11-14T22:13:20Z  instance.state   web[2]           a            online",
            ),
            (
                event("", None, ""),
                "2023-11-14T22:13:20Z  instance.state   -                -            online",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(event_line(&input), want);
        }
        assert_eq!(event_json(&event("", None, "a"))["app"], Value::Null);
    }
}
