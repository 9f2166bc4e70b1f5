//! The cases every store must pass, written against [`Backend`] only.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};

use pmcluster_coordinator::core::access::Role;
use pmcluster_coordinator::model::{
    AppRecord, Batch, ForgottenNode, InstanceRecord, NodeRecord, Persisted, TokenRecord,
};
use pmcluster_coordinator::store::Store;
use pmcluster_spec::AppSpec;
use uuid::Uuid;

/// One kind of store under test.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// A handle on this backend's stored state, as a coordinator starting would open it. The
    /// caller drops any earlier handle first (the embedded store is locked while open).
    fn open(&mut self) -> Box<dyn Store>;
}

type Case = fn(&mut dyn Backend);

pub const CASES: &[(&str, Case)] = &[
    ("empty_load", empty_load),
    ("every_kind_of_batch", every_kind_of_batch),
    ("deletes", deletes),
    ("generation_and_cluster_id", generation_and_cluster_id),
    ("many_instances_across_chunks", many_instances_across_chunks),
    ("an_app_with_many_versions", an_app_with_many_versions),
    ("tokens", tokens),
    ("forgotten_nodes", forgotten_nodes),
];

/// Runs every case, each on a fresh backend from `make(case name)`, and fails naming the cases
/// that failed (each failure's own message is printed above).
pub fn run_all(mut make: impl FnMut(&str) -> Box<dyn Backend>) {
    let mut failed = Vec::new();
    let mut backend_name = "";
    for (name, case) in CASES {
        let mut backend = make(name);
        backend_name = backend.name();
        if panic::catch_unwind(AssertUnwindSafe(|| case(backend.as_mut()))).is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "{backend_name}: cases failed: {failed:?}"
    );
}

pub fn inst(app: &str, index: u32, id: u128) -> InstanceRecord {
    InstanceRecord {
        id: Uuid::from_u128(id),
        app: app.into(),
        index,
        node: Some("a".into()),
        port: Some(4000 + u16::try_from(index % 1000).unwrap_or(0)),
        app_version: 1,
        restart_epoch: 0,
        stopped: false,
        replaces: None,
        draining_since: None,
        created_ms: 1_700_000_000_000 + i64::from(index),
        avoid: Vec::new(),
        disabled: false,
    }
}

pub fn app(name: &str, count: u32) -> AppRecord {
    let mut spec = AppSpec::new(name, "node", &["server.js"]);
    spec.instances = count;
    AppRecord::new(spec, 1_700_000_000_000)
}

pub fn node(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        labels: [("zone".to_string(), "z1".to_string())].into(),
        cores: 4,
        memory_bytes: 8 << 30,
        hostname: format!("{name}.example"),
        agent_version: "0.1.0".into(),
        generation: 1,
        drain: false,
        address: "127.0.0.1".into(),
        sent_generation: Some(1),
        restarts_unseen: Default::default(),
    }
}

/// Commits each batch, checking after each that a load gives the state a `Persisted` applying
/// the same batches has; then reopens and checks again. Returns that state.
pub fn check(b: &mut dyn Backend, batches: &[Batch]) -> Persisted {
    let name = b.name();
    let store = b.open();
    let mut want = store.load().unwrap_or_else(|e| panic!("{name}: load: {e}"));
    for (i, batch) in batches.iter().enumerate() {
        store
            .commit(batch)
            .unwrap_or_else(|e| panic!("{name}: commit of batch {i}: {e}"));
        want.apply(batch);
        let got = store.load().unwrap_or_else(|e| panic!("{name}: load: {e}"));
        assert_eq!(got, want, "{name}: after batch {i}");
    }
    drop(store);
    let again = b.open();
    let got = again
        .load()
        .unwrap_or_else(|e| panic!("{name}: load after reopening: {e}"));
    assert_eq!(got, want, "{name}: after reopening");
    want
}

fn empty_load(b: &mut dyn Backend) {
    let store = b.open();
    let got = store.load().unwrap_or_else(|e| panic!("{}: {e}", b.name()));
    assert_eq!(got, Persisted::default(), "{}", b.name());
}

fn every_kind_of_batch(b: &mut dyn Backend) {
    let mut web = app("web", 3);
    web.versions
        .insert(1, AppSpec::new("web", "node", &["old.js"]));
    web.version = 2;
    let first = Batch {
        put_apps: vec![web.clone(), app("api", 2)],
        put_instances: vec![
            inst("web", 0, 1),
            inst("web", 1, 2),
            inst("web", 2, 3),
            inst("api", 0, 10),
            inst("api", 1, 11),
        ],
        put_nodes: vec![node("a"), node("b")],
        generation: Some(1),
        cluster_id: Some("cluster-1".into()),
        ..Batch::default()
    };
    // Updates of each kind: a new version, a drained node, a moved and restarted instance.
    let mut web3 = web.clone();
    web3.versions.insert(2, web.spec.clone());
    web3.spec.args = vec!["new.js".into()];
    web3.version = 3;
    let mut drained = node("a");
    drained.drain = true;
    drained.generation = 2;
    let mut moved = inst("web", 1, 2);
    moved.node = Some("b".into());
    moved.restart_epoch = 4;
    let second = Batch {
        put_apps: vec![web3],
        put_instances: vec![moved],
        put_nodes: vec![drained],
        generation: Some(2),
        ..Batch::default()
    };
    let third = Batch {
        del_apps: vec!["api".into()],
        del_instances: vec![Uuid::from_u128(3), Uuid::from_u128(10), Uuid::from_u128(11)],
        del_nodes: vec!["b".into()],
        generation: Some(3),
        ..Batch::default()
    };
    let got = check(b, &[first, second, third]);
    assert_eq!(got.apps.len(), 1, "{}", b.name());
    assert_eq!(got.instances.len(), 2, "{}", b.name());
    assert_eq!(got.apps["web"].versions.len(), 2, "{}", b.name());
}

fn deletes(b: &mut dyn Backend) {
    let setup = Batch {
        put_apps: vec![app("web", 2), app("api", 1)],
        put_instances: vec![inst("web", 0, 1), inst("web", 1, 2), inst("api", 0, 3)],
        put_nodes: vec![node("a")],
        ..Batch::default()
    };
    // What is not there: deleting it changes nothing.
    let absent = Batch {
        del_apps: vec!["nope".into()],
        del_instances: vec![Uuid::from_u128(99)],
        del_nodes: vec!["nope".into()],
        ..Batch::default()
    };
    // Put and deleted in one batch: deletes apply after puts.
    let both = Batch {
        put_apps: vec![app("tmp", 1)],
        del_apps: vec!["tmp".into()],
        put_instances: vec![inst("web", 5, 7)],
        del_instances: vec![Uuid::from_u128(7)],
        put_nodes: vec![node("t")],
        del_nodes: vec!["t".into()],
        ..Batch::default()
    };
    // An app deleted while its records stay (the write path removes them in a later step).
    let app_only = Batch {
        del_apps: vec!["api".into()],
        ..Batch::default()
    };
    let all = Batch {
        del_apps: vec!["web".into()],
        del_instances: vec![Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)],
        del_nodes: vec!["a".into()],
        ..Batch::default()
    };
    let got = check(b, &[setup, absent, both, app_only, all]);
    assert_eq!(got, Persisted::default(), "{}", b.name());
}

fn generation_and_cluster_id(b: &mut dyn Backend) {
    let mut batches = vec![Batch {
        cluster_id: Some("0196f3a0-cluster".into()),
        generation: Some(1),
        ..Batch::default()
    }];
    for g in [2, 3, 10, u64::MAX / 2] {
        batches.push(Batch {
            generation: Some(g),
            ..Batch::default()
        });
    }
    let got = check(b, &batches);
    assert_eq!(got.generation, u64::MAX / 2, "{}", b.name());
    assert_eq!(got.cluster_id, "0196f3a0-cluster", "{}", b.name());
}

fn many_instances_across_chunks(b: &mut dyn Backend) {
    let scale_up = Batch {
        put_apps: vec![app("web", 1000)],
        put_instances: (0..1000).map(|i| inst("web", i, u128::from(i))).collect(),
        ..Batch::default()
    };
    // Scaled down by ids only.
    let scale_down = Batch {
        put_apps: vec![app("web", 300)],
        del_instances: (300..1000).map(Uuid::from_u128).collect(),
        ..Batch::default()
    };
    // Records that change index (to another chunk) and app, and two records of one index (a
    // handoff).
    let mut moves: Vec<InstanceRecord> = (0..10)
        .map(|i| inst("web", i + 600, u128::from(i)))
        .collect();
    moves.extend((10..20).map(|i| inst("api", i, u128::from(i))));
    let mut twin = inst("web", 299, 5000);
    twin.replaces = Some(Uuid::from_u128(299));
    moves.push(twin);
    let shuffle = Batch {
        put_apps: vec![app("api", 20)],
        put_instances: moves,
        ..Batch::default()
    };
    let mut gone: Vec<Uuid> = (0..300).map(Uuid::from_u128).collect();
    gone.push(Uuid::from_u128(5000));
    let delete = Batch {
        del_apps: vec!["web".into(), "api".into()],
        del_instances: gone,
        ..Batch::default()
    };
    let mut want = check(b, &[scale_up.clone(), scale_down.clone(), shuffle.clone()]);
    assert_eq!(want.instances.len(), 301, "{}", b.name());
    assert_eq!(want.app_instances("api").len(), 10, "{}", b.name());
    want.apply(&delete);
    let got = check(b, &[delete]);
    assert_eq!(got, want, "{}", b.name());
    assert!(
        got.instances.is_empty() && got.apps.is_empty(),
        "{}",
        b.name()
    );
}

/// Ten older specs of ~100 KB each, added one apply at a time as the write path does, with
/// the oldest dropped past ten.
fn an_app_with_many_versions(b: &mut dyn Backend) {
    let mut record = app("web", 2);
    let mut batches = Vec::new();
    for v in 1..=12u64 {
        let mut spec = record.spec.clone();
        let filler: String =
            std::iter::repeat_n(char::from(b'a' + (v % 26) as u8), 100_000).collect();
        spec.env = BTreeMap::from([("FILLER".to_string(), filler)]);
        if v > 1 {
            record.versions.insert(record.version, record.spec.clone());
            while record.versions.len() > 10 {
                record.versions.pop_first();
            }
        }
        record.spec = spec;
        record.version = v;
        batches.push(Batch::app(record.clone()));
    }
    let got = check(b, &batches);
    let versions: Vec<u64> = got.apps["web"].versions.keys().copied().collect();
    assert_eq!(versions, (2..=11).collect::<Vec<u64>>(), "{}", b.name());
}

fn token(id: &str, role: Role, apps: Option<&str>) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        hash: "ab".repeat(32),
        role,
        apps: apps.map(str::to_string),
        description: format!("token {id}"),
        created_ms: 1_700_000_000_000,
        created_by: "user/tester".into(),
    }
}

/// Tokens are made and revoked like any record, and only their hashes are kept.
fn tokens(b: &mut dyn Backend) {
    let read = token("0123456789ab", Role::Read, None);
    let operate = token("ba9876543210", Role::Operate, Some("web*"));
    let made = Batch {
        put_tokens: vec![read.clone(), operate.clone()],
        ..Batch::default()
    };
    let revoked = Batch {
        del_tokens: vec![read.id.clone(), "000000000000".into()],
        ..Batch::default()
    };
    let got = check(b, &[made]);
    assert_eq!(got.tokens.len(), 2, "{}", b.name());
    let got = check(b, &[revoked]);
    assert_eq!(
        got.tokens.values().collect::<Vec<_>>(),
        vec![&operate],
        "{}",
        b.name()
    );
}

/// `nodes forget` deletes a node and keeps its tombstone in one batch; the node's return deletes
/// the tombstone and puts the node again.
fn forgotten_nodes(b: &mut dyn Backend) {
    let gone = ForgottenNode {
        name: "a".into(),
        sent_up_to: 4,
        generation: 6,
        forgotten_ms: 1_000,
    };
    let registered = Batch {
        put_nodes: vec![node("a")],
        ..Batch::default()
    };
    let forgotten = Batch {
        del_nodes: vec!["a".into()],
        put_forgotten: vec![gone.clone()],
        ..Batch::default()
    };
    let got = check(b, &[registered, forgotten]);
    assert!(got.nodes.is_empty(), "{}", b.name());
    assert_eq!(
        got.forgotten.values().collect::<Vec<_>>(),
        vec![&gone],
        "{}",
        b.name()
    );
    let back = Batch {
        put_nodes: vec![NodeRecord {
            generation: 6,
            ..node("a")
        }],
        del_forgotten: vec!["a".into(), "never-forgotten".into()],
        ..Batch::default()
    };
    let got = check(b, &[back]);
    assert!(got.forgotten.is_empty(), "{}", b.name());
    assert_eq!(got.nodes.len(), 1, "{}", b.name());
}
