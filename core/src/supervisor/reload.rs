//! Reload in place (`reload` request, SIGHUP): per listener, start a new worker beside the one serving it,
//! wait until the new one is ready, then ask the old one to stop. The listener never closes, so nothing
//! queued on it is reset. At most `batch` new workers start at a time: capacity stays between N ready
//! workers and N + batch. A new worker that exits, or is not ready within `ready_timeout`, stops the
//! reload: the workers not replaced yet keep serving, and the report names the worker and why.
//!
//! A command worker is a fresh exec (new code on disk); a built-in worker a fresh fork.

use std::collections::VecDeque;
use std::time::Instant;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::process::describe;
use super::workers::WorkerProc;
use super::Supervisor;
use crate::control::{self, ConnId, ReloadFailure, ReloadReport, Replaced};
use crate::lifecycle::Phase;
use crate::log::log;
use crate::worker;

/// A reload in progress.
pub(super) struct Reload {
    /// Listeners whose new worker has not started yet.
    queue: VecDeque<usize>,
    /// New workers started and not ready yet: `(listener index, worker)`.
    pending: Vec<(usize, WorkerProc)>,
    batch: usize,
    /// The `reload` request to answer when done (`None`: SIGHUP).
    requester: Option<mio::net::UnixStream>,
    replaced: Vec<Replaced>,
    started: Instant,
}

impl Reload {
    /// Whether a new worker for listener `i` is starting.
    pub(super) fn has_pending(&self, i: usize) -> bool {
        self.pending.iter().any(|(j, _)| *j == i)
    }

    pub(super) fn pending(&self) -> impl Iterator<Item = &WorkerProc> {
        self.pending.iter().map(|(_, w)| w)
    }

    pub(super) fn pending_mut(&mut self) -> impl Iterator<Item = (usize, &mut WorkerProc)> {
        self.pending.iter_mut().map(|(i, w)| (*i, w))
    }
}

fn pid_of(w: &WorkerProc) -> u32 {
    w.pid.map_or(0, |p| p.as_raw() as u32)
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
        if self.draining.is_some() {
            return Err(control::DRAINING.to_string());
        }
        if self.reload.is_some() {
            return Err("a reload is in progress already".to_string());
        }
        if self.successor.is_some() {
            return Err("this server is handing over to a new server".to_string());
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
        let n = self.procs.len();
        log!("reload: replacing {n} worker(s), {batch} at a time");
        self.reload = Some(Reload {
            queue: (0..n).collect(),
            pending: Vec::new(),
            batch: batch.max(1),
            requester,
            replaced: Vec::new(),
            started: Instant::now(),
        });
        self.drive_reload();
        Ok(())
    }

    /// One step: reap or promote new workers, start the next ones, finish when all are replaced.
    pub(super) fn drive_reload(&mut self) {
        let Some(mut r) = self.reload.take() else {
            return;
        };
        let timeout = self.server.config.ready_timeout;
        let mut failure = None;
        let mut k = 0;
        while k < r.pending.len() {
            let (i, w) = &mut r.pending[k];
            let i = *i;
            let pid = w.pid.unwrap_or(Pid::from_raw(0));
            let exited = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => None,
                Ok(s) => Some(describe(s)),
                Err(e) => Some(format!("is gone ({e})")),
            };
            if let Some(status) = exited {
                w.pid = None;
                failure = Some(fail(i, pid, format!("{status} before it was ready")));
                r.pending.remove(k);
                break;
            }
            if w.ready {
                let (i, new) = r.pending.remove(k);
                r.replaced.push(self.promote(i, new));
                continue;
            }
            if w.started.elapsed() > timeout {
                w.failed_start = true;
                w.kill();
                let why = if self.server.config.command.is_empty() {
                    format!("was not serving within {timeout:?}")
                } else {
                    format!("was not ready within {timeout:?} (--ready-timeout)")
                };
                failure = Some(fail(i, pid, why));
                break;
            }
            k += 1;
        }
        while failure.is_none() && r.pending.len() < r.batch {
            let Some(i) = r.queue.pop_front() else { break };
            let generation = self.procs[i].generation + 1;
            match self.start_worker(i, generation, true) {
                Ok(w) => r.pending.push((i, w)),
                Err(e) => {
                    failure = Some(ReloadFailure {
                        index: Some(i),
                        pid: None,
                        reason: format!("could not start: {e}"),
                    })
                }
            }
        }
        if failure.is_some() || (r.pending.is_empty() && r.queue.is_empty()) {
            self.finish_reload(r, failure);
        } else {
            self.reload = Some(r);
        }
    }

    /// The new worker `new` serves listener `i` now; the old one is asked to stop and retires.
    fn promote(&mut self, i: usize, new: WorkerProc) -> Replaced {
        let slot = self.server.stats.slot(i);
        let new_pid = pid_of(&new);
        let generation = new.generation;
        slot.join(new_pid);
        slot.set_generation(self.kind(), generation);
        slot.set_state(Phase::Serving);
        let mut old = std::mem::replace(&mut self.procs[i], new);
        let old_pid = pid_of(&old);
        if old.pid.is_some() {
            // A handover byte: a built-in worker closes its copy of the listener at once, since the new
            // worker serves the same socket and its queue.
            old.ask_to_stop(worker::HANDOVER, self.server.config.stop_signal);
            self.retiring.push((i, old));
        }
        log!("reload: worker {i} pid {new_pid} (generation {generation}) is ready; pid {old_pid} stops");
        Replaced {
            index: i,
            old_pid,
            new_pid,
            generation,
        }
    }

    /// A drain during a reload ends it: the new workers not ready yet stop with the rest.
    pub(super) fn abort_reload(&mut self, why: &str) {
        if let Some(r) = self.reload.take() {
            let failure = ReloadFailure {
                index: None,
                pid: None,
                reason: why.to_string(),
            };
            self.finish_reload(r, Some(failure));
        }
    }

    /// Stops the new workers still pending (after a failure), answers the requester and logs the outcome.
    fn finish_reload(&mut self, mut r: Reload, failed: Option<ReloadFailure>) {
        let stop = self.server.config.stop_signal;
        for (i, mut w) in r.pending.drain(..) {
            if w.pid.is_some() {
                w.ask_to_stop(super::DRAIN_BYTE, stop);
                self.retiring.push((i, w));
            }
        }
        match &failed {
            None => log!(
                "reload: done, {} worker(s) replaced in {:.2?}",
                r.replaced.len(),
                r.started.elapsed()
            ),
            Some(f) => log!(
                "reload stopped after {} replaced worker(s): {}; the others keep serving",
                r.replaced.len(),
                describe_failure(f)
            ),
        }
        let report = ReloadReport {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            replaced: std::mem::take(&mut r.replaced),
            failed,
        };
        if let Some(s) = r.requester.take() {
            // Best effort: a client that went away does not need it.
            let _ = control::send_line(&s, &control::encode(&report));
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
