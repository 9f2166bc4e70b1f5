//! The one gate every call passes: a tower layer in front of all services that finds out who
//! calls (a token, else a client certificate, else nobody) and lets the call through only if
//! `core::access` allows its method for that caller. Handlers do no checks of their own; they
//! may read the [`Caller`] this layer leaves in the request's extensions to shape what they show
//! (env values are shown to operate and admin only).
//!
//! Without TLS (loopback, or `--insecure`) a caller that presents nothing is taken for an
//! admin: that is the single-machine mode `pmcluster up` runs in. A token presented there is
//! still checked. With TLS, nothing presented is nothing allowed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use pmcluster_proto::v1 as pb;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::core::access::{self, Grant, Need, Principal, Refusal, Role};
use crate::lead::Seat;

/// Who the layer let in, for the handler.
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Principal,
    /// `None` for agents (they call only their session).
    pub grant: Option<Grant>,
}

impl Caller {
    /// Whether `app`'s env values may be shown to this caller. No caller (a handler called
    /// without the layer, as in unit tests of the API) sees none.
    pub fn sees_env_of(caller: Option<&Caller>, app: &str) -> bool {
        caller
            .and_then(|c| c.grant.as_ref())
            .is_some_and(|g| g.sees_env_of(app))
    }
}

/// See the module doc. `tls` tells whether connections carry TLS (and so may carry a client
/// certificate); a plaintext listener takes a caller with no credential for an admin.
#[derive(Clone)]
pub struct AuthLayer {
    gate: Arc<Gate>,
}

impl AuthLayer {
    pub fn new(seat: Arc<Seat>, tls: bool) -> AuthLayer {
        AuthLayer {
            gate: Arc::new(Gate { seat, tls }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let gate = self.gate.clone();
        Box::pin(async move {
            match gate.admit(req).await {
                Ok(req) => inner.call(req).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

struct Gate {
    seat: Arc<Seat>,
    tls: bool,
}

/// The request header a token rides in, as `Bearer pmc_...`.
pub const AUTHORIZATION: &str = "authorization";

impl Gate {
    async fn admit(&self, mut req: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let method = req.uri().path().to_string();
        let peer = peer_of(&req);
        let refuse = |refusal: Refusal, who: &str| -> Status {
            let (status, why) = match refusal {
                Refusal::Unauthenticated(why) => (Status::unauthenticated(why.clone()), why),
                Refusal::Denied(why) => (Status::permission_denied(why.clone()), why),
            };
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(%peer, caller = who, %method, "call refused: {why}");
            status
        };
        let Some(need) = access::need(&method) else {
            return Err(refuse(
                Refusal::Denied(format!("{method} is not a method of this coordinator")),
                "-",
            ));
        };
        if need == Need::Open {
            return Ok(req);
        }
        let (who, grant) = match self.identify(&req) {
            Ok(found) => found,
            Err(Identified::Refused(refusal)) => return Err(refuse(refusal, "-")),
            Err(Identified::Standby(status)) => return Err(status),
        };
        let scoped = matches!(need, Need::Role { scoped: true, .. });
        let app = if scoped && grant.as_ref().is_some_and(|g| g.apps.is_some()) {
            let (parts, body) = req.into_parts();
            let bytes = read_body(body)
                .await
                .map_err(|why| refuse(Refusal::Denied(why), &who.to_string()))?;
            let app = app_of(&method, &bytes)
                .map_err(|why| refuse(Refusal::Denied(why), &who.to_string()))?;
            req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            Some(app)
        } else {
            None
        };
        if let (Principal::User(name), None) = (&who, &grant) {
            return Err(refuse(
                Refusal::Denied(format!(
                    "user/{name} may not call {method}: its certificate names no role; issue \
                     it again with `pmcluster certs issue user {name} --role ROLE`"
                )),
                &who.to_string(),
            ));
        }
        access::decide(&method, need, &who, grant.as_ref(), app.as_deref())
            .map_err(|refusal| refuse(refusal, &who.to_string()))?;
        req.extensions_mut().insert(Caller { who, grant });
        Ok(req)
    }

    /// The caller: its token if it presents one, else its certificate, else nobody.
    fn identify(
        &self,
        req: &http::Request<Body>,
    ) -> Result<(Principal, Option<Grant>), Identified> {
        let unauthenticated = |why: String| Identified::Refused(Refusal::Unauthenticated(why));
        if let Some(value) = req.headers().get(AUTHORIZATION) {
            let bearer = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    unauthenticated("the authorization header is not `Bearer TOKEN`".into())
                })?;
            if access::token_id(bearer).is_none() {
                return Err(unauthenticated(format!(
                    "{}; check --token or PMCLUSTER_TOKEN",
                    pmcluster_pki::token::MALFORMED
                )));
            }
            // Tokens live in the leader's state: a standby sends the caller there first.
            let control = self.seat.control().map_err(Identified::Standby)?;
            return match control.token_grant(bearer) {
                Some((id, grant)) => Ok((Principal::Token(id), Some(grant))),
                None => Err(unauthenticated(
                    "the token is unknown or revoked; ask an admin for a new one (`pmcluster \
                     token create`)"
                        .into(),
                )),
            };
        }
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        if let Some(leaf) = certs.as_deref().and_then(|c| c.first()) {
            let identity = pmcluster_pki::identity_from_der(leaf).map_err(|e| {
                unauthenticated(format!("the client certificate names no identity: {e}"))
            })?;
            return Ok(match identity {
                pmcluster_pki::Identity::Agent(node) => (Principal::Agent(node), None),
                pmcluster_pki::Identity::Coordinator => (Principal::Coordinator, None),
                pmcluster_pki::Identity::User(name) => {
                    let grant = pmcluster_pki::user_grant_from_der(leaf)
                        .map_err(|e| unauthenticated(e.to_string()))?
                        .map(|g| -> Result<Grant, Identified> {
                            let role =
                                Role::parse(&g.role).map_err(|e| unauthenticated(e.to_string()))?;
                            Ok(Grant { role, apps: g.apps })
                        })
                        .transpose()?;
                    (Principal::User(name), grant)
                }
            });
        }
        if self.tls {
            return Err(unauthenticated(
                "no client certificate and no token: call with --cert/--key (a certificate \
                 from `pmcluster certs issue user`) or --token (from `pmcluster token create`)"
                    .into(),
            ));
        }
        Ok((Principal::Anonymous, Some(Grant::admin())))
    }
}

enum Identified {
    Refused(Refusal),
    /// A token reached a standby: its refusal names the leader.
    Standby(Status),
}

fn peer_of(req: &http::Request<Body>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
}

/// The request's one message, whole (the scoped methods are unary or server-streaming: their
/// client sends one message and ends the stream).
async fn read_body(body: Body) -> Result<Bytes, String> {
    // The gRPC frame header (5 bytes) beside the largest message any side accepts.
    let limit = pmcluster_proto::MAX_MESSAGE_BYTES + 5;
    Limited::new(body, limit)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| format!("cannot read the request: {e}"))
}

/// The app a scoped method's request names ("" when it names none). `frame` is the request
/// body as the client sent it: public so that the fuzz targets feed it arbitrary bytes.
pub fn app_of(method: &str, frame: &[u8]) -> Result<String, String> {
    let message = match frame {
        [] => &[][..],
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..len)
                .ok_or_else(|| "the request frame is cut short".to_string())?
        }
        [1, ..] => return Err("compressed requests are not accepted here".into()),
        _ => return Err("the request is not a gRPC frame".into()),
    };
    let bad = |e: prost::DecodeError| format!("cannot decode the request: {e}");
    let name = method.rsplit('/').next().unwrap_or_default();
    Ok(match name {
        "ApplyApp" => pb::ApplyAppRequest::decode(message)
            .map_err(bad)?
            .spec
            .map(|s| s.name)
            .unwrap_or_default(),
        "Scale" => pb::ScaleRequest::decode(message).map_err(bad)?.app,
        "Start" | "Stop" | "Restart" | "Disable" | "Enable" => {
            pb::InstanceTarget::decode(message).map_err(bad)?.app
        }
        "Signal" => pb::SignalRequest::decode(message).map_err(bad)?.app,
        "SendMessage" => pb::SendMessageRequest::decode(message).map_err(bad)?.app,
        "SetAutoscale" => pb::SetAutoscaleRequest::decode(message).map_err(bad)?.app,
        "ControlRollout" => pb::ControlRolloutRequest::decode(message).map_err(bad)?.app,
        "UndoRollout" => pb::UndoRolloutRequest::decode(message).map_err(bad)?.app,
        "StreamLogs" => pb::StreamLogsRequest::decode(message).map_err(bad)?.app,
        _ => return Err(format!("{method} names no app the layer knows of")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn the_app_of_each_scoped_method_is_read_off_its_request() {
        let scale = pb::ScaleRequest {
            app: "web".into(),
            instances: 3,
            relative: false,
        };
        assert_eq!(
            app_of("/pmcluster.v1.Cluster/Scale", &frame(&scale)),
            Ok("web".into())
        );
        let apply = pb::ApplyAppRequest {
            spec: Some(pb::AppSpec {
                name: "db".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            app_of("/pmcluster.v1.Cluster/ApplyApp", &frame(&apply)),
            Ok("db".into())
        );
        let target = pb::InstanceTarget {
            app: "api".into(),
            ..Default::default()
        };
        for m in ["Start", "Stop", "Restart", "Disable", "Enable"] {
            assert_eq!(
                app_of(&format!("/pmcluster.v1.Cluster/{m}"), &frame(&target)),
                Ok("api".into())
            );
        }
        let signal = pb::SignalRequest {
            app: "api".into(),
            signal: "USR2".into(),
            ..Default::default()
        };
        assert_eq!(
            app_of("/pmcluster.v1.Cluster/Signal", &frame(&signal)),
            Ok("api".into())
        );
        let send = pb::SendMessageRequest {
            app: "api".into(),
            message: "hi".into(),
            ..Default::default()
        };
        assert_eq!(
            app_of("/pmcluster.v1.Cluster/SendMessage", &frame(&send)),
            Ok("api".into())
        );
        // An empty body is the default message: no app.
        assert_eq!(
            app_of("/pmcluster.v1.Cluster/Scale", &[]),
            Ok(String::new())
        );
        assert!(app_of("/pmcluster.v1.Cluster/Scale", &[0, 0, 0, 0, 9, 1]).is_err());
        assert!(app_of("/pmcluster.v1.Cluster/Scale", &[1, 0, 0, 0, 0]).is_err());
        assert!(app_of("/pmcluster.v1.Cluster/ListApps", &frame(&scale)).is_err());
    }
}
