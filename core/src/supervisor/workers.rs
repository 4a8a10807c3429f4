//! One worker process as the supervisor sees it ([`WorkerProc`]): starting it (built-in fork, or a
//! command exec'd by [`super::command`]), knowing when it is ready, asking it to stop, and killing it
//! when it does not stop in time.
//!
//! Ready: a built-in worker once its loop runs (it says so in its stats slot); a command worker at
//! `READY=1` on `NOTIFY_SOCKET`, or — under `--ready delay` — after `ready_delay` alive. Stop: a built-in
//! worker reads a byte on its drain pipe and bounds its own drain; a command worker gets `stop_signal`,
//! then SIGKILL after `drain_timeout`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::command::Prepared;
use super::process::{child_main, describe};
use super::{Supervisor, KILL_GRACE};
use crate::config::Ready;
use crate::error::{Error, Result};
use crate::fds::Tracked;
use crate::lifecycle::Phase;
use crate::log::log;
use crate::stats::WorkerKind;

pub(super) struct WorkerProc {
    pub(super) pid: Option<Pid>,
    /// Write end of a built-in worker's drain pipe: a byte on it (or EOF) tells the worker to drain.
    pub(super) drain: Option<Tracked<OwnedFd>>,
    pub(super) started: Instant,
    pub(super) crashes: u32,
    pub(super) restart_at: Option<Instant>,
    /// How many workers this listener has had, this one included.
    pub(super) generation: u64,
    /// It serves (sticky until it is replaced).
    pub(super) ready: bool,
    /// When it was asked to stop, and whether it has been killed since.
    pub(super) stopping: Option<Instant>,
    killed: bool,
    /// Killed for not being ready in time: its exit counts as a failed start.
    pub(super) failed_start: bool,
}

impl WorkerProc {
    /// A slot with no process yet.
    pub(super) fn new(generation: u64) -> WorkerProc {
        WorkerProc {
            pid: None,
            drain: None,
            started: Instant::now(),
            crashes: 0,
            restart_at: None,
            generation,
            ready: false,
            stopping: None,
            killed: false,
            failed_start: false,
        }
    }

    /// Asks it to stop: `byte` on a built-in worker's drain pipe, `signal` to a command worker.
    pub(super) fn ask_to_stop(&mut self, byte: u8, signal: Signal) {
        if let Some(pipe) = self.drain.take() {
            // A worker that already exited cannot read it (EPIPE); closing the pipe says the same.
            nix::unistd::write(&pipe, &[byte]).ok();
        } else if let Some(pid) = self.pid {
            // ESRCH: it is gone already, which the reaper will see.
            nix::sys::signal::kill(pid, signal).ok();
        }
        if self.pid.is_some() && self.stopping.is_none() {
            self.stopping = Some(Instant::now());
        }
    }

    /// SIGKILL, once.
    pub(super) fn kill(&mut self) {
        if let Some(pid) = self.pid {
            nix::sys::signal::kill(pid, Signal::SIGKILL).ok();
            self.killed = true;
        }
    }
}

impl Supervisor {
    pub(super) fn kind(&self) -> WorkerKind {
        if self.server.function.is_some() {
            WorkerKind::Function
        } else if self.server.config.command.is_empty() {
            WorkerKind::Builtin
        } else {
            WorkerKind::Command
        }
    }

    /// Starts a worker of `generation` on listener `i`. `beside`: another worker still serves that
    /// listener (a reload), so the slot's counters are shared rather than reset.
    pub(super) fn start_worker(
        &mut self,
        i: usize,
        generation: u64,
        beside: bool,
    ) -> Result<WorkerProc> {
        let listener_fd = self.server.listeners[i].as_raw_fd();
        let kind = self.kind();
        let slot = self.server.stats.slot(i);
        let mut w = WorkerProc::new(generation);
        match kind {
            WorkerKind::Builtin => {
                let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::io("pipe", e.into()))?;
                // SAFETY: the child runs only Rust code of this crate and leaves with _exit (see child_main).
                match unsafe { nix::unistd::fork() } {
                    Err(e) => return Err(Error::io(format!("fork worker {i}"), e.into())),
                    Ok(nix::unistd::ForkResult::Child) => {
                        child_main(i, listener_fd, rx, &self.server, beside)
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => {
                        drop(rx);
                        w.pid = Some(child);
                        w.drain = Some(Tracked::new(tx));
                    }
                }
            }
            WorkerKind::Function => {
                let host =
                    self.server.function.clone().ok_or_else(|| {
                        Error::Internal("function workers without a function".into())
                    })?;
                let (pid, drain) =
                    super::function::spawn(&host, i, listener_fd, &self.server.stats, beside)?;
                w.pid = Some(pid);
                w.drain = Some(drain);
            }
            WorkerKind::Command => {
                let c = &self.server.config;
                let notify = self.notify.as_ref().map(|n| n.path.clone());
                let prepared = Prepared::new(
                    &c.command,
                    i,
                    self.server.addr.port(),
                    notify.as_deref().unwrap_or("".as_ref()),
                )?;
                let child = prepared.spawn(listener_fd, c.stop_signal)?;
                w.pid = Some(child);
                if !beside {
                    slot.begin(child.as_raw() as u32);
                }
            }
        }
        if !beside {
            slot.set_generation(kind, generation);
        }
        let pid = w.pid.map_or(0, Pid::as_raw);
        let what = match kind {
            WorkerKind::Builtin => String::new(),
            WorkerKind::Function => " (function)".to_string(),
            WorkerKind::Command => format!(
                " (fd 3 in the program), command {:?}",
                self.server.config.command
            ),
        };
        log!("worker {i} started: pid {pid}, listener fd {listener_fd}{what}, generation {generation}");
        Ok(w)
    }

    /// Marks workers ready (built-in: their loop runs; command: alive for `ready_delay` under
    /// `--ready delay`), and kills a command worker that owes `READY=1` past `ready_timeout`.
    pub(super) fn update_ready(&mut self) {
        let c = &self.server.config;
        let kind = self.kind();
        let stats = &self.server.stats;
        let (delay, timeout, mode) = (c.ready_delay, c.ready_timeout, c.ready);
        let check = |i: usize, w: &mut WorkerProc, current: bool| {
            let Some(pid) = w.pid else { return };
            if w.ready || w.stopping.is_some() {
                return;
            }
            let slot = stats.slot(i);
            w.ready = match kind {
                WorkerKind::Builtin | WorkerKind::Function => {
                    slot.pid() == pid.as_raw() as u32 && slot.state() == Phase::Serving
                }
                WorkerKind::Command => mode == Ready::Delay && w.started.elapsed() >= delay,
            };
            if w.ready && current && kind == WorkerKind::Command {
                slot.set_state(Phase::Serving);
            }
            // A reload's new worker has its own deadline (see reload.rs); this one is a failed start.
            if current && !w.ready && !w.killed && w.started.elapsed() > timeout {
                log!("worker {i} (pid {pid}) was not ready within {timeout:?} (no READY=1); killing it");
                w.failed_start = true;
                w.kill();
            }
        };
        for (i, w) in self.procs.iter_mut().enumerate() {
            check(i, w, true);
        }
        if let Some(r) = self.reload.as_mut() {
            for (i, w) in r.pending_mut() {
                check(i, w, false);
            }
        }
    }

    /// `READY=1` (and `STATUS=`) from command workers, by the sender's pid.
    pub(super) fn on_notify(&mut self) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        for msg in n.receive() {
            let pending = self.reload.iter_mut().flat_map(|r| r.pending_mut());
            let current = self.procs.iter_mut().enumerate();
            let Some((i, w)) = current
                .chain(pending)
                .find(|(_, w)| w.pid.is_some_and(|p| p.as_raw() as u32 == msg.pid))
            else {
                continue; // not one of our workers (a grandchild, or one that already retired)
            };
            if msg.ready() && !w.ready && w.stopping.is_none() {
                w.ready = true;
                let status = msg.status().map(|s| format!(" ({s})")).unwrap_or_default();
                log!("worker {i} (pid {}) sent READY=1{status}", msg.pid);
                if self.procs[i]
                    .pid
                    .is_some_and(|p| p.as_raw() as u32 == msg.pid)
                {
                    self.server.stats.slot(i).set_state(Phase::Serving);
                }
            }
        }
    }

    /// SIGKILL for workers that were asked to stop and are still there: a command or function worker
    /// after `drain_timeout`, a built-in one (which bounds its own drain) `KILL_GRACE` later.
    pub(super) fn escalate(&mut self) {
        let limit = self.server.config.drain_timeout;
        let kind = self.kind();
        let limit = match kind {
            WorkerKind::Command | WorkerKind::Function => limit,
            WorkerKind::Builtin => limit.saturating_add(KILL_GRACE),
        };
        let signal = self.server.config.stop_signal;
        let mut killed_any = false;
        let retiring = self.retiring.iter_mut().map(|(i, w)| (*i, w));
        for (i, w) in self.procs.iter_mut().enumerate().chain(retiring) {
            if w.killed || w.pid.is_none() {
                continue;
            }
            if w.stopping.is_some_and(|t| t.elapsed() > limit) {
                let pid = w.pid.map_or(0, Pid::as_raw);
                let asked = match kind {
                    WorkerKind::Command => format!("{signal}"),
                    WorkerKind::Builtin | WorkerKind::Function => "to drain".to_string(),
                };
                log!("worker {i} (pid {pid}) still running {limit:?} after it was asked {asked}; sending SIGKILL");
                w.kill();
                killed_any = true;
            }
        }
        // A drain that had to kill was cut short (the CLI exits 1).
        if killed_any && self.draining.is_some() {
            self.forced = true;
        }
    }

    /// Reaps workers a reload replaced; they are not restarted.
    pub(super) fn reap_retiring(&mut self) {
        let (procs, stats, draining) = (&self.procs, &self.server.stats, self.draining.is_some());
        self.retiring.retain_mut(|(i, w)| {
            let Some(pid) = w.pid else { return false };
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => return true,
                Ok(s) => describe(s),
                Err(e) => format!("gone ({e})"),
            };
            let took = w.stopping.map_or(Duration::ZERO, |t| t.elapsed());
            log!(
                "worker {i} (pid {pid}, generation {}) retired: {status} {took:.2?} after it was asked to stop",
                w.generation
            );
            // A built-in worker's drain wrote `draining` into the slot its successor serves.
            let current = &procs[*i];
            let slot = stats.slot(*i);
            if !draining && current.ready && current.pid.is_some_and(|p| p.as_raw() as u32 == slot.pid()) {
                slot.set_state(Phase::Serving);
            }
            false
        });
    }
}
