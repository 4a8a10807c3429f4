//! The forked side of the supervisor: what a child does before it becomes a worker, and small process helpers.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use nix::sys::wait::WaitStatus;

use super::kind::Spawn;
use crate::drain;
use crate::worker;

/// How a worker ended, for the log.
pub(super) fn describe(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, 0) => "exited".to_string(),
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
        other => format!("changed state ({other:?})"),
    }
}

/// Signal handlers are process-wide: only a server run from the main thread installs them.
pub(super) fn on_main_thread() -> bool {
    // SAFETY: plain syscalls without arguments.
    unsafe { libc::gettid() == libc::getpid() }
}

/// The forked child of a built-in worker: serve its listener, then `_exit`. Never returns into the caller
/// (or a host interpreter).
pub(super) fn child_main(s: &Spawn<'_>, drain: drain::Receiver) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::signals::reset_for_worker();
        close_fds_except(&[0, 1, 2, s.listener, drain.as_raw_fd()]);
        let server = s.server;
        // SAFETY: the supervisor's copy of this fd is never dropped in this process (we _exit).
        let listener = unsafe { std::net::TcpListener::from_raw_fd(s.listener) };
        // Room for max_connections: the soft fd limit up to the hard one (in this worker only), and never
        // more connections than that allows, so a full worker pauses accepting instead of hitting EMFILE.
        let room = raise_open_files_limit();
        let mut config = server.config.clone();
        config.max_connections = config.max_connections.min(room);
        worker::run(worker::Worker {
            index: s.index,
            listener,
            drain,
            slot: server.stats.counters(s.counters),
            config: &config,
            notify: s.notify,
        })
    }));
    // SAFETY: _exit skips atexit handlers and destructors: nothing of the parent (or of Python/Ruby) runs twice.
    unsafe { libc::_exit(code.unwrap_or(101)) }
}

/// The forked child of a built-in UDP worker: serve its socket, then `_exit`. Never returns into the
/// caller.
pub(super) fn udp_child_main(s: &Spawn<'_>, drain: drain::Receiver) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::signals::reset_for_worker();
        close_fds_except(&[0, 1, 2, s.listener, drain.as_raw_fd()]);
        // SAFETY: the supervisor's copy of this fd is never dropped in this process (we _exit).
        let socket = unsafe { std::net::UdpSocket::from_raw_fd(s.listener) };
        worker::datagram::run(worker::datagram::Worker {
            index: s.index,
            socket,
            drain,
            slot: s.server.stats.counters(s.counters),
            config: &s.server.config,
            notify: s.notify,
        })
    }));
    // SAFETY: as in child_main.
    unsafe { libc::_exit(code.unwrap_or(101)) }
}

/// Descriptors a worker needs besides its connections: stdio, listener, drain pipe, epoll, and spares.
const FDS_RESERVED: u64 = 16;

/// How many connections the open-files limit leaves room for, once the soft limit is raised to the hard
/// one (which needs no privilege): what `max_connections` is clipped to.
pub(super) fn connection_room() -> usize {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((0, 0));
    hard.saturating_sub(FDS_RESERVED)
        .try_into()
        .unwrap_or(usize::MAX)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns [`connection_room`].
fn raise_open_files_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            // Failure leaves the soft limit; EMFILE then backs off as before.
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok();
        }
    }
    connection_room()
}

/// Closes every fd except `keep`: an inherited listener would keep its socket in the group after the
/// supervisor closed it, and an inherited pipe would hide the supervisor's death.
fn close_fds_except(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut from: u32 = 0;
    for &k in &keep {
        let k = k as u32;
        if k > from {
            close_range(from, k - 1);
        }
        from = k + 1;
    }
    close_range(from, u32::MAX);
}

fn close_range(lo: u32, hi: u32) {
    // SAFETY: close_range only closes descriptors; the fds we still use were excluded by the caller.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
    if rc != 0 {
        // Before Linux 5.9: close one by one up to the fd limit.
        let max = nix::unistd::sysconf(nix::unistd::SysconfVar::OPEN_MAX)
            .ok()
            .flatten()
            .unwrap_or(1024)
            .min(65536) as u32;
        for fd in lo..=hi.min(max) {
            // SAFETY: as above.
            unsafe { libc::close(fd as i32) };
        }
    }
}
