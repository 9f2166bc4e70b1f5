//! The agent's handling of a desired set from the wire: the identity verdict, the conversion to
//! its domain form, the plan against a fixed current state, and the local record it keeps of
//! each assignment.

use std::collections::BTreeMap;
use std::sync::Arc;

use pmcluster_agent::desired::{Action, Current, Plan, plan};
use pmcluster_agent::identity::{self, Identity, Verdict};
use pmcluster_agent::model::{Assignment, DesiredSet, InstanceId};
use pmcluster_agent::persist;
use pmcluster_proto::v1 as pb;
use pmcluster_spec::AppSpec;
use prost::Message;

use crate::seeds::{CLUSTER, HIGHEST};

pub fn check(data: &[u8]) {
    let Ok(wire) = pb::DesiredSet::decode(data) else {
        return;
    };
    let me = Identity {
        node_name: "n1".into(),
        cluster_id: CLUSTER.into(),
        generation: HIGHEST,
        renamed_from: String::new(),
        address: String::new(),
    };
    let verdict = identity::verdict(&me, &wire.cluster_id, wire.generation, wire.adopt);
    if verdict == Verdict::Apply {
        assert!(wire.generation >= HIGHEST);
    }
    let sent_with_id = wire
        .assignments
        .iter()
        .filter(|a| !a.instance_id.is_empty())
        .count();
    let set = DesiredSet::from(wire);
    assert_eq!(set.assignments.len(), sent_with_id);
    for a in &set.assignments {
        record(a);
    }
    let current = current();
    check_plan(&current, &set);
    check_plan(&BTreeMap::new(), &set);
}

/// The plan is well formed, and applying it makes the same set plan to nothing.
fn check_plan(current: &BTreeMap<InstanceId, Current>, set: &DesiredSet) {
    let Plan::Apply {
        generation,
        actions,
    } = plan(current, HIGHEST, set)
    else {
        assert!(set.generation < HIGHEST);
        return;
    };
    assert_eq!(generation, set.generation);
    for pair in actions.windows(2) {
        assert!(
            pair[0].instance_id() < pair[1].instance_id(),
            "actions not sorted by distinct ids: {actions:?}"
        );
    }
    let mut after = current.clone();
    for action in actions {
        let stop = matches!(action, Action::Stop(_));
        match action {
            Action::Start(a) | Action::Restart(a) | Action::Stop(a) => {
                assert_eq!(a.run, !stop, "{a:?}");
                after.insert(
                    a.instance_id.clone(),
                    Current {
                        assignment: a,
                        removing: false,
                    },
                );
            }
            Action::Remove(id) => match after.get_mut(&id) {
                Some(cur) => {
                    assert!(!cur.removing, "removes {id} twice");
                    cur.removing = true;
                }
                None => panic!("removes {id}, which the agent does not have"),
            },
        }
    }
    match plan(&after, generation, set) {
        Plan::Apply { actions, .. } => {
            assert!(actions.is_empty(), "the same set again plans {actions:?}")
        }
        stale => panic!("the set just applied is {stale:?}"),
    }
}

/// What the agent writes to disk of an assignment reads back as the same assignment (else a
/// restarted agent restarts the instance for nothing), and the instance's file and cgroup name
/// maps back to its id.
fn record(a: &Assignment) {
    let name = persist::safe_name(a.instance_id.as_str());
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{name:?} is not a plain file name"
    );
    assert_eq!(
        persist::id_of_safe_name(&name),
        a.instance_id.as_str(),
        "the name {name:?} reads back as another id"
    );
    let Some(saved) = persist::Saved::of(a) else {
        assert!(a.spec.is_err());
        return;
    };
    let bytes = persist::encode(&saved);
    let read = persist::decode(&bytes).and_then(|s| s.assignment());
    assert_eq!(
        read.as_ref(),
        Ok(a),
        "the saved assignment reads back otherwise"
    );
}

/// The agent's instances before the set: the ids the seeds use, in each state the plan tells
/// apart (running, stopped, being removed, holding an invalid spec).
fn current() -> BTreeMap<InstanceId, Current> {
    let spec = |script: &str| Ok(Arc::new(AppSpec::new("web", script, &[])));
    let mut out = BTreeMap::new();
    let items = [
        ("i1", spec("sleep"), true, false),
        ("i2", spec("sleep"), false, false),
        ("i3", spec("node"), true, true),
        (
            "i4",
            Err("invalid spec: script: is empty".to_string()),
            true,
            false,
        ),
    ];
    for (index, (id, spec, run, removing)) in items.into_iter().enumerate() {
        let assignment = Assignment {
            instance_id: InstanceId::new(id),
            app: "web".into(),
            index: index as u32,
            app_version: 1,
            spec,
            port: None,
            run,
            restart_epoch: 1,
        };
        out.insert(
            InstanceId::new(id),
            Current {
                assignment,
                removing,
            },
        );
    }
    out
}
