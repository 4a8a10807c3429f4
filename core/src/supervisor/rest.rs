//! How long the event loop sleeps. While anything is due by the clock — a worker starting or draining, a
//! reload, a drain, a control or admin connection, traffic to watch for stalls — the loop wakes every
//! [`super::TICK`] (sooner while a queue has not drained: see [`super::steering`]). At rest it sleeps until
//! an event: a signal, a control or admin client, `READY=1`/`STOPPING=1`, a worker's exit (its pidfd), and
//! a connection arriving on any listener — the supervisor's own copies of the listeners are in its epoll
//! set (edge-triggered) only while it rests, so a first connection wakes it and sampling starts again, and
//! under load it does not wake for every connection. The only clock left at rest is the service manager's
//! (`WATCHDOG=1`, a changed `STATUS=`). Orphans (as PID 1 or a subreaper) have no pidfd: where the
//! supervisor handles signals (the CLI), SIGCHLD says one exited and the reap pass runs then — at most
//! once a second, so a zombie lasts at most a second as before; where signals are the host's, the pass
//! runs once a second as before. (Only orphans signal the supervisor: a worker's own children signal the
//! worker.)
//!
//! At rest means: serving (every seat's worker ready, nothing incoming, retiring or restarting, every exit
//! watched by a pidfd), no reload, upgrade, takeover or drain under way, the control socket and the admin
//! endpoint idle, and no traffic for [`LINGER`]: every queue empty and no `accepted` counter moving.
//!
//! The listeners are taken out of the epoll set again as soon as the loop wakes, before anything can
//! close one (epoll keys a registration by open file description, which the workers share: a closed fd
//! of ours would otherwise stay registered).

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::{Supervisor, TICK};

/// How long after the last sign of traffic the supervisor keeps sampling before it rests.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// The listeners' tokens while at rest (one per seat, in seat order), below the admin endpoint's and the
/// control socket's connections.
const QUEUES: std::ops::Range<usize> = 64..(1 << 18);

/// The listeners watched while at rest, and whether orphans wait for the reap pass.
pub(super) struct Rest {
    armed: Vec<RawFd>,
    /// SIGCHLD wakes the loop when an orphan exits (the CLI: signals handled, a subreaper).
    orphans_signalled: bool,
    /// A SIGCHLD came since the last reap pass.
    orphans_waiting: bool,
}

impl Rest {
    pub(super) fn new(orphans_signalled: bool) -> Rest {
        Rest {
            armed: Vec::new(),
            orphans_signalled,
            orphans_waiting: false,
        }
    }

    pub(super) fn orphan_exited(&mut self) {
        self.orphans_waiting = true;
    }

    pub(super) fn orphans_reaped(&mut self) {
        self.orphans_waiting = false;
    }

    /// Whether `token` is one of the listeners' (a connection arrived while at rest).
    pub(super) fn owns(token: Token) -> bool {
        QUEUES.contains(&token.0)
    }

    /// Watches `fds` for a first connection. False (and nothing watched) when one cannot be.
    fn arm(&mut self, registry: &Registry, fds: &[RawFd]) -> bool {
        if !self.armed.is_empty() {
            return true;
        }
        if fds.len() > QUEUES.len() {
            return false;
        }
        for (i, fd) in fds.iter().enumerate() {
            let token = Token(QUEUES.start + i);
            if registry
                .register(&mut SourceFd(fd), token, Interest::READABLE)
                .is_err()
            {
                self.disarm(registry);
                return false;
            }
            self.armed.push(*fd);
        }
        true
    }

    /// Stops watching the listeners (every wake-up, before anything may close one).
    pub(super) fn disarm(&mut self, registry: &Registry) {
        for fd in self.armed.drain(..) {
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
    }
}

impl Supervisor {
    /// Nothing is due by the clock but the service manager's and the orphan pass (see the module).
    fn at_rest(&self, now: Instant) -> bool {
        self.ready
            && self.draining.is_none()
            && self.drain_due.is_none()
            && self.reload.is_none()
            && self.upgrade.is_none()
            && self.successor.is_none()
            && self.seats.iter().all(|s| s.at_rest())
            && self.server.control.as_ref().is_none_or(|c| c.at_rest())
            && self.server.admin.as_ref().is_none_or(|a| a.at_rest())
            && self.server.steering.quiet(now, LINGER)
    }

    /// How long the loop may sleep from `now` (`None`: until an event); watches the listeners when at
    /// rest. `next_reap`: when the periodic reap pass is due.
    pub(super) fn sleep_for(&mut self, now: Instant, next_reap: Instant) -> Option<Duration> {
        let registry = self.server.poll.registry();
        if !self.at_rest(now) {
            self.rest.disarm(registry);
            return Some(self.server.steering.next_sample(now));
        }
        let fds: Vec<RawFd> = self
            .seats
            .iter()
            .filter_map(|s| s.listener().map(AsRawFd::as_raw_fd))
            .collect();
        if fds.len() != self.seats.len() || !self.rest.arm(registry, &fds) {
            return Some(TICK);
        }
        // Orphans have no pidfd: the pass runs when SIGCHLD said one exited, or (signals left to the
        // host) once a second.
        let reap = (self.reaper.reaps_orphans()
            && (!self.rest.orphans_signalled || self.rest.orphans_waiting))
            .then_some(next_reap);
        let service = self.server.service.next_due(|| self.status_line());
        let due = match (reap, service) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        due.map(|t| t.saturating_duration_since(now))
    }
}
