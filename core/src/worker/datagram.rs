//! The built-in UDP worker: one bound socket of the port's reuseport group, read and answered in batches
//! (`recvmmsg`/`sendmmsg`: one system call for up to [`BATCH`] datagrams each way), until the supervisor
//! says drain.
//!
//! `echo` sends each datagram back to its sender unchanged; `hello` answers each with
//! `Hello from <runtime> process <pid>\n`. Every datagram read is answered before the next batch is read,
//! so a worker that stops reading has nothing of a client's left in its hands.
//!
//! Stopping: asked to **hand over** (the successor reads this very socket), it stops reading at once —
//! what is queued is the successor's. Asked to **drain** (its socket is retiring, or the server stops), it
//! reads until the socket is empty (`EAGAIN`), answers, and exits: the supervisor closes a retiring
//! socket only after that, so nothing queued on it is lost.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::{Config, Mode};
use crate::datagram::Flows;
use crate::drain::{self, Ask};
use crate::log::log;
use crate::notify::notify;
use crate::stats::Slot;

const SOCKET: Token = Token(0);
const DRAIN_PIPE: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Datagrams per `recvmmsg`/`sendmmsg`.
pub(crate) const BATCH: usize = 32;
/// Room for the largest UDP payload (65,507 bytes over IPv4): a datagram is never cut short.
const DATAGRAM: usize = 64 * 1024;
/// Batches per wake-up before the drain pipe and signals are looked at again.
const BUDGET: usize = 64;

/// What a forked UDP worker needs; everything else it inherited is closed.
pub(crate) struct Worker<'a> {
    pub index: usize,
    pub socket: UdpSocket,
    pub drain: drain::Receiver,
    pub slot: &'a Slot,
    pub config: &'a Config,
    pub notify: &'a Path,
}

/// Runs the worker until drained; returns the process exit code.
pub(crate) fn run(w: Worker<'_>) -> i32 {
    match serve(w) {
        Ok(()) => 0,
        Err(e) => {
            log!("udp worker failed: {e}");
            1
        }
    }
}

fn serve(w: Worker<'_>) -> io::Result<()> {
    w.socket.set_nonblocking(true)?;
    let fd = w.socket.as_raw_fd();
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)?;
    poll.registry().register(
        &mut SourceFd(&w.drain.as_raw_fd()),
        DRAIN_PIPE,
        Interest::READABLE,
    )?;
    let mut signals =
        crate::signals::SignalGuard::install(poll.registry(), SIGNALS, crate::signals::WORKER)
            .map_err(|e| io::Error::other(e.to_string()))?;
    let greeting = (w.config.mode == Mode::Hello).then(|| {
        format!(
            "Hello from {} process {}\n",
            w.config.runtime,
            std::process::id()
        )
        .into_bytes()
    });
    let mut batch = Batch::new();
    let mut flows = Flows::new(w.config.udp_flow_idle);
    tell(w.notify, w.index, "READY=1");
    let mut events = Events::with_capacity(8);
    let mut stop = None;
    loop {
        // Whatever is queued first (datagrams may have waited for us), then wait for more.
        // A batch shorter than BATCH emptied the socket: the next datagram raises a new (edge-triggered)
        // event, so waiting now costs no `EAGAIN` read (as the C floor's blocking `recvmmsg` costs none).
        // A budget spent on full batches leaves datagrams queued, which raise no new event: wait for none.
        let mut more = true;
        for _ in 0..BUDGET {
            if batch
                .turn(fd, greeting.as_deref(), w.slot, &mut flows)?
                .is_some_and(|n| n < BATCH)
            {
                more = false;
                break;
            }
        }
        if let Some(ask) = stop {
            return finish(&w, fd, ask, &mut batch, greeting.as_deref(), &mut flows);
        }
        flows.sweep(w.slot);
        // Wakes for the flows' sweep even when nothing arrives (an idle worker's flows go to 0).
        let wait = if more { Duration::ZERO } else { flows.every() };
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for event in events.iter() {
            match event.token() {
                DRAIN_PIPE => stop = stop.or(w.drain.hear()),
                SIGNALS if !signals.drain().is_empty() => {
                    log!("worker {}: SIGTERM", w.index);
                    stop = stop.or(Some(Ask::Drain));
                }
                _ => {}
            }
        }
        if stop == Some(Ask::Handover) {
            // Not one more read: what is queued is the successor's.
            return finish(
                &w,
                fd,
                Ask::Handover,
                &mut batch,
                greeting.as_deref(),
                &mut flows,
            );
        }
    }
}

/// Stops: reads the socket empty first unless handing it over.
fn finish(
    w: &Worker<'_>,
    fd: i32,
    ask: Ask,
    batch: &mut Batch,
    greeting: Option<&[u8]>,
    flows: &mut Flows,
) -> io::Result<()> {
    tell(w.notify, w.index, "STOPPING=1");
    let mut read = 0;
    if ask == Ask::Drain {
        loop {
            match batch.turn(fd, greeting, w.slot, flows)? {
                Some(0) => break,
                Some(n) => read += n,
                None => {}
            }
        }
    }
    let how = match ask {
        Ask::Drain => format!("read its socket empty ({read} datagram(s) while draining)"),
        Ask::Handover => "handed its socket over".to_string(),
    };
    log!("worker {} {how}; drained", w.index);
    Ok(())
}

fn tell(path: &Path, index: usize, message: &str) {
    if let Err(e) = notify(path, message) {
        log!("worker {index}: cannot tell the supervisor {message} ({e})");
    }
}

/// The buffers of one `recvmmsg`/`sendmmsg` round, allocated once.
struct Batch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            // Zeroed pages cost nothing until a datagram that long lands in them.
            bufs: vec![0; BATCH * DATAGRAM],
            // SAFETY: plain C structs, valid when zeroed.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    /// One round: reads up to [`BATCH`] datagrams and answers them all; returns how many were read (0:
    /// the socket is empty), or `None` when an error (EINTR, an ICMP error of an earlier reply) was read
    /// instead: read again.
    fn turn(
        &mut self,
        fd: i32,
        greeting: Option<&[u8]>,
        slot: &Slot,
        flows: &mut Flows,
    ) -> io::Result<Option<usize>> {
        self.iovs.clear();
        self.msgs.clear();
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs.push(libc::iovec {
                // SAFETY: within `bufs` (BATCH * DATAGRAM bytes).
                iov_base: unsafe { base.add(i * DATAGRAM) }.cast(),
                iov_len: DATAGRAM,
            });
        }
        for i in 0..BATCH {
            // SAFETY: a zeroed msghdr is valid; the pointers set point into `self`, alive for the call.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            m.msg_hdr.msg_iov = &mut self.iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        // SAFETY: `msgs` holds BATCH headers whose buffers and names live in `self`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Some(0)),
                Some(libc::EINTR) => Ok(None),
                // An ICMP error queued for an earlier reply (the peer's port closed): not ours to fail on.
                // Datagrams may still be queued behind it: the caller reads again.
                Some(libc::ECONNREFUSED) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                    slot.error();
                    Ok(None)
                }
                _ => Err(e),
            };
        }
        let n = n as usize;
        let now = Instant::now();
        let mut bytes = 0;
        for i in 0..n {
            let m = &mut self.msgs[i];
            let len = m.msg_len as usize;
            bytes += len;
            let name = m.msg_hdr.msg_namelen as usize;
            // SAFETY: the kernel wrote `name` bytes of address into addrs[i].
            let raw = unsafe {
                std::slice::from_raw_parts(
                    (&self.addrs[i] as *const libc::sockaddr_storage).cast::<u8>(),
                    name,
                )
            };
            flows.heard(raw, now);
            match greeting {
                Some(g) => {
                    self.iovs[i].iov_base = g.as_ptr() as *mut libc::c_void;
                    self.iovs[i].iov_len = g.len();
                }
                None => self.iovs[i].iov_len = len,
            }
            m.msg_hdr.msg_iov = &mut self.iovs[i];
        }
        slot.datagrams_in(n, bytes);
        self.answer(fd, n, slot);
        Ok(Some(n))
    }

    /// Sends the first `n` prepared replies, waiting (briefly) when the socket's send buffer is full.
    fn answer(&mut self, fd: i32, n: usize, slot: &Slot) {
        let mut sent = 0;
        let mut waits = 0;
        while sent < n {
            // SAFETY: msgs[sent..n] point into `self`, alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs.as_mut_ptr().add(sent),
                    (n - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                let done = rc as usize;
                let bytes = self.iovs[sent..sent + done].iter().map(|v| v.iov_len).sum();
                slot.datagrams_out(done, bytes);
                sent += done;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if waits < 100 => {
                    waits += 1;
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, for up to 10 ms.
                    unsafe { libc::poll(&mut p, 1, 10) };
                }
                _ => {
                    // This reply cannot go (its peer is unreachable): count it, go on with the rest.
                    slot.error();
                    sent += 1;
                }
            }
        }
    }
}
