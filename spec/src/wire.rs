//! Conversions between [`AppSpec`] and the wire type `pmcluster.v1.AppSpec`. Reading from the wire
//! validates, so every spec that crosses a service boundary has been checked.

use std::time::Duration;

use pmcluster_proto::v1 as pb;

use crate::SpecError;
use crate::app::{AppSpec, DEFAULT_KILL_TIMEOUT, ExecMode, PortSpec};

impl From<&AppSpec> for pb::AppSpec {
    fn from(s: &AppSpec) -> pb::AppSpec {
        pb::AppSpec {
            name: s.name.clone(),
            script: s.script.clone(),
            args: s.args.clone(),
            cwd: s.cwd.clone().unwrap_or_default(),
            env: s.env.clone().into_iter().collect(),
            instances: s.instances,
            port: s.port.to_string(),
            instance_var: s.instance_var.clone().unwrap_or_default(),
            shell: s.shell,
            autorestart: Some(s.autorestart),
            restart_delay_ms: millis(s.restart_delay),
            kill_timeout_ms: millis(s.kill_timeout),
            exec_mode: s.exec_mode.as_str().to_string(),
            merge_logs: s.merge_logs,
        }
    }
}

impl TryFrom<pb::AppSpec> for AppSpec {
    type Error = SpecError;

    fn try_from(p: pb::AppSpec) -> Result<AppSpec, SpecError> {
        AppSpec {
            name: p.name,
            script: p.script,
            args: p.args,
            cwd: Some(p.cwd).filter(|c| !c.is_empty()),
            env: p.env.into_iter().collect(),
            instances: p.instances,
            port: PortSpec::parse(&p.port)?,
            instance_var: Some(p.instance_var).filter(|v| !v.is_empty()),
            shell: p.shell,
            autorestart: p.autorestart.unwrap_or(true),
            restart_delay: Duration::from_millis(p.restart_delay_ms),
            kill_timeout: if p.kill_timeout_ms == 0 {
                DEFAULT_KILL_TIMEOUT
            } else {
                Duration::from_millis(p.kill_timeout_ms)
            },
            exec_mode: ExecMode::parse(&p.exec_mode)?,
            merge_logs: p.merge_logs,
        }
        .validate()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut spec = AppSpec::new("web", "node", &["server.js"]);
        spec.instances = 4;
        spec.port = PortSpec::Range(3000, 3003);
        spec.env.insert("A".into(), "b".into());
        spec.restart_delay = Duration::from_millis(250);
        let wire = pb::AppSpec::from(&spec);
        assert_eq!(AppSpec::try_from(wire), Ok(spec));
    }

    #[test]
    fn invalid_wire_spec_names_field() {
        let wire = pb::AppSpec {
            name: "web".into(),
            script: "node".into(),
            instances: 3,
            port: "4100-4101".into(),
            ..Default::default()
        };
        let err = AppSpec::try_from(wire).unwrap_err();
        assert_eq!(err.field, "port");
        let wire = pb::AppSpec {
            name: "web".into(),
            ..Default::default()
        };
        assert_eq!(AppSpec::try_from(wire).unwrap_err().field, "script");
    }
}
