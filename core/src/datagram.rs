//! UDP sockets of the port's reuseport group: how one is made, and how much waits in its receive queue.
//!
//! A UDP socket is the data path itself (there is no accepted socket to keep): datagrams queued on a
//! socket that closes are gone. So the supervisor never closes one with anything queued — it takes it
//! out of the group's selection, lets its worker read it empty ([`queued_bytes`] says when), and only
//! then closes it (see `supervisor::seat`'s generations).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::stats::Slot;

/// Creates a UDP socket on `addr` that joins the port's `SO_REUSEPORT` group.
///
/// Options in this order, before `bind` (the kernel decides group membership at bind time):
/// 1. `socket(2)` with `SOCK_CLOEXEC` (and `SOCK_NONBLOCK` when `nonblocking`).
/// 2. `SO_REUSEPORT`. No `SO_REUSEADDR`: on a UDP port it would let a socket of any user without
///    `SO_REUSEPORT` bind beside the group and take its datagrams.
/// 3. `IPV6_V6ONLY=1` for IPv6, as for TCP listeners.
/// 4. A receive buffer of at least [`RCVBUF`], so a worker busy for a few milliseconds drops nothing.
/// 5. `bind`.
///
/// # Errors
/// `EADDRINUSE` becomes [`Error::AddrInUse`], `EACCES` [`Error::PermissionDenied`]; anything else is
/// [`Error::Io`].
pub fn bind(addr: SocketAddr, nonblocking: bool) -> Result<UdpSocket> {
    let ctx =
        |what: &'static str| move |e: io::Error| Error::io(format!("{what} for udp {addr}"), e);
    let mut ty = Type::DGRAM.cloexec();
    if nonblocking {
        ty = ty.nonblocking();
    }
    let socket =
        Socket::new(Domain::for_address(addr), ty, Some(Protocol::UDP)).map_err(ctx("socket"))?;
    socket.set_reuse_port(true).map_err(ctx("SO_REUSEPORT"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(ctx("IPV6_V6ONLY"))?;
    }
    if socket.recv_buffer_size().unwrap_or(0) < RCVBUF {
        // Capped by net.core.rmem_max; a smaller buffer still works, it only drops sooner under bursts.
        let _ = socket.set_recv_buffer_size(RCVBUF);
    }
    socket
        .bind(&addr.into())
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EADDRINUSE) => Error::AddrInUse { addr, source },
            Some(libc::EACCES) => Error::PermissionDenied { addr, source },
            _ => Error::io(format!("bind udp {addr}"), source),
        })?;
    Ok(socket.into())
}

/// The receive buffer asked for each socket (the kernel doubles it for its bookkeeping).
pub const RCVBUF: usize = 4 << 20;

/// `SO_MEMINFO` (Linux 4.12) and its first entry, `SK_MEMINFO_RMEM_ALLOC`.
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_VARS: usize = 9;

/// Bytes held by the receive queue of `socket` (with the kernel's per-datagram overhead): 0 exactly when
/// nothing is queued, a zero-length datagram included — which `FIONREAD` (the size of the first datagram)
/// cannot tell. `None` when the kernel cannot say.
pub fn queued_bytes(socket: &impl AsRawFd) -> Option<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS + 7];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 4).then_some(info[0])
}

/// The peers heard from within `idle` (`udp_flow_idle`), by address: the live flows.
#[derive(Default)]
pub(crate) struct Flows {
    idle: Duration,
    seen: HashMap<Vec<u8>, Instant>,
    swept: Option<Instant>,
}

impl Flows {
    /// No flows yet; a peer silent for `idle` is forgotten.
    pub(crate) fn new(idle: Duration) -> Flows {
        Flows {
            idle,
            ..Flows::default()
        }
    }

    /// How long `sweep` may wait at most: a tenth of `idle`, at most a second.
    pub(crate) fn every(&self) -> Duration {
        (self.idle / 10).min(Duration::from_secs(1))
    }

    pub(crate) fn heard(&mut self, addr: &[u8], now: Instant) {
        match self.seen.get_mut(addr) {
            Some(t) => *t = now,
            None => {
                self.seen.insert(addr.to_vec(), now);
            }
        }
    }

    /// Forgets flows idle for `idle`, at most every tenth of it (and of a second); publishes the count.
    pub(crate) fn sweep(&mut self, slot: &Slot) {
        let now = Instant::now();
        let every = self.every();
        if self.swept.is_some_and(|t| now.duration_since(t) < every) {
            return;
        }
        self.swept = Some(now);
        let idle = self.idle;
        self.seen.retain(|_, t| now.duration_since(*t) < idle);
        slot.set_flows(self.seen.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_empty_exactly_when_nothing_waits_even_a_zero_length_datagram() {
        let a = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = a.local_addr().unwrap();
        assert_eq!(queued_bytes(&a), Some(0));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"", addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(queued_bytes(&a).unwrap() > 0);
        let mut buf = [0u8; 8];
        assert_eq!(a.recv_from(&mut buf).unwrap().0, 0);
        assert_eq!(queued_bytes(&a), Some(0));
        // A second member of the group: same port, same options.
        let b = bind(addr, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert_eq!(crate::reuseport::members(addr, true).unwrap(), 2);
    }
}
