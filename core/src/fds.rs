//! The fds the engine owns in this process, so that a child the *host* forks (Python `os.fork` and
//! `multiprocessing`, Ruby `fork`) can let go of them: see [`close_in_forked_child`].
//!
//! Why: a listener inherited by such a child stays in the port's reuseport group after the server closed
//! it (the kernel keeps hashing new connections to it, and resets them when the child exits); an
//! inherited drain-pipe end hides the supervisor's death from its workers; an inherited control socket
//! keeps a client waiting. Our own workers need none of this: they close every fd they do not serve.
//!
//! The table is a fixed array of atomics, not a `Mutex<Vec>`: the child of a multi-threaded process
//! may not take a lock another thread held at `fork` time, and `close_in_forked_child` must be safe to
//! call right after `fork` (it only loads atomics and calls `fstat`, `open`, `dup3`, `close`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// How many fds the table can hold: listeners (253 per server), drain pipes, control sockets and their
/// connections of a few servers. One that does not fit is simply not closed in forked children.
const SLOTS: usize = 4096;
const FREE: i32 = -1;
const CLAIMED: i32 = -2;

struct Slot {
    fd: AtomicI32,
    /// The process that registered it: a child closes only what it inherited.
    pid: AtomicI32,
    /// `st_dev`, `st_ino`: the fd still names the same file (a stale entry never closes another fd).
    dev: AtomicU64,
    ino: AtomicU64,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        fd: AtomicI32::new(FREE),
        pid: AtomicI32::new(0),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
    }
}; SLOTS];

fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into a zeroed, properly sized stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions (and is not cached by glibc, so it is right after fork).
    unsafe { libc::getpid() }
}

std::thread_local! {
    /// The listener a function worker being forked on this thread keeps: the host's at-fork hook (which
    /// calls [`close_in_forked_child`]) runs in that child on this same thread, and must not close it.
    static KEEP: std::cell::Cell<RawFd> = const { std::cell::Cell::new(-1) };
}

/// While a function worker is forked on this thread: `fd` (its listener) survives
/// [`close_in_forked_child`] in the child, and stays in the table so that *its* children let go of it.
/// -1 when the fork is over.
pub(crate) fn keep_in_child(fd: RawFd) {
    KEEP.with(|k| k.set(fd));
}

/// Records `fd` as the engine's.
pub(crate) fn register(fd: RawFd) {
    let Some((dev, ino)) = identity(fd) else {
        return;
    };
    for slot in &TABLE {
        if slot
            .fd
            .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.pid.store(pid(), Ordering::Relaxed);
            slot.dev.store(dev, Ordering::Relaxed);
            slot.ino.store(ino, Ordering::Relaxed);
            slot.fd.store(fd, Ordering::Release);
            return;
        }
    }
}

/// Forgets `fd`; called before it is closed.
pub(crate) fn unregister(fd: RawFd) {
    let me = pid();
    for slot in &TABLE {
        if slot.fd.load(Ordering::Acquire) == fd && slot.pid.load(Ordering::Relaxed) == me {
            let _ = slot
                .fd
                .compare_exchange(fd, FREE, Ordering::AcqRel, Ordering::Relaxed);
            return;
        }
    }
}

/// Lets go of every fd the engine held in the parent — listeners, drain pipes, control sockets and their
/// connections, epoll, the signal pipe — in a child forked by the host. Returns how many.
///
/// Call it first thing in the child, before anything else runs: the Python binding does from
/// `os.register_at_fork(after_in_child=...)`, the Ruby one from its `Process._fork` hook. Without it a
/// `multiprocessing` child keeps the listeners in the port's group and the drain pipes open until it exits.
///
/// Each fd is replaced by `/dev/null` rather than closed, so that an engine object still alive in the
/// child (a `Server` bound but never run) later closes that placeholder, never an unrelated fd that
/// reused the number. It does nothing in the process that opened the fds (it only touches fds registered
/// by another pid), and only touches an fd that still names the file that was registered.
/// The eventfd behind [`Handle::stop`](crate::Handle::stop) is not covered (mio does not expose
/// it); it holds no socket.
pub fn close_in_forked_child() -> usize {
    let me = pid();
    let keep = KEEP.with(|k| k.get());
    // SAFETY: open/dup3/close on fds this function owns or checked; all async-signal-safe.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    let mut n = 0;
    for slot in &TABLE {
        let fd = slot.fd.load(Ordering::Acquire);
        if fd < 0 || fd == keep || slot.pid.load(Ordering::Relaxed) == me {
            continue;
        }
        let registered = (
            slot.dev.load(Ordering::Relaxed),
            slot.ino.load(Ordering::Relaxed),
        );
        if fd != null && identity(fd) == Some(registered) {
            // SAFETY: fd is the engine's inherited copy (same file as registered); see the doc above.
            unsafe {
                if null >= 0 {
                    libc::dup3(null, fd, libc::O_CLOEXEC);
                } else {
                    libc::close(fd);
                }
            }
            n += 1;
        }
        slot.fd.store(FREE, Ordering::Release);
    }
    if null >= 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(null) };
    }
    n
}

/// An fd-owning value listed in the table for as long as it lives; it leaves the table before it closes.
pub(crate) struct Tracked<T: AsRawFd>(T);

impl<T: AsRawFd> Tracked<T> {
    pub(crate) fn new(inner: T) -> Tracked<T> {
        register(inner.as_raw_fd());
        Tracked(inner)
    }

    /// Takes the value out of the table (it stays open; the caller owns it now).
    pub(crate) fn into_inner(self) -> T {
        let this = std::mem::ManuallyDrop::new(self);
        unregister(this.0.as_raw_fd());
        // SAFETY: `this` is never dropped, so the value is moved out exactly once.
        unsafe { std::ptr::read(&this.0) }
    }
}

impl<T: AsRawFd> Drop for Tracked<T> {
    fn drop(&mut self) {
        unregister(self.0.as_raw_fd());
    }
}

impl<T: AsRawFd> std::ops::Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: AsRawFd> std::ops::DerefMut for Tracked<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: AsRawFd> AsRawFd for Tracked<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl<T: AsRawFd + AsFd> AsFd for Tracked<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_closes_nothing_and_a_dropped_value_leaves_the_table() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let t = Tracked::new(a);
        assert!(TABLE.iter().any(|s| s.fd.load(Ordering::Acquire) == fd));
        assert_eq!(close_in_forked_child(), 0, "the owner's fds stay open");
        assert!(identity(fd).is_some());
        drop(t);
        assert!(!TABLE
            .iter()
            .any(|s| s.fd.load(Ordering::Acquire) == fd && s.pid.load(Ordering::Relaxed) == pid()));
    }

    #[test]
    fn a_forked_child_lets_go_of_inherited_fds() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = Tracked::new(a);
        // SAFETY: the child only calls async-signal-safe functions and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let n = close_in_forked_child();
                // The inherited end is now /dev/null: the socket pair's other end sees EOF once the
                // parent drops its copy too.
                // SAFETY: async-signal-safe calls only (no allocation after fork in a threaded test).
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    let same = identity(t.as_raw_fd()) == identity(null);
                    libc::_exit(if n >= 1 && same { 0 } else { 1 });
                }
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
                drop(t);
                let mut buf = [0u8; 1];
                b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                use std::io::Read;
                assert_eq!((&b).read(&mut buf).unwrap(), 0, "no copy left open");
            }
        }
    }
}
