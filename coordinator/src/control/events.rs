//! Events: what happened, for watchers (`events`) and the recent history; never a log.

use pmcluster_proto::v1 as pb;
use tokio::sync::broadcast;

use super::Control;

/// Most recent events kept for `events` and `autoscale` history.
const RECENT_EVENTS: usize = 1000;

impl Control {
    pub fn subscribe_events(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    pub(super) fn emit(
        &self,
        kind: &str,
        app: &str,
        node: &str,
        index: Option<u32>,
        message: String,
    ) {
        let event = pb::Event {
            at_ms: self.now(),
            kind: kind.to_string(),
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
