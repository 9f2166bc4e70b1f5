//! The etcd store: the shared cases, and what only it does — one transaction per batch within
//! etcd's limits, fenced writes, and a clear error rather than a hang when etcd is gone.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use pmcluster_coordinator::model::{Batch, Persisted};
use pmcluster_coordinator::store::etcd::DEFAULT_MAX_TXN_OPS;
use pmcluster_coordinator::store::{EtcdConfig, EtcdStore, Fence, Store, StoreError};
use pmcluster_tests::Etcd;

use crate::cases::{Backend, node, run_all};

struct EtcdBackend {
    endpoints: Vec<String>,
    prefix: String,
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn open(&mut self) -> Box<dyn Store> {
        Box::new(connect(&self.endpoints, &self.prefix, false))
    }
}

fn config(endpoints: &[String], prefix: &str, fenced: bool) -> EtcdConfig {
    EtcdConfig {
        fenced,
        ..EtcdConfig::new(endpoints.to_vec(), prefix)
    }
}

fn connect(endpoints: &[String], prefix: &str, fenced: bool) -> EtcdStore {
    EtcdStore::connect(config(endpoints, prefix, fenced))
        .unwrap_or_else(|e| panic!("connecting to etcd: {e}"))
}

/// Runs an etcd client call on the store's runtime, from this (non-async) test thread.
fn on<T: Send + 'static>(
    store: &EtcdStore,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> T {
    match futures::executor::block_on(store.runtime().spawn(fut)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("etcd call: {e}"),
        Err(e) => panic!("etcd call task: {e}"),
    }
}

fn load(store: &EtcdStore) -> Persisted {
    store.load().unwrap_or_else(|e| panic!("load: {e}"))
}

fn nodes(prefix: &str, n: usize) -> Vec<pmcluster_coordinator::model::NodeRecord> {
    (0..n).map(|i| node(&format!("{prefix}{i:03}"))).collect()
}

#[test]
fn etcd_store_conforms() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let endpoints = etcd.endpoints();
    run_all(|case| {
        Box::new(EtcdBackend {
            endpoints: endpoints.clone(),
            prefix: format!("/pmcluster-test/{case}"),
        })
    });
    // Each case kept to its prefix: a store under another prefix sees none of it.
    let other = connect(&endpoints, "/pmcluster-test/every_kind", false);
    assert_eq!(load(&other), Persisted::default());
}

#[test]
fn a_batch_at_the_op_limit_commits_and_one_over_writes_nothing() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/limits", false);
    let at_limit = Batch {
        put_nodes: nodes("n", DEFAULT_MAX_TXN_OPS),
        ..Batch::default()
    };
    store.commit(&at_limit).expect("a batch of 128 operations");
    assert_eq!(load(&store).nodes.len(), DEFAULT_MAX_TXN_OPS);
    let over = Batch {
        put_nodes: nodes("o", DEFAULT_MAX_TXN_OPS + 1),
        ..Batch::default()
    };
    match store.commit(&over) {
        Err(StoreError::TooLarge { ops, max_ops, .. }) => {
            assert_eq!((ops, max_ops), (129, 128));
        }
        other => panic!("129 operations: {other:?}"),
    }
    let err = store
        .commit(&over)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("smaller steps"), "{err}");
    assert_eq!(
        load(&store).nodes.len(),
        DEFAULT_MAX_TXN_OPS,
        "nothing written"
    );
    // A store reopened on the same prefix agrees.
    let again = connect(&etcd.endpoints(), "/limits", false);
    assert_eq!(load(&again), load(&store));
}

/// The largest batch the store's byte count admits is one etcd accepts: the count is an upper
/// bound of what etcd weighs, not a guess below it.
#[test]
fn the_largest_batch_by_bytes_is_one_etcd_accepts() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/bytes", false);
    let max = store.config().max_txn_bytes;
    let batch_of = |filler: usize| {
        let mut n = node("big");
        n.labels.insert("filler".into(), "x".repeat(filler));
        Batch {
            put_nodes: vec![n],
            ..Batch::default()
        }
    };
    // Down from the limit until the count admits it; each refusal is local (nothing sent).
    let mut filler = max;
    loop {
        match store.commit(&batch_of(filler)) {
            Ok(()) => break,
            Err(StoreError::TooLarge { bytes, .. }) => {
                assert!(bytes > max);
                filler -= bytes - max;
            }
            Err(e) => panic!("a batch of {filler} bytes of filler: {e}"),
        }
    }
    assert!(
        filler > max - 1024,
        "the count admitted only {filler} of {max} bytes"
    );
    // Exactly at the limit by the count: one byte more is refused before sending.
    assert!(matches!(
        store.commit(&batch_of(filler + 1)),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(load(&store).nodes["big"].labels["filler"].len(), filler);
}

/// The leader key's create revision, as the election would hold it.
fn lead(store: &EtcdStore, key: &str) -> Fence {
    let mut client: Client = store.client();
    let k = key.to_string();
    on(
        store,
        async move { client.put(k, "coordinator-1", None).await },
    );
    let mut client = store.client();
    let k = key.to_string();
    let reply = on(store, async move {
        client.get(k, Some(GetOptions::new())).await
    });
    let create_revision = reply
        .kvs()
        .first()
        .map(|kv| kv.create_revision())
        .expect("the leader key exists");
    Fence {
        key: key.as_bytes().to_vec(),
        create_revision,
    }
}

#[test]
fn fenced_writes() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/fenced", true);
    let leader_key = "/fenced/election/leader";
    let write = |name: &str| Batch {
        put_nodes: vec![node(name)],
        ..Batch::default()
    };
    assert!(matches!(
        store.commit(&write("a")),
        Err(StoreError::NotLeader)
    ));
    let fence = lead(&store, leader_key);
    store.set_fence(Some(fence.clone()));
    store
        .commit(&write("b"))
        .expect("a write with the right fence");
    // The key deleted and made again (another coordinator's term): the old fence is stale.
    let mut client = store.client();
    on(&store, async move { client.delete(leader_key, None).await });
    let newer = lead(&store, leader_key);
    assert!(newer.create_revision > fence.create_revision);
    match store.commit(&write("c")) {
        Err(StoreError::Fenced) => {}
        other => panic!("a write with a stale fence: {other:?}"),
    }
    let seen = load(&store);
    assert_eq!(
        seen.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b"],
        "only the write with the right fence landed"
    );
    // Also an empty batch is fenced: a leader that lost its key learns it on any write.
    assert!(matches!(
        store.commit(&Batch::default()),
        Err(StoreError::Fenced)
    ));
    store.set_fence(Some(newer));
    store
        .commit(&write("d"))
        .expect("a write with the new fence");
    store.set_fence(None);
    assert!(matches!(
        store.commit(&write("e")),
        Err(StoreError::NotLeader)
    ));
    let seen = load(&store);
    assert_eq!(
        seen.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b", "d"]
    );
}

/// A write planned in one term and committed after this store has begun the next (this
/// coordinator led again meanwhile) is refused, and nothing of it lands: a term commits only
/// under its own leader key.
#[test]
fn a_write_of_a_past_term_is_refused_under_the_next() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/terms", true);
    let leader_key = "/terms/election/leader";
    let write = |name: &str| Batch {
        put_nodes: vec![node(name)],
        ..Batch::default()
    };
    let first = lead(&store, leader_key);
    store.set_fence(Some(first.clone()));
    store
        .commit_in_term(&write("a"), &first)
        .expect("a write in the current term");
    let mut client = store.client();
    on(&store, async move { client.delete(leader_key, None).await });
    let second = lead(&store, leader_key);
    store.set_fence(Some(second.clone()));
    match store.commit_in_term(&write("b"), &first) {
        Err(StoreError::NotLeader) => {}
        other => panic!("a write of the past term: {other:?}"),
    }
    store
        .commit_in_term(&write("c"), &second)
        .expect("a write in the new term");
    let seen = load(&store);
    assert_eq!(
        seen.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "c"]
    );
}

/// A frozen etcd (SIGSTOP: connections open, no answers) and a dead one are both a clear
/// `Unavailable` within the deadline, never a hang; writes resume when etcd is back.
#[test]
fn an_unreachable_etcd_is_unavailable_within_the_deadline() {
    let Some(mut etcd) = Etcd::single_or_skip() else {
        return;
    };
    let endpoints = etcd.endpoints();
    let timeout = Duration::from_secs(1);
    let store = EtcdStore::connect(EtcdConfig {
        timeout,
        ..config(&endpoints, "/down", false)
    })
    .expect("connect");
    load(&store);
    let write = |name: &str| Batch {
        put_nodes: vec![node(name)],
        ..Batch::default()
    };
    store.commit(&write("a")).expect("a write while etcd runs");
    let expect_unavailable = |what: &str, batch: &Batch| {
        let start = Instant::now();
        let result = store.commit(batch);
        let took = start.elapsed();
        match result {
            Err(e @ StoreError::Unavailable(_)) => {
                let text = e.to_string();
                assert!(text.contains(&endpoints[0]), "{what}: {text}");
                assert!(
                    text.contains("writes resume when etcd has quorum"),
                    "{what}: {text}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            took < timeout + Duration::from_millis(1500),
            "{what}: took {took:?} with a {timeout:?} deadline"
        );
        took
    };
    etcd.stop(0).expect("stop etcd");
    let frozen = expect_unavailable("etcd stopped", &write("b"));
    assert!(
        frozen >= timeout / 2,
        "etcd stopped: answered in {frozen:?}"
    );
    etcd.cont(0).expect("continue etcd");
    etcd.wait_healthy(0, pmcluster_tests::ETCD_STARTUP_TIMEOUT)
        .expect("etcd answers again");
    // The write that timed out may or may not have landed; what the store knows is read again.
    pmcluster_tests::wait_until(
        Duration::from_secs(10),
        "a write after etcd is back",
        || store.commit(&write("c")).map_err(|e| e.to_string()),
    );
    assert!(load(&store).nodes.contains_key("c"));
    etcd.kill(0).expect("kill etcd");
    expect_unavailable("etcd killed", &write("d"));
    assert!(matches!(store.load(), Err(StoreError::Unavailable(_))));
}

/// Opened and used from async code (a coordinator opens its store at startup on a runtime
/// worker, even a current-thread one), and dropped there, without a panic or a deadlock.
#[tokio::test(flavor = "current_thread")]
async fn usable_and_droppable_in_async_code() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/async", false);
    store
        .commit(&Batch {
            generation: Some(4),
            ..Batch::default()
        })
        .expect("commit");
    assert_eq!(load(&store).generation, 4);
    drop(store);
}

#[test]
fn bad_settings_name_the_field() {
    let err = |cfg: EtcdConfig| match EtcdStore::connect(cfg) {
        Err(e) => e.to_string(),
        Ok(_) => "connected".to_string(),
    };
    let ok = vec!["http://127.0.0.1:2379".to_string()];
    assert!(err(EtcdConfig::new(ok.clone(), "/")).contains("prefix"));
    assert!(err(EtcdConfig::new(vec![], "/p")).contains("endpoints"));
    assert!(err(EtcdConfig::new(vec!["http://bad host:x".into()], "/p")).contains("endpoints"));
    assert!(
        err(EtcdConfig {
            timeout: Duration::ZERO,
            ..EtcdConfig::new(ok, "/p")
        })
        .contains("timeout")
    );
}

/// A value under the prefix that does not parse is an error naming its key.
#[test]
fn a_damaged_value_names_its_key() {
    let Some(etcd) = Etcd::single_or_skip() else {
        return;
    };
    let store = connect(&etcd.endpoints(), "/damaged", false);
    let mut client = store.client();
    on(&store, async move {
        client.put("/damaged/apps/web", "{not json", None).await
    });
    match store.load() {
        Err(e @ StoreError::CorruptKey { .. }) => {
            assert!(e.to_string().contains("/damaged/apps/web"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}
