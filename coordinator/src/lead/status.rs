//! The `Coordination` service: every coordinator answers it, the standby too, so `pmcluster
//! status` works whichever one it reaches.

use std::sync::Arc;

use pmcluster_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Directory, Role, Seat};

pub struct CoordinationApi {
    pub seat: Arc<Seat>,
    pub directory: Option<Arc<dyn Directory>>,
}

/// How long a status waits for etcd's list of coordinators; well under the clients' 1 s probe.
const PEERS_WAIT: std::time::Duration = std::time::Duration::from_millis(400);

/// Wall-clock milliseconds, for ages shown to people (never for decisions).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tonic::async_trait]
impl pb::coordination_server::Coordination for CoordinationApi {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let now = wall_ms();
        let lease_granted = self.directory.as_ref().and_then(|d| d.lease_granted_ms());
        let mut me = pb::CoordinatorInfo {
            advertise: self.seat.advertise().to_string(),
            this: true,
            lease_age_ms: lease_granted.map_or(0, |at| now.saturating_sub(at)),
            ..Default::default()
        };
        match self.seat.role() {
            Role::Leader {
                control,
                term,
                since_ms,
            } => {
                me.role = "leader".into();
                me.term = term;
                me.role_age_ms = now.saturating_sub(since_ms);
                me.agents_connected = u32::try_from(control.connected_agents()).unwrap_or(u32::MAX);
            }
            Role::Standby { .. } => me.role = "standby".into(),
        }
        let store = self.seat.store();
        let mut reply = pb::StatusReply {
            coordinators: vec![me],
            store: Some(pb::StoreStatus {
                kind: store.kind.clone(),
                location: store.location.clone(),
                healthy: true,
                error: String::new(),
            }),
        };
        if let Some(directory) = &self.directory {
            // The status must answer while etcd cannot (no quorum): clients probe with it to
            // tell a silent coordinator from a live one, so it waits on etcd only briefly.
            let (peers, health) = match tokio::time::timeout(PEERS_WAIT, directory.peers()).await {
                Ok(read) => read,
                Err(_) => (
                    Vec::new(),
                    Err(format!(
                        "etcd did not answer within {PEERS_WAIT:?} (has it lost its quorum?)"
                    )),
                ),
            };
            for p in peers {
                if p.advertise == self.seat.advertise() {
                    continue;
                }
                reply.coordinators.push(pb::CoordinatorInfo {
                    advertise: p.advertise,
                    role: if p.leader { "leader" } else { "standby" }.into(),
                    term: p.term,
                    lease_age_ms: now.saturating_sub(p.lease_granted_ms),
                    agents_connected: p.agents_connected,
                    this: false,
                    role_age_ms: now.saturating_sub(p.role_since_ms),
                });
            }
            if let (Err(why), Some(store)) = (health, reply.store.as_mut()) {
                store.healthy = false;
                store.error = why;
            }
        }
        Ok(Response::new(reply))
    }
}
