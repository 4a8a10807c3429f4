//! A command worker's process group: the worker and whatever it forked (hypercorn's serving child, a Puma
//! or gunicorn master's workers), all holding the listener it was given. A command worker leads a group of
//! its own from `fork` on (see `command::exec_child`), so the supervisor can reach all of it:
//!
//! - the stop signal and the SIGKILL after `drain_timeout` go to the group, as a service manager's do
//!   (systemd's `KillMode=control-group`): a child that outlives its parent, or that the parent never tells
//!   to stop, is reached all the same;
//! - a worker whose leader has exited while others of its group live on is a [`Leftover`]: the seat keeps it
//!   (and the worker's own socket, which those processes may still hold) until the group is empty, and the
//!   supervisor does not finish a drain before — nothing it started keeps a listener of the port after it.
//!
//! A process that leaves the group (`setsid`, a daemon) is beyond this. One whose parent exited keeps the
//! group id and is still reached by it: the kernel keeps that id from reuse while any member lives.

use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::group::Listener;
use crate::log::log;

/// Sends `sig` to `pid`'s whole group when it leads one of its own (`group`), else to `pid` alone.
/// `ESRCH` (all of it is gone) is the reaper's to see.
pub(super) fn signal(pid: Pid, group: bool, sig: Signal) {
    let sent = if group {
        killpg(pid, sig)
    } else {
        Err(nix::errno::Errno::ESRCH)
    };
    if sent.is_err() {
        nix::sys::signal::kill(pid, sig).ok();
    }
}

/// Whether any process (a zombie included, until it is reaped) is left in group `pgid`.
pub(super) fn alive(pgid: Pid) -> bool {
    // Signal 0: the kernel checks the group exists and may be signalled; nothing is sent. EPERM: it exists.
    !matches!(killpg(pgid, None), Err(nix::errno::Errno::ESRCH))
}

/// The live processes of group `pgid` (from /proc), at most `limit` of them: for a log line, and to find
/// the sockets a worker's processes hold.
pub(super) fn members(pgid: Pid, limit: usize) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so split after the last ')'.
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|s| s.parse::<i32>().ok());
        if state != Some("Z") && pgrp == Some(pgid.as_raw()) {
            found.push(Pid::from_raw(pid));
            if found.len() >= limit {
                break;
            }
        }
    }
    found
}

/// What is left of a worker whose leader has exited while its group lives on.
pub(super) struct Leftover {
    /// The group (the exited worker's pid).
    pgid: Pid,
    generation: u64,
    /// When the group gets SIGKILL if it has not emptied by then.
    kill_at: Instant,
    killed: bool,
    /// The worker's own socket (generations), which the group's processes may hold: it leaves the port's
    /// group only once they are gone, so the group's member order stays what the supervisor believes.
    pub(super) socket: Option<Listener>,
}

impl Leftover {
    /// Worker `index`'s group `pgid` (generation `generation`) outlived its leader; SIGKILL at `kill_at`
    /// unless `killed` already.
    pub(super) fn new(
        index: usize,
        pgid: Pid,
        generation: u64,
        kill_at: Instant,
        killed: bool,
    ) -> Leftover {
        let left: Vec<String> = members(pgid, 8).iter().map(Pid::to_string).collect();
        log!(
            "worker {index} (pid {pgid}) exited, but its process group lives on (pid {}): waiting for it, SIGKILL in {:.2?}",
            left.join(", "),
            kill_at.saturating_duration_since(Instant::now())
        );
        Leftover {
            pgid,
            generation,
            kill_at,
            killed,
            socket: None,
        }
    }

    pub(super) fn with_socket(mut self, socket: Option<Listener>) -> Leftover {
        self.socket = socket;
        self
    }

    /// SIGKILL to the group.
    pub(super) fn kill(&mut self) {
        signal(self.pgid, true, Signal::SIGKILL);
        self.killed = true;
    }
}

/// Seat `index`'s leftovers: forgets those now empty (returning their sockets, to leave the port's group)
/// and SIGKILLs those past their deadline (and says whether any got it).
pub(super) fn tick(
    leftovers: &mut Vec<Leftover>,
    index: usize,
    now: Instant,
) -> (Vec<Listener>, bool) {
    let mut gone = Vec::new();
    let mut killed_any = false;
    leftovers.retain_mut(|l| {
        if !alive(l.pgid) {
            log!(
                "worker {index} (pid {}, generation {}): the last process of its group has exited",
                l.pgid,
                l.generation
            );
            gone.extend(l.socket.take());
            return false;
        }
        if !l.killed && now >= l.kill_at {
            log!(
                "worker {index} (pid {}): its process group is still running past the drain timeout; sending it SIGKILL",
                l.pgid
            );
            l.kill();
            killed_any = true;
        }
        true
    });
    (gone, killed_any)
}
