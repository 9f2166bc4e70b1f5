//! Counting the copies of each index that really run, on every host: the test app's processes
//! found through each host's namespace, by their `PMCLUSTER_APP` and `PMCLUSTER_INSTANCE_ID`.
//! This sees what `list` may not: a cut-off host's copies that the coordinator no longer knows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pmcluster_tests::{Net, ProcId, pids_in};

/// How often [`Copies`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The running copies of `app`: index -> each copy's host and process.
pub fn running(hosts: &[(String, PathBuf)], app: &str) -> BTreeMap<u32, Vec<(String, ProcId)>> {
    let mut out: BTreeMap<u32, Vec<(String, ProcId)>> = BTreeMap::new();
    for (host, path) in hosts {
        let Ok(pids) = pids_in(path) else { continue };
        for p in pids {
            // The test app itself, not a log pump or a shell around it.
            let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid));
            if !exe.is_ok_and(|e| e.ends_with("pmcluster-testapp")) {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{}/environ", p.pid)) else {
                continue;
            };
            let var = |name: &str| {
                let prefix = format!("{name}=");
                env.split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if var("PMCLUSTER_APP").as_deref() != Some(app) {
                continue;
            }
            if let Some(index) = var("PMCLUSTER_INSTANCE_ID").and_then(|i| i.parse().ok()) {
                out.entry(index).or_default().push((host.clone(), p));
            }
        }
    }
    out
}

/// What a [`Copies`] run saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub samples: usize,
    /// The most copies of one index at once, and when first.
    pub max_copies: usize,
    pub max_at: String,
    /// The longest stretch during which some index ran more than once.
    pub longest_double: Duration,
    pub longest_double_index: Option<u32>,
}

/// Samples [`running`] every [`SAMPLE_EVERY`] on a thread of its own until stopped.
pub struct Copies {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Seen>>,
}

impl Copies {
    pub fn start(net: &Net, app: &str) -> Copies {
        let hosts = net.netns_paths();
        let app = app.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut double_since: BTreeMap<u32, Instant> = BTreeMap::new();
            let begin = Instant::now();
            // Bounded: stops when asked, and never runs past ten minutes.
            while !flag.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(600) {
                let now = Instant::now();
                let copies = running(&hosts, &app);
                seen.samples += 1;
                for (index, on) in &copies {
                    if on.len() > seen.max_copies {
                        seen.max_copies = on.len();
                        let hosts: Vec<&str> = on.iter().map(|(h, _)| h.as_str()).collect();
                        seen.max_at = format!(
                            "index {index} on {hosts:?} at {:.1} s",
                            begin.elapsed().as_secs_f64()
                        );
                    }
                    if on.len() > 1 {
                        let since = *double_since.entry(*index).or_insert(now);
                        if now - since > seen.longest_double {
                            seen.longest_double = now - since;
                            seen.longest_double_index = Some(*index);
                        }
                    } else {
                        double_since.remove(index);
                    }
                }
                double_since.retain(|i, _| copies.get(i).is_some_and(|on| on.len() > 1));
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(now.elapsed()));
            }
            seen
        });
        Copies {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns what it saw.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(seen)) => seen,
            _ => panic!("the copy sampler panicked"),
        }
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
