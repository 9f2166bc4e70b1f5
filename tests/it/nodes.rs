//! Node names are unique among connected agents; a drain moves what another node takes.

use pmcluster_tests::{Cluster, STARTUP_TIMEOUT, now_ms, render, wait_until};
use serde_json::Value;

use crate::{DEADLINE, wait_online};

#[test]
fn duplicate_node_name_refused() {
    let mut c = Cluster::start(1).expect("coordinator and node-a start");
    let first = c.agent_idx("node-a").expect("node-a was started");
    let second = c.add_agent("node-a").expect("a second node-a agent spawns");

    let status = wait_until(DEADLINE, "the second node-a agent to exit", || {
        c.agent(second).try_exit().ok_or_else(|| {
            format!(
                "still running; stderr:\n{}",
                c.agent(second).stderr_tail(10)
            )
        })
    });
    let stderr = c.agent(second).stderr();
    assert!(
        !status.success(),
        "the refused agent exits non-zero: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("node-a") && stderr.contains("already connected"),
        "the refused agent says why:\n{stderr}"
    );

    // The first agent is untouched: still running, still the only node-a, still reporting.
    assert!(
        c.agent(first).running(),
        "the first node-a agent still runs"
    );
    let refused_at = now_ms();
    let nodes = wait_until(DEADLINE, "node-a to report after the refusal", || {
        let nodes = c.nodes_json()?;
        let fresh = nodes.len() == 1
            && nodes[0]["name"] == "node-a"
            && nodes[0]["status"] == "ready"
            && nodes[0]["last_heartbeat_ms"].as_i64().unwrap_or(0) > refused_at;
        if fresh {
            Ok(nodes)
        } else {
            Err(Value::Array(nodes).to_string())
        }
    });
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        c.agent(first).running(),
        "the first node-a agent still runs"
    );
}

/// The coordinator serves the standard gRPC health service and server reflection (v1 and
/// v1alpha), so generic tools (grpcurl, grpc_health_probe) and other languages' clients work.
#[test]
fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServiceResponse};
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;

    let c = Cluster::start(0).expect("a coordinator starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(c.url())
            .expect("coordinator url")
            .connect()
            .await
            .expect("connect to the coordinator");
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "pmcluster.v1.Cluster"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
        }

        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let mut replies = reflection
            .server_reflection_info(tokio_stream::iter(vec![ask]))
            .await
            .expect("reflection v1 answers")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("a reflection reply")
            .and_then(|r| r.message_response);
        let Some(MessageResponse::ListServicesResponse(list)) = reply else {
            panic!("not a service list: {reply:?}");
        };
        let names: Vec<String> = list
            .service
            .into_iter()
            .map(|s: ServiceResponse| s.name)
            .collect();
        for want in ["pmcluster.v1.Cluster", "pmcluster.v1.AgentLink"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }

        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaAsk;
        let ask = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaAsk::ListServices(String::new())),
        };
        let mut alpha = Alpha::new(channel);
        let reply = alpha
            .server_reflection_info(tokio_stream::iter(vec![ask]))
            .await
            .expect("reflection v1alpha answers")
            .into_inner()
            .message()
            .await
            .expect("a v1alpha reflection reply");
        assert!(reply.is_some_and(|r| format!("{r:?}").contains("pmcluster.v1.Cluster")));
    });
}

/// Found by a user trial: an instance that only the draining node fits (`!zone`) held the
/// node's one handoff slot for ever, so nothing else moved, and `nodes` said every instance
/// waited for a node to fit it. Now the others move, one at a time, and `nodes` names the one
/// that stays and why.
#[test]
fn a_drain_moves_what_fits_and_names_what_cannot_move() {
    let mut c = Cluster::start(0).expect("coordinator starts");
    c.add_agent("node-a").expect("node-a starts");
    c.add_agent_with("node-b", &["--label", "zone=z2"])
        .expect("node-b starts");
    c.wait_ready(&["node-a", "node-b"], STARTUP_TIMEOUT)
        .expect("agents ready");
    // Everything on node-a first: node-b takes nothing while it drains.
    c.cli(&["drain", "node-b"]).assert_ok();
    let sleeper = |name: &str, extra: &[&str]| {
        let mut args = vec!["start", "exec sleep 600", "--shell", "--name", name];
        args.extend_from_slice(extra);
        c.cli(&args).assert_ok();
    };
    // `flood` sorts before `web`: it was the one to take the handoff slot.
    sleeper("flood", &["--constraint", "!zone"]);
    sleeper("web", &["--instances", "2"]);
    wait_online(&c, "flood", 1);
    wait_online(&c, "web", 2);
    c.cli(&["undrain", "node-b"]).assert_ok();

    c.cli(&["drain", "node-a"]).assert_ok();
    let stays = "node-a is draining: flood[0] cannot move: no ready node matching !zone";
    wait_until(DEADLINE, "web to move to node-b while flood stays", || {
        let web = c.instances("web")?;
        let flood = c.instances("flood")?;
        let nodes = c.try_cli(&["nodes"])?;
        let moved = web.len() == 2
            && web
                .iter()
                .all(|i| i.node.as_deref() == Some("node-b") && i.online());
        let kept = matches!(flood.as_slice(),
            [f] if f.node.as_deref() == Some("node-a") && f.online());
        if moved && kept && nodes.stdout.contains(stays) {
            Ok(())
        } else {
            Err(format!(
                "web:{}\nflood:{}\n{nodes}",
                render(&web),
                render(&flood)
            ))
        }
    });

    // With flood gone, nothing is left: node-a is ineligible.
    c.cli(&["scale", "flood", "0"]).assert_ok();
    wait_until(DEADLINE, "node-a to be empty and ineligible", || {
        let nodes = c.nodes_json()?;
        let a = nodes.iter().find(|n| n["name"] == "node-a");
        match a {
            Some(n)
                if n["status"] == "ineligible"
                    && n["message"].as_str().unwrap_or("").is_empty() =>
            {
                Ok(())
            }
            _ => Err(Value::Array(nodes).to_string()),
        }
    });
}
