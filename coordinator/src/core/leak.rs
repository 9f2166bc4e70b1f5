//! Memory-leak suspicion: (policy, memory samples of one process) -> suspected or not, with the
//! trend in words. Pure: the samples carry their own times; the control keeps them.
//!
//! A leak is growth that does not come back: over the window the samples fit a rising line
//! (least squares) of at least `min_growth_per_min`, the fit explains most of the variance (R²),
//! and the lowest sample of the last third of the window is above the highest of the first
//! third. A garbage-collected heap (a sawtooth whose drops return to the same floor) fails the
//! last test and mostly the fit; noise around a flat line fails the slope. A window must be
//! covered (from its first sample to its last) for most of its length before anything is said,
//! so a process that just started is never suspected.

/// One memory sample of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: i64,
    pub rss: u64,
}

/// When growth counts as a leak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakPolicy {
    /// The span the trend is judged over.
    pub window_ms: i64,
    /// Slower growth than this (bytes per minute) is not suspected.
    pub min_growth_per_min: f64,
    /// How well the samples must fit a line (coefficient of determination, 0..1).
    pub min_fit: f64,
    /// Fewest samples in the window.
    pub min_samples: usize,
}

impl Default for LeakPolicy {
    fn default() -> LeakPolicy {
        LeakPolicy {
            window_ms: 5 * 60_000,
            min_growth_per_min: 1024.0 * 1024.0,
            min_fit: 0.8,
            // A short window at one report a second holds few; six still show a trend.
            min_samples: 6,
        }
    }
}

/// The decision over one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough samples or not enough of the window covered yet.
    Unsure,
    Fine,
    /// Growth of `per_min` bytes a minute over `over_ms`, from `from` to `to` bytes.
    Suspected {
        per_min: f64,
        over_ms: i64,
        from: u64,
        to: u64,
    },
}

impl Verdict {
    /// The trend as `list`/`info` show it, e.g. `+2.0 MiB/min over 60s (12.0 → 14.0 MiB)`.
    pub fn describe(&self) -> Option<String> {
        let Verdict::Suspected {
            per_min,
            over_ms,
            from,
            to,
        } = self
        else {
            return None;
        };
        const MIB: f64 = 1024.0 * 1024.0;
        Some(format!(
            "+{:.1} MiB/min over {}s ({:.1} → {:.1} MiB)",
            per_min / MIB,
            over_ms / 1000,
            *from as f64 / MIB,
            *to as f64 / MIB
        ))
    }
}

/// Judges the samples (oldest first) of the last `window_ms` before the newest one.
pub fn judge(policy: &LeakPolicy, samples: &[Sample]) -> Verdict {
    let Some(last) = samples.last() else {
        return Verdict::Unsure;
    };
    let start = last.at_ms - policy.window_ms;
    let window: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at_ms >= start)
        .collect();
    let (Some(first), n) = (window.first(), window.len()) else {
        return Verdict::Unsure;
    };
    let span = last.at_ms - first.at_ms;
    // Four fifths of the window: a sample missed at either end must not keep it unsure.
    if n < policy.min_samples.max(3) || span * 5 < policy.window_ms * 4 || span <= 0 {
        return Verdict::Unsure;
    }
    let (slope, fit) = least_squares(&window);
    let per_min = slope * 60_000.0;
    let third = n / 3;
    let head_max = window[..third].iter().map(|s| s.rss).max().unwrap_or(0);
    let tail_min = window[n - third..].iter().map(|s| s.rss).min().unwrap_or(0);
    if per_min >= policy.min_growth_per_min && fit >= policy.min_fit && tail_min > head_max {
        Verdict::Suspected {
            per_min,
            over_ms: span,
            from: first.rss,
            to: last.rss,
        }
    } else {
        Verdict::Fine
    }
}

/// Slope (bytes per ms) and R² of the least-squares line through the samples.
fn least_squares(samples: &[Sample]) -> (f64, f64) {
    let n = samples.len() as f64;
    let t0 = samples.first().map_or(0, |s| s.at_ms);
    let xs: Vec<f64> = samples.iter().map(|s| (s.at_ms - t0) as f64).collect();
    let ys: Vec<f64> = samples.iter().map(|s| s.rss as f64).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(&ys) {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
        syy += (y - mean_y) * (y - mean_y);
    }
    if sxx == 0.0 {
        return (0.0, 0.0);
    }
    let slope = sxy / sxx;
    // A flat, noiseless line explains everything there is to explain, but has no slope.
    let fit = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    (slope, fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A policy of a one-minute window, 1 MiB/min.
    fn policy() -> LeakPolicy {
        LeakPolicy {
            window_ms: 60_000,
            ..LeakPolicy::default()
        }
    }

    /// One sample a second for `secs` seconds, rss from `f(second)`.
    fn series(secs: i64, f: impl Fn(i64) -> u64) -> Vec<Sample> {
        (0..=secs)
            .map(|t| Sample {
                at_ms: 1_000_000 + t * 1000,
                rss: f(t),
            })
            .collect()
    }

    /// Deterministic noise in -1..=1 (a fixed sequence, no RNG).
    fn wobble(t: i64) -> f64 {
        [0.3, -0.8, 0.9, -0.2, 0.1, -1.0, 0.6, -0.4, 1.0, -0.6][(t % 10) as usize]
    }

    fn check(samples: &[Sample], want: &str) {
        let got = match judge(&policy(), samples) {
            Verdict::Unsure => "unsure".to_string(),
            Verdict::Fine => "fine".to_string(),
            v @ Verdict::Suspected { .. } => v.describe().unwrap_or_default(),
        };
        assert_eq!(got, want);
    }

    #[test]
    fn verdicts() {
        // Steady growth of 2 MiB/min from 50 MiB: suspected.
        check(
            &series(60, |t| 50 * MIB + (t as u64) * 2 * MIB / 60),
            "+2.0 MiB/min over 60s (50.0 → 52.0 MiB)",
        );
        // The same with noise of ±256 KiB on top: still suspected.
        check(
            &series(90, |t| {
                (50.0 * MIB as f64
                    + t as f64 * 2.0 * MIB as f64 / 60.0
                    + wobble(t) * 256.0 * 1024.0) as u64
            }),
            "+2.0 MiB/min over 60s (51.1 → 53.1 MiB)",
        );
        // Flat with noise of ±2 MiB: fine.
        check(
            &series(60, |t| {
                (80.0 * MIB as f64 + wobble(t) * 2.0 * MIB as f64) as u64
            }),
            "fine",
        );
        // Flat without noise: fine.
        check(&series(60, |_| 80 * MIB), "fine");
        // A GC sawtooth: +1 MiB a second for 15 s, then back to the floor; fine.
        check(&series(60, |t| 40 * MIB + (t % 15) as u64 * MIB), "fine");
        // A sawtooth with a fast period over a long window: fine.
        check(
            &series(120, |t| 40 * MIB + (t % 7) as u64 * 3 * MIB),
            "fine",
        );
        // Growth slower than the policy's 1 MiB/min: fine.
        check(&series(60, |t| 50 * MIB + (t as u64) * MIB / 120), "fine");
        // Shrinking: fine.
        check(
            &series(60, |t| 90 * MIB - (t as u64) * 2 * MIB / 60),
            "fine",
        );
        // Growth, then a release back down in the last third: fine.
        check(
            &series(60, |t| {
                if t < 45 {
                    50 * MIB + t as u64 * MIB
                } else {
                    50 * MIB
                }
            }),
            "fine",
        );
        // Too short a span (a process 20 s old) or too few samples: unsure.
        check(&series(20, |t| 50 * MIB + t as u64 * MIB), "unsure");
        check(
            &[
                Sample { at_ms: 0, rss: MIB },
                Sample {
                    at_ms: 60_000,
                    rss: 9 * MIB,
                },
            ],
            "unsure",
        );
        check(&[], "unsure");
    }

    /// Only the window counts: an old plateau before recent growth does not hide it, and old
    /// growth that stopped is no longer suspected.
    #[test]
    fn only_the_window_counts() {
        let mut s = series(60, |_| 30 * MIB);
        s.extend(
            series(60, |t| 30 * MIB + t as u64 * 3 * MIB / 60)
                .into_iter()
                .map(|x| Sample {
                    at_ms: x.at_ms + 61_000,
                    ..x
                }),
        );
        check(&s, "+3.0 MiB/min over 60s (30.0 → 33.0 MiB)");
        let mut s = series(60, |t| 30 * MIB + t as u64 * 3 * MIB / 60);
        s.extend(series(60, |_| 33 * MIB).into_iter().map(|x| Sample {
            at_ms: x.at_ms + 61_000,
            ..x
        }));
        check(&s, "fine");
    }
}
