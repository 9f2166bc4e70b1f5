//! The simulated world: a manual clock, one seeded RNG, the real `Control` over a shared
//! `MemoryStore`, and simulated agents linked to it by message queues with delivery times.
//! Every random choice comes from the one RNG, so a seed is a complete description of a run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pmcluster_coordinator::clock::ManualClock;
use pmcluster_coordinator::control::{Control, ControlConfig};
use pmcluster_coordinator::model::{Assignment, DesiredSet, Persisted, Report};
use pmcluster_coordinator::store::MemoryStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::agent::{SimAgent, Verdict};

/// The control loop's period in the coordinator binary: time passes in these steps.
pub const TICK_MS: i64 = 250;
pub const HEARTBEAT_MS: i64 = 1000;
pub const APPS: [&str; 2] = ["web", "api"];
const START_MS: i64 = 1_700_000_000_000;

/// An agent's link to the coordinator.
#[derive(Debug)]
pub enum Link {
    Up {
        session: u64,
        desired: watch::Receiver<Option<Arc<DesiredSet>>>,
    },
    /// Half-open: the coordinator still holds the session, nothing gets through either way,
    /// until the agent gives up on it at `until` and reconnects.
    Partitioned { session: u64, until: i64 },
    /// No session; the agent reconnects at this time.
    Down { reconnect_at: i64 },
}

/// A message in flight and when it arrives.
#[derive(Debug)]
pub struct InFlight<T> {
    pub at: i64,
    /// Ties broken by send order, so delivery is a function of the seed.
    pub seq: u64,
    pub session: u64,
    pub msg: T,
}

pub struct Node {
    pub agent: SimAgent,
    pub link: Link,
    pub to_agent: Vec<InFlight<DesiredSet>>,
    pub to_coordinator: Vec<InFlight<Report>>,
    pub last_report_ms: i64,
}

pub struct World {
    pub rng: StdRng,
    pub clock: Arc<ManualClock>,
    pub store: Arc<MemoryStore>,
    pub control: Control,
    pub nodes: Vec<Node>,
    pub trace: Vec<String>,
    pub step: u64,
    /// Faults (link loss, crashes, restarts) may be drawn; off for the convergence phase.
    pub faults: bool,
    /// Highest generation published to each node so far, with the set's assignments: a set
    /// with other content must come with a higher generation.
    pub published: BTreeMap<String, (u64, Vec<Assignment>)>,
    /// The records before the current step (to find what the step placed).
    pub before: Persisted,
    /// Processes come online this long after launch.
    pub launch_ms: i64,
    seq: u64,
}

pub fn config() -> ControlConfig {
    ControlConfig {
        heartbeat_interval: Duration::from_millis(HEARTBEAT_MS as u64),
        heartbeat_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    }
}

impl World {
    pub fn new(seed: u64, n_nodes: usize) -> Result<World, String> {
        let clock = Arc::new(ManualClock::new(START_MS, seed));
        let store = Arc::new(MemoryStore::default());
        let control = Control::open_with(store.clone(), config(), clock.clone())
            .map_err(|e| format!("open: {e}"))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let launch_ms = rng.random_range(1..=8) * TICK_MS;
        let nodes = (0..n_nodes)
            .map(|n| Node {
                agent: SimAgent::new(n),
                link: Link::Down { reconnect_at: 0 },
                to_agent: Vec::new(),
                to_coordinator: Vec::new(),
                last_report_ms: 0,
            })
            .collect();
        Ok(World {
            rng,
            clock,
            store,
            control,
            nodes,
            trace: Vec::new(),
            step: 0,
            faults: true,
            published: BTreeMap::new(),
            before: Persisted::default(),
            launch_ms,
            seq: 0,
        })
    }

    pub fn now(&self) -> i64 {
        use pmcluster_coordinator::clock::Clock as _;
        self.clock.now_ms()
    }

    pub fn log(&mut self, what: String) {
        let line = format!("{:>5} t+{:>7}ms {what}", self.step, self.now() - START_MS);
        self.trace.push(line);
    }

    /// Delay of one message: up to a second and a half while faults are on, so that messages
    /// overtake each other; short and ordered once they are off.
    fn delay(&mut self) -> i64 {
        if self.faults {
            self.rng.random_range(0..=6) * TICK_MS
        } else {
            TICK_MS
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Connects agent `i` (a new session; the old one, if any, is replaced).
    pub fn connect(&mut self, i: usize) -> Result<(), String> {
        let reg = self.nodes[i].agent.register();
        let name = reg.node_name.clone();
        match self.control.attach(&reg, None) {
            Ok(att) => {
                if !att.quarantine.is_empty() {
                    return Err(format!(
                        "{name} quarantined on attach (the store lost a write?): {}",
                        att.quarantine
                    ));
                }
                self.log(format!(
                    "{name} attached (session {}, generation {}, {} held)",
                    att.session_id,
                    reg.generation,
                    reg.held.len()
                ));
                let now = self.now();
                let node = &mut self.nodes[i];
                node.link = Link::Up {
                    session: att.session_id,
                    desired: att.desired,
                };
                node.last_report_ms = now;
            }
            Err(e) => {
                // A still-live session of another agent id would be refused; ours never is.
                let at = self.now() + TICK_MS * 4;
                self.log(format!("{name} attach refused: {e}"));
                self.nodes[i].link = Link::Down { reconnect_at: at };
            }
        }
        Ok(())
    }

    /// Lets `ms` of virtual time pass in control-loop ticks.
    pub fn pass(&mut self, ms: i64) -> Result<(), String> {
        let mut left = ms;
        while left > 0 {
            self.clock.advance_ms(TICK_MS);
            left -= TICK_MS;
            self.tick_once()?;
        }
        Ok(())
    }

    fn tick_once(&mut self) -> Result<(), String> {
        let now = self.now();
        for i in 0..self.nodes.len() {
            self.nodes[i].agent.advance(now);
            self.poll_desired(i)?;
            self.deliver_to_agent(i, now);
            self.heartbeat(i, now);
            self.deliver_to_coordinator(i, now);
            match self.nodes[i].link {
                Link::Down { reconnect_at } if now >= reconnect_at => self.connect(i)?,
                Link::Partitioned { until, .. } if now >= until => {
                    let name = self.nodes[i].agent.name.clone();
                    self.log(format!("{name} gives up on its half-open session"));
                    self.connect(i)?;
                }
                _ => {}
            }
        }
        self.control.tick();
        crate::check::placements(self)?;
        self.before = self.control.persisted();
        Ok(())
    }

    /// Takes a newly published desired set off the node's watch and puts it on the wire.
    pub fn poll_desired(&mut self, i: usize) -> Result<(), String> {
        let Link::Up { session, desired } = &mut self.nodes[i].link else {
            return Ok(());
        };
        let session = *session;
        if !desired.has_changed().unwrap_or(false) {
            return Ok(());
        }
        let Some(set) = desired.borrow_and_update().as_deref().cloned() else {
            return Ok(());
        };
        let name = self.nodes[i].agent.name.clone();
        crate::check::published(self, &name, &set)?;
        let at = self.now() + self.delay();
        let seq = self.next_seq();
        self.nodes[i].to_agent.push(InFlight {
            at,
            seq,
            session,
            msg: set,
        });
        Ok(())
    }

    fn deliver_to_agent(&mut self, i: usize, now: i64) {
        let due = take_due(&mut self.nodes[i].to_agent, now);
        for m in due {
            let launch = self.launch_ms;
            let node = &mut self.nodes[i];
            let verdict = node.agent.apply(&m.msg, now, launch);
            let name = node.agent.name.clone();
            let line = match verdict {
                Verdict::Applied => format!(
                    "{name} applied set {} ({} assignments)",
                    m.msg.generation,
                    m.msg.assignments.len()
                ),
                other => format!("{name} refused set {}: {other:?}", m.msg.generation),
            };
            self.log(line);
            // The agent reports soon after applying a set (the real one coalesces changes).
            self.nodes[i].last_report_ms = now - HEARTBEAT_MS + TICK_MS;
        }
    }

    fn heartbeat(&mut self, i: usize, now: i64) {
        let Link::Up { session, .. } = self.nodes[i].link else {
            return;
        };
        if now - self.nodes[i].last_report_ms < HEARTBEAT_MS {
            return;
        }
        self.nodes[i].last_report_ms = now;
        if self.faults && self.rng.random_bool(0.05) {
            let name = self.nodes[i].agent.name.clone();
            self.log(format!("{name}: a report is lost"));
            return;
        }
        let report = self.nodes[i].agent.report();
        let at = now + self.delay();
        let seq = self.next_seq();
        self.nodes[i].to_coordinator.push(InFlight {
            at,
            seq,
            session,
            msg: report,
        });
    }

    fn deliver_to_coordinator(&mut self, i: usize, now: i64) {
        let due = take_due(&mut self.nodes[i].to_coordinator, now);
        let name = self.nodes[i].agent.name.clone();
        for m in due {
            // Reports of an old session still arrive: the coordinator must ignore them.
            self.control.report(&name, m.session, m.msg);
        }
    }
}

/// Removes and returns the messages due at `now`, in arrival order.
fn take_due<T>(queue: &mut Vec<InFlight<T>>, now: i64) -> Vec<InFlight<T>> {
    let (mut due, rest): (Vec<_>, Vec<_>) = queue.drain(..).partition(|m| m.at <= now);
    *queue = rest;
    due.sort_by_key(|m| (m.at, m.seq));
    due
}
