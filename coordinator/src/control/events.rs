//! The event feed: what happened, for watchers (`events`) and the recent history; never a log.

use tokio::sync::broadcast;

use super::Control;
use crate::model::event::{Event, EventKind};

/// Most recent events kept for `events` and `autoscale` history.
const RECENT_EVENTS: usize = 1000;

impl Control {
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
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
        let event = Event {
            at_ms: self.now(),
            kind,
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
    pub fn recent_events(&self, app: &str, kind: Option<EventKind>, n: usize) -> Vec<Event> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Event> = recent
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
