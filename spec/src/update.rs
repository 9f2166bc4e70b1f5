//! How an app's instances are replaced when its process changes (a new version or a rolling
//! restart): in waves, each replacement healthy for a while before the instance it replaces is
//! drained and stopped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SpecError;
use crate::limits::check_duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdatePolicy {
    /// Replacements started before the instances they replace stop (extra instances at once).
    pub max_surge: u32,
    /// Indices allowed to have no healthy instance at once (replaced stop-then-start).
    pub max_unavailable: u32,
    /// A replacement must be online (and healthy, with a health check) this long to count.
    #[serde(with = "crate::app::millis")]
    pub min_healthy_time: Duration,
    /// A replacement not healthy within this long fails the rollout.
    #[serde(with = "crate::app::millis")]
    pub healthy_deadline: Duration,
    /// The rollout fails when no index completes within this long.
    #[serde(with = "crate::app::millis")]
    pub progress_deadline: Duration,
    /// On failure, go back to the previous version on its own.
    pub auto_rollback: bool,
    /// Replace this many instances first, then wait for `pmcluster rollout promote`.
    pub canary: u32,
    /// An instance being replaced is marked draining this long (so load balancers drop it)
    /// before it gets its stop signal.
    #[serde(with = "crate::app::millis")]
    pub shutdown_delay: Duration,
}

impl Default for UpdatePolicy {
    fn default() -> UpdatePolicy {
        UpdatePolicy {
            max_surge: 1,
            max_unavailable: 0,
            min_healthy_time: Duration::from_secs(5),
            healthy_deadline: Duration::from_secs(300),
            progress_deadline: Duration::from_secs(600),
            auto_rollback: true,
            canary: 0,
            shutdown_delay: Duration::ZERO,
        }
    }
}

impl UpdatePolicy {
    pub fn validate(&self) -> Result<(), SpecError> {
        check_duration("update.min_healthy_time", self.min_healthy_time)?;
        check_duration("update.healthy_deadline", self.healthy_deadline)?;
        check_duration("update.progress_deadline", self.progress_deadline)?;
        check_duration("update.shutdown_delay", self.shutdown_delay)?;
        if self.max_surge == 0 && self.max_unavailable == 0 {
            return Err(SpecError::new(
                "update.max_surge",
                "max_surge and max_unavailable are both 0: nothing could ever be replaced",
            ));
        }
        if self.healthy_deadline <= self.min_healthy_time {
            return Err(SpecError::new(
                "update.healthy_deadline",
                "must be longer than min_healthy_time",
            ));
        }
        if self.progress_deadline < self.healthy_deadline {
            return Err(SpecError::new(
                "update.progress_deadline",
                "must be at least healthy_deadline",
            ));
        }
        Ok(())
    }
}
