//! Sampling `list` in the background while a test changes the cluster, to check an invariant
//! at every moment rather than only at the end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::Instance;

/// Samples `list -o json` every 100 ms on its own thread, checking an invariant on each sample.
/// Collects violations instead of panicking, so the main thread reports them with context.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Sampler {
    pub fn start(
        cli: PathBuf,
        url: String,
        app: &str,
        check: impl Fn(&[Instance]) -> Result<(), String> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let app = app.to_string();
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            let mut violations = Vec::new();
            // Bounded: stops when asked, and never runs past ten minutes.
            let end = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let out = Command::new(&cli)
                    .args(["--coordinator", &url, "list", &app, "-o", "json"])
                    .output();
                if let Ok(out) = out
                    && out.status.success()
                    && let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    let list: Vec<Instance> = entries
                        .iter()
                        .filter_map(|e| Instance::from_json(e).ok())
                        .collect();
                    samples += 1;
                    if let Err(why) = check(&list) {
                        violations.push(why);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (samples, violations)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns how many samples were taken and the violations seen.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((0, vec!["sampler thread panicked".into()]))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
