//! Who serves: the leader's [`Control`], or a standby that refuses every call with a hint.
//!
//! A single coordinator (the embedded store) is leader for its whole life. In an HA pair
//! (`--store etcd`), the election in [`etcd`] moves the [`Seat`] between leader and standby. A
//! standby holds no [`Control`] at all: it has no state to go stale, and taking over is loading
//! the store into a fresh one, which also restarts every node's heartbeat and reschedule clocks
//! (nodes start as "not yet reconnected", exactly as after a coordinator restart).
//!
//! Standbys refuse; they do not forward. A forwarded call would hide which coordinator acted and
//! add a hop to every call for as long as clients kept dialling the standby; a refusal with the
//! leader's URL costs one extra round trip once, after which clients talk to the leader.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod status;

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

use crate::control::Control;

/// The metadata key of a standby's refusal that holds the leader's advertise URL (shared with
/// the clients, which read it).
pub use pmcluster_proto::LEADER_METADATA;

/// What the store knows of every coordinator sharing it (the HA pair's etcd), for
/// `pmcluster status`. A single coordinator has none: it reports itself alone.
#[tonic::async_trait]
pub trait Directory: Send + Sync {
    /// The other coordinators (not this one), and the store's health: `Err` says why it is not
    /// healthy.
    async fn peers(&self) -> (Vec<Peer>, Result<(), String>);
    /// When this coordinator's current lease was granted (wall-clock ms), if it has one.
    fn lease_granted_ms(&self) -> Option<i64>;
}

/// Another coordinator, as it last published itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub advertise: String,
    pub leader: bool,
    pub term: i64,
    pub lease_granted_ms: i64,
    pub role_since_ms: i64,
    pub agents_connected: u32,
}

/// This coordinator's part at a moment.
#[derive(Clone)]
pub enum Role {
    Leader {
        control: Arc<Control>,
        /// The leader key's create revision in etcd (0 for a single coordinator): it grows with
        /// every new leadership, so it tells terms apart.
        term: i64,
        /// Wall-clock milliseconds when this term began.
        since_ms: i64,
    },
    Standby {
        /// The leader's advertise URL, when known.
        leader: Option<String>,
    },
}

/// Where the API finds the control to serve with. Shared by every service.
pub struct Seat {
    role: watch::Sender<Role>,
    /// Why the election could not find or become a leader lately (etcd out of reach, without
    /// quorum): a standby that knows no leader says so in its refusal.
    trouble: std::sync::Mutex<Option<NoLeader>>,
    /// This coordinator's own URL, as clients should dial it.
    advertise: String,
    store: StoreInfo,
}

/// What `pmcluster status` says about the store.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    /// "embedded", "memory" or "etcd".
    pub kind: String,
    /// The state file, or the etcd endpoints and prefix.
    pub location: String,
}

impl Seat {
    /// A coordinator that leads for its whole life (no election).
    pub fn single(control: Arc<Control>, advertise: String, store: StoreInfo) -> Arc<Seat> {
        let since_ms = control.now_ms();
        Arc::new(Seat {
            role: watch::Sender::new(Role::Leader {
                control,
                term: 0,
                since_ms,
            }),
            trouble: std::sync::Mutex::new(None),
            advertise,
            store,
        })
    }

    /// A coordinator that starts as a standby and leads when elected.
    pub fn standby(advertise: String, store: StoreInfo) -> Arc<Seat> {
        Arc::new(Seat {
            role: watch::Sender::new(Role::Standby { leader: None }),
            trouble: std::sync::Mutex::new(None),
            advertise,
            store,
        })
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub fn store(&self) -> &StoreInfo {
        &self.store
    }

    /// The control to serve a call with, or the standby's refusal (`UNAVAILABLE` with the
    /// leader's URL in [`LEADER_METADATA`]).
    pub fn control(&self) -> Result<Arc<Control>, Status> {
        match &*self.role.borrow() {
            Role::Leader { control, .. } => Ok(control.clone()),
            Role::Standby { leader } => {
                let trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
                Err(standby_status(leader.as_deref(), trouble.as_ref()))
            }
        }
    }

    /// The election's latest failure to reach etcd or to lead (`None`: it reached etcd).
    pub fn set_trouble(&self, why: Option<NoLeader>) {
        *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        matches!(&*self.role.borrow(), Role::Leader { .. })
    }

    /// Changes of role, for the control loop and the health service.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Takes office with `control`, freshly loaded from the store under this term's fence.
    pub fn lead(&self, control: Arc<Control>, term: i64, since_ms: i64) {
        let old = self.role.send_replace(Role::Leader {
            control,
            term,
            since_ms,
        });
        if let Role::Leader { control, .. } = old {
            control.retire();
        }
    }

    /// Leaves office (or stays out of it), knowing `leader` if anyone leads. The old control
    /// retires: its agent sessions close (agents keep their instances and follow the hint), and
    /// the control loop stops driving it.
    pub fn stand_by(&self, leader: Option<String>) {
        let old = self.role.send_replace(Role::Standby { leader });
        if let Role::Leader { control, .. } = old {
            control.retire();
        }
    }

    /// A standby learnt who leads now; ignored while leading.
    pub fn set_leader_hint(&self, leader: Option<String>) {
        self.role.send_if_modified(|role| match role {
            Role::Standby { leader: known } if *known != leader => {
                *known = leader;
                true
            }
            _ => false,
        });
    }
}

/// A standby's refusal. The message says where to go, for people; the metadata says it for
/// clients, which dial it at once. With no leader, `trouble` is what the election last failed
/// on (one clause naming etcd), so that a call refused for want of etcd says so rather than "try
/// again", and says what to look at: every coordinator refuses alike then, and the CLI quotes
/// the refusal once for all of them.
/// Why the election has no leader to name, as a standby's refusal says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLeader {
    /// etcd did not answer or refused (one clause naming it): no coordinator can lead until it
    /// answers with quorum, so that is what to check.
    Etcd(String),
    /// Anything else (another coordinator took the leader key, the store could not be loaded):
    /// said as it is, without sending people to etcd.
    Election(String),
}

pub fn standby_status(leader: Option<&str>, trouble: Option<&NoLeader>) -> Status {
    match leader {
        Some(url) => {
            let mut status = Status::unavailable(format!(
                "this coordinator is a standby; the leader is at {url}"
            ));
            if let Ok(value) = url.parse() {
                status.metadata_mut().insert(LEADER_METADATA, value);
            }
            status
        }
        None => match trouble {
            Some(NoLeader::Etcd(why)) => Status::unavailable(format!(
                "this coordinator is a standby and sees no leader: {why}. No coordinator can \
                 lead until etcd answers with quorum: check etcd; `pmcluster status` shows who \
                 leads"
            )),
            Some(NoLeader::Election(why)) => Status::unavailable(format!(
                "this coordinator is a standby and sees no leader: {why}; try again in a few \
                 seconds, and see `pmcluster status` and the coordinators' logs"
            )),
            None => Status::unavailable(
                "this coordinator is a standby and no leader is elected yet; try again in a few \
                 seconds, or check the other coordinator and etcd",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_refusal_carries_the_leader() {
        let status = standby_status(Some("http://10.0.0.2:7450"), None);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("http://10.0.0.2:7450")
        );
        assert!(status.message().contains("http://10.0.0.2:7450"));
        let unknown = standby_status(None, None);
        assert_eq!(unknown.code(), tonic::Code::Unavailable);
        assert!(unknown.metadata().get(LEADER_METADATA).is_none());
        let cut_off = standby_status(
            None,
            Some(&NoLeader::Etcd(
                "etcd at http://e1:2379 did not answer (connection refused)".into(),
            )),
        );
        assert_eq!(
            cut_off.message(),
            "this coordinator is a standby and sees no leader: etcd at http://e1:2379 did not \
             answer (connection refused). No coordinator can lead until etcd answers with \
             quorum: check etcd; `pmcluster status` shows who leads"
        );
        assert!(cut_off.metadata().get(LEADER_METADATA).is_none());
        // Not etcd's doing: said as it is, without sending people to etcd.
        let lost = standby_status(
            None,
            Some(&NoLeader::Election(
                "cannot load the store: a record this build cannot read".into(),
            )),
        );
        assert!(
            lost.message().contains("cannot load the store") && !lost.message().contains("etcd"),
            "{}",
            lost.message()
        );
    }

    #[test]
    fn hints_change_only_a_standby() {
        let seat = Seat::standby(
            "http://a:1".into(),
            StoreInfo {
                kind: "memory".into(),
                location: String::new(),
            },
        );
        seat.set_leader_hint(Some("http://b:1".into()));
        let err = seat.control().err().map(|s| s.message().to_string());
        assert!(err.is_some_and(|m| m.contains("http://b:1")));
        // Cut off from etcd, the standby forgets the leader it knew: its refusal names no one
        // and says why instead.
        seat.set_trouble(Some(NoLeader::Etcd(
            "etcd at http://e:1 did not answer (timed out)".into(),
        )));
        seat.set_leader_hint(None);
        let refused = seat.control().err();
        let message = refused.as_ref().map(|s| s.message().to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("sees no leader: etcd at http://e:1")
                    && !m.contains("http://b:1")),
            "{message:?}"
        );
        assert!(refused.is_some_and(|s| s.metadata().get(LEADER_METADATA).is_none()));
    }
}
