//! Events: what happened in the cluster, for watchers (`events`), the recent history and an
//! app's autoscale decisions; never a log.

/// What an event is about. The wire carries [`EventKind::as_str`], the strings `events --kind`
/// filters on and scripts match, so they never change; a new kind is a new variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    AppApplied,
    AppDeleted,
    AppScaled,
    AppStart,
    AppStop,
    AppRestart,
    RolloutStarted,
    RolloutPause,
    RolloutResume,
    RolloutPromote,
    /// A running rollout changed state or progress (one step of the tick).
    RolloutStep,
    NodeUp,
    NodeDown,
    NodeRenamed,
    NodeQuarantined,
    NodeAdopted,
    NodeForgotten,
    NodeDrain,
    InstancePlaced,
    InstanceState,
    /// An instance moved, or gave way, for a reason the event says: it could not start on its
    /// node, its node was lost (and, once it returns, its old copy there stops), a drain's
    /// handoff or a scale-down's rebalance.
    InstanceMoved,
    /// The autoscaler changed an app's count.
    Autoscale,
    AutoscalePolicy,
    /// An instance was taken out of rotation (`disable`) or put back (`enable`).
    InstanceDisabled,
    InstanceEnabled,
    /// An instance's memory grew steadily over the leak window (see `core::leak`).
    InstanceLeakSuspected,
}

impl EventKind {
    pub const ALL: [EventKind; 26] = [
        EventKind::AppApplied,
        EventKind::AppDeleted,
        EventKind::AppScaled,
        EventKind::AppStart,
        EventKind::AppStop,
        EventKind::AppRestart,
        EventKind::RolloutStarted,
        EventKind::RolloutPause,
        EventKind::RolloutResume,
        EventKind::RolloutPromote,
        EventKind::RolloutStep,
        EventKind::NodeUp,
        EventKind::NodeDown,
        EventKind::NodeRenamed,
        EventKind::NodeQuarantined,
        EventKind::NodeAdopted,
        EventKind::NodeForgotten,
        EventKind::NodeDrain,
        EventKind::InstancePlaced,
        EventKind::InstanceState,
        EventKind::InstanceMoved,
        EventKind::Autoscale,
        EventKind::AutoscalePolicy,
        EventKind::InstanceDisabled,
        EventKind::InstanceEnabled,
        EventKind::InstanceLeakSuspected,
    ];

    /// The kind as the wire and users spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AppApplied => "app.applied",
            EventKind::AppDeleted => "app.deleted",
            EventKind::AppScaled => "app.scaled",
            EventKind::AppStart => "app.start",
            EventKind::AppStop => "app.stop",
            EventKind::AppRestart => "app.restart",
            EventKind::RolloutStarted => "rollout.started",
            EventKind::RolloutPause => "rollout.pause",
            EventKind::RolloutResume => "rollout.resume",
            EventKind::RolloutPromote => "rollout.promote",
            EventKind::RolloutStep => "rollout",
            EventKind::NodeUp => "node.up",
            EventKind::NodeDown => "node.down",
            EventKind::NodeRenamed => "node.renamed",
            EventKind::NodeQuarantined => "node.quarantined",
            EventKind::NodeAdopted => "node.adopted",
            EventKind::NodeForgotten => "node.forgotten",
            EventKind::NodeDrain => "node.drain",
            EventKind::InstancePlaced => "instance.placed",
            EventKind::InstanceState => "instance.state",
            EventKind::InstanceMoved => "instance.moved",
            EventKind::Autoscale => "autoscale",
            EventKind::AutoscalePolicy => "autoscale.policy",
            EventKind::InstanceDisabled => "instance.disabled",
            EventKind::InstanceEnabled => "instance.enabled",
            EventKind::InstanceLeakSuspected => "instance.leak_suspected",
        }
    }

    /// The kind a wire string names, if any.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: i64,
    pub kind: EventKind,
    /// Empty: not about one app.
    pub app: String,
    /// Empty: not about one node.
    pub node: String,
    pub index: Option<u32>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    /// The wire strings are an interface: a table, so that a renamed one fails here.
    #[test]
    fn kinds_keep_their_wire_strings() {
        let table = [
            (EventKind::AppApplied, "app.applied"),
            (EventKind::AppDeleted, "app.deleted"),
            (EventKind::AppScaled, "app.scaled"),
            (EventKind::AppStart, "app.start"),
            (EventKind::AppStop, "app.stop"),
            (EventKind::AppRestart, "app.restart"),
            (EventKind::RolloutStarted, "rollout.started"),
            (EventKind::RolloutPause, "rollout.pause"),
            (EventKind::RolloutResume, "rollout.resume"),
            (EventKind::RolloutPromote, "rollout.promote"),
            (EventKind::RolloutStep, "rollout"),
            (EventKind::NodeUp, "node.up"),
            (EventKind::NodeDown, "node.down"),
            (EventKind::NodeRenamed, "node.renamed"),
            (EventKind::NodeQuarantined, "node.quarantined"),
            (EventKind::NodeAdopted, "node.adopted"),
            (EventKind::NodeForgotten, "node.forgotten"),
            (EventKind::NodeDrain, "node.drain"),
            (EventKind::InstancePlaced, "instance.placed"),
            (EventKind::InstanceState, "instance.state"),
            (EventKind::InstanceMoved, "instance.moved"),
            (EventKind::Autoscale, "autoscale"),
            (EventKind::AutoscalePolicy, "autoscale.policy"),
            (EventKind::InstanceDisabled, "instance.disabled"),
            (EventKind::InstanceEnabled, "instance.enabled"),
            (EventKind::InstanceLeakSuspected, "instance.leak_suspected"),
        ];
        assert_eq!(table.len(), EventKind::ALL.len());
        for (kind, text) in table {
            assert_eq!(kind.as_str(), text);
            assert_eq!(EventKind::parse(text), Some(kind), "{text}");
        }
        assert_eq!(EventKind::parse("app"), None);
    }
}
