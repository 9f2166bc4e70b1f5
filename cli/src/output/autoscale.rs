//! Rendering of `autoscale APP`: the policy, the current metrics and the last decisions.

use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

use super::*;

/// `autoscale APP`: the policy, the current metrics and the last decisions.
pub fn autoscale_text(s: &pb::AutoscaleStatus) -> String {
    let mut out = String::new();
    let p = s.policy.clone().unwrap_or_default();
    if !p.enabled {
        out.push_str(&format!(
            "{}: autoscaling is off ({} instances)\nturn it on with: pmcluster autoscale {} --min 2 --max 10 --cpu-threshold 70\n",
            s.app, s.instances, s.app
        ));
    } else {
        let mode = if p.mode.is_empty() {
            "threshold"
        } else {
            p.mode.as_str()
        };
        out.push_str(&format!(
            "{}: autoscaling {}..{} instances ({mode} mode)\n",
            s.app, p.min, p.max
        ));
        let mut rules = Vec::new();
        if p.cpu_threshold > 0.0 {
            rules.push(format!("cpu {:.0}%", p.cpu_threshold));
        }
        if p.memory_threshold_bytes > 0 {
            rules.push(format!("memory {}", human_bytes(p.memory_threshold_bytes)));
        } else if p.memory_threshold > 0.0 {
            rules.push(format!("memory {:.0}% of limit", p.memory_threshold));
        }
        out.push_str(&format!(
            "  thresholds: {}; cooldown {}; up after {}, down after {}\n",
            rules.join(", "),
            human_millis(p.cooldown_ms.unwrap_or(15_000)),
            human_millis(p.up_stabilization_ms),
            human_millis(p.down_stabilization_ms.unwrap_or(300_000))
        ));
    }
    let cpu = s
        .cpu_avg
        .map(|c| format!("{c:.1}%"))
        .unwrap_or_else(|| NONE.to_string());
    let mem = s
        .memory_avg_bytes
        .map(human_bytes)
        .unwrap_or_else(|| NONE.to_string());
    out.push_str(&format!(
        "  now: {} instances, {} online with fresh metrics, cpu avg {cpu}, memory avg {mem}\n",
        s.instances, s.online
    ));
    if !s.state.is_empty() {
        out.push_str(&format!("  last evaluation: {}\n", s.state));
    }
    if s.decisions.is_empty() {
        out.push_str("  no scaling decisions yet\n");
    } else {
        out.push_str("  recent decisions:\n");
        for e in &s.decisions {
            out.push_str(&format!("    {}  {}\n", timestamp(e.at_ms), e.message));
        }
    }
    out
}

pub fn autoscale_json(s: &pb::AutoscaleStatus) -> Value {
    let p = s.policy.clone().unwrap_or_default();
    json!({
        "app": s.app,
        "enabled": p.enabled,
        "min": p.min,
        "max": p.max,
        "mode": if p.mode.is_empty() { "threshold" } else { p.mode.as_str() },
        "cpu_threshold": p.cpu_threshold,
        "memory_threshold": p.memory_threshold,
        "memory_threshold_bytes": p.memory_threshold_bytes,
        "cooldown_ms": p.cooldown_ms,
        "up_stabilization_ms": p.up_stabilization_ms,
        "down_stabilization_ms": p.down_stabilization_ms,
        "instances": s.instances,
        "online": s.online,
        "cpu_avg": s.cpu_avg,
        "memory_avg_bytes": s.memory_avg_bytes,
        "state": s.state,
        "decisions": s.decisions.iter().map(event_json).collect::<Vec<_>>(),
    })
}
