//! A simulated agent: the real agent's rules for desired sets (refuse another cluster's sets and
//! sets below the highest generation applied; run what the set says, stop what it leaves out),
//! with processes reduced to a state and the time they come online.

use std::collections::BTreeMap;

use pmcluster_coordinator::model::{
    Assignment, DesiredSet, InstanceObserved, InstanceState, Registration, Report,
};

/// One simulated process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub assignment: Assignment,
    pub state: InstanceState,
    /// When a launching (or crashed) process comes online.
    pub online_at: i64,
    pub restarts: u32,
}

/// What an agent does with a desired set, as the real one decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    Foreign,
    Stale { generation: u64, highest: u64 },
}

#[derive(Debug)]
pub struct SimAgent {
    pub name: String,
    pub agent_id: String,
    pub cores: u32,
    /// Remembered across agent restarts, like the agent's identity file.
    pub cluster_id: String,
    pub highest_generation: u64,
    /// Instances by id (as text, as the agent's files name them); they survive an agent restart (re-adopted), not a host loss.
    pub procs: BTreeMap<String, Proc>,
    /// CPU percent each online instance reports (the autoscaler's input).
    pub load: f64,
}

impl SimAgent {
    pub fn new(n: usize) -> SimAgent {
        SimAgent {
            name: format!("n{n}"),
            agent_id: format!("agent-{n}"),
            cores: 4,
            cluster_id: String::new(),
            highest_generation: 0,
            procs: BTreeMap::new(),
            load: 50.0,
        }
    }

    /// Applies `set` unless the agent's identity refuses it; `launch_ms` is how long a new or
    /// restarted process takes to come online.
    pub fn apply(&mut self, set: &DesiredSet, now: i64, launch_ms: i64) -> Verdict {
        let foreign = !self.cluster_id.is_empty()
            && !set.cluster_id.is_empty()
            && self.cluster_id != set.cluster_id;
        if foreign && !set.adopt {
            return Verdict::Foreign;
        }
        if set.generation < self.highest_generation {
            return Verdict::Stale {
                generation: set.generation,
                highest: self.highest_generation,
            };
        }
        let wanted: BTreeMap<String, &Assignment> = set
            .assignments
            .iter()
            .map(|a| (a.id.to_string(), a))
            .collect();
        // What the set leaves out is stopped (and forgotten).
        self.procs.retain(|id, _| wanted.contains_key(id.as_str()));
        for (id, a) in wanted {
            let launching = |a: &Assignment| Proc {
                assignment: a.clone(),
                state: if a.run {
                    InstanceState::Launching
                } else {
                    InstanceState::Stopped
                },
                online_at: now + launch_ms,
                restarts: 0,
            };
            match self.procs.get_mut(&id) {
                None => {
                    self.procs.insert(id, launching(a));
                }
                Some(p) => {
                    let old = &p.assignment;
                    let restart = old.restart_epoch != a.restart_epoch
                        || old.app_version != a.app_version
                        || !same_process(old, a)
                        || old.port != a.port;
                    let was_running = p.state != InstanceState::Stopped;
                    if !a.run {
                        p.state = InstanceState::Stopped;
                    } else if restart || !was_running {
                        p.state = InstanceState::Launching;
                        p.online_at = now + launch_ms;
                    }
                    p.assignment = a.clone();
                }
            }
        }
        if !set.cluster_id.is_empty() {
            self.cluster_id = set.cluster_id.clone();
        }
        self.highest_generation = self.highest_generation.max(set.generation);
        Verdict::Applied
    }

    /// Moves processes along: launching and restarting ones whose time came are online.
    pub fn advance(&mut self, now: i64) {
        for p in self.procs.values_mut() {
            let starting = matches!(
                p.state,
                InstanceState::Launching | InstanceState::Restarting
            );
            if starting && now >= p.online_at {
                p.state = InstanceState::Online;
            }
        }
    }

    /// Crashes one process; the agent's restart policy brings it back after `restart_ms`,
    /// reporting it restarting meanwhile, as a real agent does.
    pub fn crash(&mut self, id: &str, now: i64, restart_ms: i64) -> bool {
        match self.procs.get_mut(id) {
            Some(p) if p.state != InstanceState::Stopped => {
                p.state = InstanceState::Restarting;
                p.online_at = now + restart_ms;
                p.restarts += 1;
                true
            }
            _ => false,
        }
    }

    pub fn statuses(&self) -> Vec<InstanceObserved> {
        self.procs
            .values()
            .map(|p| InstanceObserved {
                id: p.assignment.id,
                state: p.state,
                port: p.assignment.port,
                cpu_percent: if p.state == InstanceState::Online {
                    self.load
                } else {
                    0.0
                },
                memory_bytes: 50 << 20,
                restarts: p.restarts,
                restart_epoch: p.assignment.restart_epoch,
                ..InstanceObserved::default()
            })
            .collect()
    }

    pub fn report(&self) -> Report {
        Report {
            generation: self.highest_generation,
            instances: self.statuses(),
            host: None,
        }
    }

    /// What a (re)connecting agent tells the coordinator.
    pub fn register(&self) -> Registration {
        Registration {
            node_name: self.name.clone(),
            cores: self.cores,
            memory_bytes: 8 << 30,
            hostname: self.name.clone(),
            agent_version: "sim".into(),
            generation: self.highest_generation,
            instances: self.statuses(),
            agent_id: self.agent_id.clone(),
            cluster_id: self.cluster_id.clone(),
            held: self.procs.values().map(|p| p.assignment.clone()).collect(),
            ..Registration::default()
        }
    }

    /// Instance ids this agent runs online.
    pub fn online(&self) -> impl Iterator<Item = (&String, &Proc)> {
        self.procs
            .iter()
            .filter(|(_, p)| p.state == InstanceState::Online)
    }
}

/// Whether two assignments run the same process, as the agent judges it: a new count, placement
/// or policy in the spec restarts nothing.
pub fn same_process(a: &Assignment, b: &Assignment) -> bool {
    a.spec.same_process(&b.spec)
}

/// Whether two desired sets ask for the same processes (ids, versions, epochs, run flags, ports
/// and process specs).
pub fn same_sets(a: &[Assignment], b: &[Assignment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.id == y.id
                && x.index == y.index
                && x.app_version == y.app_version
                && x.restart_epoch == y.restart_epoch
                && x.run == y.run
                && x.port == y.port
                && same_process(x, y)
        })
}
