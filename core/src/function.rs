//! Function workers: the host's own code (a Python function, a Ruby block) as a supervised worker.
//!
//! The supervisor decides everything as for the other kinds (one worker per listener, restart with
//! back-off, drain, reload); only two things are the host's, behind [`FunctionHost`]: forking (through
//! the interpreter's own fork path, with its lock held — a bare `fork()` from the supervisor's thread
//! would leave the child's interpreter with another thread's lock state) and calling the function in the
//! child. The function gets a [`WorkerListener`]: the engine's primitives for ready, drain and accept,
//! which the bindings wrap in their `Listener` classes without adding policy.

use std::convert::Infallible;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::datagram::Flows;
use crate::drain::{self, Ask, DRAIN_GRACE};
use crate::log::log;
use crate::notify::notify;
use crate::stats::{Slot, StatsArea};
mod receive;
pub use receive::Receive;

/// How often a draining `accept` looks at the queue again while it waits out the grace window.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// While `accept` keeps finding connections it reads the drain pipe at most this often (one system call
/// saved per connection), so a drain or handover is noticed that much later at worst; whenever the queue
/// is empty it reads it before waiting.
const DRAIN_CHECK_MS: u64 = 10;

/// Set by SIGTERM in a function worker: a drain, as for a built-in worker (systemd's default stop sends
/// SIGTERM to every process of the service, workers included).
static TERMINATED: AtomicBool = AtomicBool::new(false);
/// The worker's wake eventfd, which the SIGTERM handler writes to so a blocked `accept` notices.
static TERM_WAKE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
    let fd = TERM_WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `fd` is the worker's eventfd, open until it exits.
        unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    }
}

/// What a host (the Python or Ruby binding) does for function workers.
pub trait FunctionHost: Send + Sync {
    /// Forks this process through the host interpreter's own fork path, with its lock held (Python: the
    /// GIL and `PyOS_BeforeFork`/`PyOS_AfterFork_Child`; Ruby: the GVL and `Process._fork`). Called on the
    /// supervisor's thread, which does not hold the lock. In the child it calls `in_child` (the lock still
    /// held), which never returns; in the parent it returns the child's pid.
    ///
    /// # Errors
    /// The fork failed.
    fn fork(&self, in_child: &mut dyn FnMut() -> Infallible) -> io::Result<u32>;

    /// Runs the user's function on `listener` in the forked worker (lock held) and returns the exit
    /// status: 0 when it returned, 1 when it raised (after logging the traceback). The host flushes its
    /// own buffered stdio before returning; the engine then leaves with `_exit`.
    fn run(&self, listener: Arc<WorkerListener>) -> i32;
}

/// What one [`WorkerListener::accept`] found.
#[derive(Debug)]
pub enum Accept {
    /// A connection (blocking, close-on-exec); the caller owns it.
    Connection(OwnedFd),
    /// The worker drained: its queue stayed empty for the grace window (or a successor took the listener
    /// over). Every later call says the same.
    Drained,
    /// The timeout passed with nothing to accept.
    TimedOut,
    /// A signal arrived, or [`WorkerListener::wake`] was called: let the host run its handlers, then call
    /// again.
    Interrupted,
}

/// A function worker's listener and the engine's primitives around it. Every method takes `&self`, so a
/// host may wake a blocked `accept` from another thread.
pub struct WorkerListener {
    index: usize,
    /// The listener's fd, -1 once the worker drained and let go of it.
    listener: AtomicI32,
    /// What the supervisor asks (drain, hand over).
    drain: drain::Receiver,
    /// An eventfd that [`WorkerListener::wake`] writes to interrupt a blocked `accept`.
    wake: OwnedFd,
    /// This process's counters: slot `counters` of `stats`.
    stats: Arc<StatsArea>,
    counters: usize,
    /// The supervisor's `NOTIFY_SOCKET` (`READY=1`, `STOPPING=1`).
    notify: PathBuf,
    draining: AtomicBool,
    handover: AtomicBool,
    ready: AtomicBool,
    /// Since when (ms after `born`, plus one; 0: not empty) the queue has been found empty while draining.
    empty_since: AtomicU64,
    /// When `accept` last read the drain pipe (ms after `born`, plus one).
    checked_at: AtomicU64,
    born: Instant,
    /// Over UDP (`receive`, not `accept`): the peers heard from lately, for `status`'s flows.
    flows: Option<std::sync::Mutex<Flows>>,
}

fn now_ms(born: Instant) -> u64 {
    born.elapsed().as_millis() as u64 + 1
}

impl WorkerListener {
    /// The listener `listener` of worker `index`, which hears `drain`, counts in slot `counters` of
    /// `stats` and tells the supervisor at `notify`.
    pub(crate) fn new(
        index: usize,
        listener: RawFd,
        drain: drain::Receiver,
        stats: Arc<StatsArea>,
        counters: usize,
        notify: PathBuf,
        udp_flow_idle: Option<Duration>,
    ) -> io::Result<WorkerListener> {
        // SAFETY: eventfd makes a new fd, which we own.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        TERM_WAKE.store(wake, Ordering::SeqCst);
        // SAFETY: a handler that only stores an atomic and writes to an eventfd (async-signal-safe).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        }
        Ok(WorkerListener {
            index,
            listener: AtomicI32::new(listener),
            drain,
            // SAFETY: just created above, owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            stats,
            counters,
            notify,
            draining: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            empty_since: AtomicU64::new(0),
            checked_at: AtomicU64::new(0),
            born: Instant::now(),
            flows: udp_flow_idle.map(|idle| std::sync::Mutex::new(Flows::new(idle))),
        })
    }

    fn slot(&self) -> &Slot {
        self.stats.counters(self.counters)
    }

    /// Tells the supervisor; it decides what that means for this worker's state.
    fn tell(&self, message: &str) {
        if let Err(e) = notify(&self.notify, message) {
            log!(
                "worker {}: cannot tell the supervisor {message} ({e})",
                self.index
            );
        }
    }

    /// The worker's index: the listener it serves.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The listening socket's fd (nonblocking: it is shared with the supervisor and, during a reload,
    /// with the successor); -1 once drained. Hosts wrap a `dup` of it, never this fd itself.
    pub fn fileno(&self) -> RawFd {
        self.listener.load(Ordering::Acquire)
    }

    /// The drain pipe's read end, readable once the supervisor asks this worker to drain (for an event
    /// loop to watch; [`WorkerListener::draining`] reads it).
    pub fn drain_fileno(&self) -> RawFd {
        self.drain.as_raw_fd()
    }

    /// Tells the supervisor this worker serves (otherwise the first `accept` does): `READY=1`, once.
    pub fn ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.tell("READY=1");
        }
    }

    /// [`draining`](Self::draining), reading the drain pipe at most once in `DRAIN_CHECK_MS`: a loop that
    /// keeps finding connections (or datagrams) would otherwise make one more system call for each.
    fn draining_lately(&self) -> bool {
        let now = now_ms(self.born);
        if now.saturating_sub(self.checked_at.load(Ordering::Acquire)) >= DRAIN_CHECK_MS {
            self.checked_at.store(now, Ordering::Release);
            self.draining()
        } else {
            self.draining.load(Ordering::Acquire)
        }
    }

    /// Whether the supervisor asked this worker to drain (reads the drain pipe without blocking), or it
    /// got SIGTERM.
    pub fn draining(&self) -> bool {
        if self.draining.load(Ordering::Acquire) {
            return true;
        }
        let heard = self.drain.hear();
        if heard == Some(Ask::Handover) {
            self.handover.store(true, Ordering::Release);
        }
        let asked = heard.is_some() || TERMINATED.load(Ordering::SeqCst);
        if asked && !self.draining.swap(true, Ordering::AcqRel) {
            self.tell("STOPPING=1");
        }
        asked
    }

    /// Draining, and either a successor took the listener over or its queue has stayed empty for the grace
    /// window: nothing more will be handed out, and this worker lets go of the listener. For event loops
    /// that accept on the socket themselves (asyncio): call it every few milliseconds once draining.
    pub fn drained(&self) -> bool {
        if !self.draining() {
            return false;
        }
        let fd = self.fileno();
        if fd < 0 {
            return true;
        }
        if self.handover.load(Ordering::Acquire) {
            self.close();
            return true;
        }
        // SAFETY: `fd` is our open listener for as long as `listener` holds it.
        let queued =
            crate::listener::queue_len(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
        if queued.unwrap_or(0) > 0 {
            self.empty_since.store(0, Ordering::Release);
            return false;
        }
        self.empty_long_enough()
    }

    /// Records that the queue was found empty; true once it has been for the grace window (then closes).
    fn empty_long_enough(&self) -> bool {
        let now = now_ms(self.born);
        let since =
            match self
                .empty_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        if Duration::from_millis(now - since) >= DRAIN_GRACE {
            self.close();
            return true;
        }
        false
    }

    fn close(&self) {
        let fd = self.listener.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            crate::fds::unregister(fd);
            // SAFETY: our copy of the listener, closed once (the swap above hands it to one caller).
            unsafe { libc::close(fd) };
        }
    }

    /// Makes an `accept` blocked on another thread return [`Accept::Interrupted`].
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our own eventfd; a full counter (EAGAIN) already wakes.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// The next connection, waiting at most `timeout` (`None`: until one comes or the worker drained).
    /// The first call marks the worker ready. While draining it hands out what is queued until the queue
    /// stays empty for the grace window, then returns [`Accept::Drained`].
    ///
    /// # Errors
    /// `accept` failed other than for a client that gave up (EMFILE, ENOBUFS…), after a short pause so a
    /// worker that retries does not spin.
    pub fn accept(&self, timeout: Option<Duration>) -> io::Result<Accept> {
        self.ready();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let fd = self.fileno();
            if fd < 0 {
                return Ok(Accept::Drained);
            }
            let draining = self.draining_lately();
            if draining && self.handover.load(Ordering::Acquire) {
                self.close();
                return Ok(Accept::Drained);
            }
            // SAFETY: accept4 on our listener; the new fd is owned by the OwnedFd.
            let conn = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if conn >= 0 {
                self.empty_since.store(0, Ordering::Release);
                self.slot().handed_out();
                // SAFETY: a new fd from accept4.
                return Ok(Accept::Connection(unsafe { OwnedFd::from_raw_fd(conn) }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {}
                Some(libc::EINTR) => return Ok(Accept::Interrupted),
                // The client gave up while queued: nothing to hand out.
                Some(libc::ECONNABORTED | libc::EPROTO) => continue,
                _ => {
                    self.slot().error();
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(e);
                }
            }
            // The queue is empty: look at the drain pipe now rather than wait on a stale answer.
            let draining = draining || self.draining();
            if draining && self.handover.load(Ordering::Acquire) {
                self.close();
                return Ok(Accept::Drained);
            }
            if draining && self.empty_long_enough() {
                return Ok(Accept::Drained);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(Accept::TimedOut);
            }
            let wait = if draining {
                Some(left.map_or(DRAIN_POLL, |l| l.min(DRAIN_POLL)))
            } else {
                left
            };
            if let Some(interrupted) = self.wait(fd, draining, wait) {
                return Ok(interrupted);
            }
        }
    }

    /// Waits until the listener (or, when not draining yet, the drain pipe) is readable, or `wait` passes;
    /// `Some(Interrupted)` for a signal or a wake-up.
    fn wait(&self, fd: RawFd, draining: bool, wait: Option<Duration>) -> Option<Accept> {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if draining { -1 } else { self.drain.as_raw_fd() },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = wait.map_or(-1, |w| w.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: three valid pollfd entries (a negative fd is ignored by poll).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            return Some(Accept::Interrupted); // EINTR
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reading our own eventfd's counter resets it.
            unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            return Some(Accept::Interrupted);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::os::unix::net::UnixDatagram;

    /// A listener on an ephemeral loopback port, a drain pipe, a notify socket standing in for the
    /// supervisor's, and a worker listener over them.
    struct Setup {
        addr: std::net::SocketAddr,
        tx: Option<drain::Sender>,
        notify: UnixDatagram,
        _dir: std::path::PathBuf,
        w: WorkerListener,
    }

    fn setup() -> Setup {
        let l = crate::listener::bind("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = drain::pipe().unwrap();
        let stats = Arc::new(StatsArea::new(1).unwrap());
        let k = stats.claim(0).unwrap();
        let dir =
            std::env::temp_dir().join(format!("ps-fn-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let notify = UnixDatagram::bind(&path).unwrap();
        notify.set_nonblocking(true).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
        let w = WorkerListener::new(0, fd, rx, stats, k, path, None).unwrap();
        Setup {
            addr,
            tx: Some(tx),
            notify,
            _dir: dir,
            w,
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self._dir).ok();
        }
    }

    /// The messages the worker sent the supervisor so far.
    fn told(s: &Setup) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = s.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn a_drain_hands_out_what_is_queued_then_says_drained() {
        let mut s = setup();
        let clients: Vec<_> = (0..3)
            .map(|_| TcpStream::connect(s.addr).unwrap())
            .collect();
        s.tx.take().unwrap().ask(Ask::Drain);
        let w = &s.w;
        let mut got = 0;
        loop {
            match w.accept(Some(Duration::from_secs(10))).unwrap() {
                Accept::Connection(_) => got += 1,
                Accept::Drained => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, clients.len(), "every queued connection was handed out");
        assert!(
            w.draining() && w.fileno() < 0,
            "drained and let go of the listener"
        );
        assert_eq!(w.stats.snapshot()[0].accepted, 3);
        assert_eq!(told(&s), ["READY=1", "STOPPING=1"]);
    }

    #[test]
    fn a_handover_stops_at_once_and_a_wake_interrupts_a_wait() {
        let mut s = setup();
        let tx = s.tx.take().unwrap();
        let w = &s.w;
        assert!(matches!(
            w.accept(Some(Duration::from_millis(10))).unwrap(),
            Accept::TimedOut
        ));
        assert_eq!(told(&s), ["READY=1"], "the first accept said ready");
        w.wake();
        assert!(matches!(w.accept(None).unwrap(), Accept::Interrupted));
        let _queued = TcpStream::connect(s.addr).unwrap();
        tx.ask(Ask::Handover);
        // The successor serves the same socket and its queue: nothing more is handed out here once the
        // handover is seen (while connections keep coming, within DRAIN_CHECK_MS: at most this one).
        let mut late = 0;
        while let Accept::Connection(_) = w.accept(None).unwrap() {
            late += 1;
        }
        assert!(
            late <= 1,
            "{late} connection(s) handed out after the handover"
        );
        assert!(w.drained());
    }
}
