//! Rendering of `autoscale APP`: the policy, the current metrics and the last decisions.

use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_spec::config::{duration_text, size_text};
use serde_json::{Value, json};

use super::*;

/// `autoscale APP`: the policy, the current metrics and the last decisions. `port` is the app's
/// port spec as it reads in its spec (`3000-3003`), when known: the coordinator refuses a
/// `--max` over the ports it holds, so the hint to turn autoscaling on stays within them.
pub fn autoscale_text(s: &pb::AutoscaleStatus, port: Option<&str>) -> String {
    let mut out = String::new();
    let p = s.policy.clone().unwrap_or_default();
    if !p.enabled {
        out.push_str(&format!(
            "{}: autoscaling is off ({})\n",
            s.app,
            crate::commands::plural(s.instances, "instance")
        ));
        let capacity = port
            .and_then(|p| pmcluster_spec::PortSpec::parse(p).ok())
            .and_then(|p| p.capacity());
        out.push_str(&match suggested_bounds(capacity, s.instances) {
            Some((min, max)) => format!(
                "turn it on with: pmcluster autoscale {} --min {min} --max {max} --cpu-threshold 70\n",
                s.app
            ),
            None => format!(
                "its port {} holds one instance: give it a range to autoscale, e.g. pmcluster \
                 reload {} --set port=START-END\n",
                port.unwrap_or_default(),
                s.app
            ),
        });
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
        "  now: {}, {} online with fresh metrics, cpu avg {cpu}, memory avg {mem}\n",
        crate::commands::plural(s.instances, "instance"),
        s.online
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

/// The `--min` and `--max` the hint suggests: 2 to 10, or to the current count when it is more,
/// within the instances the app's ports hold (`capacity`); `None` when they hold fewer than 2.
pub fn suggested_bounds(capacity: Option<u32>, instances: u32) -> Option<(u32, u32)> {
    let max = instances.max(10).min(capacity.unwrap_or(u32::MAX));
    (max >= 2).then_some((2, max))
}

/// After `autoscale APP --off`: the command that turns the policy it switched off back on, its
/// bounds, mode and thresholds, and the times that were not the defaults.
pub fn turn_back_on(app: &str, p: &pb::Autoscale) -> String {
    let mut flags = vec![format!("--min {} --max {}", p.min, p.max)];
    if p.mode == "target" {
        flags.push("--mode target".into());
    }
    if p.cpu_threshold > 0.0 {
        flags.push(format!("--cpu-threshold {}", p.cpu_threshold));
    }
    if p.memory_threshold > 0.0 {
        flags.push(format!("--memory-threshold {}", p.memory_threshold));
    } else if p.memory_threshold_bytes > 0 {
        // A plain number would be read as a percent: bytes get their "B".
        let size = size_text(p.memory_threshold_bytes);
        let unit = if size.ends_with(|c: char| c.is_ascii_digit()) {
            "B"
        } else {
            ""
        };
        flags.push(format!("--memory-threshold {size}{unit}"));
    }
    if p.scale_down_fraction > 0.0 {
        flags.push(format!("--scale-down-fraction {}", p.scale_down_fraction));
    }
    if let Some(t) = p.tolerance {
        flags.push(format!("--tolerance {t}"));
    }
    // As one would type them: `--cooldown 15s`, not `15000ms`.
    let ms = |flag: &str, v: u64| format!("{flag} {}", duration_text(Duration::from_millis(v)));
    if let Some(v) = p.cooldown_ms {
        flags.push(ms("--cooldown", v));
    }
    if p.up_stabilization_ms > 0 {
        flags.push(ms("--up-stabilization", p.up_stabilization_ms));
    }
    if let Some(v) = p.down_stabilization_ms {
        flags.push(ms("--down-stabilization", v));
    }
    format!(
        "turn it back on with: pmcluster autoscale {app} {}\n",
        flags.join(" ")
    )
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
