//! Events: what happened, for watchers (`events`) and the recent history; never a log.

use pmcluster_proto::v1 as pb;
use tokio::sync::broadcast;

use super::Control;

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
    /// The autoscaler changed an app's count.
    Autoscale,
    AutoscalePolicy,
}

impl EventKind {
    pub const ALL: [EventKind; 22] = [
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
        EventKind::Autoscale,
        EventKind::AutoscalePolicy,
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
            EventKind::Autoscale => "autoscale",
            EventKind::AutoscalePolicy => "autoscale.policy",
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

/// Most recent events kept for `events` and `autoscale` history.
const RECENT_EVENTS: usize = 1000;

impl Control {
    pub fn subscribe_events(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    pub(super) fn emit(
        &self,
        kind: EventKind,
        app: &str,
        node: &str,
        index: Option<u32>,
        message: String,
    ) {
        let event = pb::Event {
            at_ms: self.now(),
            kind: kind.as_str().to_string(),
            app: app.to_string(),
            node: node.to_string(),
            index,
            message,
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No receivers is fine: events are for watchers, not a log.
        let _ = self.events.send(event);
    }

    /// Up to `n` most recent events of `app` (all apps when empty), oldest first.
    pub fn recent_events(&self, app: &str, kind: Option<&str>, n: usize) -> Vec<pb::Event> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<pb::Event> = recent
            .iter()
            .rev()
            .filter(|e| app.is_empty() || e.app == app)
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }
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
            (EventKind::Autoscale, "autoscale"),
            (EventKind::AutoscalePolicy, "autoscale.policy"),
        ];
        assert_eq!(table.len(), EventKind::ALL.len());
        for (kind, text) in table {
            assert_eq!(kind.as_str(), text);
            assert_eq!(EventKind::parse(text), Some(kind), "{text}");
        }
        assert_eq!(EventKind::parse("app"), None);
    }
}
