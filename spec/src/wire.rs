//! Conversions between [`AppSpec`] and the wire type `pmcluster.v1.AppSpec`. Reading from the wire
//! validates, so every spec that crosses a service boundary has been checked. Placement
//! constraints are read as a cluster may already hold them; a new spec (an apply) is read with
//! [`new_spec_from_wire`], which also holds them to today's grammar.

use std::time::Duration;

use pmcluster_proto::v1 as pb;

use crate::app::{
    AppSpec, DEFAULT_KILL_TIMEOUT, ExecMode, PlacementSpec, PortSpec, Reschedule, Resources,
};
use crate::autoscale::{
    AutoscalePolicy, DEFAULT_COOLDOWN, DEFAULT_DOWN_STABILIZATION, DEFAULT_SCALE_DOWN_FRACTION,
    DEFAULT_TOLERANCE, MemoryThreshold, Mode as AutoscaleMode,
};
use crate::placement::{Affinity, Constraint, Strategy};
use crate::supervise::{
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTH_URL,
    HealthCheck, Probe, StopSignal, Supervision,
};
use crate::update::UpdatePolicy;
use crate::{SpecError, echo};

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
            kill_timeout_ms: Some(millis(s.kill_timeout)),
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
            min_uptime_ms: Some(millis(s.supervision.min_uptime)),
            max_restarts: Some(s.supervision.max_restarts),
            restart_window_ms: Some(millis(s.supervision.restart_window)),
            restart_backoff_max_ms: Some(millis(s.supervision.restart_backoff_max)),
            stop_signal: s.supervision.stop_signal.name().to_string(),
            listen_timeout_ms: Some(millis(s.supervision.listen_timeout)),
            health_check: s.supervision.health_check.as_ref().map(health_to_wire),
            max_memory_restart_bytes: s.supervision.max_memory_restart.unwrap_or(0),
            cpu_affinity: s.supervision.cpu_affinity.clone(),
            limits: s.supervision.limits.clone().into_iter().collect(),
            user: s.supervision.user.clone().unwrap_or_default(),
            group: s.supervision.group.clone().unwrap_or_default(),
            cron_restart: s.supervision.cron_restart.clone().unwrap_or_default(),
            log_timestamps: s.supervision.log_timestamps,
            log_max_bytes: Some(s.supervision.log_max_bytes.unwrap_or(0)),
            log_keep: Some(s.supervision.log_keep),
            secret_env: s.secret_env.iter().cloned().collect(),
            autoscale: s.autoscale.as_ref().map(autoscale_to_wire),
            update: Some(update_to_wire(&s.update)),
        }
    }
}

/// A policy sent to be set (`SetAutoscale`): [`autoscale_from_wire`] with the rules of a new
/// policy (see [`AutoscalePolicy::validate_new`]).
pub fn new_autoscale_from_wire(p: &pb::Autoscale) -> Result<AutoscalePolicy, SpecError> {
    let policy = autoscale_from_wire(p)?;
    policy.validate_new()?;
    Ok(policy)
}

/// A spec sent as new input, to be stored: [`AppSpec::try_from`], and its constraints and
/// affinities must also pass [`Constraint::parse`]. Specs coming back from a coordinator or an
/// agent's disk are read with `try_from` alone, so one stored before values were checked still
/// loads.
pub fn new_spec_from_wire(p: pb::AppSpec) -> Result<AppSpec, SpecError> {
    let placement = p.placement.clone().unwrap_or_default();
    let spec = AppSpec::try_from(p)?;
    for c in &placement.constraints {
        Constraint::parse("placement.constraints", c)?;
    }
    for a in &placement.affinities {
        Constraint::parse("placement.affinities", &a.expr)?;
    }
    Ok(spec)
}

impl TryFrom<pb::AppSpec> for AppSpec {
    type Error = SpecError;

    fn try_from(p: pb::AppSpec) -> Result<AppSpec, SpecError> {
        let supervision = supervision_from_wire(&p)?;
        let autoscale = match &p.autoscale {
            Some(a) if a.enabled => Some(autoscale_from_wire(a)?),
            _ => None,
        };
        AppSpec {
            name: p.name,
            script: p.script,
            args: p.args,
            cwd: Some(p.cwd).filter(|c| !c.is_empty()),
            env: p.env.into_iter().collect(),
            secret_env: p.secret_env.into_iter().collect(),
            // Ignored with `instances_max`, as the proto says (and as a config file's "max" reads).
            instances: if p.instances_max { 0 } else { p.instances },
            port: PortSpec::parse(&p.port)?,
            instance_var: Some(p.instance_var).filter(|v| !v.is_empty()),
            shell: p.shell,
            autorestart: p.autorestart.unwrap_or(true),
            restart_delay: Duration::from_millis(p.restart_delay_ms),
            kill_timeout: p
                .kill_timeout_ms
                .map_or(DEFAULT_KILL_TIMEOUT, Duration::from_millis),
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
            supervision,
            autoscale,
            update: update_from_wire(p.update.unwrap_or_default())?,
        }
        .validate()
    }
}

fn health_to_wire(h: &HealthCheck) -> pb::HealthCheck {
    let (check_type, url, expected_status, command) = match &h.probe {
        Probe::Http {
            url,
            expected_status,
        } => (
            "http",
            url.clone(),
            expected_status.map(u32::from).unwrap_or(0),
            String::new(),
        ),
        Probe::Tcp => ("tcp", String::new(), 0, String::new()),
        Probe::Exec { command } => ("exec", String::new(), 0, command.clone()),
    };
    pb::HealthCheck {
        check_type: check_type.to_string(),
        url,
        expected_status,
        command,
        interval_ms: millis(h.interval),
        timeout_ms: millis(h.timeout),
        retries: h.retries,
        restart_unhealthy: Some(h.restart_unhealthy),
    }
}

fn health_from_wire(h: &pb::HealthCheck) -> Result<Option<HealthCheck>, SpecError> {
    let probe = match h.check_type.trim() {
        "" => return Ok(None),
        "http" => Probe::Http {
            url: if h.url.is_empty() {
                DEFAULT_HEALTH_URL.to_string()
            } else {
                h.url.clone()
            },
            expected_status: match h.expected_status {
                0 => None,
                n => Some(u16::try_from(n).map_err(|_| {
                    SpecError::new(
                        "health_check.expected_status",
                        format!("{n} is not an HTTP status"),
                    )
                })?),
            },
        },
        "tcp" => Probe::Tcp,
        "exec" => Probe::Exec {
            command: h.command.clone(),
        },
        other => {
            return Err(SpecError::new(
                "health_check.check_type",
                format!(
                    "unknown check type {}; use \"http\", \"tcp\" or \"exec\"",
                    echo(other)
                ),
            ));
        }
    };
    let or = |ms: u64, default: Duration| {
        if ms == 0 {
            default
        } else {
            Duration::from_millis(ms)
        }
    };
    Ok(Some(HealthCheck {
        probe,
        interval: or(h.interval_ms, DEFAULT_HEALTH_INTERVAL),
        timeout: or(h.timeout_ms, DEFAULT_HEALTH_TIMEOUT),
        retries: if h.retries == 0 {
            DEFAULT_HEALTH_RETRIES
        } else {
            h.retries
        },
        restart_unhealthy: h.restart_unhealthy.unwrap_or(true),
    }))
}

fn supervision_from_wire(p: &pb::AppSpec) -> Result<Supervision, SpecError> {
    let base = Supervision::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    Ok(Supervision {
        min_uptime: ms(p.min_uptime_ms, base.min_uptime),
        max_restarts: p.max_restarts.unwrap_or(base.max_restarts),
        restart_window: ms(p.restart_window_ms, base.restart_window),
        restart_backoff_max: ms(p.restart_backoff_max_ms, base.restart_backoff_max),
        stop_signal: StopSignal::parse(&p.stop_signal)?,
        listen_timeout: ms(p.listen_timeout_ms, base.listen_timeout),
        health_check: match &p.health_check {
            Some(h) => health_from_wire(h)?,
            None => None,
        },
        max_memory_restart: Some(p.max_memory_restart_bytes).filter(|n| *n > 0),
        cpu_affinity: p.cpu_affinity.clone(),
        limits: p.limits.clone().into_iter().collect(),
        user: Some(p.user.clone()).filter(|u| !u.is_empty()),
        group: Some(p.group.clone()).filter(|g| !g.is_empty()),
        cron_restart: Some(p.cron_restart.clone()).filter(|c| !c.trim().is_empty()),
        log_timestamps: p.log_timestamps,
        log_max_bytes: match p.log_max_bytes {
            None => base.log_max_bytes,
            Some(0) => None,
            Some(n) => Some(n),
        },
        log_keep: p.log_keep.unwrap_or(base.log_keep),
    })
}

/// The wire form of a policy (enabled).
pub fn autoscale_to_wire(a: &AutoscalePolicy) -> pb::Autoscale {
    let (memory_threshold, memory_threshold_bytes) = match a.memory_threshold {
        None => (0.0, 0),
        Some(MemoryThreshold::Percent(p)) => (p, 0),
        Some(MemoryThreshold::Bytes(b)) => (0.0, b),
    };
    pb::Autoscale {
        enabled: true,
        min: a.min,
        max: a.max,
        mode: a.mode.as_str().to_string(),
        cpu_threshold: a.cpu_threshold.unwrap_or(0.0),
        memory_threshold,
        memory_threshold_bytes,
        scale_down_fraction: a.scale_down_fraction,
        tolerance: Some(a.tolerance),
        cooldown_ms: Some(millis(a.cooldown)),
        up_stabilization_ms: millis(a.up_stabilization),
        down_stabilization_ms: Some(millis(a.down_stabilization)),
    }
}

/// Reads an enabled policy from the wire; unset fields (and a zero scale-down fraction) take their
/// defaults.
pub fn autoscale_from_wire(a: &pb::Autoscale) -> Result<AutoscalePolicy, SpecError> {
    let memory_threshold = if a.memory_threshold_bytes > 0 {
        Some(MemoryThreshold::Bytes(a.memory_threshold_bytes))
    } else if a.memory_threshold != 0.0 {
        Some(MemoryThreshold::Percent(a.memory_threshold))
    } else {
        None
    };
    let policy = AutoscalePolicy {
        min: a.min,
        max: a.max,
        mode: AutoscaleMode::parse(&a.mode)?,
        cpu_threshold: Some(a.cpu_threshold).filter(|c| *c != 0.0),
        memory_threshold,
        scale_down_fraction: if a.scale_down_fraction == 0.0 {
            DEFAULT_SCALE_DOWN_FRACTION
        } else {
            a.scale_down_fraction
        },
        tolerance: a.tolerance.unwrap_or(DEFAULT_TOLERANCE),
        cooldown: a
            .cooldown_ms
            .map_or(DEFAULT_COOLDOWN, Duration::from_millis),
        up_stabilization: Duration::from_millis(a.up_stabilization_ms),
        down_stabilization: a
            .down_stabilization_ms
            .map_or(DEFAULT_DOWN_STABILIZATION, Duration::from_millis),
    };
    policy.validate()?;
    Ok(policy)
}

pub fn update_to_wire(u: &UpdatePolicy) -> pb::UpdatePolicy {
    pb::UpdatePolicy {
        max_surge: Some(u.max_surge),
        max_unavailable: Some(u.max_unavailable),
        min_healthy_time_ms: Some(millis(u.min_healthy_time)),
        healthy_deadline_ms: Some(millis(u.healthy_deadline)),
        progress_deadline_ms: Some(millis(u.progress_deadline)),
        auto_rollback: Some(u.auto_rollback),
        canary: u.canary,
        shutdown_delay_ms: millis(u.shutdown_delay),
    }
}

pub fn update_from_wire(u: pb::UpdatePolicy) -> Result<UpdatePolicy, SpecError> {
    let base = UpdatePolicy::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    let policy = UpdatePolicy {
        max_surge: u.max_surge.unwrap_or(base.max_surge),
        max_unavailable: u.max_unavailable.unwrap_or(base.max_unavailable),
        min_healthy_time: ms(u.min_healthy_time_ms, base.min_healthy_time),
        healthy_deadline: ms(u.healthy_deadline_ms, base.healthy_deadline),
        progress_deadline: ms(u.progress_deadline_ms, base.progress_deadline),
        auto_rollback: u.auto_rollback.unwrap_or(base.auto_rollback),
        canary: u.canary,
        shutdown_delay: Duration::from_millis(u.shutdown_delay_ms),
    };
    policy.validate()?;
    Ok(policy)
}

fn placement_from_wire(p: pb::Placement) -> Result<PlacementSpec, SpecError> {
    let constraints = p
        .constraints
        .iter()
        .map(|c| Constraint::parse_held("placement.constraints", c))
        .collect::<Result<Vec<_>, _>>()?;
    let affinities = p
        .affinities
        .iter()
        .map(|a| {
            Ok(Affinity {
                constraint: Constraint::parse_held("placement.affinities", &a.expr)?,
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

    /// Found by the config fuzz targets: a zero kill timeout, cooldown, down stabilization or
    /// tolerance read back as the default (the wire's 0 meant "unset"); they now travel as set.
    #[test]
    fn zeros_travel_and_unset_fields_take_defaults() {
        let mut spec = AppSpec::new("web", "node", &["server.js"]);
        spec.kill_timeout = Duration::ZERO;
        spec.autoscale = Some(AutoscalePolicy {
            tolerance: 0.0,
            cooldown: Duration::ZERO,
            down_stabilization: Duration::ZERO,
            ..AutoscalePolicy::new(1, 1, 70.0)
        });
        let wire = pb::AppSpec::from(&spec);
        assert_eq!(AppSpec::try_from(wire), Ok(spec));

        let unset = pb::Autoscale {
            enabled: true,
            max: 4,
            cpu_threshold: 70.0,
            ..Default::default()
        };
        let policy = autoscale_from_wire(&unset).expect("valid");
        assert_eq!(
            (policy.tolerance, policy.cooldown, policy.down_stabilization),
            (
                DEFAULT_TOLERANCE,
                DEFAULT_COOLDOWN,
                DEFAULT_DOWN_STABILIZATION
            )
        );
        let bare = pb::AppSpec {
            name: "web".into(),
            script: "node".into(),
            ..Default::default()
        };
        let read = AppSpec::try_from(bare).expect("valid");
        assert_eq!(read.kill_timeout, DEFAULT_KILL_TIMEOUT);
    }

    /// Found by the wire_specs fuzz target: a count beside `instances_max` was kept, and the
    /// spec's config form ("max") read back without it.
    #[test]
    fn instances_max_ignores_the_count() {
        let wire = pb::AppSpec {
            name: "web".into(),
            script: "node".into(),
            instances: 2,
            instances_max: true,
            ..Default::default()
        };
        let spec = AppSpec::try_from(wire).expect("valid");
        assert!(spec.instances_max);
        assert_eq!(spec.instances, 0);
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
