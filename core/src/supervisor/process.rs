//! The forked side of the supervisor: what a child does before it becomes a worker, and small process helpers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::wait::WaitStatus;

use super::Bound;
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

/// The forked child: serve listener `i`, then `_exit`. Never returns into the caller (or a host interpreter).
pub(super) fn child_main(i: usize, listener_fd: RawFd, drain: OwnedFd, server: &Bound) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::signals::reset_for_worker();
        close_fds_except(&[0, 1, 2, listener_fd, drain.as_raw_fd()]);
        let slot = server.stats.slot(i);
        slot.begin(std::process::id());
        // SAFETY: the supervisor's copy of this fd is never dropped in this process (we _exit).
        let listener = unsafe { std::net::TcpListener::from_raw_fd(listener_fd) };
        worker::run(worker::Worker {
            index: i,
            listener,
            drain_pipe: drain,
            slot,
            config: &server.config,
        })
    }));
    // SAFETY: _exit skips atexit handlers and destructors: nothing of the parent (or of Python/Ruby) runs twice.
    unsafe { libc::_exit(code.unwrap_or(101)) }
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
