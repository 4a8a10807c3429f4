//! One load thread: a mio event loop driving many client connections through their workload.
//!
//! A connection is a byte stream cut into messages of `size` bytes; message `k` is bytes
//! `[k*size, (k+1)*size)`. Byte `o` of the stream is `PATTERN[(seed + o) % PERIOD]`, with a per-connection
//! seed, so the expected echo of any chunk is one contiguous slice of [`pattern`] and verifying it is one
//! comparison.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use port_sharding::PageAligned;

use crate::args::Workload;
use crate::record::{ErrorKind, ThreadResult};

/// Period of the byte pattern (a prime, so message sizes that are powers of two never line up with it).
const PERIOD: usize = 65_521;
/// Most bytes read or written in one call.
const CHUNK: usize = 64 * 1024;
/// How often timeouts are checked and progress published.
const TICK: Duration = Duration::from_millis(20);
/// Pause before a slot reconnects after a failure, so a refusing server is not hammered.
const BACKOFF: Duration = Duration::from_millis(10);
/// Error messages kept as examples.
const SAMPLES: usize = 5;

/// The shared byte pattern: `PERIOD + CHUNK` pseudo-random bytes, so any chunk starting below `PERIOD`
/// is contiguous.
pub(crate) fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v: Vec<u8> = (0..PERIOD)
            .map(|_| {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        v.extend((0..CHUNK).map(|i| v[i % PERIOD]).collect::<Vec<u8>>());
        v
    })
}

/// Shared between the load threads and the thread drawing progress.
pub(crate) struct Shared {
    /// Operations started (tickets handed out), checked against `--connections`.
    pub started: AtomicU64,
    /// Operations completed, for the progress bar.
    pub ops: AtomicU64,
    /// Operations failed, for the progress bar.
    pub errors: AtomicU64,
    /// Set to stop every thread early.
    pub stop: AtomicBool,
}

/// What one thread is asked to do.
pub(crate) struct ThreadConfig {
    pub id: usize,
    pub addr: SocketAddr,
    pub workload: Workload,
    pub connections: usize,
    pub size: usize,
    pub window: usize,
    pub limit: Option<u64>,
    pub deadline: Instant,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// `udp`: each flow's send interval (zero: keep `window` datagrams in flight).
    pub interval: Duration,
    /// Source addresses to spread connections over (one: let the kernel choose).
    pub sources: Vec<std::net::Ipv4Addr>,
}

/// Starts a nonblocking connect to `addr`, from one of `sources` (picked by `pick`) when there are several.
fn open(
    addr: SocketAddr,
    sources: &[std::net::Ipv4Addr],
    pick: usize,
) -> std::io::Result<TcpStream> {
    if sources.len() <= 1 {
        return TcpStream::connect(addr);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    // Choose the port at connect time, for the full 4-tuple, instead of reserving one at bind.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let source = SocketAddr::new(sources[pick % sources.len()].into(), 0);
    socket.bind(&source.into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

struct Conn {
    stream: Option<TcpStream>,
    /// A write succeeded: the connection is established.
    connected: bool,
    /// Readiness seen from epoll (edge-triggered) and not yet used up: an operation is tried only when
    /// its flag is set, and the flag is cleared by `WouldBlock` or a short read/write, so no system call
    /// is spent only to learn that a socket is not ready.
    readable: bool,
    writable: bool,
    /// The peer's FIN or an error was signalled: it sits behind any data, so reads go on until they
    /// see it (a short read no longer means "drained", the edge is not coming again).
    hangup: bool,
    seed: usize,
    /// Bytes written / verified on this connection.
    sent: u64,
    recvd: u64,
    /// Messages started (their bytes may be partly written) and fully echoed.
    started: u64,
    done: u64,
    /// Start time of each message in flight, oldest first.
    starts: VecDeque<Instant>,
    /// A ticket taken for the next message (at connect time) and not yet used.
    held: bool,
    /// When the current wait (connect or echo) times out.
    deadline: Instant,
    /// Do not reconnect before this.
    retry_at: Option<Instant>,
    /// No more tickets: this slot is finished.
    finished: bool,
}

impl Conn {
    fn idle(now: Instant) -> Conn {
        Conn {
            stream: None,
            connected: false,
            readable: false,
            writable: false,
            hangup: false,
            seed: 0,
            sent: 0,
            recvd: 0,
            started: 0,
            done: 0,
            starts: VecDeque::new(),
            held: false,
            deadline: now,
            retry_at: None,
            finished: false,
        }
    }

    /// Operations started here and not finished: each counts as one failure if the connection breaks.
    fn in_flight(&self) -> u64 {
        self.started - self.done + u64::from(self.held)
    }
}

struct Runner<'a> {
    cfg: ThreadConfig,
    shared: &'a Shared,
    poll: Poll,
    conns: Vec<Conn>,
    /// Where echoes are read and checked; page-aligned, so the kernel's copy into it is cheaper (see
    /// `PageAligned`): the load generator is the busier side of a loopback bulk run.
    scratch: PageAligned,
    result: ThreadResult,
    next_seed: usize,
    published_ops: u64,
    published_errors: u64,
}

/// Runs one load thread until its deadline, its share of `--connections`, or a stop request.
pub(crate) fn run_thread(cfg: ThreadConfig, shared: &Shared) -> ThreadResult {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            let mut r = ThreadResult::new();
            r.errors.add(ErrorKind::Other);
            r.samples.push(format!("epoll: {e}"));
            return r;
        }
    };
    let now = Instant::now();
    let n = cfg.connections;
    let mut r = Runner {
        next_seed: cfg.id.wrapping_mul(7919),
        conns: (0..n).map(|_| Conn::idle(now)).collect(),
        cfg,
        shared,
        poll,
        scratch: PageAligned::new(CHUNK),
        result: ThreadResult::new(),
        published_ops: 0,
        published_errors: 0,
    };
    let _ = pattern();
    r.run();
    r.publish();
    r.result.finished = Instant::now();
    r.result
}

impl Runner<'_> {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        for i in 0..self.conns.len() {
            self.connect(i);
        }
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            if now >= self.cfg.deadline || self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.conns.iter().all(|c| c.finished && c.stream.is_none()) {
                break;
            }
            let wait = next_tick
                .min(self.cfg.deadline)
                .saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.sample(format!("epoll_wait: {e}"));
                self.result.errors.add(ErrorKind::Other);
                break;
            }
            for ev in events.iter() {
                let i = ev.token().0;
                if i < self.conns.len() && self.conns[i].stream.is_some() {
                    let c = &mut self.conns[i];
                    // Errors and hang-ups surface as the error of the next read or write.
                    let broken = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                    c.hangup |= broken;
                    c.readable |= ev.is_readable() || broken;
                    c.writable |= ev.is_writable() || broken;
                    self.drive(i);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
        }
        // Whatever is still in flight at the deadline is neither a success nor a failure.
        for c in &mut self.conns {
            c.stream = None;
        }
    }

    /// Takes one ticket (one operation) if the run's operation limit allows.
    fn ticket(&self) -> bool {
        if Instant::now() >= self.cfg.deadline {
            return false;
        }
        match self.cfg.limit {
            None => true,
            Some(limit) => self.shared.started.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }

    fn take_op(&mut self, i: usize) -> bool {
        if self.conns[i].held {
            self.conns[i].held = false;
            return true;
        }
        self.ticket()
    }

    /// Opens a connection on slot `i`, holding a ticket for its first message.
    fn connect(&mut self, i: usize) {
        if self.conns[i].finished {
            return;
        }
        if !self.ticket() {
            self.conns[i].finished = true;
            return;
        }
        let now = Instant::now();
        self.next_seed = (self.next_seed + 104_729) % PERIOD;
        let c = &mut self.conns[i];
        *c = Conn {
            seed: self.next_seed,
            held: true,
            deadline: now + self.cfg.connect_timeout,
            ..Conn::idle(now)
        };
        if self.cfg.workload == Workload::Conn {
            // The talk's loop: the operation's clock starts at connect.
            c.starts.push_back(now);
        }
        match open(self.cfg.addr, &self.cfg.sources, self.next_seed) {
            Ok(mut s) => {
                if self.cfg.workload != Workload::Conn {
                    // Persistent connections write small messages back to back: no Nagle delay.
                    let _ = s.set_nodelay(true);
                }
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail(i, ErrorKind::Other, format!("register: {e}"));
                    return;
                }
                self.conns[i].stream = Some(s);
            }
            Err(e) => self.fail_io(i, &e, "connect"),
        }
    }

    /// Makes all the progress possible on connection `i` without blocking.
    fn drive(&mut self, i: usize) {
        // Bounded: every pass either moves bytes or stops; a pass that moves none ends the loop.
        loop {
            let wrote = match self.write_some(i) {
                Ok(p) => p,
                Err(e) => return self.fail_io(i, &e, "write"),
            };
            let read = match self.read_some(i) {
                Ok(p) => p,
                Err(Failure::Io(e)) => return self.fail_io(i, &e, "read"),
                Err(Failure::Kind(k, msg)) => return self.fail(i, k, msg),
            };
            if self.conns[i].stream.is_none() {
                return; // closed by a finished conn-workload operation and not reopened
            }
            if !wrote && !read {
                return;
            }
        }
    }

    /// Writes what may be written; returns whether anything moved.
    fn write_some(&mut self, i: usize) -> io::Result<bool> {
        let size = self.cfg.size as u64;
        let mut progress = false;
        // Bounded by the window: at most `window` messages are started before their echo returns.
        loop {
            let c = &self.conns[i];
            let target = c.started * size;
            if c.sent >= target {
                // Current messages fully written: start another if the workload wants one.
                let more = match self.cfg.workload {
                    Workload::Conn => c.started == 0,
                    // HTTP and UDP workloads never reach the echo engine (see http.rs, udp.rs).
                    Workload::Pingpong
                    | Workload::Stream
                    | Workload::Http
                    | Workload::HttpKeepalive
                    | Workload::Udp => c.started - c.done < self.cfg.window as u64,
                };
                if !more || !self.take_op(i) {
                    if !self.conns[i].held && self.conns[i].started == self.conns[i].done {
                        // No ticket left and nothing in flight: this slot is done.
                        self.conns[i].finished = true;
                        self.close(i);
                    }
                    return Ok(progress);
                }
                let now = Instant::now();
                let c = &mut self.conns[i];
                c.started += 1;
                if self.cfg.workload != Workload::Conn {
                    c.starts.push_back(now);
                }
                if c.started - c.done == 1 {
                    c.deadline = now + self.cfg.timeout;
                }
                progress = true;
                continue;
            }
            let c = &mut self.conns[i];
            if !c.writable {
                return Ok(progress);
            }
            let n = ((target - c.sent) as usize).min(CHUNK);
            let off = ((c.seed as u64 + c.sent) % PERIOD as u64) as usize;
            let Some(stream) = c.stream.as_mut() else {
                return Ok(progress);
            };
            // Before the connection is established a write fails with EAGAIN (still connecting) or with
            // the connect error (ECONNREFUSED): no getsockopt/getpeername round trip is needed.
            match stream.write(&pattern()[off..off + n]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(w) => {
                    if !c.connected {
                        c.connected = true;
                        c.deadline = Instant::now() + self.cfg.timeout;
                    }
                    c.sent += w as u64;
                    c.writable = w == n; // a short write means the send buffer is full
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.writable = false;
                    return Ok(progress);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and verifies what has arrived; returns whether anything moved.
    fn read_some(&mut self, i: usize) -> Result<bool, Failure> {
        let size = self.cfg.size as u64;
        let mut progress = false;
        // Bounded: each read either consumes bytes, hits WouldBlock, or ends the connection.
        loop {
            let c = &mut self.conns[i];
            // Read no further than the messages started: anything beyond them would be an extra byte,
            // caught as a wrong echo when the next message is compared.
            let due = c.started * size - c.recvd;
            if due == 0 {
                return Ok(progress);
            }
            if !c.readable {
                return Ok(progress);
            }
            let want = (due as usize).min(CHUNK);
            let Some(stream) = c.stream.as_mut() else {
                return Ok(progress);
            };
            let n = match stream.read(&mut self.scratch.as_mut_slice()[..want]) {
                Ok(0) => {
                    return Err(Failure::Kind(
                        ErrorKind::Closed,
                        format!("server closed the connection with {due} echo byte(s) still due"),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return Ok(progress);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io(e)),
            };
            if n as u64 > c.sent - c.recvd {
                return Err(Failure::Kind(
                    ErrorKind::WrongEcho,
                    format!(
                        "received {} byte(s) more than sent",
                        n as u64 - (c.sent - c.recvd)
                    ),
                ));
            }
            let off = ((c.seed as u64 + c.recvd) % PERIOD as u64) as usize;
            let expected = &pattern()[off..off + n];
            let got = &self.scratch.as_slice()[..n];
            if got != expected {
                let at = got
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Failure::Kind(
                    ErrorKind::WrongEcho,
                    format!(
                        "echo differs at stream byte {}: got {:#04x}, sent {:#04x}",
                        c.recvd + at as u64,
                        got[at],
                        expected[at]
                    ),
                ));
            }
            c.recvd += n as u64;
            // A short read emptied the receive queue; so did one that received everything due (a
            // later byte makes a new edge, and an unexpected one is caught with the next echo).
            if !c.hangup && (n < want || (c.recvd == c.sent && c.started * size == c.sent)) {
                c.readable = false;
            }
            let now = Instant::now();
            c.deadline = now + self.cfg.timeout;
            progress = true;
            while c.recvd >= (c.done + 1) * size {
                c.done += 1;
                let t0 = c.starts.pop_front().unwrap_or(now);
                let ns = now.duration_since(t0).as_nanos().max(1) as u64;
                self.result.latency_ns.saturating_record(ns);
                self.result.ops += 1;
                self.result.bytes += size;
            }
            if self.cfg.workload == Workload::Conn && c.done == 1 {
                // The talk's loop: one message per connection, then close and go again.
                self.close(i);
                self.connect(i);
                return Ok(true);
            }
        }
    }

    fn close(&mut self, i: usize) {
        // Closing the fd removes it from epoll: no deregister call needed.
        self.conns[i].stream = None;
    }

    fn fail_io(&mut self, i: usize, e: &io::Error, what: &str) {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        };
        self.fail(i, kind, format!("{what}: {e}"));
    }

    /// Counts one failure per operation in flight on slot `i`, closes it, and schedules a reconnect.
    fn fail(&mut self, i: usize, kind: ErrorKind, msg: String) {
        let failed = self.conns[i].in_flight().max(1);
        for _ in 0..failed {
            self.result.errors.add(kind);
        }
        self.sample(msg);
        self.close(i);
        let c = &mut self.conns[i];
        c.connected = false;
        c.readable = false;
        c.writable = false;
        c.hangup = false;
        c.held = false;
        c.started = 0;
        c.done = 0;
        c.starts.clear();
        c.retry_at = Some(Instant::now() + BACKOFF);
    }

    fn sample(&mut self, msg: String) {
        if self.result.samples.len() < SAMPLES && !self.result.samples.contains(&msg) {
            self.result.samples.push(msg);
        }
    }

    /// Timeouts, reconnects after backoff, progress for the bar.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.stream.is_some() {
                if now >= c.deadline && (!c.connected || c.in_flight() > 0) {
                    let msg = if c.connected {
                        format!("no echo byte for {:?}", self.cfg.timeout)
                    } else {
                        format!("connect took longer than {:?}", self.cfg.connect_timeout)
                    };
                    self.fail(i, ErrorKind::Timeout, msg);
                }
            } else if c.retry_at.is_some_and(|t| now >= t) {
                self.conns[i].retry_at = None;
                self.connect(i);
            } else if c.retry_at.is_none() && !c.finished {
                // A slot with neither a stream nor a retry pending can only come from a close without
                // reconnect; reconnect it.
                self.connect(i);
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let ops = self.result.ops;
        let errs = self.result.errors.total;
        self.shared
            .ops
            .fetch_add(ops - self.published_ops, Ordering::Relaxed);
        self.shared
            .errors
            .fetch_add(errs - self.published_errors, Ordering::Relaxed);
        self.published_ops = ops;
        self.published_errors = errs;
    }
}

enum Failure {
    Io(io::Error),
    Kind(ErrorKind, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_wraps_contiguously() {
        let p = pattern();
        assert_eq!(p.len(), PERIOD + CHUNK);
        assert!((0..p.len()).all(|i| p[i] == p[i % PERIOD]));
        // Not trivially periodic at small strides.
        assert_ne!(&p[..64], &p[64..128]);
        assert_ne!(&p[..64], &p[1..65]);
    }
}
