//! `stats APP` (the app's figures in one block: counts, CPU and memory totals, averages and
//! extremes, restarts, uptimes, per node) and `compare APP` (its instances side by side, each
//! figure also as a share of the app's mean, the highest and lowest marked). Pure: from the
//! instance list the coordinator already serves.

use serde_json::{Value, json};

use super::{NONE, human_age, human_bytes, percent, render_table, state_name};
use pmcluster_proto::v1 as pb;

/// The instances with a process now: those the figures are about.
fn up(instances: &[pb::Instance]) -> Vec<&pb::Instance> {
    instances
        .iter()
        .filter(|i| i.state == pb::InstanceState::Online as i32 && i.pid != 0)
        .collect()
}

fn uptime_ms(i: &pb::Instance, now_ms: i64) -> Option<i64> {
    (i.started_at_ms > 0).then(|| (now_ms - i.started_at_ms).max(0))
}

/// What `stats` shows, as plain numbers.
struct Figures {
    total: usize,
    online: usize,
    disabled: usize,
    leaking: usize,
    cpu_total: f64,
    cpu_min: f64,
    cpu_max: f64,
    mem_total: u64,
    mem_min: u64,
    mem_max: u64,
    restarts: u32,
    uptime_min: Option<i64>,
    uptime_max: Option<i64>,
    by_node: std::collections::BTreeMap<String, usize>,
}

/// A sum that starts at +0.0: std's `sum` of no f64 is -0.0, which JSON shows as `-0.0`.
fn sum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |a, b| a + b)
}

/// What no instance online shows instead of figures, as uptime shows none.
const NOTHING_ONLINE: &str = "- (no instance online)";

fn figures(instances: &[pb::Instance], now_ms: i64) -> Figures {
    let on = up(instances);
    let mut by_node = std::collections::BTreeMap::new();
    for i in &on {
        *by_node.entry(i.node.clone()).or_insert(0) += 1;
    }
    let uptimes: Vec<i64> = on.iter().filter_map(|i| uptime_ms(i, now_ms)).collect();
    Figures {
        total: instances.len(),
        online: on.len(),
        disabled: instances.iter().filter(|i| i.disabled).count(),
        leaking: instances.iter().filter(|i| !i.leak.is_empty()).count(),
        cpu_total: sum(on.iter().map(|i| i.cpu_percent)),
        cpu_min: on
            .iter()
            .map(|i| i.cpu_percent)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0),
        cpu_max: on.iter().map(|i| i.cpu_percent).fold(0.0, f64::max),
        mem_total: on.iter().map(|i| i.memory_bytes).sum(),
        mem_min: on.iter().map(|i| i.memory_bytes).min().unwrap_or(0),
        mem_max: on.iter().map(|i| i.memory_bytes).max().unwrap_or(0),
        restarts: instances.iter().map(|i| i.restarts).sum(),
        uptime_min: uptimes.iter().copied().min(),
        uptime_max: uptimes.iter().copied().max(),
        by_node,
    }
}

fn mean(total: f64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { total / n as f64 }
}

/// `stats APP` as text.
pub fn stats_text(app: &str, instances: &[pb::Instance], now_ms: i64) -> String {
    let f = figures(instances, now_ms);
    let n = f.online;
    let age = |ms: Option<i64>| ms.map_or_else(|| NONE.to_string(), human_age);
    let nodes = if f.by_node.is_empty() {
        NONE.to_string()
    } else {
        f.by_node
            .iter()
            .map(|(node, count)| format!("{node} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let online = |figures: String| match n {
        0 => NOTHING_ONLINE.to_string(),
        _ => figures,
    };
    let rows: Vec<(&str, String)> = vec![
        ("app", app.to_string()),
        (
            "instances",
            format!(
                "{} online of {}{}{}",
                f.online,
                f.total,
                if f.disabled > 0 {
                    format!(", {} disabled", f.disabled)
                } else {
                    String::new()
                },
                if f.leaking > 0 {
                    format!(", {} leak suspected", f.leaking)
                } else {
                    String::new()
                },
            ),
        ),
        (
            "cpu",
            online(format!(
                "{} total, {} avg, {} min, {} max",
                percent(f.cpu_total),
                percent(mean(f.cpu_total, n)),
                percent(f.cpu_min),
                percent(f.cpu_max)
            )),
        ),
        (
            "memory",
            online(format!(
                "{} total, {} avg, {} min, {} max",
                human_bytes(f.mem_total),
                human_bytes(mean(f.mem_total as f64, n) as u64),
                human_bytes(f.mem_min),
                human_bytes(f.mem_max)
            )),
        ),
        ("restarts", f.restarts.to_string()),
        (
            "uptime",
            format!(
                "{} shortest, {} longest",
                age(f.uptime_min),
                age(f.uptime_max)
            ),
        ),
        ("nodes", nodes),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    rows.into_iter()
        .map(|(k, v)| format!("{:<width$}{v}\n", format!("{k}:")))
        .collect()
}

/// `stats APP -o json`. With no instance online the totals are 0 (a sum of nothing) and the
/// average and extremes null, as the uptimes are.
pub fn stats_json(app: &str, instances: &[pb::Instance], now_ms: i64) -> Value {
    let f = figures(instances, now_ms);
    let n = f.online;
    let of_online = |v: Value| if n == 0 { Value::Null } else { v };
    json!({
        "app": app,
        "instances": f.total,
        "online": f.online,
        "disabled": f.disabled,
        "leak_suspected": f.leaking,
        "cpu": {
            "total": f.cpu_total, "avg": of_online(json!(mean(f.cpu_total, n))),
            "min": of_online(json!(f.cpu_min)), "max": of_online(json!(f.cpu_max)),
        },
        "memory": {
            "total": f.mem_total, "avg": of_online(json!(mean(f.mem_total as f64, n) as u64)),
            "min": of_online(json!(f.mem_min)), "max": of_online(json!(f.mem_max)),
        },
        "restarts": f.restarts,
        "uptime_ms": {"min": f.uptime_min, "max": f.uptime_max},
        "nodes": f.by_node,
    })
}

/// A figure and its share of the mean: `12.0% (1.5x)`; the mean itself is `1.0x`.
fn with_ratio(text: String, value: f64, mean: f64) -> String {
    if mean <= 0.0 {
        return text;
    }
    format!("{text} ({:.1}x)", value / mean)
}

/// Marks the instance holding the highest and the one holding the lowest of one figure
/// (`▲`/`▼`), judged on the figure as shown: a mark says that this instance stands out, so an
/// extreme that reads the same on another row (a tie, or bytes apart under the shown rounding)
/// gets none. The others get blanks of the same width, so the right-aligned column stays
/// aligned.
fn marks(values: &[f64], show: impl Fn(f64) -> String) -> Vec<&'static str> {
    let mut marks = vec!["  "; values.len()];
    let shown: Vec<String> = values.iter().map(|v| show(*v)).collect();
    let alone = |k: usize| shown.iter().filter(|s| **s == shown[k]).count() == 1;
    let by_value = |a: &(usize, &f64), b: &(usize, &f64)| a.1.total_cmp(b.1);
    let highest = values.iter().enumerate().max_by(by_value).map(|(k, _)| k);
    let lowest = values.iter().enumerate().min_by(by_value).map(|(k, _)| k);
    if let (Some(hi), Some(lo)) = (highest, lowest)
        && values.len() >= 2
    {
        if alone(hi) {
            marks[hi] = " ▲";
        }
        if alone(lo) {
            marks[lo] = " ▼";
        }
    }
    marks
}

/// `compare APP`: one row per instance, the running ones compared with their mean.
pub fn compare_text(instances: &[pb::Instance], now_ms: i64) -> String {
    let on = up(instances);
    let n = on.len();
    let cpu_mean = mean(sum(on.iter().map(|i| i.cpu_percent)), n);
    let mem_mean = mean(sum(on.iter().map(|i| i.memory_bytes as f64)), n);
    let cpus: Vec<f64> = on.iter().map(|i| i.cpu_percent).collect();
    let mems: Vec<f64> = on.iter().map(|i| i.memory_bytes as f64).collect();
    let cpu_marks = marks(&cpus, percent);
    let mem_marks = marks(&mems, |m| human_bytes(m as u64));
    let mut rows = Vec::new();
    for i in instances {
        let at = on.iter().position(|o| std::ptr::eq(*o, i));
        let (cpu, mem) = match at {
            Some(k) => (
                with_ratio(percent(i.cpu_percent), i.cpu_percent, cpu_mean) + cpu_marks[k],
                with_ratio(human_bytes(i.memory_bytes), i.memory_bytes as f64, mem_mean)
                    + mem_marks[k],
            ),
            None => (NONE.to_string(), NONE.to_string()),
        };
        rows.push(vec![
            i.index.to_string(),
            if i.node.is_empty() {
                NONE.to_string()
            } else {
                i.node.clone()
            },
            super::instance_status(i),
            cpu,
            mem,
            i.restarts.to_string(),
            uptime_ms(i, now_ms).map_or_else(|| NONE.to_string(), human_age),
        ]);
    }
    let mut text = render_table(
        &[
            "index", "node", "status", "cpu", "memory", "restarts", "uptime",
        ],
        rows,
        &[0, 3, 4, 5, 6],
    );
    text.push_str(&match n {
        0 => "no instance online: nothing to compare\n".to_string(),
        _ => format!(
            "mean of {n} online: cpu {}, memory {}\n",
            percent(cpu_mean),
            human_bytes(mem_mean as u64)
        ),
    });
    text
}

/// `compare APP -o json`: each instance with its figures and their ratios to the mean.
pub fn compare_json(instances: &[pb::Instance], now_ms: i64) -> Value {
    let on = up(instances);
    let n = on.len();
    let cpu_mean = mean(sum(on.iter().map(|i| i.cpu_percent)), n);
    let mem_mean = mean(sum(on.iter().map(|i| i.memory_bytes as f64)), n);
    let ratio = |v: f64, m: f64| if m > 0.0 { json!(v / m) } else { Value::Null };
    let rows: Vec<Value> = instances
        .iter()
        .map(|i| {
            let running = on.iter().any(|o| std::ptr::eq(*o, i));
            json!({
                "index": i.index,
                "node": i.node,
                "status": state_name(i.state),
                "disabled": i.disabled,
                // `+ 0.0` turns a reported -0.0 into 0.0.
                "cpu": i.cpu_percent + 0.0,
                "cpu_ratio": if running { ratio(i.cpu_percent, cpu_mean) } else { Value::Null },
                "memory": i.memory_bytes,
                "memory_ratio": if running { ratio(i.memory_bytes as f64, mem_mean) } else { Value::Null },
                "restarts": i.restarts,
                "uptime_ms": uptime_ms(i, now_ms),
            })
        })
        .collect();
    let (cpu, memory) = match n {
        0 => (Value::Null, Value::Null),
        _ => (json!(cpu_mean), json!(mem_mean as u64)),
    };
    json!({"mean": {"cpu": cpu, "memory": memory, "online": n}, "instances": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const MIB: u64 = 1024 * 1024;

    fn inst(
        index: u32,
        node: &str,
        cpu: f64,
        mem_mib: u64,
        restarts: u32,
        age_s: i64,
    ) -> pb::Instance {
        pb::Instance {
            app: "web".into(),
            index,
            node: node.into(),
            state: pb::InstanceState::Online as i32,
            pid: 100 + index,
            cpu_percent: cpu,
            memory_bytes: mem_mib * MIB,
            restarts,
            started_at_ms: NOW - age_s * 1000,
            ..pb::Instance::default()
        }
    }

    fn three() -> Vec<pb::Instance> {
        let mut stopped = inst(3, "b", 0.0, 0, 0, 0);
        stopped.state = pb::InstanceState::Stopped as i32;
        stopped.pid = 0;
        stopped.started_at_ms = 0;
        stopped.stopped = true;
        vec![
            inst(0, "a", 10.0, 40, 0, 3600),
            inst(1, "a", 20.0, 60, 2, 60),
            pb::Instance {
                disabled: true,
                ..inst(2, "b", 30.0, 50, 1, 600)
            },
            stopped,
        ]
    }

    #[test]
    fn stats_sum_and_spread() {
        let want = "\
app:       web
instances: 3 online of 4, 1 disabled
cpu:       60.0% total, 20.0% avg, 10.0% min, 30.0% max
memory:    150.0 MiB total, 50.0 MiB avg, 40.0 MiB min, 60.0 MiB max
restarts:  3
uptime:    1m shortest, 1h longest
nodes:     a 2, b 1
";
        assert_eq!(stats_text("web", &three(), NOW), want);
        let v = stats_json("web", &three(), NOW);
        assert_eq!(v["online"], 3);
        assert_eq!(v["memory"]["avg"], 50 * MIB);
        assert_eq!(v["cpu"]["min"], 10.0);
        assert_eq!(v["nodes"]["a"], 2);
        let none = stats_text("web", &[], NOW);
        assert!(
            none.contains("0 online of 0") && none.contains("nodes:     -"),
            "{none}"
        );
    }

    /// With every instance stopped the figures say nothing is online, and JSON holds no
    /// `-0.0` (std's sum of no f64) but 0 totals and null averages and extremes.
    #[test]
    fn nothing_online_is_said_so() {
        let stopped: Vec<pb::Instance> = three().into_iter().skip(3).collect();
        let text = stats_text("web", &stopped, NOW);
        assert!(
            text.contains("cpu:       - (no instance online)\n"),
            "{text}"
        );
        assert!(
            text.contains("memory:    - (no instance online)\n"),
            "{text}"
        );
        let v = stats_json("web", &stopped, NOW);
        assert!(!v.to_string().contains("-0"), "{v}");
        assert_eq!(v["cpu"]["total"], 0.0);
        assert_eq!(v["memory"]["total"], 0);
        for figure in ["cpu", "memory"] {
            for of in ["avg", "min", "max"] {
                assert_eq!(v[figure][of], Value::Null, "{figure}.{of}: {v}");
            }
        }
        let compare = compare_text(&stopped, NOW);
        assert!(
            compare.ends_with("no instance online: nothing to compare\n"),
            "{compare}"
        );
        let v = compare_json(&stopped, NOW);
        assert_eq!(v["mean"], json!({"cpu": null, "memory": null, "online": 0}));
        let zero = pb::Instance {
            cpu_percent: -0.0,
            ..inst(0, "a", 0.0, 1, 0, 60)
        };
        assert!(!compare_json(&[zero], NOW).to_string().contains("-0"));
    }

    #[test]
    fn compare_puts_instances_side_by_side() {
        let want = "\
INDEX  NODE  STATUS                        CPU             MEMORY  RESTARTS  UPTIME
    0  a     online             10.0% (0.5x) ▼  40.0 MiB (0.8x) ▼         0      1h
    1  a     online             20.0% (1.0x)    60.0 MiB (1.2x) ▲         2      1m
    2  b     online (disabled)  30.0% (1.5x) ▲  50.0 MiB (1.0x)           1     10m
    3  b     stopped                         -                  -         0       -
mean of 3 online: cpu 20.0%, memory 50.0 MiB
";
        assert_eq!(compare_text(&three(), NOW), want);
        let v = compare_json(&three(), NOW);
        assert_eq!(v["instances"][2]["cpu_ratio"], 1.5);
        assert_eq!(v["instances"][3]["cpu_ratio"], Value::Null);
        assert_eq!(v["mean"]["online"], 3);
    }

    /// An arrow points at the one instance that stands out: equal figures carry none, whether
    /// equal to the byte or only as shown.
    #[test]
    fn compare_marks_no_equal_values() {
        let arrows = |cpu: &[f64], mem: &[u64]| -> Vec<String> {
            let rows: Vec<pb::Instance> = cpu
                .iter()
                .zip(mem)
                .enumerate()
                .map(|(k, (c, m))| pb::Instance {
                    memory_bytes: *m,
                    ..inst(k as u32, "a", *c, 0, 0, 60)
                })
                .collect();
            compare_text(&rows, NOW)
                .lines()
                .skip(1)
                .take(rows.len())
                .map(|line| line.chars().filter(|c| matches!(c, '▲' | '▼')).collect())
                .collect()
        };
        let cases: &[(&[f64], &[u64], &[&str])] = &[
            // Two idle instances a few KiB apart: both read 40.0 MiB.
            (&[0.0, 0.0], &[40 * MIB, 40 * MIB + 4096], &["", ""]),
            // Shown alike at 0.1%.
            (&[10.01, 10.04], &[MIB, MIB], &["", ""]),
            // A tie at the bottom: only the top stands out.
            (&[10.0, 10.0, 30.0], &[MIB, MIB, MIB], &["", "", "▲"]),
            // A tie at the top: only the bottom stands out.
            (&[5.0, 30.0, 30.0], &[MIB, MIB, MIB], &["▼", "", ""]),
            (
                &[10.0, 20.0, 30.0],
                &[2 * MIB, 3 * MIB, MIB],
                &["▼", "▲", "▲▼"],
            ),
            (&[7.0], &[MIB], &[""]),
        ];
        for (cpu, mem, want) in cases {
            assert_eq!(arrows(cpu, mem), *want, "{cpu:?} {mem:?}");
        }
    }
}
