//! The link to the coordinator: one `AgentLink/Session` stream at a time, dialled out by the
//! agent. Registers, sends status reports (every heartbeat interval and promptly after instance
//! state changes), hands desired sets to the supervisors and log requests to the log tasks, and
//! reconnects when the stream fails: at once to the leader a standby names, or to the next
//! coordinator of the list; with backoff after a whole round of the list failed (see [`dialer`]).
//!
//! The link never waits on a supervisor: applying a desired set only updates targets. While the
//! coordinator is unreachable the instances keep running as last desired (static stability).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::agent_link_client::AgentLinkClient;
use pmcluster_proto::v1::agent_message::Msg as Up;
use pmcluster_proto::v1::coordinator_message::Msg as Down;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::identity::{self, Flush, Identity, IdentityError, Verdict};
use crate::logs::LogRequests;
use crate::metrics::HostInfo;
use crate::model::DesiredSet;
use crate::state::Agent;
use crate::supervisor::sleep_until_opt;
use crate::{config, restart, supervisor};

mod delta;
pub mod dialer;
mod handout;

use delta::Received;
use handout::Handouts;

use dialer::{Dialer, Next};

/// Heartbeat period when the coordinator sends 0.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);
/// Reconnect backoff: first delay, doubled per failed attempt up to the max.
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = pmcluster_spec::link::AGENT_RECONNECT_MAX;
/// How long the coordinator may take to answer a new session.
const SESSION_SETUP: Duration = pmcluster_spec::link::AGENT_SESSION_SETUP;
/// A coordinator sends nothing for long stretches, so a silent one (a frozen host, a cut that
/// drops packets) is noticed only by HTTP/2 pings, at most the two below after its last word.
/// A new leader of an HA pair gives each node its heartbeat timeout (10 s by default, 3 s in
/// the fast profile) to reconnect; with 10 s + 10 s here, agents of a frozen leader came back
/// after every instance had been rescheduled. An idle session costs one ping frame each way
/// per interval.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// State changes within this window go out in one report.
const COALESCE: Duration = Duration::from_millis(20);
/// Reports waiting to go out. Each one is a full snapshot, so when the queue is full the next
/// one is simply skipped: a later report carries the same news.
const STATUS_QUEUE: usize = 4;
/// Log chunks waiting to go out; log tasks wait for room.
const LOG_QUEUE: usize = 32;

/// Why the link gave up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("node name {node} is already connected to the coordinator; pick another --node-name")]
    NameTaken { node: String },
    #[error("coordinator URL {url:?}: {reason}")]
    Coordinator { url: String, reason: String },
}

/// What the link needs besides the agent.
pub(crate) struct LinkConfig {
    /// Mutual TLS for `https://` URLs (`--tls-cert`, `--tls-key`, `--ca`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Sent at registration: the agent's persistent id (`DATA_DIR/agent-id`).
    pub agent_id: String,
    /// Coordinator URLs, in the order of `--coordinator`; an HA pair has two.
    pub coordinators: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub host: HostInfo,
}

/// The endpoint for `url`, with timeouts that notice a dead coordinator.
pub(crate) fn endpoint(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, LinkError> {
    let bad = |reason: String| LinkError::Coordinator {
        url: url.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(e.to_string()))?;
    if url.starts_with("https://") {
        let Some(tls) = tls else {
            // Only a leader hint can get here: the config refuses https without TLS files.
            return Err(bad(
                "https:// needs --tls-cert, --tls-key and --ca".to_string()
            ));
        };
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Delay before reconnect attempt `attempt` (0-based), before jitter.
pub fn reconnect_delay(attempt: u32) -> Duration {
    restart::doubling(RECONNECT_BASE, attempt, RECONNECT_MAX)
}

/// How a session ended.
#[derive(Debug)]
enum End {
    Shutdown,
    Ended {
        /// The coordinator had accepted the registration.
        registered: bool,
        /// It refused us because a node of our name is connected.
        already_exists: bool,
        /// It answered as the leader does (any status but UNAVAILABLE): a failover will not help.
        answered: bool,
        /// The leader an UNAVAILABLE named (a standby's refusal, a leader stepping down).
        hint: Option<String>,
        /// The URL is `http://` but the coordinator there serves TLS; `reason` says what to do.
        wants_tls: bool,
        reason: String,
    },
}

/// Runs sessions until `cancel`. Fails only when the very first session the coordinator answers
/// says the node name is taken.
pub(crate) async fn run(
    agent: Arc<Agent>,
    cfg: LinkConfig,
    cancel: CancellationToken,
) -> Result<(), LinkError> {
    let mut attempt = 0u32;
    let mut ever_registered = false;
    let mut dialer = Dialer::new(cfg.coordinators.clone());
    loop {
        let url = dialer.target().to_string();
        let end = session(&agent, &cfg, &url, &mut dialer, &cancel).await;
        match tls_hinted(&url, end, &cancel).await {
            End::Shutdown => return Ok(()),
            End::Ended {
                already_exists: true,
                ..
            } if !ever_registered => {
                return Err(LinkError::NameTaken {
                    node: agent.node_name.clone(),
                });
            }
            End::Ended {
                registered,
                already_exists,
                answered,
                hint,
                wants_tls,
                reason,
            } => {
                if registered {
                    ever_registered = true;
                    attempt = 0;
                }
                let next = dialer.ended(registered || answered, hint.clone());
                if next == Next::Now {
                    let to = dialer.target();
                    match hint.as_deref() {
                        Some(leader) if leader == to => tracing::info!(
                            "coordinator at {url} is not the leader ({reason}); dialling the \
                             leader it names at {to}"
                        ),
                        _ => tracing::warn!(
                            "coordinator at {url}: {reason}; trying the coordinator at {to}"
                        ),
                    }
                    continue;
                }
                let delay = with_jitter(reconnect_delay(attempt));
                attempt = attempt.saturating_add(1);
                let to = dialer.target();
                if already_exists {
                    tracing::warn!(
                        "coordinator at {url} still has a session for node {}; retrying in {delay:?}",
                        agent.node_name
                    );
                } else if registered {
                    tracing::warn!(
                        "link to coordinator lost ({url}: {reason}); reconnecting to {to} in {delay:?}"
                    );
                } else if reason.starts_with("PERMISSION_DENIED") {
                    // Not a network fault: nothing changes until an operator fixes the
                    // certificate or the node name, so it is said as an error (retried all the
                    // same, in case the fix is on the coordinator's side).
                    tracing::error!(
                        "coordinator at {url} refused this agent ({reason}); retrying {to} in \
                         {delay:?}"
                    );
                } else if wants_tls {
                    tracing::error!("{reason}; retrying {to} in {delay:?}");
                } else {
                    tracing::warn!(
                        "cannot reach a coordinator (last: {url}, {reason}); retrying {to} in \
                         {delay:?}"
                    );
                }
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How long the look at whether a coordinator speaks TLS may take, on the way to a retry.
const TLS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A plaintext session that broke before it registered, without a refusal the coordinator
/// meant: if the server at `url` answers plaintext HTTP/2 with TLS, the reason says to use
/// `https://` (as the CLI does), not tonic's "transport error" or "h2 protocol error", which
/// read as a network fault and were retried for ever without a word of the cause.
async fn tls_hinted(url: &str, end: End, cancel: &CancellationToken) -> End {
    match end {
        End::Ended {
            registered: false,
            already_exists: false,
            answered,
            hint: None,
            wants_tls: false,
            reason,
        } if !reason.starts_with("PERMISSION_DENIED") => {
            let serves_tls = match url.strip_prefix("http://") {
                Some(at) => tokio::select! {
                    () = cancel.cancelled() => return End::Shutdown,
                    tls = pmcluster_proto::serves_tls(at, TLS_PROBE_TIMEOUT) => tls.then_some(at),
                },
                None => None,
            };
            let (wants_tls, reason) = match serves_tls {
                Some(at) => (true, plaintext_to_tls(url, at)),
                None => (false, reason),
            };
            End::Ended {
                registered: false,
                already_exists: false,
                answered,
                hint: None,
                wants_tls,
                reason,
            }
        }
        other => other,
    }
}

/// What to do about a `--coordinator http://AT` that serves TLS, in the agent's flags.
fn plaintext_to_tls(url: &str, at: &str) -> String {
    format!(
        "the coordinator at {url} serves TLS (it answered a plaintext call in TLS): use \
         https://{at} with --ca, --tls-cert and --tls-key"
    )
}

/// Adds up to a quarter of `delay` at random, so agents cut off together do not all come back
/// in the same millisecond.
fn with_jitter(delay: Duration) -> Duration {
    let max_ms = u64::try_from(delay.as_millis() / 4).unwrap_or(0);
    delay + Duration::from_millis(rand::random_range(0..=max_ms))
}

/// One stream to the coordinator, from connect to its end.
async fn session(
    agent: &Arc<Agent>,
    cfg: &LinkConfig,
    url: &str,
    dialer: &mut Dialer,
    cancel: &CancellationToken,
) -> End {
    let endpoint = match endpoint(url, cfg.tls.as_ref()) {
        Ok(e) => e,
        // Only a leader hint can be a bad URL here (the list was checked at startup).
        Err(e) => return ended(false, false, e.to_string()),
    };
    let channel = tokio::select! {
        () = cancel.cancelled() => return End::Shutdown,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return ended(false, false, error_chain(&e)),
        },
    };
    // The same limits as the coordinator's (tonic's 4 MiB default refused large desired sets,
    // and the link then failed on every reconnect); the coordinator budgets each set below them.
    let mut client = AgentLinkClient::new(channel)
        .max_decoding_message_size(pmcluster_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pmcluster_proto::MAX_MESSAGE_BYTES);
    let (status_tx, status_rx) = mpsc::channel(STATUS_QUEUE);
    let (log_tx, log_rx) = mpsc::channel(LOG_QUEUE);
    let remembered = lock_identity(agent).clone();
    let register = pb::Register {
        node_name: agent.node_name.clone(),
        labels: cfg.labels.clone().into_iter().collect(),
        cores: cfg.host.cores,
        memory_bytes: cfg.host.memory_bytes,
        hostname: cfg.host.hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        generation: agent.state.generation(),
        instances: agent.state.instances(),
        agent_id: cfg.agent_id.clone(),
        cluster_id: remembered.cluster_id.clone(),
        held: agent.state.held(),
        renamed_from: remembered.renamed_from.clone(),
        // Empty: the coordinator takes the source address of this connection.
        advertise_address: agent.advertise_address.clone().unwrap_or_default(),
        takes_deltas: true,
    };
    // A fresh queue has room: this cannot fail.
    let _ = status_tx.try_send(up(Up::Register(register)));
    // Reports and log chunks share the stream fairly, so a log flood cannot starve heartbeats.
    let outbound = ReceiverStream::new(status_rx).merge(ReceiverStream::new(log_rx));
    let response = tokio::select! {
        () = cancel.cancelled() => return End::Shutdown,
        r = tokio::time::timeout(SESSION_SETUP, client.session(outbound)) => r,
    };
    let mut inbound = match response {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return from_status(false, &status),
        Err(_) => {
            return ended(false, false, format!("no answer within {SESSION_SETUP:?}"));
        }
    };
    let mut registered = false;
    let mut heartbeat = tokio::time::interval(DEFAULT_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_at: Option<Instant> = None;
    let mut handouts = Handouts::new(Arc::clone(agent), log_tx.clone());
    let mut logs = LogRequests::new(Arc::clone(agent), log_tx);
    // A refused set is said once per session, not once per set.
    let mut refused = false;
    // Deltas are on this session's previous set only: a new session starts with nothing.
    let mut received = Received::default();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return End::Shutdown,
            msg = inbound.next() => match msg {
                Some(Ok(pb::CoordinatorMessage { msg: Some(msg) })) => match msg {
                    Down::Registered(r) => {
                        registered = true;
                        let period = match r.heartbeat_interval_ms {
                            0 => DEFAULT_HEARTBEAT,
                            ms => Duration::from_millis(ms),
                        };
                        tracing::info!(
                            "registered with the coordinator at {url} (heartbeat {period:?})"
                        );
                        dialer.registered();
                        check_registered(agent, &r);
                        heartbeat = tokio::time::interval_at(Instant::now() + period, period);
                        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        // Changes between Register and now go out at once.
                        send_report(agent, &status_tx);
                        report_at = None;
                    }
                    Down::Desired(set) => match received.rebuild(set) {
                        Ok(set) => accept_set(agent, set, &mut refused),
                        Err(e) => {
                            // Applying a guess could stop instances that must run; the next
                            // session starts with a whole set, and until then nothing changes.
                            tracing::error!(
                                "cannot read the desired set from the coordinator at {url}: \
                                 {e}; ending the session to get a whole set"
                            );
                            return ended(registered, false, format!("unreadable desired set: {e}"));
                        }
                    },
                    Down::LogRequest(req) => logs.start(req),
                    Down::CancelLogs(c) => logs.cancel(c.request_id),
                    Down::Command(c) => handouts.start(c),
                },
                Some(Ok(pb::CoordinatorMessage { msg: None })) => {}
                Some(Err(status)) => return from_status(registered, &status),
                None => return ended(registered, false, "the coordinator closed the stream".into()),
            },
            _ = heartbeat.tick(), if registered => {
                send_report(agent, &status_tx);
                report_at = None;
            }
            () = agent.state.changed.notified(), if report_at.is_none() => {
                report_at = Some(Instant::now() + COALESCE);
            }
            () = sleep_until_opt(report_at), if registered => {
                send_report(agent, &status_tx);
                report_at = None;
            }
            () = logs.reap() => {}
            () = handouts.reap() => {}
        }
    }
}

/// Says loudly when the coordinator serves another cluster or quarantined this node: its sets
/// will be refused (or not sent) and the instances keep running until an operator adopts it.
fn check_registered(agent: &Agent, r: &pb::Registered) {
    let ours = lock_identity(agent).cluster_id.clone();
    if !ours.is_empty() && !r.cluster_id.is_empty() && ours != r.cluster_id {
        tracing::error!(
            "this agent belongs to cluster {ours}, but the coordinator serves cluster {}: its \
             desired sets will be refused and every instance here keeps running. If the \
             coordinator lost its state and this is the new cluster, adopt the node there: \
             pmcluster nodes adopt {}",
            r.cluster_id,
            agent.node_name
        );
    }
    if !r.quarantine.is_empty() {
        tracing::error!("the coordinator quarantined this node: {}", r.quarantine);
    }
    remember_address(agent, &r.address);
}

/// Saves the address the coordinator recorded for this node when it changed.
fn remember_address(agent: &Agent, address: &str) {
    if address.is_empty() {
        return;
    }
    let set = |id: &mut Identity| id.address = address.to_string();
    if let Some((_, Err(e))) = update_identity(agent, set) {
        // Still used for this run; only a restart before the next registration misses it.
        tracing::warn!("cannot remember this node's address {address}: {e}");
        set(&mut lock_identity(agent));
    }
}

fn lock_identity(agent: &Agent) -> std::sync::MutexGuard<'_, Identity> {
    agent
        .identity
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies `change` to the node's identity: saves the changed identity to the data dir, then,
/// once saved, applies `change` to the one in memory too. Returns the identity from before and
/// the save's outcome, or `None` when `change` changes nothing.
///
/// The file is written without holding `agent.identity`: every start reads the node's address
/// under that lock, and used to wait for this fsync (1.1 ms here) on every desired set. A new
/// generation alone is not fsynced (see [`Flush::Lazily`]). Only the link task calls this, one
/// call at a time, so no two saves interleave.
fn update_identity(
    agent: &Agent,
    change: impl Fn(&mut Identity),
) -> Option<(Identity, Result<(), IdentityError>)> {
    let before = lock_identity(agent).clone();
    let mut next = before.clone();
    change(&mut next);
    if next == before {
        return None;
    }
    let saved = identity::save(&agent.data_dir, &next, Flush::for_change(&before, &next));
    if saved.is_ok() {
        change(&mut lock_identity(agent));
    }
    Some((before, saved))
}

/// Applies a desired set unless the remembered identity refuses it (another cluster, or a
/// generation below the highest applied); then remembers the set's cluster and generation.
fn accept_set(agent: &Arc<Agent>, set: pb::DesiredSet, refused: &mut bool) {
    let verdict = {
        let id = lock_identity(agent);
        identity::verdict(&id, &set.cluster_id, set.generation, set.adopt)
    };
    match verdict {
        Verdict::Apply => {}
        Verdict::Foreign { ours, theirs } => {
            if !std::mem::replace(refused, true) {
                tracing::error!(
                    "refusing the desired set of cluster {theirs}: this agent belongs to cluster \
                     {ours}. Every instance here keeps running. To move this node to cluster \
                     {theirs}, run: pmcluster nodes adopt {}",
                    agent.node_name
                );
            }
            return;
        }
        Verdict::Stale {
            generation,
            highest,
        } => {
            if !std::mem::replace(refused, true) {
                tracing::error!(
                    "refusing desired set generation {generation}: this agent already applied \
                     generation {highest}, so the coordinator's state is older than this node's \
                     (a lost or restored store?). Every instance here keeps running. To accept \
                     the coordinator's state, run: pmcluster nodes adopt {}",
                    agent.node_name
                );
            }
            return;
        }
    }
    *refused = false;
    let (cluster_id, adopt) = (set.cluster_id.clone(), set.adopt);
    // A set not applied (stale, or the agent shutting down) must not move the remembered
    // cluster either.
    if supervisor::apply(agent, DesiredSet::from(set)) {
        remember(agent, &cluster_id, adopt);
    }
}

/// Saves the cluster id and highest applied generation when they changed.
fn remember(agent: &Agent, cluster_id: &str, adopt: bool) {
    let generation = agent.state.generation();
    let change = |id: &mut Identity| {
        if !cluster_id.is_empty() {
            id.cluster_id = cluster_id.to_string();
        }
        id.generation = id.generation.max(generation);
        id.renamed_from.clear();
    };
    let Some((before, saved)) = update_identity(agent, change) else {
        return;
    };
    if adopt
        && !before.cluster_id.is_empty()
        && !cluster_id.is_empty()
        && before.cluster_id != cluster_id
    {
        tracing::warn!(
            "adopted into cluster {cluster_id} (was {}) by an operator",
            before.cluster_id
        );
    }
    if let Err(e) = saved {
        // Applied, but not remembered: after a restart this node would accept older sets again.
        tracing::error!("cannot remember the applied desired set: {e}");
    }
}

fn send_report(agent: &Agent, status_tx: &mpsc::Sender<pb::AgentMessage>) {
    match status_tx.try_send(up(Up::Status(agent.state.report()))) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!("status queue full; skipping a report");
        }
        // The stream is going away; the inbound side reports why.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

fn up(msg: Up) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

/// An end without a status: a transport failure, or the coordinator closing the stream.
fn ended(registered: bool, already_exists: bool, reason: String) -> End {
    End::Ended {
        registered,
        already_exists,
        answered: false,
        hint: None,
        wants_tls: false,
        reason,
    }
}

fn from_status(registered: bool, status: &tonic::Status) -> End {
    let already_exists = status.code() == tonic::Code::AlreadyExists;
    let reason = if status.code() == tonic::Code::PermissionDenied {
        // The node check: this is the operator's certificate or node name, not the network.
        format!(
            "PERMISSION_DENIED: {}; check that --tls-cert is this node's certificate \
             (pmcluster certs issue agent NODE) and --node-name its NODE",
            status.message()
        )
    } else if status.message().is_empty() {
        format!("{}", status.code())
    } else {
        format!("{}: {}", status.code(), status.message())
    };
    End::Ended {
        registered,
        already_exists,
        // UNAVAILABLE is a standby's refusal, or a transport failure as tonic reports it.
        answered: status.code() != tonic::Code::Unavailable,
        hint: hint(status),
        wants_tls: false,
        reason,
    }
}

/// The leader a refusal names, when it is a URL this agent could have been given.
fn hint(status: &tonic::Status) -> Option<String> {
    let hint = pmcluster_proto::leader_hint(status)?;
    match config::validate_url(hint.trim_end_matches('/').to_string()) {
        Ok(url) => Some(url),
        Err(e) => {
            tracing::warn!("ignoring the coordinator's leader hint: {e}");
            None
        }
    }
}

/// An error and its causes on one line (tonic's transport errors say little at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        // Layers often repeat their cause's words; say them once.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers whatever it is sent with `reply`, then closes; its address.
    async fn answering(reply: &'static [u8]) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let at = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
            }
        });
        Ok(at)
    }

    fn transport_error() -> End {
        from_status(false, &tonic::Status::unknown("transport error"))
    }

    fn said(end: &End) -> (bool, &str) {
        match end {
            End::Ended {
                wants_tls, reason, ..
            } => (*wants_tls, reason.as_str()),
            End::Shutdown => (false, "shutdown"),
        }
    }

    /// A plaintext dial of a coordinator that serves TLS says to use https://, not "transport
    /// error"; a coordinator that speaks h2, or one that refused, keeps its own reason.
    #[tokio::test]
    async fn a_plaintext_dial_of_a_tls_coordinator_says_to_use_https() -> std::io::Result<()> {
        let cancel = CancellationToken::new();
        let alert: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
        let at = answering(alert).await?;
        let url = format!("http://{at}");
        let end = tls_hinted(&url, transport_error(), &cancel).await;
        let want = format!(
            "the coordinator at {url} serves TLS (it answered a plaintext call in TLS): use \
             https://{at} with --ca, --tls-cert and --tls-key"
        );
        assert_eq!(said(&end), (true, want.as_str()));

        let settings: &[u8] = &[0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00];
        let at = answering(settings).await?;
        let end = tls_hinted(&format!("http://{at}"), transport_error(), &cancel).await;
        assert_eq!(said(&end), (false, "Unknown error: transport error"));

        // A refusal is what the coordinator meant: not probed, and said as it came.
        let at = answering(alert).await?;
        let denied = from_status(false, &tonic::Status::permission_denied("not node b"));
        let end = tls_hinted(&format!("http://{at}"), denied, &cancel).await;
        assert!(
            said(&end).1.starts_with("PERMISSION_DENIED: not node b"),
            "{end:?}"
        );
        Ok(())
    }

    #[test]
    fn reconnect_backoff() {
        let ms = |n| Duration::from_millis(n);
        let cases = [
            (0, ms(100)),
            (1, ms(200)),
            (2, ms(400)),
            (5, ms(3200)),
            (6, ms(5000)),
            (100, ms(5000)),
        ];
        for (attempt, want) in cases {
            assert_eq!(reconnect_delay(attempt), want, "attempt {attempt}");
            let jittered = with_jitter(want);
            assert!(
                jittered >= want && jittered <= want + want / 4,
                "{jittered:?}"
            );
            // A coordinator that takes over waits this long for every agent: a wait, a round's
            // session setup on the other coordinator of the pair, then the dial itself.
            assert!(
                jittered + SESSION_SETUP + Duration::from_secs(2)
                    <= pmcluster_spec::link::AGENT_RECONNECT_WITHIN,
                "{jittered:?}"
            );
        }
    }
}
