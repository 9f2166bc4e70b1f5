//! Autoscaler simulation: runs the real decision function (`core::autoscale::decide`) over
//! synthetic load traces and compares it with the seeds' naive dashboard policy (+1 above the
//! threshold, -1 below half of it, polled every 10 s, no cooldown or stabilization).
//! Run: `cargo bench -p pmcluster-coordinator --bench autoscale_sim`. Deterministic: the noisy
//! trace uses a fixed-seed generator, so every run prints the same table.
//!
//! Model: one tick per second for 30 minutes. `demand` is the app's total CPU need in percent
//! of one core; each online instance can use at most one core, so the per-instance CPU is
//! min(100, demand / online). New instances take 5 s to come online (and are not in the
//! averages until then). The needed size is ceil(demand / threshold) within [min, max].

use std::collections::VecDeque;
use std::time::Duration;

use pmcluster_coordinator::core::autoscale::{Decision, Input, Sample, decide};
use pmcluster_spec::autoscale::{AutoscalePolicy, Mode};

const SECONDS: i64 = 1800;
const LAUNCH_S: i64 = 5;
const THRESHOLD: f64 = 70.0;
const MIN: u32 = 2;
const MAX: u32 = 20;

/// Deterministic pseudo-random numbers (a linear congruential generator) for the noisy trace.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn traces() -> Vec<(&'static str, Vec<f64>)> {
    let t = 0..SECONDS;
    let step: Vec<f64> = t
        .clone()
        .map(|s| {
            if (300..1200).contains(&s) {
                900.0
            } else {
                150.0
            }
        })
        .collect();
    let ramp: Vec<f64> = t
        .clone()
        .map(|s| match s {
            0..300 => 150.0,
            300..900 => 150.0 + (s - 300) as f64 * 1.5,
            900..1200 => 1050.0,
            _ => 1050.0 - (s - 1200) as f64 * 1.5,
        })
        .collect();
    let sine: Vec<f64> = t
        .clone()
        .map(|s| 550.0 + 400.0 * (s as f64 * std::f64::consts::TAU / 600.0).sin())
        .collect();
    let mut rng = Lcg(42);
    let noisy: Vec<f64> = t.map(|_| 600.0 * (0.8 + 0.4 * rng.next())).collect();
    vec![
        ("step", step),
        ("ramp", ramp),
        ("sine", sine),
        ("noisy plateau", noisy),
    ]
}

fn needed(demand: f64) -> u32 {
    ((demand / THRESHOLD).ceil() as u32).clamp(MIN, MAX)
}

#[derive(Default)]
struct Report {
    reach_s: Option<i64>,
    /// Seconds in which demand exceeded what the online instances can do (users wait).
    saturated_s: i64,
    under_s: i64,
    overshoot: i64,
    changes: u32,
    instance_s: i64,
}

/// Runs one policy over one trace. `policy` returns a new count or None.
fn simulate(demand: &[f64], mut policy: impl FnMut(i64, u32, &[Sample]) -> Option<u32>) -> Report {
    let mut count = MIN;
    // Launch times of the instances, oldest first; online once LAUNCH_S has passed.
    let mut started: VecDeque<i64> = (0..MIN).map(|_| -LAUNCH_S).collect();
    let mut history: Vec<Sample> = Vec::new();
    let mut r = Report::default();
    let first_rise = demand
        .iter()
        .position(|d| needed(*d) > needed(demand[0]))
        .map(|p| p as i64);
    for (s, d) in demand.iter().enumerate() {
        let s = s as i64;
        let online = started.iter().filter(|t| s - **t >= LAUNCH_S).count() as u32;
        let cpu = if online > 0 {
            (d / f64::from(online)).min(100.0)
        } else {
            0.0
        };
        history.push(Sample {
            at_ms: s * 1000,
            online,
            cpu: (online > 0).then_some(cpu),
            memory: None,
        });
        let need = needed(*d);
        if online < need {
            r.under_s += 1;
        }
        if *d > f64::from(online) * 100.0 {
            r.saturated_s += 1;
        }
        if let Some(rise) = first_rise
            && s >= rise
            && r.reach_s.is_none()
            && online >= need
        {
            r.reach_s = Some(s - rise);
        }
        r.overshoot = r.overshoot.max(i64::from(count) - i64::from(need));
        r.instance_s += i64::from(count);
        if let Some(to) = policy(s, count, &history)
            && to != count
        {
            r.changes += 1;
            while (started.len() as u32) < to {
                started.push_back(s);
            }
            while (started.len() as u32) > to {
                // Scale-down removes the newest instances (the highest indices).
                started.pop_back();
            }
            count = to;
        }
    }
    r
}

fn pmcluster(policy: AutoscalePolicy) -> impl FnMut(i64, u32, &[Sample]) -> Option<u32> {
    let mut last_change: Option<i64> = None;
    move |s, current, history| {
        // Keep the history the coordinator would keep (the windows plus a minute).
        let keep = (policy
            .down_stabilization
            .max(policy.up_stabilization)
            .as_secs()
            + 60) as usize;
        let from = history.len().saturating_sub(keep);
        match decide(Input {
            policy: &policy,
            memory_request: 0,
            current,
            history: &history[from..],
            last_change_ms: last_change,
            now_ms: s * 1000,
        }) {
            Decision::Scale { to, .. } => {
                last_change = Some(s * 1000);
                Some(to)
            }
            Decision::Hold { .. } => None,
        }
    }
}

fn naive() -> impl FnMut(i64, u32, &[Sample]) -> Option<u32> {
    move |s, current, history| {
        if s % 10 != 0 {
            return None;
        }
        let cpu = history.last().and_then(|h| h.cpu)?;
        if cpu > THRESHOLD && current < MAX {
            Some(current + 1)
        } else if cpu < THRESHOLD * 0.5 && current > MIN {
            Some(current - 1)
        } else {
            None
        }
    }
}

fn main() {
    // The product defaults (cooldown 15 s, scale up at once, scale down after 300 s low, 10%
    // tolerance), and a quicker target-mode setting a latency-sensitive app might choose.
    let threshold = AutoscalePolicy::new(MIN, MAX, THRESHOLD);
    let target = AutoscalePolicy {
        mode: Mode::Target,
        ..threshold.clone()
    };
    let target_fast = AutoscalePolicy {
        cooldown: Duration::from_secs(15),
        down_stabilization: Duration::from_secs(120),
        tolerance: 0.05,
        ..target.clone()
    };
    println!(
        "autoscale simulation: {SECONDS} s per trace, threshold {THRESHOLD}% of a core, bounds {MIN}..{MAX}, \
         instances online {LAUNCH_S} s after start"
    );
    println!(
        "{:<14} {:<24} {:>9} {:>10} {:>9} {:>10} {:>8} {:>12}",
        "trace",
        "policy",
        "reach(s)",
        "saturated",
        "under(s)",
        "overshoot",
        "changes",
        "instance-s"
    );
    for (name, demand) in traces() {
        let runs: Vec<(&str, Report)> = vec![
            ("naive +1/-1 (seeds)", simulate(&demand, naive())),
            (
                "pmcluster threshold",
                simulate(&demand, pmcluster(threshold.clone())),
            ),
            (
                "pmcluster target",
                simulate(&demand, pmcluster(target.clone())),
            ),
            (
                "pmcluster target fast",
                simulate(&demand, pmcluster(target_fast.clone())),
            ),
        ];
        let ideal: i64 = demand.iter().map(|d| i64::from(needed(*d))).sum();
        for (policy, r) in runs {
            println!(
                "{:<14} {:<24} {:>9} {:>10} {:>9} {:>10} {:>8} {:>12}",
                name,
                policy,
                r.reach_s
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "never".into()),
                r.saturated_s,
                r.under_s,
                r.overshoot,
                r.changes,
                r.instance_s
            );
        }
        println!(
            "{:<14} {:<24} {:>9} {:>10} {:>9} {:>10} {:>8} {:>12}",
            name, "(ideal: needed size)", "-", 0, 0, 0, "-", ideal
        );
    }
    println!(
        "reach: seconds from the first rise in need until enough instances are online; under: \
         seconds with fewer online than needed at the threshold (saturated: demand above the online instances' capacity); overshoot: most instances above the need."
    );
}
