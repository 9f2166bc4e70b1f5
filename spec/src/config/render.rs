//! The config-file form of a spec, for showing a spec and editing it field by field.

use super::*;

/// The config-file form of a spec (JSON), which [`parse_apps`](super::parse_apps) reads back to the same spec.
/// Used to show a spec and to edit it field by field (`pmcluster reload --set`).
pub fn to_config(spec: &AppSpec) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let ms = duration_text;
    let mut o = Map::new();
    o.insert("name".into(), json!(spec.name));
    o.insert("script".into(), json!(spec.script));
    o.insert("args".into(), json!(spec.args));
    if let Some(cwd) = &spec.cwd {
        o.insert("cwd".into(), json!(cwd));
    }
    o.insert(
        "env".into(),
        crate::secret::env_config(&spec.env, &spec.secret_env, true),
    );
    o.insert(
        "instances".into(),
        if spec.instances_max {
            json!("max")
        } else {
            json!(spec.instances)
        },
    );
    if spec.port != PortSpec::None {
        o.insert("port".into(), json!(spec.port.to_string()));
    }
    if let Some(v) = &spec.instance_var {
        o.insert("instance_var".into(), json!(v));
    }
    o.insert("shell".into(), json!(spec.shell));
    o.insert("autorestart".into(), json!(spec.autorestart));
    o.insert("restart_delay".into(), json!(ms(spec.restart_delay)));
    o.insert("kill_timeout".into(), json!(ms(spec.kill_timeout)));
    o.insert("exec_mode".into(), json!(spec.exec_mode.as_str()));
    o.insert("merge_logs".into(), json!(spec.merge_logs));
    let p = &spec.placement;
    o.insert(
        "placement".into(),
        json!({
            "strategy": p.strategy.as_str(),
            "constraints": p.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "affinities": p.affinities.iter().map(|a| json!({"expr": a.constraint.to_string(), "weight": a.weight})).collect::<Vec<_>>(),
            "max_per_node": p.max_per_node,
        }),
    );
    o.insert(
        "resources".into(),
        json!({
            "cpu": format!("{}m", spec.resources.cpu_millis),
            "memory": size_text(spec.resources.memory_bytes),
            "overcommit": spec.resources.overcommit,
        }),
    );
    o.insert(
        "reschedule_after".into(),
        match spec.reschedule {
            Reschedule::Never => json!("never"),
            Reschedule::After(d) => json!(ms(d)),
        },
    );
    let s = &spec.supervision;
    o.insert("min_uptime".into(), json!(ms(s.min_uptime)));
    o.insert("max_restarts".into(), json!(s.max_restarts));
    o.insert("restart_window".into(), json!(ms(s.restart_window)));
    o.insert(
        "restart_backoff_max".into(),
        json!(ms(s.restart_backoff_max)),
    );
    o.insert("stop_signal".into(), json!(s.stop_signal.name()));
    o.insert("listen_timeout".into(), json!(ms(s.listen_timeout)));
    if let Some(hc) = &s.health_check {
        let mut h = Map::new();
        match &hc.probe {
            Probe::Http {
                url,
                expected_status,
            } => {
                h.insert("check_type".into(), json!("http"));
                h.insert("url".into(), json!(url));
                if let Some(code) = expected_status {
                    h.insert("expected_status".into(), json!(code));
                }
            }
            Probe::Tcp => {
                h.insert("check_type".into(), json!("tcp"));
            }
            Probe::Exec { command } => {
                h.insert("check_type".into(), json!("exec"));
                h.insert("command".into(), json!(command));
            }
        }
        h.insert("interval".into(), json!(ms(hc.interval)));
        h.insert("timeout".into(), json!(ms(hc.timeout)));
        h.insert("retries".into(), json!(hc.retries));
        h.insert("restart_unhealthy".into(), json!(hc.restart_unhealthy));
        o.insert("health_check".into(), Value::Object(h));
    }
    if let Some(m) = s.max_memory_restart {
        o.insert("max_memory_restart".into(), json!(size_text(m)));
    }
    if !s.cpu_affinity.is_empty() {
        o.insert("cpu_affinity".into(), json!(s.cpu_affinity));
    }
    if !s.limits.is_empty() {
        o.insert("limits".into(), json!(s.limits));
    }
    if let Some(u) = &s.user {
        o.insert("user".into(), json!(u));
    }
    if let Some(g) = &s.group {
        o.insert("group".into(), json!(g));
    }
    if let Some(c) = &s.cron_restart {
        o.insert("cron_restart".into(), json!(c));
    }
    o.insert("log_timestamps".into(), json!(s.log_timestamps));
    o.insert(
        "log_max_size".into(),
        json!(size_text(s.log_max_bytes.unwrap_or(0))),
    );
    o.insert("log_retain".into(), json!(s.log_keep));
    if let Some(a) = &spec.autoscale {
        o.insert(
            "autoscale".into(),
            json!({
                "min": a.min, "max": a.max, "mode": a.mode.as_str(),
                "cpu_threshold": a.cpu_threshold,
                "memory_threshold": match a.memory_threshold {
                    Some(MemoryThreshold::Percent(p)) => json!(p),
                    Some(MemoryThreshold::Bytes(b)) => json!(size_text(b)),
                    None => Value::Null,
                },
                "scale_down_fraction": a.scale_down_fraction, "tolerance": a.tolerance,
                "cooldown": ms(a.cooldown), "up_stabilization": ms(a.up_stabilization),
                "down_stabilization": ms(a.down_stabilization),
            }),
        );
    }
    let u = &spec.update;
    o.insert(
        "update".into(),
        json!({
            "max_surge": u.max_surge, "max_unavailable": u.max_unavailable,
            "min_healthy_time": ms(u.min_healthy_time), "healthy_deadline": ms(u.healthy_deadline),
            "progress_deadline": ms(u.progress_deadline), "auto_rollback": u.auto_rollback,
            "canary": u.canary, "shutdown_delay": ms(u.shutdown_delay),
        }),
    );
    // Null values (unset options) are left out, so the result parses back.
    strip_nulls(Value::Object(o))
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}
