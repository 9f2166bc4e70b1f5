//! An app's autoscaling policy, as written in config files and `pmcluster autoscale`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::check_duration;
use crate::{SpecError, echo};

/// How the desired count follows the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mode {
    /// +1 above the threshold, -1 below `scale_down_fraction` of it (the seeds' policy).
    #[default]
    Threshold,
    /// desired = ceil(current * observed / target), outside a tolerance band (Kubernetes' HPA).
    Target,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, SpecError> {
        match s.trim() {
            "" | "threshold" => Ok(Mode::Threshold),
            "target" | "target-tracking" => Ok(Mode::Target),
            other => Err(SpecError::new(
                "autoscale.mode",
                format!(
                    "unknown mode {}; use \"threshold\" or \"target\"",
                    echo(other)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Threshold => "threshold",
            Mode::Target => "target",
        }
    }
}

/// Memory threshold: percent of the instance's memory request, or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MemoryThreshold {
    Percent(f64),
    Bytes(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalePolicy {
    pub min: u32,
    pub max: u32,
    pub mode: Mode,
    /// Average CPU per online instance, percent of one core.
    pub cpu_threshold: Option<f64>,
    pub memory_threshold: Option<MemoryThreshold>,
    pub scale_down_fraction: f64,
    pub tolerance: f64,
    #[serde(with = "crate::app::millis")]
    pub cooldown: Duration,
    #[serde(with = "crate::app::millis")]
    pub up_stabilization: Duration,
    #[serde(with = "crate::app::millis")]
    pub down_stabilization: Duration,
}

// Thresholds are finite by validation, so equality is total in practice.
impl Eq for AutoscalePolicy {}

pub const DEFAULT_SCALE_DOWN_FRACTION: f64 = 0.5;
pub const DEFAULT_TOLERANCE: f64 = 0.1;
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(15);
pub const DEFAULT_UP_STABILIZATION: Duration = Duration::ZERO;
pub const DEFAULT_DOWN_STABILIZATION: Duration = Duration::from_secs(300);

impl AutoscalePolicy {
    /// A threshold policy with the defaults, for `min..=max` at `cpu` percent.
    pub fn new(min: u32, max: u32, cpu: f64) -> AutoscalePolicy {
        AutoscalePolicy {
            min,
            max,
            mode: Mode::Threshold,
            cpu_threshold: Some(cpu),
            memory_threshold: None,
            scale_down_fraction: DEFAULT_SCALE_DOWN_FRACTION,
            tolerance: DEFAULT_TOLERANCE,
            cooldown: DEFAULT_COOLDOWN,
            up_stabilization: DEFAULT_UP_STABILIZATION,
            down_stabilization: DEFAULT_DOWN_STABILIZATION,
        }
    }

    /// [`AutoscalePolicy::validate`], and what only a new policy must meet: a min of one or
    /// more. A trial's `autoscale web --max 4` took its min as 0: the idle app went 2 -> 1 -> 0,
    /// and with no instance left there is no CPU or memory to measure, so nothing could ever
    /// scale it up again. (Kubernetes' HPA keeps at least one too.) Held to it: a policy the
    /// `autoscale` verb (or `SetAutoscale`) sets. A spec that is sent back as it is stored
    /// (`reload`, `export` then `apply -f`) keeps a min 0 an older CLI stored, and a config
    /// file's block, whose min is 1 unless written, may say 0 on purpose.
    pub fn validate_new(&self) -> Result<(), SpecError> {
        if self.min == 0 {
            return Err(SpecError::new(
                "autoscale.min",
                "must be at least 1: with no instance left there is no CPU or memory to \
                 measure, so the autoscaler could never scale it up again",
            ));
        }
        self.validate()
    }

    /// Checks bounds and ranges; errors name the field (`autoscale.min`, ...).
    pub fn validate(&self) -> Result<(), SpecError> {
        // A max of 0 first: it is the wrong one then, whatever the min (`--max 0` was said to
        // be a bad `--min`).
        if self.max == 0 {
            return Err(SpecError::new("autoscale.max", "must be at least 1"));
        }
        if self.min > self.max {
            return Err(SpecError::new(
                "autoscale.min",
                format!("min {} is above max {}", self.min, self.max),
            ));
        }
        if self.max > crate::app::MAX_INSTANCES {
            return Err(SpecError::new(
                "autoscale.max",
                format!(
                    "{} is more than the limit of {}",
                    self.max,
                    crate::app::MAX_INSTANCES
                ),
            ));
        }
        if let Some(c) = self.cpu_threshold
            && !(c.is_finite() && c > 0.0 && c <= 10_000.0)
        {
            return Err(SpecError::new(
                "autoscale.cpu_threshold",
                format!("{c} is out of range; give a percent of one core above 0, e.g. 70"),
            ));
        }
        match self.memory_threshold {
            Some(MemoryThreshold::Percent(p)) if !(p.is_finite() && p > 0.0 && p <= 100.0) => {
                return Err(SpecError::new(
                    "autoscale.memory_threshold",
                    format!("{p} is out of range; give a percent (1-100) or a size like \"512M\""),
                ));
            }
            Some(MemoryThreshold::Bytes(0)) => {
                return Err(SpecError::new(
                    "autoscale.memory_threshold",
                    "must be more than 0",
                ));
            }
            _ => {}
        }
        check_duration("autoscale.cooldown", self.cooldown)?;
        check_duration("autoscale.up_stabilization", self.up_stabilization)?;
        check_duration("autoscale.down_stabilization", self.down_stabilization)?;
        if self.cpu_threshold.is_none() && self.memory_threshold.is_none() {
            return Err(SpecError::new(
                "autoscale.cpu_threshold",
                "give a CPU or a memory threshold (e.g. --cpu-threshold 70)",
            ));
        }
        if !(self.scale_down_fraction > 0.0 && self.scale_down_fraction < 1.0) {
            return Err(SpecError::new(
                "autoscale.scale_down_fraction",
                format!("{} must be between 0 and 1", self.scale_down_fraction),
            ));
        }
        if !(self.tolerance >= 0.0 && self.tolerance < 1.0) {
            return Err(SpecError::new(
                "autoscale.tolerance",
                format!("{} must be between 0 and 1", self.tolerance),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(AutoscalePolicy::new(2, 10, 70.0).validate().is_ok());
        let cases: Vec<(AutoscalePolicy, &str)> = vec![
            (AutoscalePolicy::new(5, 2, 70.0), "autoscale.min"),
            (AutoscalePolicy::new(0, 0, 70.0), "autoscale.max"),
            (AutoscalePolicy::new(1, 0, 70.0), "autoscale.max"),
            (AutoscalePolicy::new(1, 2, 0.0), "autoscale.cpu_threshold"),
            (
                AutoscalePolicy::new(1, 2, f64::NAN),
                "autoscale.cpu_threshold",
            ),
            (
                AutoscalePolicy {
                    cpu_threshold: None,
                    ..AutoscalePolicy::new(1, 2, 70.0)
                },
                "autoscale.cpu_threshold",
            ),
            (
                AutoscalePolicy {
                    memory_threshold: Some(MemoryThreshold::Percent(150.0)),
                    ..AutoscalePolicy::new(1, 2, 70.0)
                },
                "autoscale.memory_threshold",
            ),
            (
                AutoscalePolicy {
                    scale_down_fraction: 1.5,
                    ..AutoscalePolicy::new(1, 2, 70.0)
                },
                "autoscale.scale_down_fraction",
            ),
        ];
        for (policy, field) in cases {
            assert_eq!(
                policy.validate().map_err(|e| e.field),
                Err(field.to_string()),
                "{policy:?}"
            );
        }
    }
}
