//! The one place the supervisor reaps children, and how it learns that one exited without polling: a
//! pidfd per worker (`pidfd_open`, Linux ≥ 5.3) in its event loop, readable once that worker has exited.
//! Where pidfds are missing, the supervisor's periodic tick reaps instead.
//!
//! Whom it reaps: as PID 1 (a container's init), every child, expected or not — orphans are reparented to
//! PID 1, and a zombie nobody reaps stays forever. Elsewhere only its own workers (and an upgrade's
//! successor until it is ready), by pid: the supervisor
//! may run inside a host interpreter (Python, Ruby) whose other children (`subprocess`, `spawn`) its own
//! code waits for, and a `waitpid(-1)` here would take their exit statuses away.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::fds::Tracked;
use crate::log::log;

/// A worker's pidfd, registered in the supervisor's loop; closed (and so unregistered) on drop.
pub(super) struct ExitWatch(#[allow(dead_code)] Tracked<OwnedFd>);

impl ExitWatch {
    /// Watches `pid` under `token`; `None` where the kernel has no pidfds (the tick reaps then).
    pub(super) fn new(registry: &Registry, token: Token, pid: Pid) -> Option<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let fd = Tracked::new(fd);
        let raw = fd.as_raw_fd();
        registry
            .register(&mut SourceFd(&raw), token, Interest::READABLE)
            .ok()?;
        Some(ExitWatch(fd))
    }
}

/// Reaps children that have exited: `known` (our workers) always, and as PID 1 every other child too.
pub(super) struct Reaper {
    all: bool,
}

impl Reaper {
    pub(super) fn new() -> Reaper {
        Reaper {
            all: std::process::id() == 1,
        }
    }

    /// The children that exited since the last call, with how they ended. A known pid that is not our
    /// child any more (someone else reaped it: `ECHILD`) counts as exited, status unknown (`None`).
    pub(super) fn reap(&self, known: impl Iterator<Item = Pid>) -> Vec<(Pid, Option<WaitStatus>)> {
        let mut out = Vec::new();
        if self.all {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(s) => match s.pid() {
                        Some(pid) => out.push((pid, Some(s))),
                        None => break,
                    },
                }
            }
            let ours: Vec<Pid> = known.collect();
            out.retain(|(pid, s)| {
                if !ours.contains(pid) {
                    let how = s.map(super::process::describe).unwrap_or_default();
                    log!(
                        "reaped pid {pid} (not a worker: an orphan reparented to PID 1): it {how}"
                    );
                }
                ours.contains(pid)
            });
            return out;
        }
        for pid in known {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
                Ok(s) => out.push((pid, Some(s))),
                // Reaped by someone else (ECHILD): it is gone all the same.
                Err(_) => out.push((pid, None)),
            }
        }
        out
    }
}
