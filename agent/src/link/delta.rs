//! Desired sets sent as deltas: the coordinator may send a set after the first of a session as
//! the changes to the set it sent before. [`Received`] keeps the session's previous set and
//! rebuilds the whole set each message stands for, which is all the rest of the agent sees.
//!
//! Pure: no I/O, no clocks; ordered maps only.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;

use pmcluster_proto::v1 as pb;

/// A delta this session cannot read. The session must end: the next one starts with a whole set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeltaError {
    #[error(
        "desired set generation {generation} is a delta, but it is the first set of this session \
         (a delta before any whole set)"
    )]
    NoBase { generation: u64 },
    #[error(
        "desired set generation {generation} is a delta on generation {got}, but this session's \
         previous set was generation {expected}"
    )]
    WrongBase {
        generation: u64,
        expected: u64,
        got: u64,
    },
}

/// The last set one session received, whole. A new session starts with an empty one.
///
/// It is what was received, not what was applied: the coordinator bases a delta on the set it
/// sent before, even when the agent refused that set (stale, or of another cluster).
#[derive(Debug, Default)]
pub(crate) struct Received {
    last: Option<Held>,
}

#[derive(Debug)]
struct Held {
    generation: u64,
    /// By instance id, so the rebuilt set comes out in id order whatever order the parts came in.
    assignments: BTreeMap<String, pb::Assignment>,
}

impl Received {
    /// The whole set `set` stands for: `set` itself when it is whole, else the previous set with
    /// the delta applied. The result is always whole (`delta` false, `removed` empty) with its
    /// assignments in instance-id order. On an error nothing held changes.
    pub(crate) fn rebuild(&mut self, set: pb::DesiredSet) -> Result<pb::DesiredSet, DeltaError> {
        let pb::DesiredSet {
            generation,
            assignments,
            cluster_id,
            adopt,
            delta,
            base_generation,
            removed,
        } = set;
        let held = if delta {
            let Some(held) = self.last.as_mut() else {
                return Err(DeltaError::NoBase { generation });
            };
            if held.generation != base_generation {
                return Err(DeltaError::WrongBase {
                    generation,
                    expected: held.generation,
                    got: base_generation,
                });
            }
            // An id we do not hold is ignored rather than refused: taking out what is already
            // absent yields the set the coordinator meant, so ending the session would only
            // cost a reconnect and a whole set for nothing.
            for id in &removed {
                held.assignments.remove(id);
            }
            // Removed first, then added: an id in both stays, as keeping an instance is the
            // step that cannot lose one (the coordinator never sends an id in both).
            held.assignments.extend(by_id(assignments));
            held.generation = generation;
            held
        } else {
            self.last.insert(Held {
                generation,
                assignments: by_id(assignments),
            })
        };
        Ok(pb::DesiredSet {
            generation,
            assignments: held.assignments.values().cloned().collect(),
            cluster_id,
            adopt,
            delta: false,
            base_generation: 0,
            removed: Vec::new(),
        })
    }
}

/// Keyed by instance id. When an id comes twice the first one wins, as `desired::plan` decides
/// for a whole set, so rebuilding a whole set never changes what it means.
fn by_id(assignments: Vec<pb::Assignment>) -> BTreeMap<String, pb::Assignment> {
    let mut out = BTreeMap::new();
    for a in assignments {
        out.entry(a.instance_id.clone()).or_insert(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assignment told apart from another of the same id by its restart epoch.
    fn a(id: &str, epoch: u64) -> pb::Assignment {
        pb::Assignment {
            instance_id: id.to_string(),
            run: true,
            restart_epoch: epoch,
            ..Default::default()
        }
    }

    fn whole(generation: u64, assignments: Vec<pb::Assignment>) -> pb::DesiredSet {
        pb::DesiredSet {
            generation,
            assignments,
            cluster_id: "c1".to_string(),
            ..Default::default()
        }
    }

    fn delta(
        generation: u64,
        base: u64,
        assignments: Vec<pb::Assignment>,
        removed: &[&str],
    ) -> pb::DesiredSet {
        pb::DesiredSet {
            generation,
            assignments,
            cluster_id: "c1".to_string(),
            delta: true,
            base_generation: base,
            removed: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Each case feeds its sets to one fresh `Received` in order; every result must match.
    #[test]
    fn rebuilds_whole_sets() {
        type Want = Result<pb::DesiredSet, DeltaError>;
        let cases: Vec<(&str, Vec<(pb::DesiredSet, Want)>)> = vec![
            (
                "a whole set is itself, sorted by id",
                vec![(
                    whole(3, vec![a("b", 0), a("a", 0)]),
                    Ok(whole(3, vec![a("a", 0), a("b", 0)])),
                )],
            ),
            (
                "a whole set keeps the first of a repeated id",
                vec![(
                    whole(3, vec![a("a", 1), a("a", 2)]),
                    Ok(whole(3, vec![a("a", 1)])),
                )],
            ),
            (
                "a delta adds, replaces and removes",
                vec![
                    (
                        whole(1, vec![a("a", 0), a("b", 0), a("c", 0)]),
                        Ok(whole(1, vec![a("a", 0), a("b", 0), a("c", 0)])),
                    ),
                    (
                        delta(2, 1, vec![a("d", 0), a("b", 1)], &["c"]),
                        Ok(whole(2, vec![a("a", 0), a("b", 1), a("d", 0)])),
                    ),
                    (
                        delta(3, 2, vec![], &["a"]),
                        Ok(whole(3, vec![a("b", 1), a("d", 0)])),
                    ),
                ],
            ),
            (
                "an empty delta moves only the generation",
                vec![
                    (whole(1, vec![a("a", 0)]), Ok(whole(1, vec![a("a", 0)]))),
                    (delta(2, 1, vec![], &[]), Ok(whole(2, vec![a("a", 0)]))),
                ],
            ),
            (
                "a delta on another generation is refused",
                vec![
                    (whole(4, vec![a("a", 0)]), Ok(whole(4, vec![a("a", 0)]))),
                    (
                        delta(6, 5, vec![a("b", 0)], &[]),
                        Err(DeltaError::WrongBase {
                            generation: 6,
                            expected: 4,
                            got: 5,
                        }),
                    ),
                    // The refusal changed nothing: a delta on the held set still reads.
                    (
                        delta(5, 4, vec![a("c", 0)], &[]),
                        Ok(whole(5, vec![a("a", 0), a("c", 0)])),
                    ),
                ],
            ),
            (
                "a delta first is refused",
                vec![(
                    delta(2, 0, vec![a("a", 0)], &[]),
                    Err(DeltaError::NoBase { generation: 2 }),
                )],
            ),
            (
                "a delta first is refused even on base 0 with nothing in it",
                vec![(
                    delta(1, 0, vec![], &[]),
                    Err(DeltaError::NoBase { generation: 1 }),
                )],
            ),
            (
                "removing an id not held is ignored",
                vec![
                    (whole(1, vec![a("a", 0)]), Ok(whole(1, vec![a("a", 0)]))),
                    (
                        delta(2, 1, vec![a("b", 0)], &["x"]),
                        Ok(whole(2, vec![a("a", 0), a("b", 0)])),
                    ),
                ],
            ),
            (
                "an id both added and removed stays, as added",
                vec![
                    (whole(1, vec![a("a", 0)]), Ok(whole(1, vec![a("a", 0)]))),
                    (
                        delta(2, 1, vec![a("a", 1)], &["a"]),
                        Ok(whole(2, vec![a("a", 1)])),
                    ),
                ],
            ),
            (
                "a whole set after deltas replaces everything",
                vec![
                    (whole(1, vec![a("a", 0)]), Ok(whole(1, vec![a("a", 0)]))),
                    (
                        delta(2, 1, vec![a("b", 0)], &[]),
                        Ok(whole(2, vec![a("a", 0), a("b", 0)])),
                    ),
                    (whole(3, vec![a("c", 0)]), Ok(whole(3, vec![a("c", 0)]))),
                    (
                        delta(4, 3, vec![a("d", 0)], &[]),
                        Ok(whole(4, vec![a("c", 0), a("d", 0)])),
                    ),
                    // The base is the whole set's generation, not the last delta's.
                    (
                        delta(5, 2, vec![], &[]),
                        Err(DeltaError::WrongBase {
                            generation: 5,
                            expected: 4,
                            got: 2,
                        }),
                    ),
                ],
            ),
            (
                "cluster id and adopt are taken from each message",
                vec![
                    (whole(1, vec![a("a", 0)]), Ok(whole(1, vec![a("a", 0)]))),
                    (
                        pb::DesiredSet {
                            cluster_id: "c2".to_string(),
                            adopt: true,
                            ..delta(2, 1, vec![], &[])
                        },
                        Ok(pb::DesiredSet {
                            cluster_id: "c2".to_string(),
                            adopt: true,
                            ..whole(2, vec![a("a", 0)])
                        }),
                    ),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut received = Received::default();
            for (i, (set, want)) in steps.into_iter().enumerate() {
                assert_eq!(received.rebuild(set), want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn errors_name_the_mismatch() {
        let wrong = DeltaError::WrongBase {
            generation: 6,
            expected: 4,
            got: 5,
        }
        .to_string();
        assert!(
            wrong.contains("delta on generation 5") && wrong.contains("was generation 4"),
            "{wrong}"
        );
        let first = DeltaError::NoBase { generation: 2 }.to_string();
        assert!(first.contains("before any whole set"), "{first}");
    }
}
