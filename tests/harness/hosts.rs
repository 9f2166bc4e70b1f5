//! Test hosts: each host a network namespace of its own, with one address on a bridge, so that
//! a cluster's daemons stop sharing one address and one port space as they do on loopback.
//!
//! Layout of one [`Net`]: a "switch" namespace holds the bridge; each host namespace holds one
//! end of a veth pair (`eth0`, its address `10.X.Y.I/24`), whose other end is a port of that
//! bridge. Nothing is created in the namespace the tests run in, so the machine's own firewall
//! (which may drop bridged traffic) and routes play no part, and two nets never see each other
//! even if their subnets were equal; the names and subnet still carry the test process's pid and
//! a counter, so that logs and `ip netns` tell runs apart.
//!
//! Processes enter a host with `nsenter --net=/run/netns/NAME`, which execs the program itself
//! (its pid is the one the harness records) and, unlike `ip netns exec`, leaves the mount
//! namespace alone: `ip netns exec` remounts `/sys`, hiding the cgroup mounts the agent uses.
//!
//! A host can be killed (every process in its namespace, found through `/proc/PID/ns/net`,
//! never by name), frozen (SIGSTOP of those processes) and thawed, and partitioned (from some
//! hosts with firewall rules inside its namespace, or from all by taking its bridge port down)
//! and healed. Drop thaws, kills every process left in the net's namespaces and deletes them,
//! also when the test panicked.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use pmcluster_agent::process::read_stat;

use crate::error::{Error, io_err, unexpected};
use crate::proc::ProcId;
use crate::wait::poll_until;

/// Where `ip netns add` puts the namespaces it names.
const NETNS_DIR: &str = "/run/netns";
/// How long killing a host's processes may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

static NETS: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the test-host tests, if it cannot: they need root, `ip`,
/// `nsenter`, `iptables`, and `curl` to reach one host from another.
pub fn hosts_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("test hosts (network namespaces) need root".into());
    }
    for tool in ["ip", "nsenter", "iptables", "curl"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("test hosts need `{tool}`, which is not installed"));
        }
    }
    None
}

/// One host of a [`Net`].
#[derive(Debug, Clone)]
pub struct Host {
    /// The name tests use ("coordinator", "node-a", "client", ...).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub addr: Ipv4Addr,
    /// Its veth end on the bridge, in the switch namespace.
    port: String,
}

impl Host {
    fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// Hosts on one bridge; see the module's doc.
#[derive(Debug)]
pub struct Net {
    switch: String,
    bridge: String,
    hosts: Vec<Host>,
    /// Every namespace made so far (the switch first), for cleanup.
    made: Vec<String>,
    frozen: Mutex<BTreeSet<String>>,
    cut: Mutex<BTreeSet<String>>,
}

impl Net {
    /// A bridge and one host per name, each with its address (in `names` order: .1, .2, ...).
    pub fn create(names: &[&str]) -> Result<Net, Error> {
        if names.is_empty() || names.len() > 250 {
            return Err(unexpected("making test hosts", "1 to 250 hosts"));
        }
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("pmc-{pid}-{n}");
        // Isolation does not depend on the subnet (see the module's doc); it only differs per
        // run and net so that two nets' logs cannot be confused.
        let subnet = [10, 100 + (pid % 100) as u8, (n % 256) as u8];
        let mut net = Net {
            switch: format!("{tag}-sw"),
            bridge: format!("pmb{}x{}", pid % 10_000_000, n % 1000),
            hosts: Vec::new(),
            made: Vec::new(),
            frozen: Mutex::new(BTreeSet::new()),
            cut: Mutex::new(BTreeSet::new()),
        };
        // On error, drop removes whatever was made so far.
        add_netns(&net.switch)?;
        net.made.push(net.switch.clone());
        let sw = net.switch.clone();
        ip(&["-n", &sw, "link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", &net.bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let octet = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let host = Host {
                name: name.to_string(),
                netns: format!("{tag}-{i}"),
                addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], octet),
                port: format!("h{i}"),
            };
            add_netns(&host.netns)?;
            net.made.push(host.netns.clone());
            let ns = host.netns.as_str();
            let port = host.port.as_str();
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", &net.bridge])?;
            ip(&["-n", &sw, "link", "set", port, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            // Each host's own loopback, for daemons that also listen there.
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            net.hosts.push(host);
        }
        Ok(net)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> Result<&Host, Error> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| unexpected("finding a test host", format!("no host {name:?}")))
    }

    /// The address of host `name`.
    pub fn addr(&self, name: &str) -> Result<Ipv4Addr, Error> {
        Ok(self.host(name)?.addr)
    }

    /// A command that runs `program` on host `name` (in its network namespace).
    pub fn command(
        &self,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, Error> {
        let host = self.host(name)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.netns_path().display()))
            .arg("--")
            .arg(program);
        Ok(cmd)
    }

    /// The namespace of host `name`, for [`enter_netns`] on a thread of the caller's own.
    pub fn netns_path(&self, name: &str) -> Result<PathBuf, Error> {
        Ok(self.host(name)?.netns_path())
    }

    /// Every process in host `name`'s network namespace.
    pub fn pids(&self, name: &str) -> Result<Vec<ProcId>, Error> {
        let host = self.host(name)?;
        pids_in(&host.netns_path())
    }

    /// Each host's name and the path of its namespace, for [`pids_in`] on another thread.
    pub fn netns_paths(&self) -> Vec<(String, PathBuf)> {
        self.hosts
            .iter()
            .map(|h| (h.name.clone(), h.netns_path()))
            .collect()
    }

    /// SIGKILLs every process on host `name`, as if it lost power, and waits until none is left.
    pub fn kill(&self, name: &str) -> Result<(), Error> {
        let path = self.host(name)?.netns_path();
        kill_all_in(&path)
    }

    /// SIGSTOPs every process on host `name` (again, until no new one appears): the host stops
    /// answering without closing any connection.
    pub fn freeze(&self, name: &str) -> Result<(), Error> {
        let path = self.host(name)?.netns_path();
        self.frozen_set().insert(name.to_string());
        poll_until(
            KILL_TIMEOUT,
            &format!("every process on {name} stopped"),
            || {
                let running: Vec<ProcId> = pids_in(&path)?
                    .into_iter()
                    .filter(|p| read_stat(p.pid).is_some_and(|s| s.state != 'T'))
                    .collect();
                if running.is_empty() {
                    return Ok(());
                }
                for p in &running {
                    p.signal(Signal::SIGSTOP);
                }
                Err(format!("still running: {running:?}"))
            },
        )
    }

    /// SIGCONTs every process on host `name`.
    pub fn thaw(&self, name: &str) -> Result<(), Error> {
        let path = self.host(name)?.netns_path();
        self.frozen_set().remove(name);
        for p in pids_in(&path)? {
            p.signal(Signal::SIGCONT);
        }
        Ok(())
    }

    /// Cuts host `name` off from the hosts `from`: its namespace drops every packet to or from
    /// their addresses. Established connections hang, as on a real network fault.
    pub fn partition_from(&self, name: &str, from: &[&str]) -> Result<(), Error> {
        let host = self.host(name)?.clone();
        self.cut_set().insert(name.to_string());
        for other in from {
            let addr = self.addr(other)?.to_string();
            self.iptables(&host, &["-A", "INPUT", "-s", &addr, "-j", "DROP"])?;
            self.iptables(&host, &["-A", "OUTPUT", "-d", &addr, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Cuts host `name` off from every other host: its bridge port goes down.
    pub fn isolate(&self, name: &str) -> Result<(), Error> {
        let host = self.host(name)?;
        self.cut_set().insert(name.to_string());
        ip(&["-n", &self.switch, "link", "set", &host.port, "down"])
    }

    /// Undoes [`Net::partition_from`] and [`Net::isolate`] for host `name`.
    pub fn heal(&self, name: &str) -> Result<(), Error> {
        let host = self.host(name)?.clone();
        self.iptables(&host, &["-F"])?;
        ip(&["-n", &self.switch, "link", "set", &host.port, "up"])?;
        self.cut_set().remove(name);
        Ok(())
    }

    /// Thaws and heals every host, so that daemons can be stopped gracefully.
    pub fn release(&self) {
        let frozen: Vec<String> = self.frozen_set().iter().cloned().collect();
        for name in frozen {
            if let Err(e) = self.thaw(&name) {
                eprintln!("harness: thawing {name}: {e}");
            }
        }
        let cut: Vec<String> = self.cut_set().iter().cloned().collect();
        for name in cut {
            if let Err(e) = self.heal(&name) {
                eprintln!("harness: healing {name}: {e}");
            }
        }
    }

    /// SIGKILLs every process left on any host.
    pub fn kill_everything(&self) {
        for name in &self.made {
            let path = Path::new(NETNS_DIR).join(name);
            // Stopped processes die of SIGKILL too.
            if let Err(e) = kill_all_in(&path) {
                eprintln!("harness: killing the processes in {name}: {e}");
            }
        }
    }

    fn iptables(&self, host: &Host, args: &[&str]) -> Result<(), Error> {
        let mut cmd = self.command(&host.name, "iptables")?;
        cmd.args(args);
        run(
            cmd,
            &format!("iptables {} on {}", args.join(" "), host.name),
        )
    }

    fn frozen_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.frozen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cut_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.cut.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.release();
        self.kill_everything();
        // Hosts before the switch: deleting a host namespace deletes its veth pair.
        for name in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("harness: {e}");
            }
        }
    }
}

/// Adds namespace `name`, first deleting one of that name: names carry this process's pid, so
/// one that exists is the leftover of a killed earlier process with the same pid.
fn add_netns(name: &str) -> Result<(), Error> {
    let path = Path::new(NETNS_DIR).join(name);
    if path.exists() {
        kill_all_in(&path)?;
        ip(&["netns", "del", name])?;
    }
    ip(&["netns", "add", name])
}

/// The inode that identifies the network namespace bound at `path`.
fn netns_inode(path: &Path) -> Result<u64, Error> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err(format!("reading {}", path.display())))
}

/// Moves the calling thread (only it: a network namespace is per thread) into the namespace
/// bound at `path`, so that its sockets are that host's. For a thread the test spawned for this
/// (a load loop, a sampler), never libtest's own: a later test on the same thread would run there.
pub fn enter_netns(path: &Path) -> Result<(), Error> {
    let file = std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| unexpected(format!("entering {}", path.display()), e.to_string()))
}

/// Every process whose network namespace is the one bound at `path`.
pub fn pids_in(path: &Path) -> Result<Vec<ProcId>, Error> {
    let want = format!("net:[{}]", netns_inode(path)?);
    let table = pmcluster_agent::process::scan().map_err(io_err("scanning /proc"))?;
    let mut out = Vec::new();
    for stat in table.iter().filter(|s| s.running()) {
        let link = std::fs::read_link(format!("/proc/{}/ns/net", stat.pid));
        if link.is_ok_and(|l| l.as_os_str() == want.as_str()) {
            out.push(ProcId {
                pid: stat.pid,
                start_ticks: stat.start_ticks,
            });
        }
    }
    Ok(out)
}

fn kill_all_in(path: &Path) -> Result<(), Error> {
    let what = format!("every process in {} gone", path.display());
    poll_until(KILL_TIMEOUT, &what, || {
        let left = pids_in(path)?;
        if left.is_empty() {
            return Ok(());
        }
        for p in &left {
            // ProcId::signal checks the start time, so a reused pid is left alone.
            p.signal(Signal::SIGKILL);
        }
        Err(format!("left: {left:?}"))
    })
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, &format!("ip {}", args.join(" ")))
}

fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(unexpected(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}
