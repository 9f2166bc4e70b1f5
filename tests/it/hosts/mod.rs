//! Across test hosts (network namespaces on a bridge, see `pmcluster_tests::Net`): the
//! coordinator, each agent and the CLI on hosts of their own, each with its own address and port
//! space. These need root; without it they report a skip.

mod copies;
mod drain;
mod ha;
mod harness;
mod probe;
mod rollout;
mod scenarios;
mod unstartable;

use pmcluster_tests::{Cluster, hosts_unavailable, skip};

/// Starts a cluster of `n_agents` agents on test hosts, or reports the skip and returns `None`.
pub fn start(n_agents: usize, coordinator_args: &[&str]) -> Option<Cluster> {
    if let Some(reason) = hosts_unavailable() {
        skip("root", &reason);
        return None;
    }
    match Cluster::start_hosts(n_agents, coordinator_args) {
        Ok(c) => Some(c),
        Err(e) => panic!("starting a cluster on test hosts: {e}"),
    }
}
