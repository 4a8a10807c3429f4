//! Starting a function worker: the host forks (its own fork path, its lock held: see
//! [`crate::FunctionHost`]) and the child, still inside the host's fork, becomes the worker — engine fds
//! let go of except its listener, signals as a worker's, its slot claimed — and calls the host's
//! function, then leaves with `_exit`: nothing of the parent (atexit/at_exit hooks, destructors) runs
//! twice.

use std::convert::Infallible;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::fds::{self, Tracked};
use crate::function::{FunctionHost, WorkerListener};
use crate::log::log;
use crate::stats::StatsArea;

/// Forks a function worker on listener `i` (fd `listener`); returns its pid and the drain pipe's write
/// end. `beside`: a reload started it next to the worker it replaces (the slot is shared).
pub(super) fn spawn(
    host: &Arc<dyn FunctionHost>,
    i: usize,
    listener: RawFd,
    stats: &Arc<StatsArea>,
    beside: bool,
) -> Result<(Pid, Tracked<OwnedFd>)> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
    let (rx, tx) = nix::unistd::pipe2(flags).map_err(|e| Error::io("pipe", e.into()))?;
    let tx_fd = tx.as_raw_fd();
    let mut rx = Some(rx);
    fds::keep_in_child(listener);
    let forked = host.fork(&mut || {
        let rx = rx.take();
        child(host, i, listener, rx, tx_fd, stats, beside)
    });
    fds::keep_in_child(-1);
    let pid = forked.map_err(|e| Error::io(format!("fork function worker {i}"), e))?;
    Ok((Pid::from_raw(pid as i32), Tracked::new(tx)))
}

/// The forked worker, inside the host's fork (its lock held). Never returns.
fn child(
    host: &Arc<dyn FunctionHost>,
    i: usize,
    listener: RawFd,
    drain: Option<OwnedFd>,
    drain_tx: RawFd,
    stats: &Arc<StatsArea>,
    beside: bool,
) -> Infallible {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::signals::reset_for_worker();
        // The host's at-fork hook did this already (it kept our listener); a host without one did not.
        fds::close_in_forked_child();
        // SAFETY: our copy of the pipe's write end: holding it would hide the supervisor's death.
        unsafe { libc::close(drain_tx) };
        let slot = stats.slot(i);
        if beside {
            slot.join(std::process::id());
        } else {
            slot.begin(std::process::id());
        }
        let drain = drain.ok_or_else(|| std::io::Error::other("the worker ran twice"))?;
        let listener = WorkerListener::new(i, listener, drain, stats.clone())?;
        Ok::<i32, std::io::Error>(host.run(Arc::new(listener)))
    }));
    let code = match code {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            log!("worker {i}: could not start: {e}");
            1
        }
        Err(_) => 101,
    };
    std::io::stdout().flush().ok();
    std::io::stderr().flush().ok();
    // SAFETY: flushing C stdio, then _exit: the parent's atexit/at_exit hooks and destructors do not run.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code)
    }
}
