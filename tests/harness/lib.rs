//! Harness for pmcluster's end-to-end tests and benchmarks: runs a real coordinator and real
//! agents on loopback (or each on a test host of its own) in a temporary directory, drives the
//! real `pmcluster` CLI, and talks to instances over HTTP.
//!
//! It owns every process it starts and ends them by pid when the [`Cluster`] drops: agents first
//! with SIGTERM (so they stop their instances), then SIGKILL for leftovers, then the coordinator,
//! then any instance it saw that is still alive. It never kills by name, and never kills a pid
//! unless that pid is still the very process it recorded (same start time).
//!
//! It must not make correctness depend on sleeping: callers wait on conditions with
//! [`wait_until`], which polls and, on timeout, panics with the last state it observed.
//!
//! The binaries come from the cargo target dir (`cargo build --workspace --bins`): the dir of
//! the running test executable, or `PMCLUSTER_BIN_DIR`.
//!
//! Modules, bottom up: `error`; `wait` (polling with deadlines); `bins` (locating binaries);
//! `proc` (pids, over the agent's own `/proc` code); `daemon` (one started daemon); `ports`;
//! `http`; `skip` (reporting a test this host cannot run); `cli` (a CLI run's output and `list`
//! entries); `cluster` (the cluster and its cleanup); `app` (starting the test app, the one way
//! every test does it); `sampler`; `hosts` (test hosts: network namespaces on a bridge);
//! `run` (a short command run to its end within a deadline); `python` (the virtualenv of the
//! Python tests); `etcd` (etcd members for the HA store and pair); `pair` (an HA pair of coordinators on etcd); `standby` (a fake standby coordinator that
//! points clients at the real one).

mod app;
pub mod bench;
mod bins;
mod cli;
mod cluster;
mod daemon;
mod error;
mod etcd;
mod hosts;
mod http;
mod pair;
mod ports;
mod proc;
mod python;
mod run;
mod sampler;
mod skip;
mod standby;
mod tls;
mod wait;

pub use app::{AppStart, StartedApp};
pub use bins::{
    AGENT_BIN, BIN_DIR_ENV, Bins, CLI_BIN, COORDINATOR_BIN, TESTAPP_BIN, bin_dir, binary,
};
pub use cli::{CliOutput, Instance, per_node, render};
pub use cluster::{
    AGENT_GRACE, CLI_TIMEOUT, CLIENT_HOST, Cluster, KEEP_ENV, NODE_NAMES, STARTUP_TIMEOUT,
};
pub use daemon::{Daemon, tail};
pub use error::Error;
pub use etcd::{ETCD_STARTUP_TIMEOUT, Etcd, EtcdTls, etcd_binary};
pub use hosts::{Host, Net, enter_netns, hosts_unavailable, pids_in};
pub use http::{HttpReply, health, http_get, http_get_url, http_get_within};
pub use pair::Pair;
pub use ports::free_port_range;
pub use proc::{ProcId, children_of, is_log_pump, kill_pid, pid_alive};
pub use python::venv_python;
pub use run::run_bounded;
pub use sampler::Sampler;
pub use skip::{REQUIRE_ENV, SKIP_MARK, requires, skip};
pub use standby::FakeStandby;
pub use tls::{Pki, TEST_USER};
pub use wait::{POLL_INTERVAL, now_ms, poll_until, wait_for, wait_until};
