//! An instance's status as users see it, derived from its record, what its agent last reported
//! and whether its node is up. Pure.

use crate::model::InstanceRecord;

/// The states of `list` (plain data, in `model`; this module decides which one applies).
pub use crate::model::InstanceState as Status;

/// Why a status says nothing more of its own: the shell words the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Not placed: the reconciler's pending reason for the app goes here.
    Pending,
    /// Placed on a node that is down: the agent's last word is stale.
    NodeDown(String),
    /// The agent's own message stands.
    Reported,
    /// Restarted, and its agent has not tried to start it since: the agent's last message is
    /// about what ran (or failed) before.
    Restarting,
}

/// The status of `rec`, given the state its agent last reported (`None`: none yet) and whether
/// its node is up.
pub fn derive(
    rec: &InstanceRecord,
    reported: Option<(Status, u64)>,
    node_up: bool,
) -> (Status, Note) {
    use Status as S;
    let (status, note) = match (&rec.node, reported) {
        (None, _) if rec.stopped => (S::Stopped, Note::Pending),
        (None, _) => (S::Pending, Note::Pending),
        // What its agent confirmed before it went still holds: a stopped one is not run again
        // when its node comes back, nor a finished one (exited, autorestart off). A stop the
        // agent never confirmed may not have happened (a partition): unknown, as the rest.
        (Some(n), _) if !node_up => {
            let known = match reported {
                Some((S::Stopped, _)) if rec.stopped => S::Stopped,
                Some((S::Exited, epoch)) if epoch >= rec.restart_epoch && !rec.stopped => S::Exited,
                _ => S::Unknown,
            };
            (known, Note::NodeDown(n.clone()))
        }
        // Restarted, and the agent has not tried to start it since: what it said last is about
        // the process (or the failure) before the restart.
        // The old process stopping is shown as such.
        (Some(_), Some((s, epoch)))
            if epoch < rec.restart_epoch && !rec.stopped && s != S::Stopping =>
        {
            (S::Launching, Note::Restarting)
        }
        (Some(_), Some((s, _))) => {
            let s = match (rec.stopped, s) {
                (true, S::Stopped) => S::Stopped,
                (true, _) => S::Stopping,
                // Asked to run again but the agent has not acted on it yet.
                (false, S::Stopped) => S::Launching,
                (false, s) => s,
            };
            (s, Note::Reported)
        }
        (Some(_), None) if rec.stopped => (S::Stopped, Note::Reported),
        (Some(_), None) => (S::Launching, Note::Reported),
    };
    // A draining instance still runs, but is no longer an endpoint.
    if rec.draining_since.is_some() && status == S::Online {
        return (S::Draining, note);
    }
    (status, note)
}

/// How many instances `records` (one app's) are as users count them: one per index. A drain's
/// replacement, or a rollout's new copy beside the old one draining, is a second record of the
/// same index; a trial's delete of 6 instances, one with a pending replacement, said "7 removed".
pub fn instance_count(records: &[&InstanceRecord]) -> u32 {
    let indices: std::collections::BTreeSet<u32> = records.iter().map(|r| r.index).collect();
    u32::try_from(indices.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// (index, replaces another record, draining).
    type Rec = (u32, bool, bool);

    #[test]
    fn instances_count_once_per_index() {
        let cases: [(&[Rec], u32); 5] = [
            (&[], 0),
            (&[(0, false, false), (1, false, false)], 2),
            // Six, one with a drain's replacement beside it (the trial's delete).
            (
                &[
                    (0, false, false),
                    (1, false, false),
                    (2, false, false),
                    (3, false, false),
                    (4, false, false),
                    (5, false, false),
                    (5, true, false),
                ],
                6,
            ),
            // A rollout's old copy draining beside its new one.
            (&[(0, false, true), (0, false, false), (1, false, false)], 2),
            // One scaled away and draining is still one of the app's until it ends.
            (&[(0, false, false), (1, false, true)], 2),
        ];
        for (records, want) in cases {
            let recs: Vec<InstanceRecord> = records
                .iter()
                .enumerate()
                .map(|(n, &(index, replacement, draining))| InstanceRecord {
                    id: Uuid::from_u128(n as u128 + 1),
                    app: "web".into(),
                    index,
                    node: Some("a".into()),
                    port: None,
                    app_version: 1,
                    restart_epoch: 0,
                    stopped: false,
                    replaces: replacement.then(Uuid::nil),
                    draining_since: draining.then_some(5),
                    created_ms: 0,
                    avoid: Vec::new(),
                    disabled: false,
                })
                .collect();
            let refs: Vec<&InstanceRecord> = recs.iter().collect();
            assert_eq!(instance_count(&refs), want, "{records:?}");
        }
    }

    /// `record` is `placed|pending` plus `stopped` and `draining` flags; the answer is rendered as
    /// `Status/Note`.
    fn check(record: &str, reported: Option<Status>, node_up: bool, want: &str) {
        let rec = InstanceRecord {
            id: Uuid::nil(),
            app: "web".into(),
            index: 0,
            node: record.contains("placed").then(|| "a".to_string()),
            port: None,
            app_version: 1,
            restart_epoch: u64::from(record.contains("restarted")),
            stopped: record.contains("stopped"),
            replaces: None,
            draining_since: record.contains("draining").then_some(5),
            created_ms: 0,
            avoid: Vec::new(),
            disabled: false,
        };
        // The agent's report is of epoch 0, or of 1 once it "acted" on a restart.
        let epoch = u64::from(record.contains("acted"));
        let (status, note) = derive(&rec, reported.map(|s| (s, epoch)), node_up);
        let note = match note {
            Note::Pending => "pending".to_string(),
            Note::NodeDown(n) => format!("down {n}"),
            Note::Reported => "reported".to_string(),
            Note::Restarting => "restarting".to_string(),
        };
        assert_eq!(
            format!("{status:?}/{note}"),
            want,
            "{record} {reported:?} {node_up}"
        );
    }

    #[test]
    fn statuses() {
        use Status as S;
        check("pending", None, false, "Pending/pending");
        check("pending stopped", Some(S::Online), true, "Stopped/pending");
        check("placed", Some(S::Online), false, "Unknown/down a");
        check("placed", Some(S::Restarting), false, "Unknown/down a");
        // Found by a user trial: a stopped instance and a finished job read "unknown" while
        // their node was down, though neither would run when it came back.
        check("placed stopped", Some(S::Stopped), false, "Stopped/down a");
        check("placed stopped", None, false, "Unknown/down a");
        check("placed stopped", Some(S::Online), false, "Unknown/down a");
        check("placed", Some(S::Exited), false, "Exited/down a");
        check("placed restarted", Some(S::Exited), false, "Unknown/down a");
        check("placed", Some(S::Restarting), true, "Restarting/reported");
        check("placed", None, true, "Launching/reported");
        check("placed stopped", None, true, "Stopped/reported");
        check("placed", Some(S::Online), true, "Online/reported");
        check("placed", Some(S::Errored), true, "Errored/reported");
        check("placed stopped", Some(S::Online), true, "Stopping/reported");
        check("placed stopped", Some(S::Stopped), true, "Stopped/reported");
        check("placed", Some(S::Stopped), true, "Launching/reported");
        check(
            "placed draining",
            Some(S::Online),
            true,
            "Draining/reported",
        );
        check("placed draining", Some(S::Exited), true, "Exited/reported");
        check("placed", Some(S::Unspecified), true, "Unspecified/reported");
        // Restarted: the last report is from before, whatever it says, until the agent acts.
        check(
            "placed restarted",
            Some(S::Online),
            true,
            "Launching/restarting",
        );
        check(
            "placed restarted",
            Some(S::Errored),
            true,
            "Launching/restarting",
        );
        check(
            "placed restarted",
            Some(S::Stopping),
            true,
            "Stopping/reported",
        );
        check(
            "placed restarted acted",
            Some(S::Errored),
            true,
            "Errored/reported",
        );
        check(
            "placed restarted acted",
            Some(S::Online),
            true,
            "Online/reported",
        );
        check(
            "placed restarted stopped",
            Some(S::Online),
            true,
            "Stopping/reported",
        );
        check("placed restarted", Some(S::Online), false, "Unknown/down a");
    }
}
