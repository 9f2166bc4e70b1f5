//! Node commands: adopt a quarantined node, forget a gone one, drain one.

use std::collections::BTreeMap;

use crate::model::{Batch, EventKind, ForgottenNode, MAX_FORGOTTEN, NodeRecord, NodeView};

use super::super::sets::publish;
use super::super::{Control, ControlError, Result, is_quarantined, node_not_found};
use crate::core::adoption::adoption_batch;

impl Control {
    /// Adopts quarantined nodes (`name`, or every quarantined node when empty): their held
    /// instances become this cluster's (apps that are not here are created from the agents'
    /// specs), and they receive desired sets again, with a generation above the one each agent
    /// applied and `adopt` set so that it takes this cluster's id. Adopting every node in one
    /// write keeps the reconciler from placing an index that a not-yet-adopted node holds.
    pub fn adopt_node(&self, name: &str) -> Result<Vec<NodeView>> {
        let mut inner = self.lock();
        let names: Vec<String> = if name.is_empty() {
            inner
                .nodes
                .iter()
                .filter(|(_, l)| is_quarantined(l))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            let live = inner.nodes.get(name).ok_or_else(|| node_not_found(name))?;
            if !is_quarantined(live) {
                return Err(ControlError::FailedPrecondition(format!(
                    "node {name:?} is not quarantined; there is nothing to adopt"
                )));
            }
            vec![name.to_string()]
        };
        if names.is_empty() {
            return Err(ControlError::FailedPrecondition(
                "no node is quarantined; there is nothing to adopt".into(),
            ));
        }
        let now = self.now();
        let mut scratch = inner.ahead.clone();
        let mut batch = Batch::default();
        let mut generation = inner.ahead.generation;
        let mut imported = Vec::new();
        for n in &names {
            let Some(live) = inner.nodes.get(n) else {
                continue;
            };
            let part = adoption_batch(&scratch, n, &live.held, now);
            generation = generation.max(live.reported_generation);
            // Held instances this cluster has records of already stay, as those adopted do. A
            // trial's answer counted only the adopted, and said 6 of 7 were stopped where 1 was.
            let known = (live.held.iter())
                .filter(|h| {
                    (scratch.instances.get(&h.id)).is_some_and(|r| r.node.as_deref() == Some(n))
                })
                .count();
            imported.push((n.clone(), part.put_instances.len() + known, live.held.len()));
            scratch.apply(&part);
            batch
                .put_apps
                .retain(|a| !part.put_apps.iter().any(|p| p.spec.name == a.spec.name));
            batch.put_apps.extend(part.put_apps);
            batch.put_instances.extend(part.put_instances);
            batch.del_instances.extend(part.del_instances);
        }
        // Restarts asked before a registration that was quarantined: raised now, in the batch
        // whose generation goes above the agent's (see `NodeRecord::restarts_unseen`).
        for n in &names {
            if let (Some(node), Some(live)) = (inner.ahead.nodes.get(n), inner.nodes.get(n)) {
                let raised =
                    super::super::raised_restarts(&scratch, &node.restarts_unseen, &live.held);
                batch.put_instances.extend(raised);
            }
        }
        // Above anything the agents applied, so their next sets are not stale.
        generation += 1;
        batch.generation = Some(generation);
        for n in &names {
            let node = inner
                .ahead
                .nodes
                .get(n)
                .cloned()
                .ok_or_else(|| node_not_found(n))?;
            // Its set goes out once this commits (see the generations in `write`).
            batch.put_nodes.push(NodeRecord {
                generation,
                sent_generation: Some(generation),
                restarts_unseen: BTreeMap::new(),
                ..node
            });
        }
        // Their sets go out once this commits, and so do those of any write planned while it
        // commits (which the write path marks sent by this).
        inner.being_adopted.extend(names.iter().cloned());
        let written = self.write(&mut inner, batch);
        for n in &names {
            inner.being_adopted.remove(n);
        }
        written?;
        for n in &names {
            if let Some(live) = inner.nodes.get_mut(n) {
                if let Some(s) = live.session.as_mut() {
                    s.quarantine = None;
                }
                live.adopting = true;
            }
            publish(&mut inner, n);
        }
        // Anything the adoption left unplaced can go to these nodes now.
        inner.reconcile_due = true;
        if let Err(e) = self.write(&mut inner, Batch::default()) {
            tracing::error!(error = %e, "reconcile after adoption failed");
        }
        drop(inner);
        for (n, count, _) in &imported {
            let text = format!("node {n} adopted with {count} of its instances");
            tracing::warn!("{text}");
            self.emit(EventKind::NodeAdopted, "", n, None, text);
        }
        let mut views: Vec<NodeView> = self
            .list_nodes()
            .into_iter()
            .filter(|n| names.contains(&n.name))
            .collect();
        // What the adoption did to the processes it did not take: the answer is the one place
        // an operator learns that they are being stopped.
        for view in &mut views {
            if let Some((_, count, held)) = imported.iter().find(|(n, ..)| *n == view.name)
                && held > count
            {
                view.message = format!(
                    "{count} of the {held} instance(s) it ran are this cluster's now; the other \
                     {} are stopped (their indices run on other nodes, or their app's spec \
                     changed)",
                    held - count
                );
            }
        }
        Ok(views)
    }

    /// Forgets a node that is not connected: its record goes, and its instances are replaced
    /// elsewhere at once (the reconciler treats records on an unknown node as lost).
    pub fn forget_node(&self, name: &str) -> Result<NodeView> {
        let before = self
            .list_nodes()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| node_not_found(name))?;
        let mut inner = self.lock();
        if inner.nodes.get(name).is_some_and(|l| l.session.is_some()) {
            return Err(ControlError::FailedPrecondition(format!(
                "node {name:?} is connected; stop its agent first (or drain it to move its \
                 instances while it runs)"
            )));
        }
        let mut batch = Batch {
            del_nodes: vec![name.to_string()],
            ..Batch::default()
        };
        if let Some(record) = inner.ahead.nodes.get(name) {
            batch.put_forgotten.push(ForgottenNode {
                name: name.to_string(),
                sent_up_to: record.sent_up_to(),
                generation: record.generation,
                forgotten_ms: inner.now,
            });
            // The oldest tombstones make room; a node that old coming back is quarantined.
            let kept = &inner.ahead.forgotten;
            if kept.len() >= MAX_FORGOTTEN && !kept.contains_key(name) {
                let mut by_age: Vec<&ForgottenNode> = kept.values().collect();
                by_age.sort_by_key(|f| (f.forgotten_ms, &f.name));
                let over = kept.len() + 1 - MAX_FORGOTTEN;
                batch
                    .del_forgotten
                    .extend(by_age.iter().take(over).map(|f| f.name.clone()));
            }
        }
        self.write(&mut inner, batch)?;
        // Unless its agent came back while the write waited to commit (it then registered
        // afresh, and that entry is its session's).
        if inner.nodes.get(name).is_some_and(|l| l.session.is_none()) {
            inner.nodes.remove(name);
        }
        drop(inner);
        self.emit(
            EventKind::NodeForgotten,
            "",
            name,
            None,
            format!(
                "node {name} forgotten; its instances are placed elsewhere (should its agent come \
                 back, the node joins afresh and its agent stops them)"
            ),
        );
        Ok(before)
    }

    /// Starts (or stops, with `drain = false`) draining a node. Also says whether anything
    /// changed, so an undrain of a node that was never drained is not reported as one.
    pub fn set_drain(&self, node: &str, drain: bool) -> Result<(NodeView, bool)> {
        let mut inner = self.lock();
        let Some(record) = inner.ahead.nodes.get(node).cloned() else {
            return Err(node_not_found(node));
        };
        let changed = record.drain != drain;
        if changed {
            let batch = Batch {
                put_nodes: vec![NodeRecord { drain, ..record }],
                ..Batch::default()
            };
            self.write(&mut inner, batch)?;
        }
        drop(inner);
        if changed {
            let what = if drain { "draining" } else { "eligible again" };
            self.emit(
                EventKind::NodeDrain,
                "",
                node,
                None,
                format!("node {node} {what}"),
            );
        }
        let view = self
            .list_nodes()
            .into_iter()
            .find(|n| n.name == node)
            .ok_or_else(|| node_not_found(node))?;
        Ok((view, changed))
    }
}
