//! Desired sets as the agents get them: specs shared while an app is unchanged and fresh once it
//! changes, and the budget held at the same count whether a write is weighed by its bound or in
//! full.

use pmcluster_spec::{AppSpec, PortSpec};

use super::*;
use crate::limits;
use crate::model::Registration;
use crate::store::MemoryStore;

fn register(name: &str) -> Registration {
    Registration {
        node_name: name.into(),
        cores: 64,
        memory_bytes: 64 << 30,
        ..Registration::default()
    }
}

fn app(name: &str, instances: u32) -> AppSpec {
    let mut spec = AppSpec::new(name, "testapp", &[]);
    spec.instances = instances;
    spec.port = PortSpec::None;
    spec
}

fn specs_of(set: &DesiredSet, c: &Control, app: &str) -> Vec<Arc<AppSpec>> {
    let ids: Vec<String> = c
        .list_instances(app)
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.id)
        .collect();
    set.assignments
        .iter()
        .filter(|a| ids.contains(&a.id.to_string()))
        .map(|a| Arc::clone(&a.spec))
        .collect()
}

#[test]
fn an_unchanged_app_keeps_its_shared_spec_and_a_changed_one_gets_the_new_spec() {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default()).unwrap();
    let mut a = c.attach(&register("a"), None).unwrap();
    c.apply(app("web", 2)).unwrap();
    let first = a.desired.borrow_and_update().clone().unwrap_or_default();
    c.apply(app("api", 1)).unwrap();
    let second = a.desired.borrow_and_update().clone().unwrap_or_default();
    let (before, after) = (specs_of(&first, &c, "web"), specs_of(&second, &c, "web"));
    assert_eq!(after.len(), 2);
    // One spec for both instances, and the same one in the next set: a delta leaves them out.
    assert!(after.iter().all(|s| Arc::ptr_eq(s, &before[0])));
    // A scale changes the spec without a new version: the set must carry the new one.
    c.scale("web", 3).unwrap();
    let third = a.desired.borrow_and_update().clone().unwrap_or_default();
    let now = specs_of(&third, &c, "web");
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|s| s.instances == 3));
    // api did not change: still shared with the set before.
    let api = (specs_of(&second, &c, "api"), specs_of(&third, &c, "api"));
    assert!(Arc::ptr_eq(&api.0[0], &api.1[0]));
    // Deleted and created again under the same name and version: never the old spec.
    c.delete_app("api").unwrap();
    let mut again = app("api", 1);
    again.env.insert("AGAIN".into(), "1".into());
    c.apply(again).unwrap();
    let fourth = a.desired.borrow_and_update().clone().unwrap_or_default();
    let api = specs_of(&fourth, &c, "api");
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].env.get("AGAIN").map(String::as_str), Some("1"));
}

/// Apps of one big instance each, created one by one: each create only adds, so it is weighed by
/// the published set plus itself. The last one that fits is the last the full weighing lets in.
#[test]
fn creates_fill_a_set_up_to_the_budget_and_the_next_is_refused() {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default()).unwrap();
    let mut a = c.attach(&register("a"), None).unwrap();
    let big = |n: usize| {
        let mut spec = app(&format!("big-{n:03}"), 1);
        spec.env.insert("BIG".into(), "x".repeat(700 << 10));
        spec
    };
    let each = limits::assignment_bytes(limits::spec_bytes(&big(0)));
    let fit = limits::DESIRED_SET_BUDGET / each;
    assert!((2..100).contains(&fit), "{fit} apps fit");
    for n in 0..fit {
        c.apply(big(n))
            .unwrap_or_else(|e| panic!("create {n} of {fit}: {e}"));
    }
    let before = a.desired.borrow_and_update().clone().unwrap_or_default();
    assert_eq!(before.assignments.len(), fit);
    let err = c
        .apply(big(fit))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("over the 12 MiB limit"), "{err}");
    assert!(c.get_app(&format!("big-{fit:03}")).is_err());
    assert!(!a.desired.has_changed().unwrap_or(true));
    // Deleting one makes room for exactly one again.
    c.delete_app("big-000").unwrap();
    c.apply(big(fit)).unwrap();
    assert!(c.apply(big(fit + 1)).is_err());
}
