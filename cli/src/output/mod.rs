//! Rendering of coordinator answers as human tables and as JSON for scripts.
//!
//! Pure functions from wire types (plus `now_ms` where ages are shown) to strings or
//! `serde_json::Value`s. Nothing here writes, reads the clock or talks to the network, so every
//! format is pinned by a table-driven test.

use pmcluster_spec::config::to_config;
use pmcluster_spec::secret::shown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

use crate::args::OutputFormat;

/// Shown instead of a value that does not apply (no pid while stopped, no port, ...).
mod autoscale;
mod deploys;
mod stats;
mod status;
mod table;

use table::render_table;

pub use autoscale::*;
pub use deploys::*;
pub use stats::*;
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

mod app;
pub use app::*;
#[cfg(test)]
use app::{placement_text, resources_text};

/// A one-shot answer for scripts: pretty JSON, or a YAML document, ending in a newline.
/// `format` is `Json` or `Yaml`; anything else is a bug of the caller and gets JSON.
pub fn document(value: &Value, format: OutputFormat) -> Result<String, EncodeError> {
    match format {
        OutputFormat::Yaml => yaml(value),
        _ => Ok(serde_json::to_string_pretty(value)? + "\n"),
    }
}

/// One item of a stream for scripts: a compact JSON object on one line, or a YAML document
/// opened by `---`, so that a reader of the whole stream gets one document per item.
pub fn stream_item(value: &Value, format: OutputFormat) -> Result<String, EncodeError> {
    match format {
        OutputFormat::Yaml => Ok(format!("---\n{}", yaml(value)?)),
        _ => Ok(serde_json::to_string(value)? + "\n"),
    }
}

fn yaml(value: &Value) -> Result<String, EncodeError> {
    let mut text = serde_saphyr::to_string(value).map_err(|e| EncodeError::Yaml(e.to_string()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// An answer that could not be encoded for `-o json|yaml`.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("encoding YAML: {0}")]
    Yaml(String),
}

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
        S::Restarting => "restarting",
        S::Unknown | S::Unspecified => "unknown",
    }
}

/// An instance's status as `list` shows it: its state, with `(disabled)` when out of rotation
/// and `(leak?)` while a memory leak is suspected.
pub fn instance_status(i: &pb::Instance) -> String {
    let mut s = state_name(i.state).to_string();
    if i.disabled {
        s.push_str(" (disabled)");
    }
    if !i.leak.is_empty() {
        s.push_str(" (leak?)");
    }
    s
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
            "RECONNECTING" => "reconnecting",
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
    // A sum of tiny negative rounding errors must not read "-0.0%".
    format!("{:.1}%", if p.abs() < 0.05 { 0.0 } else { p })
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

/// Whether an instance's host address says more than "this machine": a HOST column is shown
/// only then, so that on one machine the table stays as narrow as it was.
fn off_loopback(host: &str) -> bool {
    !host.is_empty()
        && !host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
}

/// The instance table of `list` and `info`, with notes for instances that carry a message
/// (why one is pending, why one errored). Across hosts it has a HOST column: the address that
/// reaches the instance (its node's advertised address).
pub fn instances_table(instances: &[pb::Instance], now_ms: i64) -> String {
    let with_host = instances.iter().any(|i| off_loopback(&i.host));
    let rows = instances
        .iter()
        .map(|i| {
            let up = running(i);
            // The figures of an instance whose node is down are not measured now (the
            // coordinator sends 0): a trial read CPU `0.0%` there beside MEM `-`.
            let measured = up && i.state() != pb::InstanceState::Unknown;
            let mut row = vec![
                i.app.clone(),
                i.index.to_string(),
                if i.node.is_empty() {
                    NONE.to_string()
                } else {
                    i.node.clone()
                },
            ];
            if with_host {
                row.push(if i.host.is_empty() {
                    NONE.to_string()
                } else {
                    i.host.clone()
                });
            }
            row.extend([
                dash_if_zero(i.pid),
                dash_if_zero(i.port),
                instance_status(i),
                health_name(i.health).unwrap_or(NONE).to_string(),
                if measured {
                    percent(i.cpu_percent)
                } else {
                    NONE.to_string()
                },
                // A process has memory: zero means its first sample has not come in yet.
                if measured && i.memory_bytes > 0 {
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
            ]);
            row
        })
        .collect();
    let mut header = vec!["app", "index", "node"];
    if with_host {
        header.push("host");
    }
    header.extend([
        "pid", "port", "status", "health", "cpu", "mem", "restarts", "uptime",
    ]);
    // INDEX, PID, PORT, CPU, MEM, RESTARTS and UPTIME.
    let shift = usize::from(with_host);
    let right: Vec<usize> = [
        1,
        3 + shift,
        4 + shift,
        7 + shift,
        8 + shift,
        9 + shift,
        10 + shift,
    ]
    .into_iter()
    .collect();
    let mut text = render_table(&header, rows, &right);
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
        "host": empty_as_null(&i.host),
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
        "disabled": i.disabled,
        "removed": i.removed,
        "unmanaged": i.unmanaged,
        "leak": empty_as_null(&i.leak),
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
                used(n, percent(n.cpu_percent)),
                used(n, human_bytes(n.memory_used_bytes)),
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
        "address": empty_as_null(&n.address),
        "agent_version": n.agent_version,
        "cores": n.cores,
        "memory_bytes": n.memory_bytes,
        "cpu_percent": if measured(n) { json!(n.cpu_percent) } else { Value::Null },
        "memory_used_bytes": if measured(n) { json!(n.memory_used_bytes) } else { Value::Null },
        "instances": n.instances,
        "allocated_cpu_millis": n.allocated_cpu_millis,
        "allocated_memory_bytes": n.allocated_memory_bytes,
        "down_since_ms": if n.down_since_ms > 0 { json!(n.down_since_ms) } else { Value::Null },
        "labels": labels,
        "last_heartbeat_ms": if n.last_heartbeat_ms > 0 { json!(n.last_heartbeat_ms) } else { Value::Null },
        "message": n.message,
    })
}

/// Whether a node's CPU and memory in use are measured now: not while it is down or has not
/// reconnected (a trial read a down node's last figures as current).
fn measured(n: &pb::Node) -> bool {
    !matches!(
        pb::NodeStatus::try_from(n.status),
        Ok(pb::NodeStatus::Down | pb::NodeStatus::Reconnecting)
    )
}

/// A node's figure in use, or `-` when it is not measured now (see [`measured`]).
fn used(n: &pb::Node, figure: String) -> String {
    match measured(n) {
        true => figure,
        false => NONE.to_string(),
    }
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

/// `app[index]`, or just `app` when no index applies; `-` when neither.
fn target(app: &str, index: Option<u32>) -> String {
    match (app.is_empty(), index) {
        (true, _) => NONE.to_string(),
        (false, Some(i)) => format!("{app}[{i}]"),
        (false, None) => app.to_string(),
    }
}

/// One event of `events`: `time kind app[index] node message`. Lines stream out one by one,
/// so the columns are fixed; a long kind (`instance.leak_suspected`) takes from the target's
/// padding, so node and message stay in line with the rows around it.
pub fn event_line(e: &pb::Event) -> String {
    let node = if e.node.is_empty() { NONE } else { &e.node };
    let kind_target = format!("{:<16} {}", e.kind, target(&e.app, e.index));
    format!(
        "{}  {:<33} {:<12} {}",
        timestamp(e.at_ms),
        kind_target,
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
        "unread": l.unread,
    })
}

#[cfg(test)]
mod tests;
