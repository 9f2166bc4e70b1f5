//! Node names are unique among connected agents.

use pmcluster_tests::{Cluster, now_ms, wait_until};
use serde_json::Value;

use crate::DEADLINE;

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
