//! A UDP function worker's datagrams: [`WorkerListener::receive`], the counterpart of `accept` for a
//! listener whose socket is a UDP socket of the port's group (`protocol = udp`).
//!
//! Stopping is as for the built-in UDP worker: asked to hand over (the successor reads this very socket),
//! it hands out nothing more at once; asked to drain (its socket retires, or the server stops), it hands out
//! what is queued until the socket is empty (`EAGAIN`), then says [`Receive::Drained`].

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::WorkerListener;

/// What one [`WorkerListener::receive`] found.
#[derive(Debug)]
pub enum Receive {
    /// A datagram of `len` bytes (at the start of the caller's buffer) from `from`; one longer than the
    /// buffer was cut to it (`truncated`).
    Datagram {
        /// Its bytes at the start of the buffer.
        len: usize,
        /// Its sender, where a reply goes.
        from: SocketAddr,
        /// It was longer than the buffer.
        truncated: bool,
    },
    /// The worker drained: its socket was read empty (or a successor took it over). Every later call
    /// says the same.
    Drained,
    /// The timeout passed with nothing to read.
    TimedOut,
    /// A signal arrived, or [`WorkerListener::wake`] was called: let the host run its handlers, then call
    /// again.
    Interrupted,
}

impl WorkerListener {
    /// Whether this worker's socket is a UDP socket (`receive`, not `accept`).
    pub fn is_udp(&self) -> bool {
        self.flows.is_some()
    }

    /// The next datagram into `buf`, waiting at most `timeout` (`None`: until one comes or the worker
    /// drained). The first call marks the worker ready. Counts datagrams in and the live flows.
    ///
    /// # Errors
    /// `recvfrom` failed other than for an ICMP error of an earlier reply (counted, then skipped).
    pub fn receive(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<Receive> {
        self.ready();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let fd = self.fileno();
            if fd < 0 {
                return Ok(Receive::Drained);
            }
            let draining = self.draining_lately();
            if draining && self.handover.load(Ordering::Acquire) {
                self.close();
                return Ok(Receive::Drained);
            }
            // SAFETY: our socket, open while `listener` holds it; borrowed for this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&borrowed);
            // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv only writes initialized bytes.
            let space = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match sock.recv_from_with_flags(space, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                Ok((n, from)) => {
                    let len = n.min(buf.len());
                    self.slot().datagrams_in(1, len);
                    if let Some(flows) = &self.flows {
                        let mut f = flows.lock().unwrap_or_else(|p| p.into_inner());
                        // SAFETY: `from` holds `len()` initialized bytes of address.
                        let key = unsafe {
                            std::slice::from_raw_parts(
                                from.as_ptr().cast::<u8>(),
                                from.len() as usize,
                            )
                        };
                        f.heard(key, Instant::now());
                        f.sweep(self.slot());
                    }
                    let Some(from) = from.as_socket() else {
                        continue; // not an IP peer: not ours to answer
                    };
                    return Ok(Receive::Datagram {
                        len,
                        from,
                        truncated: n > buf.len(),
                    });
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => {}
                    Some(libc::EINTR) => return Ok(Receive::Interrupted),
                    // An ICMP error queued for an earlier reply (its peer's port closed).
                    Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                        self.slot().error();
                        continue;
                    }
                    _ => {
                        self.slot().error();
                        return Err(e);
                    }
                },
            }
            // The socket is empty: look at the drain pipe now rather than wait on a stale answer.
            if self.draining() {
                // Read empty (or handed over): nothing more comes to this worker.
                self.close();
                return Ok(Receive::Drained);
            }
            if let Some(flows) = &self.flows {
                flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sweep(self.slot());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(Receive::TimedOut);
            }
            // Wake for the flows' sweep too, so an idle worker's flows go to 0.
            let every = self
                .flows
                .as_ref()
                .map(|f| f.lock().unwrap_or_else(|p| p.into_inner()).every());
            let wait = match (left, every) {
                (Some(l), Some(e)) => Some(l.min(e)),
                (l, e) => l.or(e),
            };
            if self.wait(fd, false, wait).is_some() {
                return Ok(Receive::Interrupted);
            }
        }
    }
}
