//! The HA pair's election on etcd: who leads, and the fence that keeps a deposed leader's writes
//! out.
//!
//! Each term: grant a lease (TTL `--lease-ttl`), keep it alive *before* campaigning, campaign on
//! `PREFIX/election` with the advertise URL as the value. A campaign can return after the lease
//! lapsed (the process was paused, the network cut), so the winner first checks that the leader
//! key is still its own. Then it fences the store on that key's create revision (every commit
//! is one etcd transaction conditioned on it), loads the store into a fresh [`Control`] and
//! takes the seat.
//!
//! A leader steps down at once when: a commit is fenced off (someone else leads), the leader key
//! is no longer its own, or no keep-alive was acknowledged for two thirds of the TTL (its lease
//! may lapse any moment, and the standby would then lead beside it). Stepping down closes the
//! agent sessions and stops the control loop; writes still in flight are refused by the fence.
//! On SIGTERM the leader resigns, so the standby's campaign returns at once instead of after the
//! lease's TTL.
//!
//! etcd locks cannot by themselves guarantee mutual exclusion (a paused holder wakes up and acts
//! on a lock it lost); the fence is what makes a stale leader's writes harmless.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::{Client, ConnectOptions, GetOptions, LeaderKey, PutOptions, ResignOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Directory, NoLeader, Peer, Role, Seat, StoreInfo};
use crate::control::{Control, ControlConfig};
use crate::model::{Batch, Persisted};
use crate::server::{self, Config, ServeError, StoreChoice};
use crate::store::etcd::probe::{self, Probe};
use crate::store::etcd::{answered, describe, with_tls};
use crate::store::{EtcdConfig, EtcdStore, Fence, Store, StoreError};
use crate::tls::{EtcdTlsPem, TlsError};

/// How long one etcd call of the election may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a standby asks who leads (for its refusal's hint) and a leader checks its key.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How often a coordinator republishes itself for `pmcluster status`.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Serves as one coordinator of an HA pair until `shutdown`: standby until elected, leader
/// until it steps down, and so on. On shutdown a leader resigns before the server stops.
pub async fn serve_pair(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let StoreChoice::Etcd {
        endpoints,
        prefix,
        lease_ttl,
        tls: etcd_tls,
    } = config.store.clone()
    else {
        anyhow::bail!("serve_pair needs --store etcd");
    };
    let etcd_tls = match &etcd_tls {
        Some(files) => Some(crate::tls::read_etcd_tls(files).map_err(ServeError::Tls)?),
        None => None,
    };
    if let Some(tls) = &etcd_tls {
        check_tls(&endpoints, tls).await?;
    }
    let store = Arc::new(
        EtcdStore::connect(EtcdConfig {
            fenced: true,
            tls: etcd_tls.clone(),
            ..EtcdConfig::new(endpoints.clone(), prefix.clone())
        })
        .map_err(ServeError::Store)?,
    );
    // No HTTP/2 keep-alive pings: etcd refuses pings more often than every 5 s (its
    // --grpc-keepalive-min-time) by closing the connection; deadlines and the lease do the
    // liveness checking instead.
    let client = Client::connect(
        &endpoints,
        Some(with_tls(
            ConnectOptions::new()
                .with_connect_timeout(CALL_TIMEOUT)
                .with_timeout(CALL_TIMEOUT),
            etcd_tls.as_ref(),
        )),
    )
    .await
    .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
    // A campaign waits for as long as another coordinator leads: no per-request deadline on
    // this one (the lease's deadline ends a campaign that must not go on).
    let campaigner = Client::connect(
        &endpoints,
        Some(with_tls(
            ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT),
            etcd_tls.as_ref(),
        )),
    )
    .await
    .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
    // Read before binding: a bad certificate file is an operator's error, not a half-started
    // coordinator.
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::server_config(files)?),
        None => None,
    };
    let metrics = server::bind_metrics(config.metrics_listen).await?;
    let listener = server::bind(config.listen, "--listen").await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests and `pmcluster up` read this line to learn the port.
    crate::server::announce(&format!("pmcluster-coordinator listening on {addr}"));
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    });
    tracing::info!(%addr, %advertise, etcd = %endpoints.join(","), %prefix, "serving as one of an HA pair");
    let seat = Seat::standby(
        advertise.clone(),
        StoreInfo {
            kind: "etcd".into(),
            location: format!("{} {prefix}", endpoints.join(",")),
        },
    );
    let election = Arc::new(Election {
        etcd: endpoints.join(","),
        client,
        campaigner,
        store,
        seat: seat.clone(),
        control: config.control.clone(),
        prefix,
        advertise,
        ttl: lease_ttl,
        lease_granted_ms: Mutex::new(None),
        metrics: metrics.as_ref().map(|(m, _)| m.clone()),
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(election.clone().run(stop.clone()));
    // The election stops (and a leader resigns) before the server closes: the standby takes
    // over while this one still finishes its in-flight calls.
    let stopping = async move {
        shutdown.await;
        stop.cancel();
        let _ = running.await;
    };
    let directory: Arc<dyn Directory> = election;
    server::serve_tls(
        seat,
        Some(directory),
        tls,
        listener,
        stopping,
        server::ServeOptions {
            grace: config.shutdown_grace,
            limits: config.limits,
            metrics,
        },
    )
    .await?;
    Ok(())
}

/// Refuses to serve when an etcd endpoint refuses this coordinator's certificate or this
/// coordinator refuses etcd's: that is the operator's to fix, like a wrong file, and a
/// coordinator that cannot reach its store must not sit as a standby that never leads. An
/// endpoint that cannot be reached now is only logged; etcd may start later.
async fn check_tls(endpoints: &[String], tls: &EtcdTlsPem) -> Result<(), ServeError> {
    let probes = endpoints
        .iter()
        .map(|e| probe::probe(e, tls.client.clone(), CALL_TIMEOUT));
    let found = futures::future::join_all(probes).await;
    for (endpoint, found) in endpoints.iter().zip(found) {
        match found {
            Probe::Accepted => tracing::debug!(%endpoint, "etcd accepts this coordinator's TLS"),
            Probe::Unreachable(why) => tracing::warn!(
                %endpoint,
                "cannot check TLS with etcd now ({why}); going on, etcd may start later"
            ),
            Probe::Refused(why) => {
                return Err(ServeError::Tls(TlsError::EtcdRefused {
                    endpoint: endpoint.clone(),
                    why,
                }));
            }
        }
    }
    Ok(())
}

struct Election {
    /// The endpoints, as a refusal names them.
    etcd: String,
    client: Client,
    campaigner: Client,
    store: Arc<EtcdStore>,
    seat: Arc<Seat>,
    control: ControlConfig,
    prefix: String,
    advertise: String,
    ttl: Duration,
    lease_granted_ms: Mutex<Option<i64>>,
    /// `--metrics-listen`: each term's store is timed into these.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why a term ended or could not begin: what the election was doing, for the log, and why, in
/// one clause that a standby's refusal quotes to people (who need etcd's state, not the
/// election's step).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trouble {
    doing: String,
    why: String,
    /// etcd did not answer or refused: what a refusal sends people to check, and why a standby
    /// forgets the leader it knew.
    etcd: bool,
}

impl Trouble {
    /// A failure of the election itself (another coordinator took the key, the store could
    /// not be loaded).
    fn new(doing: impl Into<String>, why: impl Into<String>) -> Trouble {
        Trouble {
            doing: doing.into(),
            why: why.into(),
            etcd: false,
        }
    }

    /// etcd did not answer, or refused.
    fn etcd(doing: impl Into<String>, why: impl Into<String>) -> Trouble {
        Trouble {
            etcd: true,
            ..Trouble::new(doing, why)
        }
    }

    /// What a standby's refusal says of it.
    fn no_leader(&self) -> NoLeader {
        if self.etcd {
            NoLeader::Etcd(self.why.clone())
        } else {
            NoLeader::Election(self.why.clone())
        }
    }
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.doing, self.why)
    }
}

/// etcd at `etcd` failed a call, `e` (`None`: it did not answer within the call's deadline), in
/// one clause.
fn etcd_failed(etcd: &str, e: Option<&etcd_client::Error>) -> String {
    match e {
        Some(e) if answered(e) => format!("etcd at {etcd} refused the call ({})", describe(e)),
        Some(e) => format!("etcd at {etcd} did not answer ({})", describe(e)),
        None => format!("etcd at {etcd} did not answer (timed out)"),
    }
}

/// The store of one term: commits go to etcd under the term's fence; a fenced-off commit ends
/// the term at once (`lost`), before the caller even sees the error.
struct TermStore {
    inner: Arc<EtcdStore>,
    /// This term's leader key: every commit is conditioned on it, never on a later term's.
    fence: Fence,
    lost: CancellationToken,
    /// When etcd last acknowledged the lease, and how old that may get before the term ends.
    last_ack: watch::Receiver<Instant>,
    lapse: Duration,
}

impl Store for TermStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.inner.load()
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        // A process woken from a pause (SIGSTOP, a VM freeze) may serve queued writes before
        // the term's own lapse check runs. Its lease may be gone, and etcd may be slow to answer
        // a connection that slept too: refuse here, at once, rather than ask.
        if self.lost.is_cancelled() {
            return Err(StoreError::NotLeader);
        }
        let age = self.last_ack.borrow().elapsed();
        if age > self.lapse {
            tracing::warn!(
                "write refused: no keep-alive acknowledged for {:.1}s (over {:.1}s, two thirds \
                 of the lease), so this term is over",
                age.as_secs_f64(),
                self.lapse.as_secs_f64()
            );
            self.lost.cancel();
            return Err(StoreError::NotLeader);
        }
        let result = self.inner.commit_in_term(batch, &self.fence);
        // Fenced: someone else leads. Unavailable: the write may or may not have landed, so
        // this control's memory can no longer be trusted; a new term reloads the store.
        if matches!(
            result,
            Err(StoreError::Fenced | StoreError::NotLeader | StoreError::Unavailable(_))
        ) {
            self.lost.cancel();
        }
        result
    }
}

impl Election {
    /// One etcd call of the election, within [`CALL_TIMEOUT`]; `what` names it in the log.
    async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Trouble> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(Trouble::etcd(what, etcd_failed(&self.etcd, None))),
            Ok(Err(e)) => Err(Trouble::etcd(what, etcd_failed(&self.etcd, Some(&e)))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Not in the election any more, for `trouble`: callers refused meanwhile hear why, and a
    /// standby stops naming a leader. It learnt that leader while it followed the election;
    /// out of it, the hint goes stale (the leader may step down for the same reason) and would
    /// send clients to a coordinator that leads no more.
    fn out_of_the_election(&self, trouble: &Trouble) {
        self.seat.set_trouble(Some(trouble.no_leader()));
        // Another coordinator leading (the key no longer ours) is followed, not forgotten.
        if trouble.etcd {
            self.seat.set_leader_hint(None);
        }
    }

    /// Why a lease lapsed: etcd did not acknowledge a keep-alive for `lapse` (two thirds of
    /// the TTL), which is etcd not answering as far as this coordinator can tell.
    fn lease_unrenewed(&self, lapse: Duration) -> String {
        format!(
            "etcd at {} did not answer (no keep-alive acknowledged for {:.1}s)",
            self.etcd,
            lapse.as_secs_f64()
        )
    }

    fn election_name(&self) -> String {
        format!("{}/election", self.prefix)
    }

    fn members_prefix(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(trouble) = self.term(&stop).await {
                tracing::warn!("{trouble}");
                self.out_of_the_election(&trouble);
            }
            *self
                .lease_granted_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            // Not leading (any more): a stale control must not be left in the seat.
            if self.seat.is_leader() {
                self.seat.stand_by(None);
            }
            self.store.set_fence(None);
            tokio::select! {
                () = stop.cancelled() => return,
                // A pause, so that an unreachable etcd is not hammered.
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    /// One lease: campaign, lead, and step down. `Ok` only when stopped on request.
    async fn term(&self, stop: &CancellationToken) -> Result<(), Trouble> {
        let mut client = self.client.clone();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(2);
        let lease = self
            .within("granting a lease", client.lease_grant(ttl, None))
            .await?
            .id();
        *self
            .lease_granted_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(wall_ms());
        let (acked, last_ack) = watch::channel(Instant::now());
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, self.ttl, acked));
        let _keeper = AbortOnDrop(keeper);
        let ended = self.serve_term(&mut client, lease, last_ack, stop).await;
        // Said at once: revoking below may wait out its timeout on an etcd without quorum, and
        // callers refused meanwhile should hear why rather than "try again".
        if let Err(trouble) = &ended {
            self.out_of_the_election(trouble);
        }
        // Whatever ended the term, the lease goes with it: the members key disappears and, had
        // the leader key survived, it is released.
        let _ = self
            .within("revoking the lease", client.lease_revoke(lease))
            .await;
        ended
    }

    async fn serve_term(
        &self,
        client: &mut Client,
        lease: i64,
        last_ack: watch::Receiver<Instant>,
        stop: &CancellationToken,
    ) -> Result<(), Trouble> {
        let lapse = self.ttl * 2 / 3;
        let name = self.election_name();
        let key: LeaderKey = {
            let follower = client.clone();
            let mut campaigner = self.campaigner.clone();
            let campaign = campaigner.campaign(name.clone(), self.advertise.clone(), lease);
            tokio::select! {
                r = campaign => r
                    .map_err(|e| Trouble::etcd("campaigning", etcd_failed(&self.etcd, Some(&e))))?
                    .take_leader()
                    .ok_or_else(|| Trouble::etcd(
                        "campaigning",
                        format!("etcd at {} answered without a leader key", self.etcd),
                    ))?,
                () = lease_lapsed(last_ack.clone(), lapse) => {
                    return Err(Trouble::etcd(
                        "campaigning; starting again",
                        self.lease_unrenewed(lapse),
                    ));
                }
                () = stop.cancelled() => return Ok(()),
                () = self.follow_leader(follower, &name, lease) => {
                    return Err(Trouble::new("campaigning", "stopped following the leader"));
                }
            }
        };
        // The campaign may have returned after the lease lapsed: act only on a key that is
        // still ours, with a lease acknowledged recently.
        let current = self
            .within("reading the leader", client.leader(name.clone()))
            .await?;
        let ours = current
            .kv()
            .is_some_and(|kv| kv.key() == key.key() && kv.create_revision() == key.rev());
        if !ours || last_ack.borrow().elapsed() > lapse {
            return Err(Trouble::new(
                "elected",
                "the leader key is no longer ours; not acting",
            ));
        }
        let term = key.rev();
        let fence = Fence {
            key: key.key().to_vec(),
            create_revision: term,
        };
        self.store.set_fence(Some(fence.clone()));
        let lost = CancellationToken::new();
        let mut term_store: Arc<dyn Store> = Arc::new(TermStore {
            inner: self.store.clone(),
            fence,
            lost: lost.clone(),
            last_ack: last_ack.clone(),
            lapse,
        });
        if let Some(metrics) = &self.metrics {
            term_store = metrics.timed(term_store);
        }
        let config = self.control.clone();
        let opened = tokio::task::spawn_blocking(move || Control::open(term_store, config))
            .await
            .map_err(|e| Trouble::new("loading the store", e.to_string()))?;
        let control = match opened {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.store.set_fence(None);
                let _ = self
                    .within(
                        "resigning",
                        client.resign(Some(ResignOptions::new().with_leader(key))),
                    )
                    .await;
                return Err(Trouble::new(
                    "elected, but cannot load the store",
                    e.to_string(),
                ));
            }
        };
        let since = wall_ms();
        self.seat.set_trouble(None);
        self.seat.lead(control, term, since);
        tracing::info!(term, advertise = %self.advertise, "leading");
        let why = tokio::select! {
            () = lease_lapsed(last_ack.clone(), lapse) => Trouble::etcd(
                "stepping down",
                self.lease_unrenewed(lapse),
            ),
            () = lost.cancelled() => Trouble::new(
                "stepping down",
                "a write was fenced off (another coordinator leads) or its outcome is unknown \
                 (etcd unavailable)",
            ),
            why = self.watch_own_key(client.clone(), &name, &key, lease, since) => why,
            () = stop.cancelled() => {
                // Resign first: the standby's campaign returns at once.
                self.seat.stand_by(None);
                self.store.set_fence(None);
                let resigned = self
                    .within(
                        "resigning",
                        client.resign(Some(ResignOptions::new().with_leader(key))),
                    )
                    .await;
                match resigned {
                    Ok(_) => tracing::info!(term, "resigned"),
                    Err(e) => tracing::warn!(term, "{e}"),
                }
                return Ok(());
            }
        };
        self.seat.stand_by(None);
        self.store.set_fence(None);
        Err(why)
    }

    /// While campaigning: learn who leads (for the refusal's hint) and publish ourselves.
    async fn follow_leader(&self, mut client: Client, name: &str, lease: i64) {
        let mut published = Instant::now() - PUBLISH_EVERY;
        loop {
            let leader = match self
                .within("reading the leader", client.leader(name.to_string()))
                .await
            {
                Ok(r) => {
                    self.seat.set_trouble(None);
                    r.kv()
                        .and_then(|kv| kv.value_str().ok())
                        .map(str::to_string)
                }
                Err(trouble) => {
                    self.seat.set_trouble(Some(trouble.no_leader()));
                    None
                }
            };
            self.seat.set_leader_hint(leader);
            if published.elapsed() >= PUBLISH_EVERY {
                self.publish(&mut client, lease, None).await;
                published = Instant::now();
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// While leading: end the term if the leader key is no longer ours (deleted by hand, or
    /// the lease revoked elsewhere). Publishes ourselves meanwhile.
    async fn watch_own_key(
        &self,
        mut client: Client,
        name: &str,
        key: &LeaderKey,
        lease: i64,
        since: i64,
    ) -> Trouble {
        let mut published = Instant::now() - PUBLISH_EVERY;
        loop {
            if let Ok(r) = self
                .within("reading the leader", client.leader(name.to_string()))
                .await
            {
                let ours = r
                    .kv()
                    .is_some_and(|kv| kv.key() == key.key() && kv.create_revision() == key.rev());
                if !ours {
                    return Trouble::new("stepping down", "the leader key is no longer ours");
                }
            }
            if published.elapsed() >= PUBLISH_EVERY {
                self.publish(&mut client, lease, Some((key.rev(), since)))
                    .await;
                published = Instant::now();
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Writes this coordinator's member record, bound to its lease (it vanishes with it).
    async fn publish(&self, client: &mut Client, lease: i64, leading: Option<(i64, i64)>) {
        let agents = match self.seat.role() {
            Role::Leader { control, .. } => control.connected_agents(),
            Role::Standby { .. } => 0,
        };
        let peer = Peer {
            advertise: self.advertise.clone(),
            leader: leading.is_some(),
            term: leading.map_or(0, |(term, _)| term),
            lease_granted_ms: self
                .lease_granted_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(0),
            role_since_ms: leading.map_or(0, |(_, since)| since),
            agents_connected: u32::try_from(agents).unwrap_or(u32::MAX),
        };
        let Ok(value) = serde_json::to_vec(&peer) else {
            return;
        };
        let key = format!("{}{lease:x}", self.members_prefix());
        if let Err(e) = self
            .within(
                "publishing this coordinator",
                client.put(key, value, Some(PutOptions::new().with_lease(lease))),
            )
            .await
        {
            tracing::debug!("{e}");
        }
    }
}

#[tonic::async_trait]
impl Directory for Election {
    async fn peers(&self) -> (Vec<Peer>, Result<(), String>) {
        let mut client = self.client.clone();
        let read = self
            .within(
                "reading the coordinators",
                client.get(self.members_prefix(), Some(GetOptions::new().with_prefix())),
            )
            .await;
        match read {
            Ok(r) => (
                r.kvs()
                    .iter()
                    .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                    .collect(),
                Ok(()),
            ),
            // Worded for `pmcluster status`, where it is the store's whole story.
            Err(trouble) => (
                Vec::new(),
                Err(format!("{}; has it lost its quorum?", trouble.why)),
            ),
        }
    }

    fn lease_granted_ms(&self) -> Option<i64> {
        *self
            .lease_granted_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Renews `lease` every quarter TTL and records each acknowledgement. Ends when etcd says the
/// lease is gone; the term's deadline check does the rest.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, acked: watch::Sender<Instant>) {
    let every = ttl / 4;
    let Ok((mut keeper, mut acks)) = client.lease_keep_alive(lease).await else {
        return;
    };
    loop {
        if keeper.keep_alive().await.is_err() {
            return;
        }
        match tokio::time::timeout(every, acks.message()).await {
            Ok(Ok(Some(ack))) if ack.ttl() > 0 => {
                acked.send_replace(Instant::now());
            }
            // TTL 0: the lease expired; a broken stream cannot renew it either.
            Ok(Ok(Some(_) | None) | Err(_)) => return,
            // No answer within the period: try again; the deadline decides.
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// Completes once the last acknowledgement is older than `lapse`.
async fn lease_lapsed(last_ack: watch::Receiver<Instant>, lapse: Duration) {
    loop {
        let age = last_ack.borrow().elapsed();
        if age > lapse {
            return;
        }
        // Checked often: after a SIGSTOP, the first thing to run must be this check's verdict,
        // not a write (the fence would refuse that write anyway).
        tokio::time::sleep((lapse - age).min(Duration::from_millis(50))).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_etcd_in_one_clause() {
        let refused = {
            let mut status = tonic::Status::unavailable("tcp connect error");
            status.set_source(Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )));
            etcd_client::Error::GRpcStatus(status)
        };
        assert_eq!(
            etcd_failed("http://e:2379", Some(&refused)),
            "etcd at http://e:2379 did not answer (connection refused)"
        );
        let no_quorum =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            etcd_failed("http://e:2379", Some(&no_quorum)),
            "etcd at http://e:2379 refused the call (etcdserver: no leader)"
        );
        assert_eq!(
            etcd_failed("http://e:2379", None),
            "etcd at http://e:2379 did not answer (timed out)"
        );
        let trouble = Trouble::etcd("granting a lease", etcd_failed("http://e:2379", None));
        assert_eq!(
            trouble.to_string(),
            "granting a lease: etcd at http://e:2379 did not answer (timed out)"
        );
    }
}
