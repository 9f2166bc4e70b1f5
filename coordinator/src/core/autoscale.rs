//! Autoscaling decisions: (policy, metric history, current count, now) -> new count and reason.
//!
//! Two modes. *Threshold* (the seeds' policy, made stable and quicker): up when the load ratio
//! stayed above 1 for the up window, by as many instances as bring it back to 1 at the lowest
//! ratio of the window (at least +1; the seeds' +1 alone needs one cooldown per instance to catch a
//! step in load), -1 when it stayed below `scale_down_fraction` for the down window.
//! *Target* (Kubernetes' HPA rule): desired = ceil(online x ratio), ignored inside the tolerance
//! band; scale-ups take the lowest recommendation of the up window, scale-downs the highest of
//! the down window, so one spike or dip does not move the count.
//!
//! The load ratio of a sample is observed / threshold for each configured metric (CPU average,
//! memory average), the largest one counting. Samples without fresh metrics never lead to a
//! scale-down, and instances still launching are not in the averages.

use pmcluster_spec::autoscale::{AutoscalePolicy, MemoryThreshold, Mode};

/// Metrics of one app at one moment, averaged over its online instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    /// Online instances whose metrics are in the averages.
    pub online: u32,
    /// Average CPU in percent of one core; `None` when no fresh report.
    pub cpu: Option<f64>,
    /// Average resident memory in bytes; `None` when no fresh report.
    pub memory: Option<f64>,
}

/// What the autoscaler looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub policy: &'a AutoscalePolicy,
    /// The app's memory request per instance (for percent memory thresholds), 0 if none.
    pub memory_request: u64,
    /// Current desired count.
    pub current: u32,
    /// Samples in time order, newest last.
    pub history: &'a [Sample],
    /// When the count last changed (by the autoscaler or a user).
    pub last_change_ms: Option<i64>,
    pub now_ms: i64,
}

/// The decision: a new count with the reason, or why the count stays.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Scale { to: u32, reason: String },
    Hold { reason: String },
}

/// The ratio that drives scaling, and the text that explains it.
fn ratio(policy: &AutoscalePolicy, memory_request: u64, s: &Sample) -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    let mut consider = |r: f64, text: String| {
        if best.as_ref().is_none_or(|(b, _)| r > *b) {
            best = Some((r, text));
        }
    };
    let down = policy.scale_down_fraction;
    if let (Some(t), Some(cpu)) = (policy.cpu_threshold, s.cpu) {
        consider(cpu / t, format!("cpu avg {}%", figure(cpu, &[t, t * down])));
    }
    match (policy.memory_threshold, s.memory) {
        (Some(MemoryThreshold::Bytes(b)), Some(m)) if b > 0 => {
            consider(
                m / b as f64,
                format!("memory avg {:.0} MiB", m / (1u64 << 20) as f64),
            );
        }
        (Some(MemoryThreshold::Percent(p)), Some(m)) if memory_request > 0 => {
            let pct = m * 100.0 / memory_request as f64;
            consider(
                pct / p,
                format!("memory avg {}% of request", figure(pct, &[p, p * down])),
            );
        }
        _ => {}
    }
    best
}

/// `v` in whole units, unless that reads the same as one of the `thresholds` it is compared
/// with (as whole units): then with two decimals, so that "40% > 40%" reads "40.31% > 40%".
fn figure(v: f64, thresholds: &[f64]) -> String {
    let whole = format!("{v:.0}");
    if thresholds.iter().any(|t| format!("{t:.0}") == whole) {
        format!("{v:.2}")
    } else {
        whole
    }
}

fn threshold_text(policy: &AutoscalePolicy, factor: f64) -> String {
    let mut parts = Vec::new();
    if let Some(t) = policy.cpu_threshold {
        parts.push(format!("{:.0}%", t * factor));
    }
    match policy.memory_threshold {
        Some(MemoryThreshold::Bytes(b)) => {
            parts.push(format!(
                "{:.0} MiB",
                b as f64 * factor / (1u64 << 20) as f64
            ));
        }
        Some(MemoryThreshold::Percent(p)) => parts.push(format!("{:.0}% of request", p * factor)),
        None => {}
    }
    parts.join(" / ")
}

fn secs(ms: i64) -> String {
    format!("{}s", ms / 1000)
}

/// Samples covering the last `window_ms`: the one in effect when the window opened, and every
/// later one (at least the newest).
fn window(history: &[Sample], now_ms: i64, window_ms: i64) -> &[Sample] {
    let start = history
        .iter()
        .rposition(|s| s.at_ms <= now_ms - window_ms)
        .unwrap_or(0);
    let start = start.min(history.len().saturating_sub(1));
    &history[start..]
}

/// Whether the history reaches back far enough to judge a window of `window_ms`.
fn covers(history: &[Sample], now_ms: i64, window_ms: i64) -> bool {
    history
        .first()
        .is_some_and(|s| s.at_ms <= now_ms - window_ms)
}

pub fn decide(input: Input<'_>) -> Decision {
    let p = input.policy;
    let clamp = |n: u32| n.clamp(p.min, p.max);
    // Bounds first: a count outside them is corrected at once, whatever the metrics.
    if input.current < p.min || input.current > p.max {
        let to = clamp(input.current);
        return Decision::Scale {
            to,
            reason: format!(
                "outside the bounds {}..{}: {} -> {to}",
                p.min, p.max, input.current
            ),
        };
    }
    let Some(latest) = input.history.last() else {
        return Decision::Hold {
            reason: "no metrics yet".into(),
        };
    };
    let Some((latest_ratio, latest_text)) = ratio(p, input.memory_request, latest) else {
        return Decision::Hold {
            reason: "no fresh metrics from online instances".into(),
        };
    };
    if let Some(last) = input.last_change_ms
        && input.now_ms - last < p.cooldown.as_millis() as i64
    {
        return Decision::Hold {
            reason: format!(
                "{latest_text}: cooling down for {} more",
                secs(p.cooldown.as_millis() as i64 - (input.now_ms - last))
            ),
        };
    }
    let up_ms = p.up_stabilization.as_millis() as i64;
    let down_ms = p.down_stabilization.as_millis() as i64;
    let up_window = window(input.history, input.now_ms, up_ms);
    let down_window = window(input.history, input.now_ms, down_ms);
    let ratios = |w: &[Sample]| -> Option<Vec<f64>> {
        // A sample without metrics makes the whole window unusable: no scaling on missing data.
        w.iter()
            .map(|s| ratio(p, input.memory_request, s).map(|r| r.0))
            .collect()
    };
    match p.mode {
        Mode::Threshold => {
            let up_ok = up_ms == 0 || covers(input.history, input.now_ms, up_ms);
            if up_ok
                && let Some(rs) = ratios(up_window)
                && rs.iter().all(|r| *r > 1.0)
            {
                let above = format!(
                    "{latest_text} > {} for {}",
                    threshold_text(p, 1.0),
                    secs(up_ms)
                );
                if input.current >= p.max {
                    return Decision::Hold {
                        reason: format!("{above}, but {} is the maximum", p.max),
                    };
                }
                let lowest = rs.iter().copied().fold(f64::INFINITY, f64::min);
                let enough = (f64::from(latest.online.max(1)) * lowest).ceil() as u32;
                let wanted = enough.max(input.current + 1);
                let to = clamp(wanted);
                let capped = if wanted > to {
                    format!(" (wanted {wanted}; the maximum is {})", p.max)
                } else {
                    String::new()
                };
                return Decision::Scale {
                    to,
                    reason: format!("{above}: {} -> {to}{capped}", input.current),
                };
            }
            let f = p.scale_down_fraction;
            if covers(input.history, input.now_ms, down_ms)
                && let Some(rs) = ratios(down_window)
                && rs.iter().all(|r| *r < f)
            {
                let below = format!(
                    "{latest_text} < {} for {}",
                    threshold_text(p, f),
                    secs(down_ms)
                );
                if input.current <= p.min {
                    return Decision::Hold {
                        reason: format!("{below}, but {} is the minimum", p.min),
                    };
                }
                let to = input.current - 1;
                return Decision::Scale {
                    to,
                    reason: format!("{below}: {} -> {to}", input.current),
                };
            }
            Decision::Hold {
                reason: format!("{latest_text} (x{latest_ratio:.2} of threshold): within bounds"),
            }
        }
        Mode::Target => {
            let recommend = |w: &[Sample]| -> Option<Vec<u32>> {
                w.iter()
                    .map(|s| {
                        let (r, _) = ratio(p, input.memory_request, s)?;
                        if (r - 1.0).abs() <= p.tolerance {
                            return Some(input.current);
                        }
                        let base = s.online.max(1);
                        Some(clamp((f64::from(base) * r).ceil() as u32))
                    })
                    .collect()
            };
            let up = if up_ms == 0 || covers(input.history, input.now_ms, up_ms) {
                recommend(up_window).and_then(|v| v.into_iter().min())
            } else {
                None
            };
            if let Some(to) = up
                && to > input.current
            {
                return Decision::Scale {
                    to,
                    reason: format!(
                        "{latest_text} vs target {} (x{latest_ratio:.2}): {} -> {to}",
                        threshold_text(p, 1.0),
                        input.current
                    ),
                };
            }
            let down = if covers(input.history, input.now_ms, down_ms) {
                recommend(down_window).and_then(|v| v.into_iter().max())
            } else {
                None
            };
            if let Some(to) = down
                && to < input.current
            {
                return Decision::Scale {
                    to,
                    reason: format!(
                        "{latest_text} vs target {} (x{latest_ratio:.2}) for {}: {} -> {to}",
                        threshold_text(p, 1.0),
                        secs(down_ms),
                        input.current
                    ),
                };
            }
            let bound = if latest_ratio > 1.0 + p.tolerance && input.current >= p.max {
                format!(", but {} is the maximum", p.max)
            } else if latest_ratio < 1.0 - p.tolerance && input.current <= p.min {
                format!(", but {} is the minimum", p.min)
            } else {
                String::new()
            };
            Decision::Hold {
                reason: format!("{latest_text} (x{latest_ratio:.2} of target): holding{bound}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(mode: Mode) -> AutoscalePolicy {
        AutoscalePolicy {
            mode,
            cooldown: Duration::from_secs(60),
            up_stabilization: Duration::from_secs(30),
            down_stabilization: Duration::from_secs(300),
            ..AutoscalePolicy::new(2, 10, 70.0)
        }
    }

    /// History from `(seconds_ago, cpu)` pairs; cpu < 0 means no metrics. `now` is 10,000 s.
    fn history(points: &[(i64, f64)], online: u32) -> Vec<Sample> {
        let now = 10_000_000;
        points
            .iter()
            .map(|(ago, cpu)| Sample {
                at_ms: now - ago * 1000,
                online,
                cpu: (*cpu >= 0.0).then_some(*cpu),
                memory: None,
            })
            .collect()
    }

    /// Flat CPU for the last `secs` seconds, one sample per 10 s.
    fn flat(secs: i64, cpu: f64) -> Vec<(i64, f64)> {
        (0..=secs / 10).rev().map(|i| (i * 10, cpu)).collect()
    }

    fn check(
        p: &AutoscalePolicy,
        current: u32,
        points: &[(i64, f64)],
        last_change_ago: Option<i64>,
        want: &str,
    ) {
        let h = history(points, current);
        let now = 10_000_000;
        let got = decide(Input {
            policy: p,
            memory_request: 0,
            current,
            history: &h,
            last_change_ms: last_change_ago.map(|a| now - a * 1000),
            now_ms: now,
        });
        let text = match got {
            Decision::Scale { to, reason } => format!("-> {to}: {reason}"),
            Decision::Hold { reason } => format!("hold: {reason}"),
        };
        assert!(text.contains(want), "want {want:?} in {text:?}");
    }

    #[test]
    fn threshold_mode() {
        let p = policy(Mode::Threshold);
        check(
            &p,
            4,
            &flat(40, 86.0),
            None,
            "-> 5: cpu avg 86% > 70% for 30s: 4 -> 5",
        );
        // Above, but not for the whole up window yet.
        check(&p, 4, &[(40, 50.0), (20, 86.0), (0, 86.0)], None, "hold");
        // Not enough history to cover the window.
        check(&p, 4, &[(10, 90.0), (0, 90.0)], None, "hold");
        // At the maximum, and at the minimum: said so, not "within bounds".
        check(
            &p,
            10,
            &flat(40, 99.0),
            None,
            "hold: cpu avg 99% > 70% for 30s, but 10 is the maximum",
        );
        check(
            &p,
            2,
            &flat(400, 5.0),
            None,
            "hold: cpu avg 5% < 35% for 300s, but 2 is the minimum",
        );
        // A figure that rounds to its threshold is given to the hundredth.
        check(
            &p,
            4,
            &flat(40, 70.4),
            None,
            "cpu avg 70.40% > 70% for 30s: 4 -> 5",
        );
        // Far above: enough instances at once to bring the average back to the threshold, by the
        // lowest load of the window, within max.
        check(
            &p,
            4,
            &flat(40, 140.0),
            None,
            "-> 8: cpu avg 140% > 70% for 30s: 4 -> 8",
        );
        check(&p, 4, &[(30, 105.0), (20, 140.0), (0, 140.0)], None, "-> 6");
        check(
            &p,
            4,
            &flat(40, 400.0),
            None,
            "-> 10: cpu avg 400% > 70% for 30s: 4 -> 10 (wanted 23; the maximum is 10)",
        );
        check(
            &p,
            4,
            &flat(400, 20.0),
            None,
            "-> 3: cpu avg 20% < 35% for 300s: 4 -> 3",
        );
        check(&p, 2, &flat(400, 1.0), None, "hold");
        // A dip shorter than the down window changes nothing.
        let mut points = flat(400, 60.0);
        points.push((0, 5.0));
        check(&p, 4, &points, None, "hold");
        // Missing metrics in the window: never a scale-down.
        let mut points = flat(400, 10.0);
        let n = points.len();
        points[n - 5].1 = -1.0;
        check(&p, 4, &points, None, "hold");
        check(&p, 4, &[(0, -1.0)], None, "no fresh metrics");
        check(&p, 4, &[], None, "no metrics yet");
        // Cooldown after the last change.
        check(
            &p,
            4,
            &flat(40, 90.0),
            Some(20),
            "cooling down for 40s more",
        );
        check(&p, 4, &flat(40, 90.0), Some(61), "-> 6");
        // Bounds are enforced even without metrics.
        check(&p, 1, &[], None, "-> 2: outside the bounds 2..10");
        check(&p, 12, &[], Some(1), "-> 10");
    }

    #[test]
    fn target_mode() {
        let p = policy(Mode::Target);
        // 4 instances at 140% of a 70% target: double.
        check(
            &p,
            4,
            &flat(40, 140.0),
            None,
            "-> 8: cpu avg 140% vs target 70% (x2.00): 4 -> 8",
        );
        // Capped by max.
        check(&p, 4, &flat(40, 350.0), None, "-> 10");
        // Inside the tolerance band: hold.
        check(&p, 4, &flat(400, 75.0), None, "hold");
        // Above the target at the maximum: the hold says why.
        check(
            &p,
            10,
            &flat(40, 140.0),
            None,
            "hold: cpu avg 140% (x2.00 of target): holding, but 10 is the maximum",
        );
        // Scale-up takes the lowest recommendation of the window.
        check(&p, 4, &[(30, 105.0), (20, 140.0), (0, 140.0)], None, "-> 6");
        // Scale-down takes the highest recommendation of the down window.
        let mut points = flat(400, 20.0);
        let n = points.len();
        points[n - 3].1 = 40.0;
        check(&p, 8, &points, None, "-> 5");
        check(&p, 8, &flat(400, 10.0), None, "-> 2");
        // A window with a gap: no scale-down.
        let mut points = flat(400, 10.0);
        let n = points.len();
        points[n - 2].1 = -1.0;
        check(&p, 8, &points, None, "hold");
    }

    #[test]
    fn memory_thresholds() {
        let p = AutoscalePolicy {
            cpu_threshold: None,
            memory_threshold: Some(MemoryThreshold::Percent(80.0)),
            up_stabilization: Duration::ZERO,
            ..policy(Mode::Threshold)
        };
        let h = vec![Sample {
            at_ms: 0,
            online: 3,
            cpu: None,
            memory: Some(450.0 * (1 << 20) as f64),
        }];
        let got = decide(Input {
            policy: &p,
            memory_request: 512 << 20,
            current: 3,
            history: &h,
            last_change_ms: None,
            now_ms: 0,
        });
        match got {
            Decision::Scale { to: 4, reason } => {
                assert!(reason.contains("memory avg 88% of request"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
