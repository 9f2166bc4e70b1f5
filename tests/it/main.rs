//! End-to-end tests: a real coordinator, real agents, the real `pmcluster` CLI and real
//! instances (`pmcluster-testapp`, `sh`) on loopback, through the harness in `pmcluster_tests`.
//!
//! Every test waits on conditions with generous deadlines (CI has two cores) and never sleeps
//! for correctness. The binaries must be built first: `cargo build --workspace --bins`.

mod apply;
mod auth;
mod autoscale;
mod bad_input;
mod balance;
mod deploy;
mod failover;
mod ha;
mod ha_etcd_down;
mod ha_follow;
mod ha_tls;
mod hosts;
mod import;
mod lb;
mod limits;
mod local;
mod logs_follow;
mod metrics;
mod monit;
mod nodes;
mod pm2;
mod python_client;
mod reliability;
mod rollout;
mod scale;
mod scheduling;
mod shell;
mod supervision;
mod tls;
mod verbs;

use std::time::Duration;

use pmcluster_tests::{Cluster, Instance, render};

/// Deadline of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Online, with a pid that is alive now: the list reflects the agents' last reports, so a pid
/// listed right after a change may already be gone.
pub fn live(inst: &Instance) -> bool {
    inst.live()
}

/// Waits until `app` has exactly `n` instances, indices 0..n, all [`live`]; returns them.
#[track_caller]
pub fn wait_online(c: &Cluster, app: &str, n: usize) -> Vec<Instance> {
    match c.wait_online(app, n) {
        Ok(list) => list,
        Err(e) => panic!("{e}"),
    }
}

/// The instance with `index` in a list, or a description of the list.
pub fn by_index(list: &[Instance], index: u32) -> Result<&Instance, String> {
    list.iter()
        .find(|i| i.index == index)
        .ok_or_else(|| format!("no index {index} in:{}", render(list)))
}
