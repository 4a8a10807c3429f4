//! SIGINT, SIGTERM, SIGQUIT, SIGHUP and SIGUSR2 become events in the supervisor's mio loop, through a self-pipe, in one place.
//!
//! The handlers are installed only while [`Server::run`](crate::Server::run) runs on the main thread, and
//! the previous dispositions (Python's, Ruby's, or the defaults) are restored when it returns.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use mio::unix::pipe;
use mio::{Interest, Registry, Token};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::error::{Error, Result};

/// Write end of the self-pipe, or -1. A static because a signal handler cannot capture anything.
static PIPE_FD: AtomicI32 = AtomicI32::new(-1);

/// What the supervisor handles, as nginx does: INT, TERM and QUIT drain; HUP reloads the workers in place;
/// USR2 upgrades the supervisor itself (a successor takes its sockets over).
/// A worker handles SIGTERM alone.
pub(crate) const SUPERVISOR: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR2,
];
/// A worker's SIGTERM drains that worker (the supervisor then forks a fresh one): `kill <worker pid>` and a
/// process-group SIGTERM (systemd's default `KillMode=control-group`, `timeout`) never cut connections.
pub(crate) const WORKER: &[Signal] = &[Signal::SIGTERM];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: one write(2), errno preserved.
    // SAFETY: __errno_location and write are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = sig as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Our handlers, installed; dropping it restores the previous ones.
pub(crate) struct SignalGuard {
    receiver: pipe::Receiver,
    sender: pipe::Sender,
    previous: Vec<(Signal, SigAction)>,
}

impl SignalGuard {
    pub(crate) fn install(
        registry: &Registry,
        token: Token,
        signals: &[Signal],
    ) -> Result<SignalGuard> {
        let (sender, mut receiver) = pipe::new().map_err(|e| Error::io("signal pipe", e))?;
        registry
            .register(&mut receiver, token, Interest::READABLE)
            .map_err(|e| Error::io("signal pipe", e))?;
        crate::fds::register(sender.as_raw_fd());
        crate::fds::register(receiver.as_raw_fd());
        PIPE_FD.store(sender.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut previous = Vec::new();
        for &sig in signals {
            // SAFETY: on_signal is async-signal-safe.
            let old = unsafe { signal::sigaction(sig, &action) }
                .map_err(|e| Error::io(format!("sigaction {sig}"), e.into()))?;
            previous.push((sig, old));
        }
        Ok(SignalGuard {
            receiver,
            sender,
            previous,
        })
    }

    /// Signals received since the last call, in order.
    pub(crate) fn drain(&mut self) -> Vec<Signal> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        loop {
            match self.receiver.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend(
                    buf[..n]
                        .iter()
                        .filter_map(|&b| Signal::try_from(b as i32).ok()),
                ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in self.previous.drain(..) {
            // SAFETY: restoring exactly the action that was there before.
            unsafe {
                let _ = signal::sigaction(sig, &old);
            }
        }
        PIPE_FD.store(-1, Ordering::SeqCst);
        crate::fds::unregister(self.sender.as_raw_fd());
        crate::fds::unregister(self.receiver.as_raw_fd());
    }
}

/// In a freshly forked worker: Ctrl-C goes to the whole foreground process group, but only the supervisor
/// decides when workers drain, so SIGINT is ignored; SIGTERM gets its default here and the worker's own
/// handler (see [`WORKER`]) once its loop is set up; SIGPIPE is ignored so a write to a closed socket is an error, not a death. The signal mask inherited
/// from the forking thread (Python and Ruby block some signals in helper threads) is cleared.
pub(crate) fn reset_for_worker() {
    PIPE_FD.store(-1, Ordering::SeqCst);
    let set = |sig, handler| {
        let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
        // SAFETY: SIG_IGN and SIG_DFL are always valid dispositions.
        unsafe {
            let _ = signal::sigaction(sig, &action);
        }
    };
    set(Signal::SIGINT, SigHandler::SigIgn);
    set(Signal::SIGPIPE, SigHandler::SigIgn);
    for sig in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set(sig, SigHandler::SigDfl);
    }
    let _ = signal::sigprocmask(
        signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
}
