//! The control's commands in their wire shape, for callers written against it (the tests, the
//! simulation): thin wrappers over the typed commands and `convert`, so that the control itself
//! deals in domain types only.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;

use super::convert;
use crate::control::{ApplyCmd, Control, ControlError, RolloutAction, ScaleCmd};

type Result<T> = std::result::Result<T, ControlError>;

impl Control {
    /// Creates or updates an app. Returns the stored app, (created, changed), and the rollout a
    /// process change started.
    pub fn apply(&self, spec: AppSpec) -> Result<(pb::App, bool, bool, Option<pb::Deployment>)> {
        self.apply_keeping(spec, false)
    }

    /// [`Control::apply`], optionally keeping the app's current instance count (see
    /// [`Control::apply_app`]).
    pub fn apply_keeping(
        &self,
        spec: AppSpec,
        keep_instances: bool,
    ) -> Result<(pb::App, bool, bool, Option<pb::Deployment>)> {
        let applied = self.apply_app(ApplyCmd {
            spec,
            keep_instances,
        })?;
        // The app as it is now (a command right after this one may already show).
        let view = self.get_app(&applied.app).unwrap_or_default();
        let deployment = applied
            .deployment
            .as_ref()
            .map(|d| convert::deployment(&applied.app, d));
        Ok((view, applied.created, applied.changed, deployment))
    }

    /// Sets the desired count. Returns (previous, new).
    pub fn scale(&self, name: &str, count: i64) -> Result<(u32, u32)> {
        let scaled = self.scale_app(ScaleCmd::new(name, count)?)?;
        Ok((scaled.previous, scaled.instances))
    }

    /// Replaces every instance of the app in waves (its update policy) with fresh processes.
    pub fn rolling_restart(&self, name: &str) -> Result<pb::Deployment> {
        Ok(convert::deployment(name, &self.restart_rolling(name)?))
    }

    /// The app's rollout and rollout history.
    pub fn get_rollout(&self, name: &str) -> Result<pb::RolloutStatus> {
        Ok(convert::rollout_status(name, &self.rollouts(name)?))
    }

    /// Pauses, resumes or promotes the app's running rollout.
    pub fn control_rollout(&self, name: &str, action: &str) -> Result<pb::Deployment> {
        let action = RolloutAction::parse(action)?;
        Ok(convert::deployment(
            name,
            &self.steer_rollout(name, action)?,
        ))
    }

    /// Rolls back to the previous version (or `to_version`) as a new rollout.
    pub fn undo_rollout(&self, name: &str, to_version: Option<u64>) -> Result<pb::Deployment> {
        Ok(convert::deployment(
            name,
            &self.roll_back(name, to_version)?,
        ))
    }
}
