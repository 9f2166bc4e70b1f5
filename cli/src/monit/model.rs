//! What `monit` shows, apart from the terminal: the last listing, a short history of each
//! instance's CPU and memory, the selection, the view, and the selected instance's log tail.
//! Pure: the loop in `mod.rs` feeds it listings, keys and log lines, and asks it what to follow.

use std::collections::{HashMap, VecDeque};

use pmcluster_proto::v1 as pb;

/// Samples kept per instance: a minute at the default 1 s refresh.
pub const HISTORY: usize = 60;
/// Log lines kept for the logs pane.
pub const LOG_LINES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Instances,
    Nodes,
}

/// A key `monit` acts on, already decoded from the terminal's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Home,
    End,
    Tab,
    Quit,
    Other,
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Follow the logs of this instance (app, index) from now on; `None`: of none.
    Follow(Option<(String, u32)>),
}

/// CPU (in tenths of a percent) and memory samples of one instance, oldest first.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub cpu: VecDeque<u64>,
    pub memory: VecDeque<u64>,
}

impl History {
    fn push(&mut self, cpu_percent: f64, memory: u64) {
        if self.cpu.len() == HISTORY {
            self.cpu.pop_front();
            self.memory.pop_front();
        }
        // Tenths keep a 0.3% idle app off the floor of the sparkline.
        self.cpu
            .push_back((cpu_percent.max(0.0) * 10.0).round() as u64);
        self.memory.push_back(memory);
    }
}

#[derive(Debug)]
pub struct Monitor {
    pub instances: Vec<pb::Instance>,
    pub nodes: Vec<pb::Node>,
    /// By instance id: a new placement of an index starts a new history.
    pub history: HashMap<String, History>,
    pub selected: usize,
    pub view: View,
    /// The instance whose logs are in `logs`.
    pub following: Option<(String, u32)>,
    pub logs: VecDeque<String>,
    /// The last refresh's error, shown until a refresh succeeds.
    pub error: Option<String>,
    pub refreshes: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            instances: Vec::new(),
            nodes: Vec::new(),
            history: HashMap::new(),
            selected: 0,
            view: View::Instances,
            following: None,
            logs: VecDeque::new(),
            error: None,
            refreshes: 0,
        }
    }
}

impl Monitor {
    /// A new listing: sorted by app and index, one sample per running instance, and the
    /// selection kept on the same instance when it is still there. Returns the logs to follow
    /// when the selected instance changed (it went away, or the first listing came).
    pub fn refresh(&mut self, mut instances: Vec<pb::Instance>, nodes: Vec<pb::Node>) -> Action {
        // A removed instance's process still ending, or one a quarantined node holds, comes
        // after the live one of its index, so the selection, kept by app and index, stays on
        // the live one.
        let aside = |i: &pb::Instance| i.removed || i.unmanaged;
        instances.sort_by(|a, b| {
            (a.app.as_str(), a.index, aside(a)).cmp(&(b.app.as_str(), b.index, aside(b)))
        });
        let before = self.selected_key();
        for i in &instances {
            if i.pid != 0 {
                self.history
                    .entry(i.id.clone())
                    .or_default()
                    .push(i.cpu_percent, i.memory_bytes);
            }
        }
        self.history
            .retain(|id, _| instances.iter().any(|i| &i.id == id));
        if let Some((app, index)) = &before
            && let Some(pos) = instances
                .iter()
                .position(|i| &i.app == app && i.index == *index)
        {
            self.selected = pos;
        }
        self.instances = instances;
        self.nodes = nodes;
        self.clamp();
        self.error = None;
        self.refreshes += 1;
        self.follow_selected()
    }

    pub fn refresh_failed(&mut self, error: String) {
        self.error = Some(error);
    }

    pub fn key(&mut self, key: Key) -> Action {
        let rows = self.rows();
        match key {
            Key::Quit => return Action::Quit,
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected = (self.selected + 1).min(rows.saturating_sub(1)),
            Key::Home => self.selected = 0,
            Key::End => self.selected = rows.saturating_sub(1),
            Key::Tab => {
                self.view = match self.view {
                    View::Instances => View::Nodes,
                    View::Nodes => View::Instances,
                };
                self.selected = 0;
            }
            Key::Other => return Action::None,
        }
        self.clamp();
        self.follow_selected()
    }

    pub fn log_line(&mut self, line: String) {
        if self.logs.len() == LOG_LINES {
            self.logs.pop_front();
        }
        self.logs.push_back(line);
    }

    /// Rows of the current view.
    pub fn rows(&self) -> usize {
        match self.view {
            View::Instances => self.instances.len(),
            View::Nodes => self.nodes.len(),
        }
    }

    pub fn selected_instance(&self) -> Option<&pb::Instance> {
        match self.view {
            View::Instances => self.instances.get(self.selected),
            View::Nodes => None,
        }
    }

    fn selected_key(&self) -> Option<(String, u32)> {
        self.selected_instance().map(|i| (i.app.clone(), i.index))
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.rows().saturating_sub(1));
    }

    /// The node view keeps following the instance selected last.
    fn follow_selected(&mut self) -> Action {
        if self.view == View::Nodes {
            return Action::None;
        }
        let key = self.selected_key();
        if key == self.following {
            return Action::None;
        }
        self.following = key.clone();
        self.logs.clear();
        Action::Follow(key)
    }
}

/// A sparkline in text, one block character per sample, scaled to the largest sample shown
/// (so a flat line means steady, whatever the level); the last `width` samples.
pub fn spark(samples: &VecDeque<u64>, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let skip = samples.len().saturating_sub(width);
    let shown: Vec<u64> = samples.iter().skip(skip).copied().collect();
    let max = shown.iter().copied().max().unwrap_or(0);
    shown
        .iter()
        .map(|&v| {
            let top = BARS.len() as u64 - 1;
            // All zero (max 0): the floor.
            let step = (v.saturating_mul(top) + max / 2)
                .checked_div(max)
                .unwrap_or(0);
            BARS[step.min(top) as usize]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(app: &str, index: u32, id: &str, cpu: f64, mem: u64) -> pb::Instance {
        pb::Instance {
            id: id.into(),
            app: app.into(),
            index,
            node: "node-a".into(),
            state: pb::InstanceState::Online as i32,
            pid: 100 + index,
            cpu_percent: cpu,
            memory_bytes: mem,
            ..Default::default()
        }
    }

    #[test]
    fn keys_move_within_bounds_and_switch_views() {
        let mut m = Monitor::default();
        let first = m.refresh(
            vec![
                inst("web", 1, "b", 0.0, 1),
                inst("api", 0, "c", 0.0, 1),
                inst("web", 0, "a", 0.0, 1),
            ],
            vec![pb::Node {
                name: "node-a".into(),
                ..Default::default()
            }],
        );
        // Sorted by app then index; the first row is followed at once.
        assert_eq!(first, Action::Follow(Some(("api".into(), 0))));
        let cases = [
            (Key::Up, 0, Action::None),
            (Key::Down, 1, Action::Follow(Some(("web".into(), 0)))),
            (Key::Down, 2, Action::Follow(Some(("web".into(), 1)))),
            (Key::Down, 2, Action::None),
            (Key::Home, 0, Action::Follow(Some(("api".into(), 0)))),
            (Key::End, 2, Action::Follow(Some(("web".into(), 1)))),
            (Key::Other, 2, Action::None),
            (Key::Tab, 0, Action::None),
            (Key::Down, 0, Action::None),
            (Key::Tab, 0, Action::Follow(Some(("api".into(), 0)))),
            (Key::Quit, 0, Action::Quit),
        ];
        for (n, (key, selected, action)) in cases.into_iter().enumerate() {
            assert_eq!(m.key(key), action, "step {n}: {key:?}");
            assert_eq!(m.selected, selected, "step {n}: {key:?}");
        }
    }

    #[test]
    fn a_removed_process_of_the_same_index_comes_after_the_live_one() {
        let mut m = Monitor::default();
        m.refresh(vec![inst("web", 0, "a", 0.0, 1)], vec![]);
        // A move: the old process, removed, is listed beside its replacement, in any order.
        let old = pb::Instance {
            removed: true,
            state: pb::InstanceState::Stopping as i32,
            ..inst("web", 0, "0-old", 0.0, 1)
        };
        m.refresh(vec![old, inst("web", 0, "z-new", 0.0, 1)], vec![]);
        let ids: Vec<&str> = m.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["z-new", "0-old"]);
        assert_eq!(m.selected, 0);
        // So does one a quarantined node holds.
        let held = pb::Instance {
            unmanaged: true,
            ..inst("web", 0, "0-held", 0.0, 1)
        };
        m.refresh(vec![held, inst("web", 0, "z-new", 0.0, 1)], vec![]);
        let ids: Vec<&str> = m.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["z-new", "0-held"]);
        assert_eq!(m.selected, 0);
    }

    #[test]
    fn the_selection_stays_on_its_instance_and_history_follows_ids() {
        let mut m = Monitor::default();
        m.refresh(
            vec![inst("web", 0, "a", 1.0, 10), inst("web", 1, "b", 2.0, 20)],
            vec![],
        );
        m.key(Key::Down);
        m.log_line("hello".into());
        // An app sorted before web appears: the selection stays on web[1], and so do its logs.
        let action = m.refresh(
            vec![
                inst("api", 0, "c", 0.0, 5),
                inst("web", 0, "a", 3.0, 30),
                inst("web", 1, "b", 4.0, 40),
            ],
            vec![],
        );
        assert_eq!(action, Action::None);
        assert_eq!(m.selected, 2);
        assert_eq!(m.logs.len(), 1);
        assert_eq!(m.history["a"].cpu, [10, 30]);
        assert_eq!(m.history["b"].memory, [20, 40]);
        // web[1] is replaced (new id): its history starts again, the old one is dropped; the
        // selected instance went away, so the selection (and logs) move.
        let action = m.refresh(
            vec![inst("web", 0, "a", 3.0, 30), inst("web", 1, "z", 1.0, 1)],
            vec![],
        );
        assert_eq!(action, Action::None, "still web[1], a new process of it");
        assert!(!m.history.contains_key("b"));
        assert_eq!(m.history["z"].cpu, [10]);
        let action = m.refresh(vec![inst("web", 0, "a", 3.0, 30)], vec![]);
        assert_eq!(action, Action::Follow(Some(("web".into(), 0))));
        assert!(m.logs.is_empty());
        let action = m.refresh(vec![], vec![]);
        assert_eq!(action, Action::Follow(None));
    }

    #[test]
    fn history_and_logs_are_bounded() {
        let mut m = Monitor::default();
        for n in 0..(HISTORY as u64 + 5) {
            m.refresh(vec![inst("web", 0, "a", n as f64, n)], vec![]);
        }
        assert_eq!(m.history["a"].cpu.len(), HISTORY);
        assert_eq!(m.history["a"].memory.front(), Some(&5));
        for n in 0..(LOG_LINES + 3) {
            m.log_line(n.to_string());
        }
        assert_eq!(m.logs.len(), LOG_LINES);
        assert_eq!(m.logs.front().map(String::as_str), Some("3"));
    }

    #[test]
    fn sparks() {
        let cases: [(&[u64], usize, &str); 5] = [
            (&[], 10, ""),
            (&[0, 0, 0], 10, "▁▁▁"),
            (&[5, 5], 10, "██"),
            (&[0, 1, 2, 3, 4, 5, 6, 7], 10, "▁▂▃▄▅▆▇█"),
            (&[9, 0, 7], 2, "▁█"),
        ];
        for (samples, width, want) in cases {
            let samples: VecDeque<u64> = samples.iter().copied().collect();
            assert_eq!(spark(&samples, width), want, "{samples:?} in {width}");
        }
    }
}
