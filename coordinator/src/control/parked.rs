//! Agent reports that found the state lock held for long, kept until it is free (see
//! `Control::report`). An agent reports everything it holds each time, so a node's newest report
//! says all its older ones did: one is kept per node, and a newer one, parked or taken in, makes
//! the parked one moot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::Report;

/// A report waiting for the state: the node's session that sent it, and the report.
type Waiting = (u64, Report);

#[derive(Default)]
pub(super) struct Parked {
    /// By node name.
    reports: parking_lot::Mutex<BTreeMap<String, Waiting>>,
    /// Whether any is parked: read on every report, so that the usual case takes no second lock.
    /// Only changed under `reports`' lock, so it is set whenever the map holds one.
    any: AtomicBool,
}

impl Parked {
    pub(super) fn park(&self, node: &str, session_id: u64, report: Report) {
        let mut reports = self.reports.lock();
        reports.insert(node.to_string(), (session_id, report));
        self.any.store(true, Ordering::SeqCst);
    }

    /// Whether reports are parked (or were just now): a report then does not wait for the state,
    /// which is taken for long, but parks at once.
    pub(super) fn busy(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// Forgets `node`'s parked report, if any: a newer one of it is being taken in (under the
    /// state lock).
    pub(super) fn drop_node(&self, node: &str) {
        if self.busy() {
            let mut reports = self.reports.lock();
            reports.remove(node);
            self.any.store(!reports.is_empty(), Ordering::SeqCst);
        }
    }

    /// One parked report, leaving the rest. Called under the state lock, as [`Parked::drop_node`]
    /// is, so that a report is either taken in before a newer one of its node or dropped by it.
    pub(super) fn pop(&self) -> Option<(String, u64, Report)> {
        if !self.busy() {
            return None;
        }
        let mut reports = self.reports.lock();
        let next = reports.pop_first();
        self.any.store(!reports.is_empty(), Ordering::SeqCst);
        next.map(|(node, (session_id, report))| (node, session_id, report))
    }
}
