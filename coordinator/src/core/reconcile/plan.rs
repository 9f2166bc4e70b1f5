//! What the reconciler says must change: its [`Plan`], and what an event says of it.

use std::collections::BTreeMap;

use uuid::Uuid;

/// A new instance record to create; the apply step mints its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub app: String,
    pub index: u32,
    pub node: Option<String>,
    pub port: Option<u16>,
    /// The record this one takes over from once online (migration).
    pub replaces: Option<Uuid>,
    /// Carried over from a replaced record a user had stopped.
    pub stopped: bool,
    /// Nodes where this index could not start (carried by a move).
    pub avoid: Vec<String>,
    /// The version it runs: `None` for the app's. A replacement (a drain's, a lost node's) of
    /// a record that a failed rollout left on the version before keeps that version: the
    /// failed one would take down what serves.
    pub version: Option<u64>,
}

/// A record that moved, or gave way, for a reason a user would not guess from the plan alone:
/// said in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub app: String,
    pub index: u32,
    /// The record left behind.
    pub old: Uuid,
    pub from: String,
    /// Where the index runs now; empty when it waits for a node.
    pub to: String,
    pub why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It could not start on `from` (the old record is in `remove`, the new one in `create`).
    Unstartable,
    /// It had exited with autorestart off on a draining or lost node: moved stopped.
    Finished,
    /// A drain's replacement was not online within the app's healthy deadline: the old record
    /// retires anyway.
    Overdue { replacement: Uuid },
    /// A drain's replacement (`old`, on `from`) whose node is lost goes; the copy it was to
    /// replace serves on at `to`, and the handoff starts again.
    ReplacementLost,
    /// A move off a node that is not draining (a scale-down's rebalance, or a drain undone)
    /// whose new copy (`old`, on `from`) was not online within the app's healthy deadline:
    /// given up, the copy on `to` serves on.
    Abandoned,
    /// Its node `from` was lost: down (since `since`, ms) for the app's `reschedule_after`, at
    /// once when draining, or gone (`since` is `None`: no such node any more, as after `nodes
    /// forget`). The old record is in `remove`, the new one in `create`, pending when `to` is
    /// empty. The time is the link's, so that the shell can say for how long without the core
    /// reading a clock.
    NodeLost { since: Option<i64> },
}

impl Why {
    /// Whether the plan's `create` holds the index's new record: the move's event then says
    /// where it went, and a placement event for it would say it twice.
    pub fn places(&self) -> bool {
        matches!(
            self,
            Why::Unstartable | Why::Finished | Why::NodeLost { .. }
        )
    }
}

/// The placer's reason that `app`'s instances wait as pending in `plan`, without their count.
pub fn pending_reason<'p>(plan: &'p Plan, app: &str) -> Option<&'p str> {
    let text = plan.pending.get(app)?;
    Some(
        text.split_once(PENDING)
            .map_or(text.as_str(), |(_, why)| why),
    )
}

/// Between the count of an app's pending instances and the reason, in [`Plan::pending`].
pub(super) const PENDING: &str = " pending: ";

/// The reconciler's output. Empty when nothing needs to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Create>,
    /// Pending records that now have a node.
    pub assign: Vec<(Uuid, String)>,
    /// Records whose version or port changed: the new version and port.
    pub refresh: Vec<(Uuid, u64, Option<u16>)>,
    pub remove: Vec<Uuid>,
    /// Serving records to mark draining now (removed after the app's shutdown_delay).
    pub drain: Vec<Uuid>,
    /// Records that moved, or gave way, for a reason an event explains (see [`Why`]).
    pub moved: Vec<Moved>,
    /// Why instances of an app could not be placed (not a change; shown to users).
    pub pending: BTreeMap<String, String>,
    /// Instances on a draining node that no other node takes, by app, each with the placer's
    /// reason: they stay and serve, and the drain moves the others (not a change; shown to
    /// users as what the node waits on).
    pub unmovable: BTreeMap<String, BTreeMap<Uuid, String>>,
    /// Earliest time (ms) at which something becomes due: a lost node's instances for
    /// rescheduling, a draining record for removal, a drain handoff's healthy deadline.
    pub followup_at: Option<i64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.assign.is_empty()
            && self.refresh.is_empty()
            && self.remove.is_empty()
            && self.drain.is_empty()
    }

    pub(super) fn follow_up(&mut self, at: i64) {
        self.followup_at = Some(self.followup_at.map_or(at, |f| f.min(at)));
    }
}
