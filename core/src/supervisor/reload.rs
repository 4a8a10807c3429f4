//! Reload in place (`reload` request, SIGHUP): per listener, start a new worker beside the one serving it,
//! wait until the new one is ready, then ask the old one to stop. The listener never closes, so nothing
//! queued on it is reset. At most `batch` new workers start at a time: capacity stays between N ready
//! workers and N + batch. A new worker that exits, or is not ready within `ready_timeout`, stops the
//! reload: the workers not replaced yet keep serving, and the report names the worker and why.
//!
//! A command worker is a fresh exec (new code on disk); a built-in worker a fresh fork. The policy only
//! decides when; the seats start, promote and stop the workers.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::unistd::Pid;

use super::group;
use super::seat::{Exit, Late};
use super::Supervisor;
use crate::control::{self, ConnId, ReloadFailure, ReloadReport, Replaced};
use crate::log::log;
use crate::stats::Role;

/// A reload in progress.
pub(super) struct Reload {
    /// Listeners whose new worker has not started yet.
    queue: VecDeque<usize>,
    batch: usize,
    /// The `reload` request to answer when done (`None`: SIGHUP).
    requester: Option<mio::net::UnixStream>,
    replaced: Vec<Replaced>,
    /// Why it stops, once a new worker failed.
    failure: Option<ReloadFailure>,
    started: Instant,
}

impl Supervisor {
    /// A `reload` request on the control socket: refused at once, or answered when the reload is over.
    pub(super) fn reload_request(&mut self, id: ConnId, batch: Option<usize>) {
        let batch = batch.unwrap_or(1);
        if batch == 0 {
            return self.respond(id, control::error_line("batch must be at least 1"));
        }
        if let Err(why) = self.can_reload() {
            log!("reload refused: {why}");
            return self.respond(id, control::error_line(&why));
        }
        let Some(c) = self.server.control.as_mut() else {
            return;
        };
        let stream = c.take(self.server.poll.registry(), id);
        if let Err(why) = self.begin_reload(batch, stream) {
            log!("reload refused: {why}");
        }
    }

    fn can_reload(&self) -> Result<(), String> {
        if self.stopping() {
            return Err(control::DRAINING.to_string());
        }
        if self.reload.is_some() {
            return Err("a reload is in progress already".to_string());
        }
        if self.successor.is_some() {
            return Err("this server is handing over to a new server".to_string());
        }
        if self.upgrade.is_some() {
            return Err("an upgrade is in progress".to_string());
        }
        if !self.ready {
            return Err(
                "this server is still starting (not every worker is ready yet)".to_string(),
            );
        }
        Ok(())
    }

    /// Starts a reload, `batch` workers at a time; `requester` gets the report at the end.
    pub(super) fn begin_reload(
        &mut self,
        batch: usize,
        requester: Option<mio::net::UnixStream>,
    ) -> Result<(), String> {
        if let Err(why) = self.can_reload() {
            if let Some(s) = requester {
                let _ = control::send_line(&s, &control::error_line(&why));
            }
            return Err(why);
        }
        let n = self.seats.len();
        log!("reload: replacing {n} worker(s), {batch} at a time");
        self.server.service.reloading(&format!(
            "reloading: replacing {n} worker(s), {batch} at a time"
        ));
        self.reload = Some(Reload {
            queue: (0..n).collect(),
            batch: batch.max(1),
            requester,
            replaced: Vec::new(),
            failure: None,
            started: Instant::now(),
        });
        self.drive_reload();
        Ok(())
    }

    /// A socket of its own for a new worker on seat `i`, when the kind wants one and the group's program
    /// can keep new connections off it until it is promoted; `None`: it shares the seat's listener.
    fn own_socket(&mut self, i: usize) -> Option<group::Listener> {
        if !self.server.kind.own_sockets() {
            return None;
        }
        let refuse = |why: &str| {
            log!("reload: worker {i}'s new worker shares its listener ({why})");
            None
        };
        if self.server.managed {
            return refuse("the listeners are the service manager's, which keeps a copy of each: a socket of our own could never leave the group");
        }
        if let Err(why) = self.server.group.known() {
            return refuse(why);
        }
        // Every current listener selected, explicitly: the new socket joins unselected.
        let current: Vec<group::SockId> = self
            .seats
            .iter()
            .filter_map(|s| s.listener().map(|l| l.id))
            .collect();
        let any = self.seats.iter().find_map(|s| s.listener())?;
        if let Err(e) = self.server.group.select(any, &current) {
            return refuse(&format!("the reuseport program could not be attached: {e}"));
        }
        let c = &self.server.config;
        match self.server.group.bind(self.server.addr, c.backlog) {
            Ok(l) => Some(l),
            Err(e) => refuse(&format!("a new socket could not be bound: {e}")),
        }
    }

    /// A new worker exited before it was ready: the reload stops.
    pub(super) fn incoming_exited(&mut self, exit: Exit) {
        if let Some(r) = self.reload.as_mut() {
            let why = format!("{} before it was ready", exit.status);
            r.failure.get_or_insert(fail(exit.index, exit.pid, why));
        }
    }

    /// A new worker was not ready in time (and was killed): the reload stops.
    pub(super) fn incoming_late(&mut self, late: Late) {
        if let Some(r) = self.reload.as_mut() {
            let why = format!(
                "was not ready within {:?} (the ready timeout)",
                late.timeout
            );
            r.failure.get_or_insert(fail(late.index, late.pid, why));
        }
    }

    /// One step: promote new workers that are ready, start the next ones, finish when all are replaced
    /// (or one failed).
    pub(super) fn drive_reload(&mut self) {
        let Some(mut r) = self.reload.take() else {
            return;
        };
        let (seats, ctx, _) = self.seats();
        let mut promoted = false;
        let mut moved = Vec::new();
        if r.failure.is_none() {
            for seat in seats.iter_mut() {
                if !seat.incoming().is_some_and(|w| w.is_ready()) {
                    continue;
                }
                let i = seat.index;
                let before = seat.listener().map(|l| l.as_raw_fd());
                if let Some((old_pid, new)) = seat.promote(&ctx) {
                    let (new_pid, generation) = (new.pid.as_raw() as u32, new.generation);
                    let old_pid = old_pid.as_raw() as u32;
                    log!("reload: worker {i} pid {new_pid} (generation {generation}) is ready; pid {old_pid} stops");
                    r.replaced.push(Replaced {
                        index: i,
                        old_pid,
                        new_pid,
                        generation,
                    });
                    promoted = true;
                }
                let after = seat.listener().map(|l| l.as_raw_fd());
                if before != after {
                    moved.push((before, after));
                }
            }
        }
        // The fd store follows the seats' listeners: the new one in, the old one out now, long before it
        // closes (a copy left in the store would keep it in the group after we close ours).
        for (before, after) in moved {
            if let Some(fd) = before {
                self.unstore(fd);
            }
            if let Some(fd) = after {
                self.store(fd);
            }
        }
        if promoted {
            // New connections go to the promoted workers' sockets from now on.
            self.apply_program();
        }
        let mut starting = self.seats.iter().filter(|s| s.incoming().is_some()).count();
        while r.failure.is_none() && starting < r.batch {
            let Some(i) = r.queue.pop_front() else { break };
            let own = self.own_socket(i);
            let (seats, ctx, spawner) = self.seats();
            match seats[i].start(&ctx, spawner, Role::Incoming, own) {
                Ok(_) => starting += 1,
                Err(e) => {
                    r.failure = Some(ReloadFailure {
                        index: Some(i),
                        pid: None,
                        reason: format!("could not start: {e}"),
                    })
                }
            }
        }
        if r.failure.is_some() || (starting == 0 && r.queue.is_empty()) {
            self.finish_reload(r);
        } else {
            self.reload = Some(r);
        }
    }

    /// A drain during a reload ends it: the new workers not ready yet stop with the rest.
    pub(super) fn abort_reload(&mut self, why: &str) {
        if let Some(mut r) = self.reload.take() {
            r.failure.get_or_insert(ReloadFailure {
                index: None,
                pid: None,
                reason: why.to_string(),
            });
            self.finish_reload(r);
        }
    }

    /// Stops the new workers still starting (after a failure), answers the requester and logs the outcome.
    fn finish_reload(&mut self, mut r: Reload) {
        let (seats, ctx, _) = self.seats();
        for seat in seats.iter_mut() {
            seat.drop_incoming(&ctx);
        }
        match &r.failure {
            None => self.counters.reloads_done += 1,
            Some(_) => self.counters.reloads_failed += 1,
        }
        let outcome = match &r.failure {
            None => format!(
                "done, {} worker(s) replaced in {:.2?}",
                r.replaced.len(),
                r.started.elapsed()
            ),
            Some(f) => format!(
                "stopped after {} replaced worker(s): {}; the others keep serving",
                r.replaced.len(),
                describe_failure(f)
            ),
        };
        match &r.failure {
            None => log!("reload: {outcome}"),
            Some(_) => log!("reload {outcome}"),
        }
        self.last_reload = Some(outcome);
        // The service manager's reload is over either way (a drain says STOPPING=1 instead).
        if self.draining.is_none() {
            let status = self.status_line();
            self.server.service.reloaded(&status);
        }
        let report = ReloadReport {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            replaced: std::mem::take(&mut r.replaced),
            failed: r.failure.take(),
        };
        if let Some(s) = r.requester.take() {
            // Best effort: a client that went away does not need it.
            let _ = control::send_line(&s, &control::encode(&report));
        }
    }
}

impl Supervisor {
    /// A reload the service manager asked for (SIGHUP) that cannot happen now still ends, so that
    /// `systemctl reload` does not wait for it: `RELOADING=1` then `READY=1`, with why in `STATUS=`. One
    /// in progress ends with its own `READY=1`; a server still starting or draining has nothing to say.
    pub(super) fn reload_refused(&mut self, why: &str) {
        if !self.ready || self.draining.is_some() {
            return;
        }
        self.server.service.reloading("reloading");
        if self.reload.is_none() {
            let status = format!("reload refused: {why}; {}", self.status_line());
            self.server.service.reloaded(&status);
        }
    }
}

fn fail(i: usize, pid: Pid, reason: String) -> ReloadFailure {
    ReloadFailure {
        index: Some(i),
        pid: (pid.as_raw() > 0).then_some(pid.as_raw() as u32),
        reason,
    }
}

/// `worker 2 (new pid 1234) exited with status 1 before it was ready`.
pub(crate) fn describe_failure(f: &ReloadFailure) -> String {
    match (f.index, f.pid) {
        (Some(i), Some(pid)) => format!("worker {i} (new pid {pid}) {}", f.reason),
        (Some(i), None) => format!("worker {i} {}", f.reason),
        _ => f.reason.clone(),
    }
}
