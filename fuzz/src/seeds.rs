//! The starting corpus of the binary targets (`wire_specs`, `desired_set`): real requests and
//! desired sets built from the config seeds. Written to `seeds/` by
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`, and committed, so the fuzz
//! runs need no extra build. `scripts/test.sh` runs this crate's tests on stable.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use pmcluster_spec::config::{Format, parse_apps};
use pmcluster_spec::wire::autoscale_to_wire;
use prost::Message;

/// The cluster and highest applied generation of the agent the `desired_set` target plays.
pub const CLUSTER: &str = "c1";
pub const HIGHEST: u64 = 5;

const CONFIGS: [&str; 5] = [
    include_str!("../seeds/config_json/single.json"),
    include_str!("../seeds/config_json/many.json"),
    include_str!("../seeds/config_json/full.json"),
    include_str!("../seeds/config_json/placement.json"),
    include_str!("../seeds/config_json/spread.json"),
];

/// Every app of the JSON config seeds.
pub fn specs() -> Vec<AppSpec> {
    CONFIGS
        .iter()
        .flat_map(|text| {
            parse_apps(text, Format::Json).unwrap_or_else(|e| panic!("a config seed: {e}"))
        })
        .collect()
}

/// Named seeds of `wire_specs`: one or more of each request type.
pub fn wire() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &str, m: &dyn MessageBytes| out.push((name.to_string(), m.bytes()));
    let specs = specs();
    for s in &specs {
        let spec = pb::AppSpec::from(s);
        add(&format!("spec-{}", s.name), &spec);
        add(
            &format!("apply-{}", s.name),
            &pb::ApplyAppRequest {
                spec: Some(spec),
                keep_instances: s.instances == 1,
            },
        );
        if let Some(a) = &s.autoscale {
            add(
                &format!("autoscale-{}", s.name),
                &pb::SetAutoscaleRequest {
                    app: s.name.clone(),
                    policy: Some(autoscale_to_wire(a)),
                },
            );
        }
    }
    add(
        "scale",
        &pb::ScaleRequest {
            app: "web".into(),
            instances: 7,
            relative: false,
        },
    );
    add(
        "target",
        &pb::InstanceTarget {
            app: "web".into(),
            index: Some(2),
            rolling: false,
        },
    );
    add(
        "rollout",
        &pb::ControlRolloutRequest {
            app: "web".into(),
            action: "promote".into(),
        },
    );
    add(
        "logs",
        &pb::StreamLogsRequest {
            app: "web".into(),
            index: Some(1),
            lines: 100,
            follow: true,
            no_history: false,
        },
    );
    add(
        "list-apps",
        &pb::ListAppsRequest {
            page_size: 1,
            page_token: "app/api".into(),
        },
    );
    add(
        "list-instances",
        &pb::ListInstancesRequest {
            app: "web".into(),
            page_size: 2,
            page_token: "1/0191e2a4-7c1d-7000-8000-000000000001/web".into(),
        },
    );
    add(
        "token",
        &pb::CreateTokenRequest {
            role: "operate".into(),
            apps: "web-[a-c]*".into(),
            description: "web-b1".into(),
        },
    );
    let status = pb::InstanceStatus {
        instance_id: "0191e2a4-7c1d-7000-8000-000000000001".into(),
        state: pb::InstanceState::Online as i32,
        pid: 4242,
        port: 3000,
        cpu_percent: 12.5,
        memory_bytes: 1 << 24,
        restarts: 1,
        started_at_ms: 1_700_000_000_000,
        last_exit_code: Some(1),
        message: "ok".into(),
        restart_epoch: 2,
        health: pb::HealthState::Healthy as i32,
        start_failures: 0,
        cpu_time_ms: 1500,
    };
    let held = specs
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, s)| pb::Assignment {
            instance_id: format!("0191e2a4-7c1d-7000-8000-00000000000{i}"),
            index: i as u32,
            app_version: 3,
            spec: Some(pb::AppSpec::from(s)),
            port: 3000,
            run: true,
            restart_epoch: 1,
        })
        .collect();
    let up = |msg| pb::AgentMessage { msg: Some(msg) };
    use pb::agent_message::Msg;
    add(
        "register",
        &up(Msg::Register(pb::Register {
            node_name: "n1".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            cores: 4,
            memory_bytes: 1 << 33,
            hostname: "host-1".into(),
            agent_version: "0.1.0".into(),
            generation: 9,
            instances: vec![status.clone()],
            advertise_address: "127.0.0.1".into(),
            agent_id: "a1".into(),
            cluster_id: CLUSTER.into(),
            held,
            renamed_from: String::new(),
            takes_deltas: false,
        })),
    );
    add(
        "command_result",
        &up(Msg::CommandResult(pb::CommandResult {
            request_id: 7,
            outcomes: vec![
                pb::CommandOutcome {
                    instance_id: "00000000-0000-0000-0000-000000000001".into(),
                    delivered: true,
                    error: String::new(),
                },
                pb::CommandOutcome {
                    instance_id: "00000000-0000-0000-0000-000000000002".into(),
                    delivered: false,
                    error: "not running (exited)".into(),
                },
            ],
        })),
    );
    add(
        "signal",
        &pb::SignalRequest {
            app: "web".into(),
            index: Some(1),
            signal: "usr2".into(),
        },
    );
    add(
        "send",
        &pb::SendMessageRequest {
            app: "web".into(),
            index: None,
            message: "reload-config".into(),
        },
    );
    add(
        "report",
        &up(Msg::Status(pb::StatusReport {
            generation: 9,
            instances: vec![status],
            host: Some(pb::HostMetrics {
                cpu_percent: 30.0,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 1 << 33,
                load1: 0.7,
                cores: 4,
            }),
        })),
    );
    add(
        "log-chunk",
        &up(Msg::LogChunk(pb::LogChunk {
            request_id: 3,
            lines: vec![pb::LogLine {
                app: "web".into(),
                index: 0,
                node: "n1".into(),
                stream: pb::LogStream::Stderr as i32,
                line: "listening".into(),
                unread: false,
            }],
            eof: false,
            error: String::new(),
        })),
    );
    out
}

/// Named seeds of `desired_set`: sets for the agent the target plays (see `desired`).
pub fn desired() -> Vec<(String, Vec<u8>)> {
    let specs = specs();
    let assign = |id: &str, spec: &AppSpec, run: bool, epoch: u64| pb::Assignment {
        instance_id: id.into(),
        index: 0,
        app_version: 1,
        spec: Some(pb::AppSpec::from(spec)),
        port: 0,
        run,
        restart_epoch: epoch,
    };
    let web = AppSpec::new("web", "sleep", &[]);
    let set = |generation, assignments| pb::DesiredSet {
        generation,
        assignments,
        cluster_id: CLUSTER.into(),
        adopt: false,
        delta: false,
        base_generation: 0,
        removed: Vec::new(),
    };
    let mut sets = vec![
        (
            "same",
            set(
                HIGHEST,
                vec![assign("i1", &web, true, 1), assign("i2", &web, false, 1)],
            ),
        ),
        (
            "changes",
            set(
                HIGHEST + 1,
                vec![
                    assign("i1", &web, true, 2),
                    assign("i2", &web, true, 1),
                    assign("i3", &web, true, 1),
                    assign("i4", &specs[0], false, 1),
                    assign("i5", &specs[1], true, 0),
                    assign("i5", &specs[2], true, 0),
                    pb::Assignment {
                        port: 70_000,
                        ..assign("i6", &web, true, 0)
                    },
                    pb::Assignment {
                        spec: Some(pb::AppSpec {
                            name: "bad".into(),
                            ..Default::default()
                        }),
                        ..assign("i7", &web, true, 0)
                    },
                    assign("", &web, true, 0),
                ],
            ),
        ),
        ("stale", set(HIGHEST - 1, vec![assign("i1", &web, true, 1)])),
        (
            "foreign",
            pb::DesiredSet {
                cluster_id: "c2".into(),
                adopt: true,
                ..set(HIGHEST + 2, vec![assign("x-41", &web, true, 0)])
            },
        ),
    ];
    for (i, s) in specs.iter().enumerate() {
        sets.push((
            "spec",
            set(
                HIGHEST + 3,
                vec![pb::Assignment {
                    index: i as u32,
                    port: 3000 + i as u32,
                    ..assign(&format!("i{}", 10 + i), s, true, 0)
                }],
            ),
        ));
    }
    sets.into_iter()
        .enumerate()
        .map(|(i, (name, s))| (format!("{name}-{i}"), s.encode_to_vec()))
        .collect()
}

/// A message's encoding, for [`wire`]'s mixed list.
trait MessageBytes {
    fn bytes(&self) -> Vec<u8>;
}

impl<M: Message> MessageBytes for M {
    fn bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Each seed passes its target's checks: a seed that fails is a finding, not a start. The
    /// config seeds are valid, so that the fuzzer starts from specs that get far.
    #[test]
    fn seeds_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        for (target, format) in [
            ("config_json", Format::Json),
            ("config_yaml", Format::Yaml),
            ("config_toml", Format::Toml),
        ] {
            for entry in std::fs::read_dir(dir.join(target)).expect("seed dir") {
                let path = entry.expect("seed entry").path();
                let text = std::fs::read_to_string(&path).expect("seed file");
                if let Err(e) = parse_apps(&text, format) {
                    panic!("{}: {e}", path.display());
                }
                crate::config::check(text.as_bytes(), format);
            }
        }
        for (_, bytes) in wire() {
            crate::wire::check(&bytes);
        }
        for (_, bytes) in desired() {
            crate::desired::check(&bytes);
        }
    }
}
