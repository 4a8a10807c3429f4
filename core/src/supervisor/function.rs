//! Starting a function worker: the host forks (its own fork path, its lock held: see
//! [`crate::FunctionHost`]) and the child, still inside the host's fork, becomes the worker — engine fds
//! let go of except its listener, signals as a worker's, its slot claimed — and calls the host's
//! function, then leaves with `_exit`: nothing of the parent (atexit/at_exit hooks, destructors) runs
//! twice.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;

use nix::unistd::Pid;

use super::kind::Spawn;
use crate::drain;
use crate::error::{Error, Result};
use crate::fds;
use crate::function::{FunctionHost, WorkerListener};
use crate::log::log;

/// Forks a function worker for `s`; returns its pid and the supervisor's end of its drain pipe.
pub(super) fn spawn(host: &Arc<dyn FunctionHost>, s: &Spawn<'_>) -> Result<(Pid, drain::Sender)> {
    let (tx, rx) = drain::pipe()?;
    let mut rx = Some(rx);
    fds::keep_in_child(s.listener);
    let forked = host.fork(&mut || {
        let rx = rx.take();
        child(host, s, rx)
    });
    fds::keep_in_child(-1);
    let i = s.index;
    let pid = forked.map_err(|e| Error::io(format!("fork function worker {i}"), e))?;
    Ok((Pid::from_raw(pid as i32), tx))
}

/// The forked worker, inside the host's fork (its lock held). Never returns.
fn child(
    host: &Arc<dyn FunctionHost>,
    s: &Spawn<'_>,
    drain: Option<drain::Receiver>,
) -> Infallible {
    let i = s.index;
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::signals::reset_for_worker();
        // The host's at-fork hook did this already (it kept our listener); a host without one did not.
        // It closes our copy of the drain pipe's supervisor end too (a tracked fd): holding it would
        // hide the supervisor's death.
        fds::close_in_forked_child();
        let drain = drain.ok_or_else(|| std::io::Error::other("the worker ran twice"))?;
        let stats = s.server.stats.clone();
        let notify = s.notify.to_path_buf();
        let udp = s.server.config.protocol == crate::config::Protocol::Udp;
        let idle = udp.then_some(s.server.config.udp_flow_idle);
        let listener = WorkerListener::new(i, s.listener, drain, stats, s.counters, notify, idle)?;
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
