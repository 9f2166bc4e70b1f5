//! Where `up`'s coordinator listens: the `--listen` flag, the address a running daemon or an
//! earlier `up` holds, and the URL a client on this machine dials for it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use pmcluster_proto::v1 as pb;

use crate::args::DEFAULT_LISTEN;
use crate::client::{connect_with, request, unary};
use crate::error::UsageError;

/// Where `up` makes the coordinator listen. A running coordinator (`coordinator`, its pid) keeps
/// the address it was started with (`recorded`); without one, a running agent's (`agent`: its
/// pid and the URL it dials) is kept, so that its node gets ready; else the address the last
/// `up` recorded (after `down` or a crash: `up` brings the same cluster back where its verbs
/// look for it); else the default. A `--listen` (`flag`)
/// that a running daemon contradicts is refused, saying what to do.
pub fn choose_listen(
    flag: Option<SocketAddr>,
    recorded: Option<SocketAddr>,
    coordinator: Option<i32>,
    agent: Option<(i32, &str)>,
) -> Result<SocketAddr, UsageError> {
    let default = || parse_listen(DEFAULT_LISTEN);
    if let Some(pid) = coordinator {
        // An older `up` recorded no address: nothing to hold a flag against.
        let Some(at) = recorded else {
            return flag.map_or_else(default, Ok);
        };
        return match flag {
            Some(wanted) if wanted != at => Err(UsageError::new(format!(
                "--listen {wanted}: the coordinator running from this data directory (pid {pid}) \
                 listens on {at}; leave out --listen to go on with it, or run `pmcluster down` \
                 (it stops the agent and its instances), then `pmcluster up --listen {wanted}`"
            ))),
            _ => Ok(at),
        };
    }
    // The agent's address as a listen address: the recorded one when it is that one (`up` takes
    // a recorded address on every interface, from an older version, as loopback).
    let agent_at = agent.and_then(|(_, dials)| match recorded {
        Some(r) if dial_url(r) == dials => Some(r),
        _ => dials.strip_prefix("http://")?.parse().ok(),
    });
    match (flag, agent) {
        (Some(wanted), Some((pid, dials))) if dial_url(wanted) != dials => {
            let keep = match agent_at {
                Some(at) => format!("leave out --listen to start the coordinator on {at} again"),
                None => "start the coordinator where it dials".to_string(),
            };
            Err(UsageError::new(format!(
                "--listen {wanted}: the agent running from this data directory (pid {pid}) dials \
                 the coordinator at {dials}, not {}, so its node would never be ready; {keep}, \
                 or run `pmcluster down` (it stops the agent and its instances), then \
                 `pmcluster up --listen {wanted}`",
                dial_url(wanted)
            )))
        }
        (Some(wanted), _) => Ok(wanted),
        (None, _) => agent_at.or(recorded).map_or_else(default, Ok),
    }
}

/// Where a verb given no coordinator finds the one `up` runs from the data dir `home`: `recorded`
/// is the address `up` last started it on, `running` its pid if it runs. A data dir `up` never
/// used leaves the choice to the caller (the default address). One it used never falls back to
/// the default while its coordinator is down: another cluster may answer there, and the verb
/// would act on that cluster's apps.
pub fn home_coordinator(
    home: &Path,
    recorded: Option<SocketAddr>,
    running: Option<i32>,
) -> Result<Option<String>, CoordinatorDown> {
    match (recorded, running) {
        (Some(at), Some(_)) => Ok(Some(dial_url(at))),
        (Some(at), None) => Err(CoordinatorDown {
            home: home.display().to_string(),
            url: dial_url(at),
        }),
        // Running without a record: started by an older `up`, which listened on the default.
        (None, _) => Ok(None),
    }
}

/// The coordinator of a data dir `up` used is not running.
#[derive(Debug, thiserror::Error)]
#[error(
    "the coordinator of {home} ({url}) is not running: start it with `pmcluster up`, or name \
     the coordinator to talk to with --coordinator (or PMCLUSTER_COORDINATOR)"
)]
pub struct CoordinatorDown {
    pub home: String,
    pub url: String,
}

/// Parses `--listen`. Port 0 is refused: the agent and this CLI must know where to dial.
pub fn parse_listen(text: &str) -> Result<SocketAddr, UsageError> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        UsageError::new(format!(
            "--listen: {text:?} is not an address like 127.0.0.1:7450"
        ))
    })?;
    if addr.port() == 0 {
        return Err(UsageError::new(
            "--listen: port 0 is not supported; give a fixed port like 127.0.0.1:7450",
        ));
    }
    Ok(addr)
}

/// Where a client on this machine dials a coordinator listening on `listen`: an unspecified
/// address (0.0.0.0, ::) means every interface, so dial loopback.
pub fn dial_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Refuses to start a coordinator on an address something else already holds.
pub(super) async fn check_listen_free(listen: SocketAddr, url: &str) -> anyhow::Result<()> {
    match TcpListener::bind(listen) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // Bounded: whatever holds the port may accept connections and never answer.
            let probe = async {
                let mut client = connect_with(url, Duration::from_secs(1)).await.ok()?;
                unary(client.list_nodes(request(pb::ListNodesRequest {})))
                    .await
                    .ok()
            };
            let answers = tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()
                .flatten()
                .is_some();
            if answers {
                anyhow::bail!(
                    "a coordinator already answers at {url}, but it was not started from this \
                     data directory; use it directly, stop it, or pick another address with --listen"
                );
            }
            anyhow::bail!(
                "cannot listen on {listen}: the address is in use by another program; \
                 pick another one with --listen"
            )
        }
        Err(e) => Err(anyhow::anyhow!("cannot listen on {listen}: {e}")),
    }
}
