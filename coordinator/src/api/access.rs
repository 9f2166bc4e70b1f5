//! The `Access` service: tokens, and who the caller is. The auth layer has already admitted the
//! caller (admin for tokens); this only converts and calls the control.

use std::sync::Arc;

use pmcluster_proto::v1 as pb;
use rand::RngCore;
use tonic::{Request, Response, Status};

use super::{Lifecycle, Served};
use crate::auth::Caller;
use crate::control::NewToken;
use crate::core::access::{self, Role};
use crate::lead::Seat;
use crate::model::TokenRecord;

pub struct AccessApi {
    pub seat: Arc<Seat>,
    pub life: Lifecycle,
}

impl AccessApi {
    /// As [`super::ClusterApi`]'s: the control only as [`Served`] reaches it.
    fn control(&self) -> Result<Served, Status> {
        Ok(Served::new(self.seat.control()?, &self.life))
    }
}

fn to_wire(t: TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id,
        role: t.role.name().to_string(),
        apps: t.apps.unwrap_or_default(),
        description: t.description,
        created_ms: t.created_ms,
        created_by: t.created_by,
    }
}

/// `n` random bytes as hex, from the OS-seeded generator.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    access::hex(&bytes)
}

fn caller_name<T>(r: &Request<T>) -> String {
    r.extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_string(), |c| c.who.to_string())
}

#[tonic::async_trait]
impl pb::access_server::Access for AccessApi {
    async fn create_token(
        &self,
        r: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let control = self.control()?;
        let created_by = caller_name(&r);
        let req = r.into_inner();
        let role = Role::parse(&req.role).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let new = NewToken {
            id: random_hex(access::TOKEN_ID_LEN / 2),
            secret: random_hex(access::TOKEN_SECRET_LEN / 2),
            role,
            apps: (!req.apps.is_empty()).then_some(req.apps),
            description: req.description,
            created_by,
        };
        let (record, secret) = control.write(move |c| c.create_token(new)).await?;
        tracing::info!(
            id = %record.id,
            role = record.role.name(),
            by = %record.created_by,
            "token created"
        );
        Ok(Response::new(pb::CreateTokenReply {
            token: Some(to_wire(record)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        let control = self.control()?;
        Ok(Response::new(pb::ListTokensReply {
            tokens: control.list_tokens().into_iter().map(to_wire).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        r: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        let control = self.control()?;
        let by = caller_name(&r);
        let id = r.into_inner().id;
        let record = control.write(move |c| c.revoke_token(&id)).await?;
        tracing::info!(id = %record.id, %by, "token revoked");
        Ok(Response::new(pb::RevokeTokenReply {
            token: Some(to_wire(record)),
        }))
    }

    async fn who_am_i(
        &self,
        r: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIReply>, Status> {
        let caller = r.extensions().get::<Caller>();
        let principal = caller.map_or_else(|| "unknown".to_string(), |c| c.who.to_string());
        let grant = caller.and_then(|c| c.grant.clone());
        Ok(Response::new(pb::WhoAmIReply {
            principal,
            role: grant
                .as_ref()
                .map_or_else(String::new, |g| g.role.name().to_string()),
            apps: grant.and_then(|g| g.apps).unwrap_or_default(),
        }))
    }
}
