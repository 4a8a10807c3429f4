//! The one place the supervisor reaps children, and how it learns that one exited without polling: a
//! pidfd per worker (`pidfd_open`, Linux ≥ 5.3) in its event loop, readable once that worker has exited.
//! Where pidfds are missing, the supervisor's periodic tick reaps instead.
//!
//! Whom it reaps: as PID 1 (a container's init), every child, expected or not — orphans are reparented to
//! PID 1, and a zombie nobody reaps stays forever. Likewise as a child subreaper, which a host asks for
//! with [`Config::subreaper`](crate::Config::subreaper) (the CLI does): orphans of command workers are
//! then reparented to us instead of to a PID 1 that may not reap. Elsewhere only its own workers (and an upgrade's
//! successor until it is ready), by pid:
//! the supervisor may run inside a host interpreter (Python, Ruby) whose other children (`subprocess`,
//! `spawn`) its own code waits for, and a `waitpid(-1)` here would take their exit statuses away.
//!
//! Orphans have no pidfd: a reap pass collects them, at most once a second (a zombie lasts at most a
//! second). Where the supervisor handles signals it also handles SIGCHLD, so the pass runs only when an
//! orphan exited (the loop sleeps at rest); elsewhere it runs once a second (see `rest`).

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

/// Reaps a child that never became a worker (a command whose `exec` failed: it reported why and exits at
/// once), waiting for it.
pub(super) fn reap_stillborn(pid: Pid) {
    let _ = waitpid(pid, None);
}

/// Reaps children that have exited: `known` (our workers) always, and as PID 1 or a subreaper every
/// other child too.
pub(super) struct Reaper {
    all: bool,
    /// We made this process a subreaper, and undo it when done.
    made_subreaper: bool,
    /// Children reaped that were not workers (orphans), over the whole run.
    pub(super) orphans: u64,
}

impl Reaper {
    /// The reaper of this process; `subreaper`: become a child subreaper and reap every child.
    pub(super) fn new(subreaper: bool) -> Reaper {
        let pid1 = std::process::id() == 1;
        let mut made_subreaper = false;
        if subreaper && !pid1 && !is_subreaper() {
            // SAFETY: prctl with an integer argument; no memory is passed.
            made_subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
            if !made_subreaper {
                let e = std::io::Error::last_os_error();
                log!("note: cannot become a child subreaper ({e}): orphans of workers go to PID 1");
            }
        }
        Reaper {
            all: pid1 || subreaper,
            made_subreaper,
            orphans: 0,
        }
    }

    /// Whether it reaps children it has no pidfd for (orphans, as PID 1 or a subreaper): then only a
    /// periodic pass finds them.
    pub(super) fn reaps_orphans(&self) -> bool {
        self.all
    }

    /// The children that exited since the last call, with how they ended. A known pid that is not our
    /// child any more (someone else reaped it: `ECHILD`) counts as exited, status unknown (`None`).
    pub(super) fn reap(
        &mut self,
        known: impl Iterator<Item = Pid>,
    ) -> Vec<(Pid, Option<WaitStatus>)> {
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
            let (workers, orphans): (Vec<_>, Vec<_>) =
                out.into_iter().partition(|(pid, _)| ours.contains(pid));
            if !orphans.is_empty() {
                // One line per pass, however many: a worker that leaves orphans by the hundred must
                // not flood the log.
                self.orphans += orphans.len() as u64;
                let pids: Vec<String> =
                    orphans.iter().take(8).map(|(p, _)| p.to_string()).collect();
                let more = if orphans.len() > 8 { ", …" } else { "" };
                let to = if std::process::id() == 1 {
                    "PID 1"
                } else {
                    "this subreaper"
                };
                log!(
                    "reaped {} orphan(s) (not workers; reparented to {to}): pid {}{more}",
                    orphans.len(),
                    pids.join(", ")
                );
            }
            return workers;
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

/// Whether this process is a child subreaper already (set by whoever started it).
fn is_subreaper() -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which is valid.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut on as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    r == 0 && on != 0
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.made_subreaper {
            // SAFETY: as in `new`. Orphans from now on go where they went before this server ran.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
        }
    }
}
