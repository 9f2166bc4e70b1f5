//! `pmcluster status`: the coordinators sharing the cluster's store, and the store's health.

use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

use super::{NONE, human_age, render_table};

/// The coordinators, leader first, then by URL.
fn sorted(reply: &pb::StatusReply) -> Vec<&pb::CoordinatorInfo> {
    let mut list: Vec<&pb::CoordinatorInfo> = reply.coordinators.iter().collect();
    list.sort_by(|a, b| {
        (b.role == "leader", &a.advertise).cmp(&(a.role == "leader", &b.advertise))
    });
    list
}

pub fn status_text(reply: &pb::StatusReply) -> String {
    let rows = sorted(reply)
        .into_iter()
        .map(|c| {
            let mut url = c.advertise.clone();
            if c.this {
                url.push_str(" (answered)");
            }
            vec![
                url,
                c.role.clone(),
                if c.term > 0 {
                    c.term.to_string()
                } else {
                    NONE.to_string()
                },
                if c.lease_age_ms > 0 {
                    human_age(c.lease_age_ms)
                } else {
                    NONE.to_string()
                },
                if c.role == "leader" {
                    human_age(c.role_age_ms)
                } else {
                    NONE.to_string()
                },
                c.agents_connected.to_string(),
            ]
        })
        .collect();
    let mut text = render_table(
        &[
            "coordinator",
            "role",
            "term",
            "lease age",
            "leading for",
            "agents",
        ],
        rows,
        &[2, 5],
    );
    if !reply.coordinators.iter().any(|c| c.role == "leader") {
        text.push_str("no coordinator leads: writes wait until one is elected\n");
    }
    if let Some(store) = &reply.store {
        let health = if store.healthy {
            "healthy".to_string()
        } else {
            format!("UNHEALTHY: {}", store.error)
        };
        text.push_str(&format!(
            "store: {} {} ({health})\n",
            store.kind, store.location
        ));
    }
    text
}

pub fn status_json(reply: &pb::StatusReply) -> Value {
    let coordinators: Vec<Value> = sorted(reply)
        .into_iter()
        .map(|c| {
            json!({
                "advertise": c.advertise,
                "role": c.role,
                "term": c.term,
                "lease_age_ms": c.lease_age_ms,
                "role_age_ms": c.role_age_ms,
                "agents_connected": c.agents_connected,
                "answered": c.this,
            })
        })
        .collect();
    let store = reply.store.as_ref().map(
        |s| json!({"kind": s.kind, "location": s.location, "healthy": s.healthy, "error": s.error}),
    );
    json!({"coordinators": coordinators, "store": store})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(url: &str, role: &str, this: bool) -> pb::CoordinatorInfo {
        pb::CoordinatorInfo {
            advertise: url.into(),
            role: role.into(),
            term: if role == "leader" { 42 } else { 0 },
            lease_age_ms: 65_000,
            agents_connected: if role == "leader" { 3 } else { 0 },
            this,
            role_age_ms: 61_000,
        }
    }

    #[test]
    fn a_pair_shows_the_leader_first() {
        let reply = pb::StatusReply {
            coordinators: vec![
                coordinator("http://a:7450", "standby", true),
                coordinator("http://b:7450", "leader", false),
            ],
            store: Some(pb::StoreStatus {
                kind: "etcd".into(),
                location: "http://e:2379 /pmcluster/prod".into(),
                healthy: true,
                error: String::new(),
            }),
        };
        let text = status_text(&reply);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("COORDINATOR"), "{text}");
        assert!(lines[1].starts_with("http://b:7450") && lines[1].contains("leader"));
        assert!(lines[1].contains("42") && lines[1].contains("1m"), "{text}");
        assert!(lines[2].starts_with("http://a:7450 (answered)") && lines[2].contains("standby"));
        assert_eq!(
            lines[3],
            "store: etcd http://e:2379 /pmcluster/prod (healthy)"
        );
        let v = status_json(&reply);
        assert_eq!(v["coordinators"][0]["role"], "leader");
        assert_eq!(v["coordinators"][1]["answered"], true);
        assert_eq!(v["store"]["healthy"], true);
    }

    #[test]
    fn no_leader_and_a_sick_store_are_said() {
        let reply = pb::StatusReply {
            coordinators: vec![coordinator("http://a:7450", "standby", true)],
            store: Some(pb::StoreStatus {
                kind: "etcd".into(),
                location: "http://e:2379 /p".into(),
                healthy: false,
                error: "etcd did not answer within 2s".into(),
            }),
        };
        let text = status_text(&reply);
        assert!(text.contains("no coordinator leads"), "{text}");
        assert!(
            text.contains("UNHEALTHY: etcd did not answer within 2s"),
            "{text}"
        );
    }
}
