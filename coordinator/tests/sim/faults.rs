//! Faults: a link that breaks (the stream ends, or goes half-open and the heartbeats lapse), a
//! desired set lost with its connection, instance crashes, agent restarts that re-adopt their
//! instances, and coordinator restarts that reload everything from the store.

use pmcluster_coordinator::control::Control;
use rand::Rng;

use crate::world::{Link, TICK_MS, World, config};

impl World {
    fn pick_node(&mut self) -> usize {
        self.rng.random_range(0..self.nodes.len())
    }

    /// The agent's stream ends; the coordinator sees it at once. In-flight sets are lost with
    /// it; reports already sent may still arrive (and must be ignored).
    pub fn disconnect(&mut self, i: usize, why: &str) {
        let (Link::Up { session, .. } | Link::Partitioned { session, .. }) = self.nodes[i].link
        else {
            return;
        };
        let name = self.nodes[i].agent.name.clone();
        self.control.detach(&name, session);
        let back = self.now() + self.rng.random_range(1..=40) * TICK_MS;
        self.nodes[i].link = Link::Down { reconnect_at: back };
        self.nodes[i].to_agent.clear();
        self.log(format!(
            "{name} disconnected ({why}), back at +{}ms",
            back - self.now()
        ));
    }

    /// Draws one fault and applies it.
    pub fn fault(&mut self) -> Result<(), String> {
        let i = self.pick_node();
        let name = self.nodes[i].agent.name.clone();
        match self.rng.random_range(0..10) {
            0..=2 => {
                // An instance crashes; the agent restarts it after its restart delay.
                let online: Vec<String> = self.nodes[i]
                    .agent
                    .online()
                    .map(|(id, _)| id.clone())
                    .collect();
                if online.is_empty() {
                    return Ok(());
                }
                let id = online[self.rng.random_range(0..online.len())].clone();
                let restart = self.rng.random_range(1..=12) * TICK_MS;
                let now = self.now();
                self.nodes[i].agent.crash(&id, now, restart);
                self.log(format!("{name}: instance {} crashed", short(&id)));
            }
            3 => self.disconnect(i, "stream ended"),
            // A set is lost on the wire: only with its connection (a stream does not lose
            // messages and go on), so the agent reconnects and gets the current set.
            4 if !self.nodes[i].to_agent.is_empty() => {
                self.nodes[i].to_agent.pop();
                self.disconnect(i, "a desired set was lost with the connection");
            }
            5 => {
                let Link::Up { session, .. } = self.nodes[i].link else {
                    return Ok(());
                };
                // Longer than the heartbeat timeout sometimes, so the session lapses.
                let until = self.now() + self.rng.random_range(4..=80) * TICK_MS;
                self.nodes[i].link = Link::Partitioned { session, until };
                self.nodes[i].to_agent.clear();
                self.nodes[i].to_coordinator.clear();
                self.log(format!("{name} partitioned for {}ms", until - self.now()));
            }
            6 => {
                // The agent process restarts: its instances keep running and are re-adopted
                // from the held list of its next registration.
                self.disconnect(i, "agent restart");
                self.nodes[i].to_coordinator.clear();
            }
            7 if self.rng.random_bool(0.3) => self.restart_coordinator()?,
            _ => {}
        }
        Ok(())
    }

    /// Drops the control (every session ends with it) and opens a new one over the same store.
    /// Everything acknowledged before must be there after.
    pub fn restart_coordinator(&mut self) -> Result<(), String> {
        let before = self.control.persisted();
        for node in &mut self.nodes {
            node.to_agent.clear();
            node.to_coordinator.clear();
        }
        let control = Control::open_with(self.store.clone(), config(), self.clock.clone())
            .map_err(|e| format!("reopen: {e}"))?;
        self.control = control;
        let after = self.control.persisted();
        crate::check::acknowledged(&before, &after)?;
        for i in 0..self.nodes.len() {
            let back = self.now() + self.rng.random_range(1..=12) * TICK_MS;
            self.nodes[i].link = Link::Down { reconnect_at: back };
        }
        self.log("coordinator restarted from its store".into());
        Ok(())
    }
}

pub fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(6)..).unwrap_or(id)
}
