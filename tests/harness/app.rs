//! Starting an app through the real CLI, the one way the tests do it: `pmcluster start` of the
//! test app (or another command) with a name, a count and a range of free ports, then a wait
//! until every instance is online.

use std::collections::BTreeMap;

use crate::cli::Instance;
use crate::cluster::Cluster;
use crate::error::{Error, unexpected};
use crate::ports::free_port_range;
use crate::proc::ProcId;

/// What `--port` gets.
#[derive(Debug, Clone, Copy)]
enum Ports {
    /// `BASE-END`: instance i on BASE+i.
    Fixed(u16),
    /// `auto:BASE-END`: any free port of the range, so that on loopback a replacement can start
    /// while its predecessor still holds its port.
    Auto(u16),
}

/// A `pmcluster start` being set up; see [`Cluster::start_app`].
#[must_use = "nothing starts until .online()"]
pub struct AppStart<'c> {
    cluster: &'c Cluster,
    name: String,
    n_instances: u16,
    ports: Ports,
    extra_args: Vec<String>,
}

/// An app whose instances all came online.
#[derive(Debug, Clone)]
pub struct StartedApp {
    /// The first port of its range.
    pub base_port: u16,
    /// Its instances, sorted by index (0..n).
    pub instances: Vec<Instance>,
}

impl StartedApp {
    /// Each instance's process, by pid and start time.
    pub fn procs(&self) -> Vec<ProcId> {
        self.instances
            .iter()
            .filter_map(|i| ProcId::of(i.pid?))
            .collect()
    }

    /// Pid by index.
    pub fn pids(&self) -> BTreeMap<u32, u32> {
        self.instances
            .iter()
            .filter_map(|i| Some((i.index, i.pid?)))
            .collect()
    }
}

impl Cluster {
    /// Starts the test app as `name` with `n_instances` instances on a fixed range of one free
    /// port per instance (at least one); the builder changes ports and adds flags, and
    /// [`AppStart::online`] runs it:
    ///
    /// ```text
    /// let web = c.start_app("web", 4).online().expect("web starts");
    /// let web = c.start_app("web", 6).auto_ports(30).args(&["--reschedule-after", "2s"]).online()?;
    /// ```
    pub fn start_app(&self, name: &str, n_instances: u16) -> AppStart<'_> {
        AppStart {
            cluster: self,
            name: name.to_string(),
            n_instances,
            ports: Ports::Fixed(n_instances.max(1)),
            extra_args: Vec::new(),
        }
    }
}

impl AppStart<'_> {
    /// A fixed range of `n` free ports (instance i on the first port + i).
    pub fn ports(mut self, n: u16) -> Self {
        self.ports = Ports::Fixed(n);
        self
    }

    /// An `auto:` range of `n` free ports.
    pub fn auto_ports(mut self, n: u16) -> Self {
        self.ports = Ports::Auto(n);
        self
    }

    /// More `pmcluster start` flags (e.g. `--reschedule-after 2s`).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra_args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Runs `pmcluster start` and waits until its instances are all online and alive; remembers
    /// their pids, so that the cluster's drop ends them even if an agent adopted them.
    pub fn online(self) -> Result<StartedApp, Error> {
        let (span, auto) = match self.ports {
            Ports::Fixed(n) => (n, false),
            Ports::Auto(n) => (n, true),
        };
        if span == 0 {
            return Err(unexpected(
                format!("starting {}", self.name),
                "a port range of 0 ports: give at least one",
            ));
        }
        let base_port = free_port_range(span)?;
        let range = format!(
            "{}{base_port}-{}",
            if auto { "auto:" } else { "" },
            base_port + span - 1
        );
        let testapp = self.cluster.testapp().display().to_string();
        let n = self.n_instances.to_string();
        let mut args = vec![
            "start",
            &testapp,
            "--name",
            &self.name,
            "--instances",
            &n,
            "--port",
            &range,
        ];
        args.extend(self.extra_args.iter().map(String::as_str));
        let out = self.cluster.try_cli(&args)?;
        if !out.success() {
            return Err(unexpected(
                format!("starting {}", self.name),
                out.to_string(),
            ));
        }
        let instances = self
            .cluster
            .wait_online(&self.name, usize::from(self.n_instances))?;
        let started = StartedApp {
            base_port,
            instances,
        };
        let pids: Vec<u32> = started.pids().into_values().collect();
        self.cluster.remember_pids(&pids);
        Ok(started)
    }
}
