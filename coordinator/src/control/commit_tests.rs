//! The group commit: reads never wait for the store, writes queued behind a commit share the
//! next one, and a refused commit refuses what was planned on it.

use std::sync::Condvar;
use std::thread;
use std::time::{Duration, Instant};

use pmcluster_spec::{AppSpec, PortSpec};

use super::*;
use crate::model::{Registration, TokenRecord};
use crate::store::MemoryStore;

/// A store that holds commits at a gate while it is shut, counts them, and refuses them while
/// `refuse` is set.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    gate: Mutex<Gate>,
    moved: Condvar,
}

#[derive(Default)]
struct Gate {
    shut: bool,
    refuse: bool,
    /// Panic instead of committing.
    panic: bool,
    /// Commits waiting at the gate.
    waiting: usize,
    /// Commits that went through, refused or not.
    commits: usize,
}

impl GatedStore {
    fn set(&self, f: impl FnOnce(&mut Gate)) {
        let mut g = self.gate.lock().unwrap();
        f(&mut g);
        self.moved.notify_all();
    }

    fn get<T>(&self, f: impl FnOnce(&Gate) -> T) -> T {
        f(&self.gate.lock().unwrap())
    }
}

impl Store for GatedStore {
    fn load(&self) -> std::result::Result<Persisted, StoreError> {
        self.inner.load()
    }

    fn commit(&self, batch: &Batch) -> std::result::Result<(), StoreError> {
        let mut g = self.gate.lock().unwrap();
        g.waiting += 1;
        self.moved.notify_all();
        while g.shut {
            g = self.moved.wait(g).unwrap();
        }
        g.waiting -= 1;
        g.commits += 1;
        if g.refuse {
            return Err(StoreError::Unavailable("the test store refuses".into()));
        }
        if g.panic {
            g.panic = false;
            drop(g);
            panic!("the test store panics");
        }
        drop(g);
        self.inner.commit(batch)
    }
}

/// Polls `what` every millisecond for up to 10 s.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn app(name: &str, instances: u32) -> AppSpec {
    let mut spec = AppSpec::new(name, "testapp", &[]);
    spec.instances = instances;
    spec.port = PortSpec::Range(4100, 4199);
    spec
}

fn cluster() -> (Arc<GatedStore>, Arc<Control>) {
    let store = Arc::new(GatedStore::default());
    let c = Control::open(store.clone(), ControlConfig::default()).unwrap();
    let c = Arc::new(c);
    let reg = Registration {
        node_name: "a".into(),
        cores: 4,
        memory_bytes: 1 << 32,
        ..Registration::default()
    };
    // The session must outlive the test: leak its receivers with the control.
    std::mem::forget(c.attach(&reg, None).unwrap());
    c.apply(app("web", 1)).unwrap();
    (store, c)
}

fn queued(c: &Control) -> usize {
    c.lock().queue.len()
}

/// Shuts the store's gate and starts a write (`scale web 2`) that waits there, committing.
fn held_at_the_gate(store: &GatedStore, c: &Arc<Control>) -> thread::JoinHandle<Result<Scaled>> {
    store.set(|g| g.shut = true);
    let first = {
        let c = c.clone();
        thread::spawn(move || c.scale_app(ScaleCmd::new("web", 2).unwrap()))
    };
    wait_for("the first write at the store", || {
        store.get(|g| g.waiting == 1)
    });
    first
}

/// [`held_at_the_gate`], and a second write (`apply api` with 2 instances) queued behind it.
fn two_queued(
    store: &GatedStore,
    c: &Arc<Control>,
) -> (
    thread::JoinHandle<Result<Scaled>>,
    thread::JoinHandle<Result<()>>,
) {
    let first = held_at_the_gate(store, c);
    let second = {
        let c = c.clone();
        thread::spawn(move || c.apply(app("api", 2)).map(|_| ()))
    };
    wait_for("the second write queued", || queued(c) == 2);
    (first, second)
}

#[test]
fn reads_pass_a_commit_and_writes_queued_behind_it_share_the_next() {
    let (store, c) = cluster();
    let first = held_at_the_gate(&store, &c);
    // The lock is free while the store works, and reads show what the store has.
    assert_eq!(c.list_instances("web").unwrap().len(), 1);
    let second = {
        let c = c.clone();
        thread::spawn(move || c.apply(app("api", 2)).map(|_| ()))
    };
    wait_for("the second write queued", || queued(&c) == 2);
    // The third plans on the two before it: web has 2 there, so 3 is one more.
    let third = {
        let c = c.clone();
        thread::spawn(move || c.scale_app(ScaleCmd::new("web", 3).unwrap()))
    };
    wait_for("the third write queued", || queued(&c) == 3);
    assert_eq!(c.list_instances("web").unwrap().len(), 1);
    assert!(c.list_instances("api").is_err(), "api is not committed yet");
    let before = store.get(|g| g.commits);
    store.set(|g| g.shut = false);
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    third.join().unwrap().unwrap();
    // The first write's commit, then one for the two queued behind it (the confirming
    // reconciles that follow may commit nothing: they find the plan done).
    assert_eq!(store.get(|g| g.commits) - before, 2);
    assert_eq!(c.list_instances("web").unwrap().len(), 3);
    assert_eq!(c.list_instances("api").unwrap().len(), 2);
    let inner = c.lock();
    assert!(inner.queue.is_empty() && !inner.committing);
    assert_eq!(inner.ahead, inner.state);
    assert_eq!(store.load().unwrap(), inner.state);
}

#[test]
fn a_refused_commit_refuses_the_writes_queued_behind_it_and_rewinds() {
    let (store, c) = cluster();
    let committed = c.persisted();
    let (first, second) = two_queued(&store, &c);
    store.set(|g| {
        g.refuse = true;
        g.shut = false;
    });
    for (what, outcome) in [
        ("first", first.join().unwrap().map(|_| ())),
        ("second", second.join().unwrap()),
    ] {
        match outcome {
            Err(ControlError::Store(StoreError::Unavailable(m))) => {
                assert!(m.contains("refuses"), "{what}: {m}")
            }
            other => panic!("{what}: want the store's refusal, got {other:?}"),
        }
    }
    {
        let inner = c.lock();
        assert_eq!(inner.state, committed, "nothing refused is in memory");
        assert_eq!(inner.ahead, inner.state, "the plan base is rewound");
        assert!(inner.queue.is_empty() && inner.outcomes.is_empty());
    }
    store.set(|g| g.refuse = false);
    c.scale_app(ScaleCmd::new("web", 2).unwrap()).unwrap();
    assert_eq!(c.list_instances("web").unwrap().len(), 2);
    assert_eq!(store.load().unwrap(), c.persisted());
}

/// A write that finds nothing to do on the queued state (the app already as asked there, the
/// instance already stopped there) answers with the writes it found queued: never "done" for a
/// state the store then refuses.
#[test]
fn a_no_op_write_behind_a_refused_one_is_refused_too() {
    let (store, c) = cluster();
    let committed = c.persisted();
    let (first, second) = two_queued(&store, &c);
    let same_again = {
        let c = c.clone();
        thread::spawn(move || c.apply(app("api", 2)).map(|(_, _, changed, _)| changed))
    };
    wait_for("the unchanged apply queued", || queued(&c) == 3);
    let stop = |c: &Arc<Control>| {
        let c = c.clone();
        thread::spawn(move || c.act("web", None, Action::Stop))
    };
    let stop_first = stop(&c);
    wait_for("the stop queued", || queued(&c) == 4);
    let stop_again = stop(&c);
    wait_for("the second stop queued", || queued(&c) == 5);
    store.set(|g| {
        g.refuse = true;
        g.shut = false;
    });
    assert!(first.join().unwrap().is_err());
    assert!(second.join().unwrap().is_err());
    match same_again.join().unwrap() {
        Err(ControlError::Store(StoreError::Unavailable(_))) => {}
        other => panic!("the unchanged apply behind a refused one: {other:?}"),
    }
    assert!(stop_first.join().unwrap().is_err());
    match stop_again.join().unwrap() {
        Err(ControlError::Store(StoreError::Unavailable(_))) => {}
        other => panic!("a stop of what a queued stop stops: {other:?}"),
    }
    let inner = c.lock();
    assert_eq!(inner.state, committed, "nothing refused is in memory");
    assert!(inner.queue.is_empty() && inner.outcomes.is_empty());
}

/// With nothing queued, a no-op write answers at once and commits nothing.
#[test]
fn a_no_op_write_alone_commits_nothing() {
    let (store, c) = cluster();
    let before = store.get(|g| g.commits);
    let (_, _, changed, _) = c.apply(app("web", 1)).unwrap();
    assert!(!changed);
    c.act("web", None, Action::Start).unwrap();
    assert_eq!(store.get(|g| g.commits), before);
}

#[test]
fn merged_batches_mean_what_they_meant_one_after_another() {
    let (_, c) = cluster();
    let base = c.persisted();
    let token = |id: &str| TokenRecord {
        id: id.into(),
        hash: format!("hash of {id}"),
        role: crate::core::access::Role::Read,
        apps: None,
        description: String::new(),
        created_ms: 0,
        created_by: String::new(),
    };
    let with = |puts: &[&str], dels: &[&str], generation: Option<u64>| Batch {
        put_tokens: puts.iter().map(|t| token(t)).collect(),
        del_tokens: dels.iter().map(|t| t.to_string()).collect(),
        generation,
        ..Batch::default()
    };
    let cases = [
        // put then delete; delete then put; put, put; a delete of nothing
        vec![with(&["t1"], &[], None), with(&[], &["t1"], Some(7))],
        vec![
            with(&["t1"], &[], None),
            with(&[], &["t1"], None),
            with(&["t1"], &[], None),
        ],
        vec![
            with(&["t1", "t2"], &["t3"], Some(3)),
            with(&["t2"], &[], Some(2)),
        ],
        vec![with(&[], &["nope"], None)],
    ];
    for batches in cases {
        let mut one_by_one = base.clone();
        for b in &batches {
            one_by_one.apply(b);
        }
        let refs: Vec<&Batch> = batches.iter().collect();
        let merged = Batch::merged(&refs);
        let mut at_once = base.clone();
        at_once.apply(&merged);
        assert_eq!(at_once, one_by_one, "{batches:?}");
        // No key both put and deleted: a store may apply them in either order.
        for t in &merged.put_tokens {
            assert!(!merged.del_tokens.contains(&t.id), "{merged:?}");
        }
    }
}

#[test]
fn a_store_that_panics_refuses_that_commit_and_the_next_write_goes_through() {
    let (store, c) = cluster();
    store.set(|g| g.panic = true);
    match c.scale_app(ScaleCmd::new("web", 2).unwrap()) {
        Err(ControlError::Store(StoreError::Io(e))) => {
            assert!(e.to_string().contains("retry the change"), "{e}")
        }
        other => panic!("want the commit refused, got {other:?}"),
    }
    assert_eq!(c.list_instances("web").unwrap().len(), 1);
    c.scale_app(ScaleCmd::new("web", 2).unwrap()).unwrap();
    assert_eq!(c.list_instances("web").unwrap().len(), 2);
    assert_eq!(store.load().unwrap(), c.persisted());
}

/// Creates queued behind a held commit weigh themselves against what the queue adds, not only
/// against what the node's set holds: the one that would take the set over the budget is refused
/// while the others wait, and those land.
#[test]
fn queued_creates_count_against_the_set_budget() {
    let (store, c) = cluster();
    store.set(|g| g.shut = true);
    let first = {
        let c = c.clone();
        thread::spawn(move || c.apply(app("first", 1)).map(|_| ()))
    };
    wait_for("the first write at the store", || {
        store.get(|g| g.waiting == 1)
    });
    let big = |n: usize| {
        let mut spec = app(&format!("big-{n:03}"), 1);
        spec.port = PortSpec::None;
        spec.env.insert("BIG".into(), "x".repeat(700 << 10));
        spec
    };
    let weight = |spec: &AppSpec| crate::limits::assignment_bytes(crate::limits::spec_bytes(spec));
    let each = weight(&big(0));
    let room =
        crate::limits::DESIRED_SET_BUDGET - weight(&app("web", 1)) - weight(&app("first", 1));
    // Far from a boundary, so the small apps' exact bytes do not decide the count.
    assert!((4096..each - 4096).contains(&(room % each)));
    let fit = room / each;
    let mut waiting = Vec::new();
    let refused = loop {
        let n = waiting.len();
        let c2 = c.clone();
        let spec = big(n);
        let create = thread::spawn(move || c2.apply(spec).map(|_| ()));
        wait_for("the create queued or answered", || {
            queued(&c) == n + 2 || create.is_finished()
        });
        if create.is_finished() {
            break (n, create.join().unwrap());
        }
        waiting.push(create);
        assert!(n <= fit, "{n} creates queued, only {fit} fit");
    };
    assert_eq!(refused.0, fit);
    let err = refused.1.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("over the 12 MiB limit"), "{err}");
    store.set(|g| g.shut = false);
    first.join().unwrap().unwrap();
    for w in waiting {
        w.join().unwrap().unwrap();
    }
    assert!(c.get_app(&format!("big-{fit:03}")).is_err());
    assert!(c.get_app(&format!("big-{:03}", fit - 1)).is_ok());
}
