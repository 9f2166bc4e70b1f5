//! Ports for `auto:A-B` specs: picks, for an instance, a port of the range that this agent has
//! not given to another instance and that is free on the host, and keeps it across restarts.
//!
//! A port is "free" when 0.0.0.0:p can be bound (and is released at once): that bind fails
//! while anything listens on p at any IPv4 address or on the dual-stack `[::]`. Fixed ports
//! (`3000`, `3000-3011`) are chosen by the coordinator; the supervisor checks them with
//! [`is_free`] before a spawn.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Mutex, PoisonError};

use crate::model::InstanceId;

/// Ports handed out by this agent, by port.
#[derive(Default)]
pub(crate) struct Ports {
    given: Mutex<BTreeMap<u16, InstanceId>>,
}

impl Ports {
    /// A port of `lo..=hi` for `id`: `previous` when it is still in the range, not given to
    /// another instance and free; otherwise the lowest such port. `None` when the range is full.
    pub fn pick(&self, id: &InstanceId, lo: u16, hi: u16, previous: Option<u16>) -> Option<u16> {
        self.pick_with(id, lo, hi, previous, is_free)
    }

    fn pick_with(
        &self,
        id: &InstanceId,
        lo: u16,
        hi: u16,
        previous: Option<u16>,
        free: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        let mut given = self.given.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = previous
            && (lo..=hi).contains(&p)
            && given.get(&p).is_none_or(|owner| owner == id)
            && free(p)
        {
            given.insert(p, id.clone());
            return Some(p);
        }
        // The old port is gone: give it back before looking for another.
        given.retain(|_, owner| owner != id);
        let port = (lo..=hi).find(|p| !given.contains_key(p) && free(*p))?;
        given.insert(port, id.clone());
        Some(port)
    }

    /// Records that `id` holds `port` (an adopted process runs on it).
    pub fn claim(&self, id: &InstanceId, port: u16) {
        self.given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port, id.clone());
    }

    /// Gives back every port of `id` (the instance was forgotten).
    pub fn release(&self, id: &InstanceId) {
        self.given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, owner| owner != id);
    }
}

/// Whether nothing listens on `port`, at any IPv4 address (loopback included) or on `[::]`.
///
/// One bind of the wildcard, without a `listen`: the kernel refuses it for a listener on any
/// address of the port, so a second bind of 127.0.0.1 would find nothing more. `SO_REUSEADDR`,
/// as a server sets it, lets connections of an earlier process in `TIME_WAIT` count as free.
pub(crate) fn is_free(port: u16) -> bool {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, socket_with, sockopt};
    let Ok(socket) = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    sockopt::set_socket_reuseaddr(&socket, true).is_ok()
        && bind(&socket, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_skip_given_and_busy_ports() {
        let ports = Ports::default();
        let (a, b, c) = (
            InstanceId::new("a"),
            InstanceId::new("b"),
            InstanceId::new("c"),
        );
        let busy = |p: u16| p != 3001;
        assert_eq!(ports.pick_with(&a, 3000, 3003, None, busy), Some(3000));
        // 3000 is a's, 3001 is taken by some other program.
        assert_eq!(ports.pick_with(&b, 3000, 3003, None, busy), Some(3002));
        // a keeps its port across a restart.
        assert_eq!(
            ports.pick_with(&a, 3000, 3003, Some(3000), busy),
            Some(3000)
        );
        // b's old port is now busy: it moves, and gives the old one back.
        let not_3002 = |p: u16| p != 3001 && p != 3002;
        assert_eq!(
            ports.pick_with(&b, 3000, 3003, Some(3002), not_3002),
            Some(3003)
        );
        assert_eq!(ports.pick_with(&c, 3000, 3003, None, |_| true), Some(3001));
        assert_eq!(ports.pick_with(&c, 3000, 3003, None, |_| true), Some(3001));
        // Full range.
        let d = InstanceId::new("d");
        assert_eq!(ports.pick_with(&d, 3000, 3003, None, |_| true), Some(3002));
        let e = InstanceId::new("e");
        assert_eq!(ports.pick_with(&e, 3000, 3003, None, |_| true), None);
        ports.release(&a);
        assert_eq!(ports.pick_with(&e, 3000, 3003, None, |_| true), Some(3000));
    }

    #[test]
    fn a_listener_at_any_address_makes_a_port_busy() -> std::io::Result<()> {
        use std::io::Read;
        use std::net::{IpAddr, Ipv6Addr, TcpListener, TcpStream};
        // Below the ephemeral range: once a listener closes, no connection of a test running
        // alongside can be given its port, so "free after close" holds.
        let listen = |ip: IpAddr| -> std::io::Result<TcpListener> {
            let start = 20_000 + (std::process::id() % 5_000) as u16;
            let mut last = None;
            for port in (start..30_000).chain(20_000..start) {
                match TcpListener::bind((ip, port)) {
                    Ok(l) => return Ok(l),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
        };
        let free_after = |listener: TcpListener| -> std::io::Result<u16> {
            let port = listener.local_addr()?.port();
            assert!(!is_free(port), "{:?} listens", listener.local_addr()?);
            drop(listener);
            assert!(is_free(port), "{port} after its listener closed");
            Ok(port)
        };
        free_after(listen(Ipv4Addr::LOCALHOST.into())?)?;
        free_after(listen(Ipv4Addr::UNSPECIFIED.into())?)?;
        // Another loopback address than the one a second bind would have tried.
        free_after(listen(Ipv4Addr::new(127, 0, 0, 2).into())?)?;
        // Dual-stack `[::]` where the host has IPv6 (the IPv4 cases above run regardless).
        if let Ok(v6) = listen(Ipv6Addr::UNSPECIFIED.into()) {
            free_after(v6)?;
        }

        // A connection the server closed first stays in TIME_WAIT on the port: still free.
        let listener = listen(Ipv4Addr::LOCALHOST.into())?;
        let addr = listener.local_addr()?;
        let mut client = TcpStream::connect(addr)?;
        let (served, _) = listener.accept()?;
        drop(served);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest)?;
        drop(client);
        assert_eq!(free_after(listener)?, addr.port());
        Ok(())
    }
}
