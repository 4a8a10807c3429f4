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
//! A process that leaves the group (`setsid`, a daemon) is beyond this; so is one reparented elsewhere that
//! keeps the group id — it is still reached, by the id, which the kernel keeps from reuse while any member
//! lives.

use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::group::Listener;

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

/// The live processes of group `pgid` (from /proc), for a log line: at most `limit` of them.
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
    pub(super) pgid: Pid,
    pub(super) generation: u64,
    /// When the group gets SIGKILL if it has not emptied by then.
    pub(super) kill_at: Instant,
    pub(super) killed: bool,
    /// The worker's own socket (generations), which the group's processes may hold: it leaves the port's
    /// group only once they are gone, so the group's member order stays what the supervisor believes.
    pub(super) socket: Option<Listener>,
}
