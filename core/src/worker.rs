//! A worker: one mio event loop per process serving one listener, until the supervisor says drain.
//!
//! Connections live in a slab keyed by mio token. Reads go into one scratch buffer per worker and are
//! written straight back; only a write that would block copies the rest into the connection, so an idle
//! connection holds no buffer at all. While a connection has unsent bytes it is not read from: the client
//! feels backpressure through TCP instead of the worker buffering without bound. The most user-space
//! memory one connection can hold is therefore one read, [`SCRATCH`] (256 KiB), and only while its client
//! is not taking the echo.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::buffer::PageAligned;
use crate::config::{Config, Mode};
use crate::drain::{self, Ask, DRAIN_GRACE};
use crate::log::log;
use crate::notify::notify;
use crate::stats::Slot;

pub(crate) mod datagram;
mod stream;

const LISTENER: Token = Token(usize::MAX);
const DRAIN_PIPE: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Size of the shared read buffer: the most one read takes, and so the most unsent bytes one connection
/// can be left holding (the per-connection memory bound). 256 KiB, not 64: a bulk stream then needs a
/// quarter of the `recvfrom`/`sendto` pairs and of the wake-ups; with `TCP_NODELAY` that took the
/// worker's CPU per byte echoed to about half (bench/NOTES.md, issue 25). Larger reads (512 KiB, 1 MiB)
/// moved kernel work between the worker and its peer rather than saving any. A read returns what is
/// there, so small messages are not affected.
const SCRATCH: usize = 256 * 1024;
/// The talk's `recv(1024)`.
const ONCE_READ: usize = 1024;
/// Reads per connection per turn before the others get theirs (fairness under bulk echo)...
const BUDGET: usize = 32;
/// ...or bytes read, whichever comes first: a stream that fills every read yields after 32 of them
/// (8 MiB), so each streaming connection delays the others by at most that much copying per turn, 3 to
/// 4 ms of this VM's server CPU. 32 reads is libuv's turn (what uvloop and Node.js do). Against the 1 MiB
/// turn before it, the 8 MiB turn took 0.81–0.92× the server CPU per byte echoed in bulk-4 rounds of 12–30
/// alternating runs, 0.91× in a `make bench-bulk` of 12 (bench/NOTES.md, issue 25). A connection gets one
/// turn per pass (`Loop::queue`), so with four streams keeping the worker busy a ping-pong round trip
/// beside them waits behind at most four turns: p99 11–26 ms in this VM; a 1 or 2 MiB turn made that 4–7
/// ms but every round trip waited a pass (median 2–4 ms, against 25–60 µs) and bulk MB/s fell by 10 %.
const BUDGET_BYTES: usize = 8 << 20;
// On a plain drain the listener stays open DRAIN_GRACE (see `drain`), accepting what is queued (and what is
// mid-handshake), then closes right after a pass that found its queue empty. A handover closes it at once
// instead: the successor holds the same socket and serves its queue.
/// After replying in `once`/`hello` mode with client bytes still unread, we half-close and wait this long
/// for the client's FIN, so those bytes do not turn our close into a reset that could discard the reply.
const LINGER: Duration = Duration::from_secs(2);
/// After a read right after `accept` found nothing, this many connections wait for their first readable
/// event instead (one probe in `FIRST_READ_SKIP + 1` then costs an `EAGAIN` while the guess stays wrong).
const FIRST_READ_SKIP: u32 = 32;
/// Pause after EMFILE/ENFILE before trying `accept` again; the queued connections wait in the kernel.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a forked worker needs; everything else it inherited is closed.
pub(crate) struct Worker<'a> {
    pub index: usize,
    pub listener: std::net::TcpListener,
    /// What the supervisor asks (drain, hand over); end of file (the supervisor died) means drain.
    pub drain: drain::Receiver,
    /// This process's counters.
    pub slot: &'a Slot,
    pub config: &'a Config,
    /// The supervisor's `NOTIFY_SOCKET`: `READY=1` once this worker serves, `STOPPING=1` when it drains.
    pub notify: &'a Path,
}

struct Conn {
    stream: TcpStream,
    /// Bytes still to send, from `sent` on. Empty (and unallocated) most of the time.
    pending: Vec<u8>,
    sent: usize,
    /// Reply written in full: finish the connection (once, hello) — close at once when no client byte is
    /// left unread, else half-close and wait for the client's FIN.
    finish_after_flush: bool,
    /// `once`: the request read was shorter than asked, so the receive queue was empty after it.
    drained: bool,
    /// Our side is shut down; discard input until EOF or `deadline`.
    lingering: bool,
    /// Bytes may be waiting: set by an (edge-triggered) readable event, cleared by a read that returned
    /// less than it asked for or `EAGAIN`. Every new arrival raises a new edge, so a read is tried only
    /// when there can be something to read, and no system call is spent only to learn there is not.
    readable: bool,
    /// What the socket is registered for: readability while its echo is out, writability alone while
    /// some of it is pending (libuv's read stop). A socket that always takes its echo at once raises no
    /// writable events, and one whose echo is stuck raises no readable ones: we would not read them until
    /// the echo is out, and each would be a wake-up (and a write that fails with `EAGAIN`) for nothing.
    interest: Interest,
    /// A client byte (or its FIN) has been read.
    heard: bool,
    /// The peer's FIN (or an error) was signalled: it sits behind any data, so reads go on until they see
    /// it — a short read no longer means "drained", because no further edge is coming.
    hangup: bool,
    last_active: Instant,
    deadline: Option<Instant>,
    /// In `Loop::again`: it used up its turn with input left and gets its next one after the next
    /// `poll`'s events. At most one entry per connection, so each gets at most one turn per pass.
    queued: bool,
}

enum Step {
    Keep,
    /// Ran out of budget with more to read: drive again soon.
    Again,
    Close {
        error: bool,
    },
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// Runs the worker until drained; returns the process exit code.
pub(crate) fn run(w: Worker<'_>) -> i32 {
    match Loop::new(w).and_then(|mut l| l.run()) {
        Ok(()) => 0,
        Err(e) => {
            log!("worker failed: {e}");
            1
        }
    }
}

struct Loop<'a> {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    drain: drain::Receiver,
    notify: &'a Path,
    /// SIGTERM to this worker alone: drain it (the supervisor replaces it).
    signals: crate::signals::SignalGuard,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    scratch: PageAligned,
    greeting: Vec<u8>,
    slot: &'a Slot,
    config: &'a Config,
    /// Connections that used up their turn with input left: driven again after the next `poll`'s events
    /// without waiting for an event of their own (one entry each, see `Conn::queued`).
    again: Vec<usize>,
    accept_paused_until: Option<Instant>,
    /// A connection closed while accepts were paused at `max_connections`: accept again once this
    /// wake-up's events are handled (not from inside `close`, which `accept_all` itself can reach).
    resume_accept: bool,
    /// Failed accepts not yet logged, and when the last "accept failed" line was written: at most one
    /// line a second, with a count.
    accept_failures: u64,
    accept_logged_at: Option<Instant>,
    /// When the last `poll` returned: the clock for idle and linger times, read once per wake-up instead
    /// of once per read and write (a second's sweep needs no finer one).
    now: Instant,
    /// Connections left to register without reading first (see [`FIRST_READ_SKIP`]).
    first_read_skip: u32,
    drain_started: Option<Instant>,
    close_listener_at: Instant,
    next_sweep: Instant,
}

impl<'a> Loop<'a> {
    fn new(w: Worker<'a>) -> io::Result<Loop<'a>> {
        let poll = Poll::new()?;
        stream::tune(&w.listener);
        let mut listener = TcpListener::from_std(w.listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(
            &mut SourceFd(&w.drain.as_raw_fd()),
            DRAIN_PIPE,
            Interest::READABLE,
        )?;
        let signals =
            crate::signals::SignalGuard::install(poll.registry(), SIGNALS, crate::signals::WORKER)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let greeting = format!(
            "Hello from {} process {}\n",
            w.config.runtime,
            std::process::id()
        )
        .into_bytes();
        let now = Instant::now();
        Ok(Loop {
            index: w.index,
            poll,
            listener: Some(listener),
            drain: w.drain,
            notify: w.notify,
            signals,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            scratch: PageAligned::new(SCRATCH),
            greeting,
            slot: w.slot,
            config: w.config,
            again: Vec::new(),
            accept_paused_until: None,
            resume_accept: false,
            accept_failures: 0,
            accept_logged_at: None,
            first_read_skip: 0,
            now,
            drain_started: None,
            close_listener_at: now,
            next_sweep: now + Duration::from_secs(1),
        })
    }

    /// Tells the supervisor (`NOTIFY_SOCKET`); it decides what that means for this worker's state.
    fn tell(&self, message: &str) {
        if let Err(e) = notify(self.notify, message) {
            log!(
                "worker {}: cannot tell the supervisor {message} ({e})",
                self.index
            );
        }
    }

    fn run(&mut self) -> io::Result<()> {
        self.tell("READY=1");
        let mut events = Events::with_capacity(1024);
        // Connections may have queued before we existed (or while our predecessor was dead).
        self.accept_all();
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if interrupted(&e) {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            // The streams that used up their turn last pass get their next one after this poll's events.
            let turns = std::mem::take(&mut self.again);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    DRAIN_PIPE => {
                        if let Some(ask) = self.drain.hear() {
                            self.begin_drain(ask == Ask::Handover);
                        }
                    }
                    SIGNALS => {
                        if !self.signals.drain().is_empty() {
                            log!("worker {}: SIGTERM", self.index);
                            self.begin_drain(false);
                        }
                    }
                    Token(key) => {
                        let Some(Some(conn)) = self.conns.get_mut(key) else {
                            continue;
                        };
                        let closed = event.is_read_closed() || event.is_error();
                        conn.hangup |= closed;
                        conn.readable |= event.is_readable() || closed;
                        // A connection waiting in `again` has its turn there, after the others' events.
                        if !conn.queued {
                            self.drive(key);
                        }
                    }
                }
            }
            for key in turns {
                if let Some(Some(conn)) = self.conns.get_mut(key) {
                    conn.queued = false;
                    self.drive(key);
                }
            }
            let now = Instant::now();
            self.now = now;
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.resume_accept = true;
            }
            if std::mem::take(&mut self.resume_accept) {
                self.accept_all();
            }
            if now >= self.next_sweep {
                self.sweep(now);
            }
            if let Some(started) = self.drain_started {
                if self.listener.is_some() {
                    self.accept_all();
                    if now >= self.close_listener_at {
                        self.close_listener();
                    }
                }
                if self.listener.is_none() && self.open == 0 {
                    log!("worker {} drained", self.index);
                    return Ok(());
                }
                if now.duration_since(started) >= self.config.drain_timeout {
                    let left = self.open;
                    self.close_all();
                    log!(
                        "worker {}: drain timeout ({:?}) reached; closed {left} connection(s) still open",
                        self.index,
                        self.config.drain_timeout
                    );
                    return Ok(());
                }
            }
        }
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() || self.resume_accept {
            return Some(Duration::ZERO);
        }
        let now = self.now; // read at the end of this pass through the loop
        let mut wake = self.next_sweep;
        if let Some(t) = self.accept_paused_until {
            wake = wake.min(t);
        }
        if let Some(started) = self.drain_started {
            wake = wake.min(
                started
                    .checked_add(self.config.drain_timeout)
                    .unwrap_or(wake),
            );
            if self.listener.is_some() {
                // Poll the queue again soon: closing the listener waits for it to stay empty.
                wake = wake.min(now + Duration::from_millis(20));
            }
        }
        Some(wake.saturating_duration_since(now))
    }

    fn begin_drain(&mut self, handover: bool) {
        if self.drain_started.is_none() {
            let now = Instant::now();
            self.drain_started = Some(now);
            self.close_listener_at = if handover { now } else { now + DRAIN_GRACE };
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&self.drain.as_raw_fd()));
            // Asked by the supervisor, or on its own (SIGTERM): either way the supervisor hears it.
            self.tell("STOPPING=1");
            let how = if handover {
                "handed over its listener"
            } else {
                "draining"
            };
            log!(
                "worker {} {how}: {} connection(s) open",
                self.index,
                self.open
            );
        }
    }

    fn close_listener(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            if self.open >= self.config.max_connections {
                return; // resumed from `close` once a connection ends
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    self.slot.accepted();
                    self.add(stream);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                // The client gave up while queued: nothing to serve, nothing to count.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {
                    continue
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the queue stays in the kernel; retrying now would spin.
                    self.slot.error();
                    self.accept_failures += 1;
                    let now = Instant::now();
                    if self
                        .accept_logged_at
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        log!(
                            "worker {}: accept failed ({e}), {} time(s) since the last report; pausing \
                             accepts for {ACCEPT_BACKOFF:?} each time",
                            self.index,
                            self.accept_failures
                        );
                        self.accept_failures = 0;
                        self.accept_logged_at = Some(now);
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn add(&mut self, stream: TcpStream) {
        let mut conn = Conn {
            stream,
            pending: Vec::new(),
            sent: 0,
            finish_after_flush: false,
            drained: false,
            lingering: false,
            readable: false, // set by `add`
            interest: Interest::READABLE,
            heard: false,
            hangup: false,
            last_active: self.now,
            deadline: None,
            queued: false,
        };
        if self.config.mode == Mode::Hello {
            conn.pending = self.greeting.clone();
            conn.finish_after_flush = true;
        }
        // When connections queue up, a client's first bytes are usually there by the time it is accepted:
        // serve them before registering (`once` then needs no epoll_ctl at all). When the worker keeps up,
        // they are not, and the read would only return EAGAIN: after such a miss the next connections
        // wait for their first event. Registering after a read loses nothing either way: epoll reports
        // readiness that is already there when a socket is added.
        let probe = self.first_read_skip == 0;
        conn.readable = probe;
        if !probe {
            self.first_read_skip -= 1;
        }
        let first = step(
            &mut conn,
            self.scratch.as_mut_slice(),
            self.config.mode,
            self.slot,
            self.now,
        );
        if probe && self.config.mode != Mode::Hello {
            let hit = conn.heard || matches!(first, Step::Close { .. });
            self.first_read_skip = if hit { 0 } else { FIRST_READ_SKIP };
        }
        if let Step::Close { error } = first {
            self.slot.closed(error);
            return;
        }
        let key = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        conn.interest = wanted(&conn);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut conn.stream, Token(key), conn.interest)
        {
            log!("worker {}: register connection: {e}", self.index);
            self.slot.closed(true);
            self.free.push(key);
            return;
        }
        self.conns[key] = Some(conn);
        self.open += 1;
        if let Step::Again = first {
            self.queue(key);
        }
    }

    /// Gives a connection that used up its turn another one after the next `poll`'s events: once per
    /// pass, so a connection waits behind at most one turn of each other stream per pass. Before, every
    /// turn pushed an entry, and a queued stream that also had an event was driven and pushed twice: while
    /// the worker was the busier side the list grew by one entry per stream per pass, each stream had ever
    /// more turns per pass, and a short request waited behind all of them.
    fn queue(&mut self, key: usize) {
        if let Some(Some(conn)) = self.conns.get_mut(key) {
            if !conn.queued {
                conn.queued = true;
                self.again.push(key);
            }
        }
    }

    fn drive(&mut self, key: usize) {
        let Some(Some(conn)) = self.conns.get_mut(key) else {
            return;
        };
        let next = step(
            conn,
            self.scratch.as_mut_slice(),
            self.config.mode,
            self.slot,
            self.now,
        );
        if let Step::Close { error } = next {
            return self.close(key, error);
        }
        let interest = wanted(conn);
        if interest != conn.interest {
            // Changing the interest reports readiness that is already there (`EPOLL_CTL_MOD` re-arms the
            // edge), so nothing that arrived in between is missed.
            conn.interest = interest;
            let registry = self.poll.registry();
            if let Err(e) = registry.reregister(&mut conn.stream, Token(key), interest) {
                log!("worker {}: reregister connection: {e}", self.index);
                return self.close(key, true);
            }
        }
        if let Step::Again = next {
            self.queue(key);
        }
    }

    fn close(&mut self, key: usize, error: bool) {
        // Dropping the stream closes the fd, and closing removes it from the epoll set (no fd is shared
        // with another process or dup'ed): a `deregister` first would be one more system call per connection.
        if let Some(conn) = self.conns[key].take() {
            if conn.queued {
                // Closed between passes (idle, linger, drain timeout): its key may be reused before the
                // next pass, and the new connection must not inherit the entry.
                self.again.retain(|&k| k != key);
            }
            self.free.push(key);
            self.open -= 1;
            self.slot.closed(error);
            if self.open + 1 == self.config.max_connections {
                self.resume_accept = true;
            }
        }
    }

    fn close_all(&mut self) {
        for key in 0..self.conns.len() {
            if self.conns[key].is_some() {
                self.close(key, true);
            }
        }
    }

    /// Once a second: idle timeouts and linger deadlines.
    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + Duration::from_secs(1);
        let idle = self.config.idle_timeout;
        let expired: Vec<(usize, bool)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(key, c)| {
                let c = c.as_ref()?;
                if c.deadline.is_some_and(|d| now >= d) {
                    Some((key, false))
                } else if idle.is_some_and(|t| now.duration_since(c.last_active) >= t) {
                    Some((key, true))
                } else {
                    None
                }
            })
            .collect();
        for (key, error) in expired {
            self.close(key, error);
        }
    }
}

/// Whether the client has no byte waiting: one read that finds none (or the client's FIN). Bytes it finds
/// are discarded: `once` and `hello` have replied already.
fn nothing_unread(conn: &mut Conn, scratch: &mut [u8], slot: &Slot) -> bool {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return true,
            Ok(n) => {
                slot.bytes_in(n);
                conn.readable = true; // there may be more: the linger goes on discarding it
                return false;
            }
            Err(e) if interrupted(&e) => continue,
            Err(e) if would_block(&e) => {
                conn.readable = false;
                return true;
            }
            Err(_) => return true, // broken: closing is all that is left
        }
    }
}

/// What a connection waits for: room for its pending echo, or else more input.
fn wanted(conn: &Conn) -> Interest {
    if conn.pending.is_empty() {
        Interest::READABLE
    } else {
        Interest::WRITABLE
    }
}

/// Advances one connection as far as it can go without blocking.
fn step(conn: &mut Conn, scratch: &mut [u8], mode: Mode, slot: &Slot, now: Instant) -> Step {
    let mut taken = 0;
    for _ in 0..BUDGET {
        if taken >= BUDGET_BYTES {
            break;
        }
        // 1. Unsent bytes first: until they are out we read nothing more (backpressure).
        if conn.sent < conn.pending.len() {
            match conn.stream.write(&conn.pending[conn.sent..]) {
                Ok(n) => {
                    slot.bytes_out(n);
                    conn.sent += n;
                    conn.last_active = now;
                    if conn.sent < conn.pending.len() {
                        return Step::Keep; // a short write: the send buffer is full, wait for room
                    }
                    conn.pending = Vec::new(); // free it: idle connections hold no buffer
                    conn.sent = 0;
                    continue;
                }
                Err(e) if would_block(&e) => return Step::Keep,
                Err(e) if interrupted(&e) => continue,
                Err(_) => return Step::Close { error: true },
            }
        }
        if conn.finish_after_flush {
            conn.finish_after_flush = false;
            // With nothing unread, our close sends a plain FIN behind the reply. With bytes unread it would
            // send a reset, which can discard the reply at the client: half-close and wait for its FIN.
            // `hello` always waits: it speaks first, so the client's bytes may still be on their way, and
            // arriving at a closed socket they would be answered with a reset.
            if conn.drained || (mode == Mode::Once && nothing_unread(conn, scratch, slot)) {
                return Step::Close { error: false };
            }
            conn.lingering = true;
            conn.deadline = Some(now + LINGER);
            if conn.stream.shutdown(Shutdown::Write).is_err() {
                return Step::Close { error: false };
            }
        }
        // 2. Read, when something can be there.
        if !conn.readable {
            return Step::Keep;
        }
        let limit = if mode == Mode::Once {
            ONCE_READ
        } else {
            scratch.len()
        };
        let n = match conn.stream.read(&mut scratch[..limit]) {
            Ok(0) => return Step::Close { error: false }, // peer's FIN: everything owed is already sent
            Ok(n) => n,
            Err(e) if would_block(&e) => {
                conn.readable = false;
                return Step::Keep;
            }
            Err(e) if interrupted(&e) => continue,
            Err(_) => return Step::Close { error: true },
        };
        slot.bytes_in(n);
        taken += n;
        conn.heard = true;
        if n < limit && !conn.hangup {
            conn.readable = false; // the receive queue is empty; the next arrival raises a new edge
        }
        conn.last_active = now;
        if conn.lingering || mode == Mode::Hello {
            continue; // discard: our reply is complete
        }
        if mode == Mode::Once {
            conn.finish_after_flush = true;
            conn.drained = n < limit;
        }
        // 3. Echo straight from the scratch buffer; keep only what the socket would not take.
        let written = match conn.stream.write(&scratch[..n]) {
            Ok(m) => m,
            Err(e) if would_block(&e) || interrupted(&e) => 0,
            Err(_) => return Step::Close { error: true },
        };
        slot.bytes_out(written);
        if written < n {
            conn.pending.extend_from_slice(&scratch[written..n]);
            return Step::Keep; // the send buffer is full: trying again now would only return EAGAIN
        }
    }
    Step::Again
}
