//! Measurements the benchmarks share.

use std::time::{Duration, Instant};

use crate::{Cluster, health};

/// Starts app `name` with 0 instances and 12 ports, then times `pmcluster scale NAME 12` until
/// all 12 answer `/health` as their own index (within 60 s); deletes the app after.
pub fn scale_to_12_answering(c: &Cluster, name: &str) -> Result<Duration, String> {
    let base = c
        .start_app(name, 0)
        .ports(12)
        .online()
        .map_err(|e| e.to_string())?
        .base_port;
    let t0 = Instant::now();
    let out = c.cli(&["scale", name, "12"]);
    if !out.success() {
        return Err(out.to_string());
    }
    let deadline = t0 + Duration::from_secs(60);
    let mut answered = [false; 12];
    while !answered.iter().all(|a| *a) {
        if Instant::now() > deadline {
            return Err(format!("not all answered within 60 s: {answered:?}"));
        }
        for (i, done) in answered.iter_mut().enumerate() {
            if !*done {
                *done = health(base + i as u16)
                    .map(|h| h["instance"] == i.to_string().as_str())
                    .unwrap_or(false);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t0.elapsed();
    let out = c.cli(&["delete", name]);
    if !out.success() {
        return Err(out.to_string());
    }
    Ok(took)
}
