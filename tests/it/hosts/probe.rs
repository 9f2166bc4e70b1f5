//! Judging "online" by a real answer: a thread of its own, inside the client host's namespace,
//! asks `/health` of each index at its fixed port on every agent host, every 100 ms, and records
//! each sample in which some index answered nowhere.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pmcluster_tests::{CLIENT_HOST, Net, enter_netns, http_get_url};

/// How often [`Probe`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The bound of each step of one request: an unused port on a reachable host refuses at once,
/// so only a hung instance waits this long.
const STEP: Duration = Duration::from_millis(500);

/// What a [`Probe`] run saw.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    pub samples: usize,
    /// Each sample in which some index answered on no host: when, and which indices.
    pub gaps: Vec<String>,
    /// Per index, the hosts it answered from over the run, in order of first answer.
    pub hosts: BTreeMap<u32, Vec<String>>,
}

/// Samples until stopped; see the module's doc.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<Answers, String>>>,
}

impl Probe {
    /// Probes indices `0..n`, index i on `base_port + i`, on each of `hosts`.
    pub fn start(net: &Net, hosts: &[&str], base_port: u16, n: u32) -> Probe {
        let client: PathBuf = net.netns_path(CLIENT_HOST).expect("the client host");
        let targets: Vec<(String, Ipv4Addr)> = hosts
            .iter()
            .map(|h| (h.to_string(), net.addr(h).expect("an agent host")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            enter_netns(&client).map_err(|e| e.to_string())?;
            let mut seen = Answers::default();
            // Where each index answered last: asked first next time.
            let mut last: BTreeMap<u32, usize> = BTreeMap::new();
            let begin = Instant::now();
            // Bounded: stops when asked, and never runs past ten minutes.
            while !flag.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(600) {
                let now = Instant::now();
                let mut silent = Vec::new();
                for index in 0..n {
                    let first = last.get(&index).copied().unwrap_or(0);
                    let order = (0..targets.len()).map(|k| (first + k) % targets.len());
                    let answered = order.into_iter().find(|&k| {
                        let (_, addr) = &targets[k];
                        let port = u32::from(base_port) + index;
                        let url = format!("http://{addr}:{port}/health");
                        http_get_url(&url, STEP).is_ok_and(|r| {
                            r.status == 200
                                && r.json().is_ok_and(|v| {
                                    v["instance"].as_str() == Some(index.to_string().as_str())
                                })
                        })
                    });
                    match answered {
                        Some(k) => {
                            last.insert(index, k);
                            let on = seen.hosts.entry(index).or_default();
                            if on.last() != Some(&targets[k].0) {
                                on.push(targets[k].0.clone());
                            }
                        }
                        None => silent.push(index),
                    }
                }
                seen.samples += 1;
                if !silent.is_empty() {
                    seen.gaps.push(format!(
                        "at {:.1} s: indices {silent:?} answered on no host",
                        begin.elapsed().as_secs_f64()
                    ));
                }
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(now.elapsed()));
            }
            Ok(seen)
        });
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops probing and returns what it saw.
    pub fn finish(mut self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Ok(seen))) => seen,
            Some(Ok(Err(e))) => panic!("the probe could not enter the client host: {e}"),
            _ => panic!("the probe panicked"),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
