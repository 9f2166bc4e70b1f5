//! Free loopback ports for apps and balancers, never handed out twice by one test process.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{Error, unexpected};

/// Port ranges handed out by this process, so that concurrent tests never share one.
static RESERVED: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    RandomState::new().hash_one((Instant::now(), std::process::id(), n))
}

/// Lowest port of the kernel's ephemeral range: outgoing connections and `:0` listeners take
/// ports from there, so app ranges stay below it.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first port of `n` consecutive ports that are free on 127.0.0.1 now, from a random start
/// between 15000 and the ephemeral range, and never handed out before by this process.
pub fn free_port_range(n: u16) -> Result<u16, Error> {
    let low: u16 = 15000;
    let high = ephemeral_low().max(low + 2000);
    for _ in 0..500 {
        let span = u64::from(high - low - n);
        let start = low + u16::try_from(random_u64() % span).unwrap_or(0);
        let end = start + n - 1;
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if reserved.iter().any(|&(a, b)| start <= b && a <= end) {
            continue;
        }
        if (start..=end).all(port_free) {
            reserved.push((start, end));
            return Ok(start);
        }
    }
    Err(unexpected(
        "picking ports",
        format!("no run of {n} free ports found between {low} and {high}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_do_not_overlap() {
        let mut ranges: Vec<(u16, u16)> = (0..20)
            .map(|_| {
                let start = free_port_range(12).expect("a free range");
                (start, start + 11)
            })
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 < pair[1].0, "{ranges:?}");
        }
    }
}
