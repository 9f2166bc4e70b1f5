//! The app spec shared by the CLI, the coordinator and the agent: parsing PMDaemon/PM2-style
//! config files, validation with errors that name the field, per-instance environment and
//! argument expansion, and conversion to and from the wire types.
//!
//! Pure: no I/O, no clocks, no environment reads.

pub mod app;
pub mod autoscale;
pub mod config;
pub mod instance;
pub mod placement;
pub mod supervise;
pub mod update;
pub mod wire;

pub use app::{AppSpec, ExecMode, PortSpec};

/// A spec that cannot be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {message}", app.as_ref().map(|a| format!("app {a:?}: ")).unwrap_or_default())]
pub struct SpecError {
    /// App the error is about, when the input held several.
    pub app: Option<String>,
    /// Field at fault, as written in config files (`port`, `instances`, ...).
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            app: None,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The same error, attributed to an app.
    pub fn in_app(self, app: &str) -> SpecError {
        SpecError {
            app: Some(app.to_string()),
            ..self
        }
    }
}
