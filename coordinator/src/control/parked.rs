//! Agent reports that found the state lock held for long, kept until it is free (see
//! `Control::report`). An agent reports everything it holds each time, so a node's newest report
//! says all its older ones did: one is kept per node, and a newer one, parked or taken in, makes
//! the parked one moot. What a dropped report alone said (a blip between two reports) is not
//! taken in, as when the agent's own queue drops a report.
//!
//! A parked report is a heartbeat that came in time, even before it is taken in: its arrival is
//! handed to the state at the next lock (`Control::fresh`), so that a write queued behind a long
//! one does not find every node silent for as long.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::Report;

/// A report waiting for the state: the node's session that sent it, and the report.
type Waiting = (u64, Report);

/// Parked reports' arrivals by node: the last one's session and clock milliseconds.
pub(super) type Heard = BTreeMap<String, (u64, i64)>;

#[derive(Default)]
struct Lot {
    /// By node name.
    reports: BTreeMap<String, Waiting>,
    /// Arrivals not yet handed to the state: the last of each node, so that a lock held for a
    /// minute gathers one per node, not one per report.
    heard: Heard,
}

impl Lot {
    fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.heard.is_empty()
    }
}

#[derive(Default)]
pub(super) struct Parked {
    lot: parking_lot::Mutex<Lot>,
    /// Whether anything is parked or heard: read on every report and every lock, so that the
    /// usual case takes no second lock. Only changed under `lot`'s lock, so it is set whenever
    /// `lot` holds anything.
    any: AtomicBool,
}

impl Parked {
    /// Parks `report`, unless a report of a newer session of the node is parked (a session's
    /// ids only grow; an older session's report is refused when taken in anyway).
    pub(super) fn park(&self, node: &str, session_id: u64, report: Report, now_ms: i64) {
        let mut lot = self.lot.lock();
        match lot.heard.get(node) {
            Some((newer, _)) if *newer > session_id => {}
            _ => {
                lot.heard.insert(node.to_string(), (session_id, now_ms));
            }
        }
        match lot.reports.get(node) {
            Some((newer, _)) if *newer > session_id => {}
            _ => {
                lot.reports.insert(node.to_string(), (session_id, report));
            }
        }
        self.any.store(true, Ordering::SeqCst);
    }

    /// Whether reports are parked (or were just now): a report then does not wait for the state,
    /// which is taken for long, but parks at once.
    pub(super) fn busy(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// Forgets `node`'s parked report of `session_id` or an older session, if any: a newer one
    /// of it is being taken in (under the state lock).
    pub(super) fn drop_node(&self, node: &str, session_id: u64) {
        if self.busy() {
            let mut lot = self.lot.lock();
            if lot
                .reports
                .get(node)
                .is_some_and(|(id, _)| *id <= session_id)
            {
                lot.reports.remove(node);
            }
            self.any.store(!lot.is_empty(), Ordering::SeqCst);
        }
    }

    /// The arrivals not yet handed to the state, leaving none (under the state lock).
    pub(super) fn take_heard(&self) -> Heard {
        if !self.busy() {
            return Heard::new();
        }
        let mut lot = self.lot.lock();
        let heard = std::mem::take(&mut lot.heard);
        self.any.store(!lot.is_empty(), Ordering::SeqCst);
        heard
    }

    /// One parked report, leaving the rest. Called under the state lock, as [`Parked::drop_node`]
    /// is, so that a report is either taken in before a newer one of its node or dropped by it.
    pub(super) fn pop(&self) -> Option<(String, u64, Report)> {
        if !self.busy() {
            return None;
        }
        let mut lot = self.lot.lock();
        let next = lot.reports.pop_first();
        self.any.store(!lot.is_empty(), Ordering::SeqCst);
        next.map(|(node, (session_id, report))| (node, session_id, report))
    }
}
