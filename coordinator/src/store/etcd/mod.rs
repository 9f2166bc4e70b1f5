//! The store of an HA coordinator pair: desired state in etcd, every write one etcd transaction,
//! fenced by the leader key when the coordinator is one of a pair.
//!
//! # Key layout
//!
//! Under the prefix `P` (`--etcd-prefix`, no trailing slash):
//!
//! | key                               | value                                               |
//! |-----------------------------------|-----------------------------------------------------|
//! | `P/meta/cluster_id`               | the cluster id, text                                |
//! | `P/meta/generation`               | the highest generation, decimal text                |
//! | `P/nodes/NAME`                    | `NodeRecord` JSON                                   |
//! | `P/forgotten/NAME`                | `ForgottenNode` JSON: a node `nodes forget` removed |
//! | `P/apps/NAME`                     | `AppRecord` JSON with `versions` empty              |
//! | `P/specs/NAME/VERSION`            | one older spec (`AppRecord.versions`), `AppSpec` JSON; VERSION zero-padded to 20 digits |
//! | `P/instances/APP/CHUNK`           | JSON array of the `InstanceRecord`s of APP whose index is in `[CHUNK*256, CHUNK*256+256)`, sorted by (index, id); CHUNK zero-padded to 6 digits |
//!
//! So one logical write stays one transaction within etcd's limits (128 operations, 1.5 MiB):
//! scaling by 1,000 writes ~4 chunk keys, and an apply rewrites only the specs that changed, not
//! ten older specs of up to 1 MiB each. Empty chunks are deleted; deleting an app deletes its
//! record, its specs and (once its instances are gone) its chunks by prefix. Other subtrees of
//! `P/` (the leader election's) are not the store's and `load` passes over them.
//!
//! To know which chunk and spec keys a batch touches (`del_instances` names ids only), the store
//! keeps a mirror of what it last read or wrote (`layout::Mirror`): `load` refreshes it, and each
//! accepted commit updates it. A commit whose outcome is unknown (timed out) or that was fenced,
//! and a new fence, mark it stale: the next commit reads the prefix again first.
//!
//! # Calls
//!
//! etcd's client is async while [`Store`] is sync and called both from async code (the open at
//! startup) and from blocking threads; so the store runs its calls on a small runtime of its
//! own and waits for them with `futures::executor::block_on`, which (unlike a runtime's
//! `block_on`) may be called anywhere. Every call has a deadline (`EtcdConfig::timeout`).

mod layout;
pub mod probe;

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KvClient, TlsOptions, Txn, TxnOp,
};
use tokio::runtime::{Handle, Runtime};

use super::{Store, StoreError};
use crate::model::{Batch, Persisted};
use crate::tls::EtcdTlsPem;
use layout::{Keys, Mirror, Op};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_TXN_BYTES: usize = 3 * 512 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys per page of `load`'s range reads. A value is at most one transaction (1.5 MiB), so a
/// page stays under [`MAX_REPLY_BYTES`].
const PAGE_KEYS: i64 = 32;
/// The largest reply the store accepts (tonic's default, 4 MiB, is below a page of specs).
const MAX_REPLY_BYTES: usize = 64 << 20;

/// How to reach etcd and what to write there.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key of this cluster starts with `prefix/`, e.g. `/pmcluster/prod`.
    pub prefix: String,
    /// Whether commits need a fence ([`EtcdStore::set_fence`]): true for a coordinator of an HA
    /// pair, false for tests and tools that write alone.
    pub fenced: bool,
    /// Most operations in one transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Most bytes in one transaction (etcd's `--max-request-bytes`).
    pub max_txn_bytes: usize,
    /// Deadline of each etcd call.
    pub timeout: Duration,
    /// TLS with a client certificate (the endpoints are then `https://`); `None`: plaintext.
    pub tls: Option<EtcdTlsPem>,
}

impl EtcdConfig {
    /// Unfenced, with etcd's default limits and a 3 s deadline.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            fenced: false,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_txn_bytes: DEFAULT_MAX_TXN_BYTES,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        }
    }

    fn connect_options(&self) -> ConnectOptions {
        with_tls(ConnectOptions::new(), self.tls.as_ref())
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            // A member that stops answering during a call (frozen, partitioned) is found by
            // keep-alive pings rather than by the call running into its deadline. Not while
            // idle: etcd takes any ping on a connection without a call for abuse (gRPC's
            // policy without `PermitWithoutStream`) and closes it after the third, so an idle
            // store was redialled every few seconds, and its next write paid for that.
            .with_keep_alive(Duration::from_secs(1), self.timeout)
            .with_keep_alive_while_idle(false)
            // A member cut off from the quorum refuses at once instead of answering stale data
            // or waiting for a leader.
            .with_require_leader(true)
    }
}

/// `options` with `tls` applied: etcd's certificate must chain to `tls.ca` (and name the host
/// of the endpoint), and the client presents `tls.cert`.
pub fn with_tls(options: ConnectOptions, tls: Option<&EtcdTlsPem>) -> ConnectOptions {
    match tls {
        Some(tls) => options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca))
                .identity(Identity::from_pem(&tls.cert, &tls.key)),
        ),
        None => options,
    }
}

/// Whether the schemes of `endpoints` fit `tls`: all `https://` with it, all `http://` without.
/// `Err` names the first that does not.
pub fn check_schemes(endpoints: &[String], tls: bool) -> Result<(), String> {
    let (want, other) = if tls {
        ("https://", "http://")
    } else {
        ("http://", "https://")
    };
    match endpoints.iter().find(|e| !e.starts_with(want)) {
        None => Ok(()),
        Some(e) if e.starts_with(other) && tls => Err(format!(
            "{e} is plaintext http:// but TLS to etcd is configured; give https:// endpoints"
        )),
        Some(e) if e.starts_with(other) => Err(format!(
            "{e} is https:// but no TLS to etcd is configured; give the CA of etcd's \
             certificate and a client certificate etcd trusts"
        )),
        Some(e) => Err(format!("{e} is not a URL like {want}HOST:2379")),
    }
}

/// The leader key whose creation revision every fenced commit is conditioned on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

#[derive(Debug)]
struct MirrorState {
    mirror: Mirror,
    /// The mirror may differ from etcd: read it again before planning a commit.
    stale: bool,
}

/// The etcd store. See the module doc.
pub struct EtcdStore {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    handle: Handle,
    client: Client,
    kv: KvClient,
    cfg: EtcdConfig,
    keys: Keys,
    fence: Mutex<Option<Fence>>,
    mirror: Mutex<MirrorState>,
}

/// Why one etcd call failed.
enum CallError {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
    /// The task running the call panicked or its runtime went away.
    Lost(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An etcd error in a few words a person can act on: the deepest cause ("connection refused",
/// "timed out", or what etcd itself answered), led by what to check when it is a refused TLS
/// handshake. etcd-client's own text embeds tonic's Debug dumps (nested statuses, metadata maps,
/// connector internals): several hundred characters that repeat themselves and tell an operator
/// nothing more.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    let detail = detail(e);
    // The rustls alert is in etcd-client's full text, not always in the deepest cause.
    match tls_hint(&format!("{e} {detail}")) {
        Some(hint) => format!("{hint}: {detail}"),
        None => detail,
    }
}

/// Whether etcd itself answered the call with an error (rather than not answering at all): a
/// status that tonic did not build from a local failure.
pub(crate) fn answered(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if std::error::Error::source(s).is_none())
}

/// The deepest cause of `e`, short. etcd-client's error has no `source`, so its chain starts at
/// the status or transport error it wraps.
fn detail(e: &etcd_client::Error) -> String {
    let root: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(status) => status,
        etcd_client::Error::TransportError(transport) => transport,
        etcd_client::Error::IoError(io) => io,
        other => return other.to_string(),
    };
    let mut deepest = root;
    let mut io = None;
    let mut next = Some(root);
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        deepest = cause;
        next = cause.source();
    }
    if let Some(io) = io {
        // An OS error reads best as its kind ("connection refused", without "(os error 111)");
        // a wrapped one (a TLS failure) is its own words.
        return match io.get_ref() {
            Some(inner) => inner.to_string(),
            None => io.kind().to_string(),
        };
    }
    if let Some(status) = deepest.downcast_ref::<tonic::Status>() {
        return if status.message().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().to_string()
        };
    }
    let text = deepest.to_string();
    // tonic's deadline on a call or a connection.
    if text.eq_ignore_ascii_case("timeout expired") {
        "timed out".to_string()
    } else {
        text
    }
}

/// What a refused TLS handshake means, from the rustls text in an error's causes: an alert
/// etcd sent about our certificate, or our refusal of etcd's.
fn tls_hint(text: &str) -> Option<&'static str> {
    const REFUSED_OURS: [&str; 8] = [
        "received fatal alert: BadCertificate",
        "received fatal alert: UnknownCA",
        "received fatal alert: CertificateRequired",
        "received fatal alert: CertificateExpired",
        "received fatal alert: CertificateUnknown",
        "received fatal alert: CertificateRevoked",
        "received fatal alert: UnsupportedCertificate",
        "received fatal alert: AccessDenied",
    ];
    if REFUSED_OURS.iter().any(|alert| text.contains(alert)) {
        return Some(
            "etcd refused this coordinator's client certificate (--etcd-cert): it must be \
             signed by the CA etcd trusts (etcd's --trusted-ca-file), be valid now and allow \
             client authentication",
        );
    }
    if text.contains("invalid peer certificate") {
        return Some(
            "etcd's certificate is not trusted: it must be signed by --etcd-ca, be valid now \
             and name the endpoint's host",
        );
    }
    None
}

/// Whether etcd refused a transaction for its size (its limits may be set below ours).
fn refused_as_too_large(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let m = status.message();
            m.contains("too many operations in txn request") || m.contains("request is too large")
        }
        _ => false,
    }
}

impl EtcdStore {
    /// Checks the settings and makes the client. etcd is not reached yet (connections are
    /// made on first use), so a coordinator can start before etcd; `load` reaches it.
    pub fn connect(cfg: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut cfg = cfg;
        cfg.prefix = cfg.prefix.trim_end_matches('/').to_string();
        if cfg.prefix.is_empty() {
            return Err(StoreError::Invalid(
                "prefix: empty; give the cluster its own prefix, e.g. /pmcluster/NAME".into(),
            ));
        }
        if cfg.endpoints.is_empty() || cfg.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::Invalid(format!(
                "endpoints: {:?} is not a list of etcd client URLs, e.g. http://10.0.0.1:2379",
                cfg.endpoints
            )));
        }
        if let Err(why) = check_schemes(&cfg.endpoints, cfg.tls.is_some()) {
            return Err(StoreError::Invalid(format!("endpoints: {why}")));
        }
        if cfg.timeout.is_zero() {
            return Err(StoreError::Invalid("timeout: must be above 0".into()));
        }
        if cfg.max_txn_ops == 0 || cfg.max_txn_bytes == 0 {
            return Err(StoreError::Invalid(
                "max_txn_ops, max_txn_bytes: must be above 0".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(Box::new(e)))?;
        let handle = runtime.handle().clone();
        let endpoints = cfg.endpoints.clone();
        let options = cfg.connect_options();
        let connect = async move { Client::connect(endpoints, Some(options)).await };
        let client = match call(&handle, cfg.timeout, connect) {
            Ok(client) => client,
            Err(CallError::Etcd(e @ etcd_client::Error::InvalidArgs(_)))
            | Err(CallError::Etcd(e @ etcd_client::Error::InvalidUri(_))) => {
                runtime.shutdown_background();
                return Err(StoreError::Invalid(format!(
                    "endpoints: {}: {}",
                    cfg.endpoints.join(","),
                    describe(&e)
                )));
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(unavailable(&cfg.endpoints, e));
            }
        };
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(EtcdStore {
            runtime: Some(runtime),
            handle,
            client,
            kv,
            keys: Keys::new(&cfg.prefix),
            cfg,
            fence: Mutex::new(None),
            mirror: Mutex::new(MirrorState {
                mirror: Mirror::default(),
                // Nothing read yet: a commit before any load reads first.
                stale: true,
            }),
        })
    }

    /// A client on the same connections, for the leader election. Its background tasks run on
    /// [`EtcdStore::runtime`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The runtime the store's etcd calls (and its client's connections) run on.
    pub fn runtime(&self) -> Handle {
        self.handle.clone()
    }

    /// The settings in use (the prefix without a trailing slash).
    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    /// Sets the leader key that fenced commits are conditioned on; `None` when this
    /// coordinator does not lead. A new fence makes the next commit read the prefix again, so
    /// that it plans against what the previous leader wrote.
    pub fn set_fence(&self, fence: Option<Fence>) {
        let mut current = lock(&self.fence);
        if fence.is_some() && *current != fence {
            lock(&self.mirror).stale = true;
        }
        *current = fence;
    }

    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, CallError> {
        call(&self.handle, self.cfg.timeout, fut)
    }

    fn unavailable(&self, e: CallError) -> StoreError {
        unavailable(&self.cfg.endpoints, e)
    }

    /// Every key under the prefix at one revision, in pages.
    fn read_all(&self) -> Result<Persisted, StoreError> {
        let end = layout::prefix_end(self.keys.root());
        let mut from = self.keys.root().as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_KEYS);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut kv = self.kv.clone();
            let key = from.clone();
            let mut page = self
                .call(async move { kv.get(key, Some(options)).await })
                .map_err(|e| self.unavailable(e))?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let page_kvs = page.take_kvs();
            let Some(last) = page_kvs.last() else {
                break;
            };
            // The next page starts just after the last key of this one.
            from = last.key().to_vec();
            from.push(0);
            kvs.extend(page_kvs.into_iter().map(|kv| kv.into_key_value()));
            if !more {
                break;
            }
        }
        let (state, orphans) =
            layout::parse(&self.keys, kvs).map_err(|bad| StoreError::CorruptKey {
                endpoints: self.cfg.endpoints.join(","),
                key: pmcluster_spec::cut(&bad.key, 256),
                error: bad.error,
            })?;
        for app in orphans {
            tracing::warn!(
                app,
                prefix = self.cfg.prefix,
                "the etcd store holds older specs of an app it has no record of; ignoring them"
            );
        }
        Ok(state)
    }

    fn txn(&self, ops: Vec<Op>, fence: Option<&Fence>) -> Txn {
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
                Op::DeletePrefix { prefix } => {
                    let end = layout::prefix_end(&prefix);
                    TxnOp::delete(prefix, Some(DeleteOptions::new().with_range(end)))
                }
            })
            .collect();
        let txn = Txn::new();
        let txn = match fence {
            Some(f) => txn.when(vec![Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.create_revision,
            )]),
            None => txn,
        };
        txn.and_then(ops)
    }
}

fn unavailable(endpoints: &[String], e: CallError) -> StoreError {
    let cause = match e {
        CallError::Etcd(e) => describe(&e),
        CallError::TimedOut(after) => format!("no answer within {after:?}"),
        CallError::Lost(why) => why,
    };
    StoreError::unavailable(endpoints, cause)
}

/// Runs `fut` on `handle` with a deadline and waits for it from any thread, async or not.
fn call<T: Send + 'static>(
    handle: &Handle,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, CallError> {
    let task = handle.spawn(async move { tokio::time::timeout(timeout, fut).await });
    match futures::executor::block_on(task) {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(CallError::Etcd(e)),
        Ok(Err(_elapsed)) => Err(CallError::TimedOut(timeout)),
        Err(e) => Err(CallError::Lost(format!(
            "the etcd call did not finish: {e}"
        ))),
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        // Held across the read, so that no commit lands between the read and the mirror.
        let mut mirror = lock(&self.mirror);
        let state = self.read_all()?;
        mirror.mirror = Mirror::new(state.clone());
        mirror.stale = false;
        Ok(state)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let fence = lock(&self.fence).clone();
        self.commit_under(batch, fence)
    }
}

impl EtcdStore {
    /// [`Store::commit`] for one leadership term: conditioned on that term's own leader key,
    /// and refused unless that term is still the current one. A write planned on a term's
    /// memory must never land under a later term's fence (this coordinator may lead again
    /// while a write of its previous term still waits on the lock).
    pub fn commit_in_term(&self, batch: &Batch, term: &Fence) -> Result<(), StoreError> {
        let current = lock(&self.fence).clone();
        if current.as_ref() != Some(term) {
            return Err(StoreError::NotLeader);
        }
        self.commit_under(batch, current)
    }

    fn commit_under(&self, batch: &Batch, fence: Option<Fence>) -> Result<(), StoreError> {
        if self.cfg.fenced && fence.is_none() {
            return Err(StoreError::NotLeader);
        }
        let fence = fence.filter(|_| self.cfg.fenced);
        let mut mirror = lock(&self.mirror);
        if mirror.stale {
            mirror.mirror = Mirror::new(self.read_all()?);
            mirror.stale = false;
        }
        let plan = layout::plan(&self.keys, &mirror.mirror, batch)
            .map_err(|e| StoreError::Io(Box::new(e)))?;
        let (ops, bytes) = layout::weigh(&plan.ops, fence.as_ref().map(|f| f.key.as_slice()));
        let too_large = StoreError::TooLarge {
            ops,
            bytes,
            max_ops: self.cfg.max_txn_ops,
            max_bytes: self.cfg.max_txn_bytes,
        };
        if ops > self.cfg.max_txn_ops || bytes > self.cfg.max_txn_bytes {
            return Err(too_large);
        }
        if plan.ops.is_empty() && fence.is_none() {
            mirror.mirror.commit(batch, plan);
            return Ok(());
        }
        let txn = self.txn(plan.ops.clone(), fence.as_ref());
        let mut kv = self.kv.clone();
        match self.call(async move { kv.txn(txn).await }) {
            Ok(reply) if reply.succeeded() => {
                mirror.mirror.commit(batch, plan);
                Ok(())
            }
            Ok(_) => {
                // Someone else leads and may write: what this store knows is no longer all.
                mirror.stale = true;
                Err(StoreError::Fenced)
            }
            Err(CallError::Etcd(e)) if refused_as_too_large(&e) => Err(too_large),
            Err(e) => {
                // Perhaps applied, perhaps not.
                mirror.stale = true;
                Err(self.unavailable(e))
            }
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Not `Runtime::drop`, which blocks and panics when the store is dropped in async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_handshakes_say_which_certificate() {
        let ours = "grpc request error: transport error: received fatal alert: BadCertificate";
        assert!(tls_hint(ours).is_some_and(|h| h.contains("--etcd-cert")));
        let theirs = "transport error: invalid peer certificate: UnknownIssuer";
        assert!(tls_hint(theirs).is_some_and(|h| h.contains("--etcd-ca")));
        assert_eq!(tls_hint("connection refused"), None);
    }

    /// A status as tonic builds it from a local failure: the failure is its source.
    fn local(
        status: tonic::Status,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> etcd_client::Error {
        let mut status = status;
        status.set_source(std::sync::Arc::new(cause));
        etcd_client::Error::GRpcStatus(status)
    }

    #[derive(Debug)]
    struct Expired;

    impl std::fmt::Display for Expired {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("timeout expired")
        }
    }

    impl std::error::Error for Expired {}

    #[test]
    fn etcd_errors_are_described_in_a_few_words() {
        let refused = local(
            tonic::Status::unavailable("tcp connect error"),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(describe(&refused), "connection refused");
        assert!(!answered(&refused));
        // etcd-client's own text carries tonic's Debug of the cause.
        assert!(refused.to_string().len() > describe(&refused).len());

        let timed_out = local(tonic::Status::cancelled("Timeout expired"), Expired);
        assert_eq!(describe(&timed_out), "timed out");
        assert!(!answered(&timed_out));

        let said =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert_eq!(describe(&said), "etcdserver: no leader");
        assert!(answered(&said));
        let bare = etcd_client::Error::GRpcStatus(tonic::Status::unavailable(""));
        assert_eq!(describe(&bare), tonic::Code::Unavailable.description());

        let elect = etcd_client::Error::ElectError("no leader key".into());
        assert_eq!(describe(&elect), "election error: no leader key");
    }

    #[test]
    fn schemes_fit_tls() {
        let eps = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_schemes(&eps(&["http://a:2379", "http://b:2379"]), false),
            Ok(())
        );
        assert_eq!(check_schemes(&eps(&["https://a:2379"]), true), Ok(()));
        let e = check_schemes(&eps(&["https://a:2379", "http://b:2379"]), true).unwrap_err();
        assert!(e.starts_with("http://b:2379 is plaintext"), "{e}");
        let e = check_schemes(&eps(&["http://a:2379", "https://b:2379"]), false).unwrap_err();
        assert!(e.starts_with("https://b:2379 is https://"), "{e}");
        let e = check_schemes(&eps(&["a:2379"]), false).unwrap_err();
        assert!(e.contains("not a URL"), "{e}");
    }
}
