//! Conversions between [`AppSpec`] and the wire type `pmcluster.v1.AppSpec`. Reading from the wire
//! validates, so every spec that crosses a service boundary has been checked.

use std::time::Duration;

use pmcluster_proto::v1 as pb;

use crate::SpecError;
use crate::app::{
    AppSpec, DEFAULT_KILL_TIMEOUT, ExecMode, PlacementSpec, PortSpec, Reschedule, Resources,
};
use crate::placement::{Affinity, Constraint, Strategy};

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
            instances_max: s.instances_max,
            placement: Some(pb::Placement {
                strategy: s.placement.strategy.as_str().to_string(),
                constraints: s
                    .placement
                    .constraints
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                affinities: s
                    .placement
                    .affinities
                    .iter()
                    .map(|a| pb::Affinity {
                        expr: a.constraint.to_string(),
                        weight: a.weight,
                    })
                    .collect(),
                distinct_hosts: s.placement.max_per_node == Some(1),
                max_per_node: s.placement.max_per_node.unwrap_or(0),
            }),
            resources: Some(pb::Resources {
                cpu_millis: s.resources.cpu_millis,
                memory_bytes: s.resources.memory_bytes,
                overcommit: s.resources.overcommit,
            }),
            reschedule_after_ms: match s.reschedule {
                Reschedule::After(d) => Some(millis(d)),
                Reschedule::Never => None,
            },
            wait_for_node: s.reschedule == Reschedule::Never,
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
            instances_max: p.instances_max,
            placement: placement_from_wire(p.placement.unwrap_or_default())?,
            resources: p
                .resources
                .map(|r| Resources {
                    cpu_millis: r.cpu_millis,
                    memory_bytes: r.memory_bytes,
                    overcommit: r.overcommit,
                })
                .unwrap_or_default(),
            reschedule: match (p.wait_for_node, p.reschedule_after_ms) {
                (true, _) => Reschedule::Never,
                (false, Some(ms)) => Reschedule::After(Duration::from_millis(ms)),
                (false, None) => Reschedule::default(),
            },
        }
        .validate()
    }
}

fn placement_from_wire(p: pb::Placement) -> Result<PlacementSpec, SpecError> {
    let constraints = p
        .constraints
        .iter()
        .map(|c| Constraint::parse("placement.constraints", c))
        .collect::<Result<Vec<_>, _>>()?;
    let affinities = p
        .affinities
        .iter()
        .map(|a| {
            Ok(Affinity {
                constraint: Constraint::parse("placement.affinities", &a.expr)?,
                weight: a.weight,
            })
        })
        .collect::<Result<Vec<_>, SpecError>>()?;
    let max_per_node = match (p.distinct_hosts, p.max_per_node) {
        (true, m) if m > 1 => {
            return Err(SpecError::new(
                "placement.max_per_node",
                format!("{m} contradicts distinct_hosts (at most 1 per node)"),
            ));
        }
        (true, _) => Some(1),
        (false, 0) => None,
        (false, m) => Some(m),
    };
    Ok(PlacementSpec {
        strategy: Strategy::parse(&p.strategy)?,
        constraints,
        affinities,
        max_per_node,
    })
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
