//! The supervisor: binds every listener before forking, forks one worker per listener (built-in, or a
//! command exec'd with the listener as fd 3), re-forks the dead, replaces workers in place on `reload`,
//! turns signals and control requests into the lifecycle `serving → draining → stopped`, and hands its
//! sockets to a successor on `takeover`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::config::Config;
use crate::control::{self, ConnId, ControlSocket, Request, ServerStatus};
use crate::error::{Error, Result};
use crate::fds::Tracked;
use crate::lifecycle::{Phase, Report, StopReason};
use crate::listener;
use crate::log::log;
use crate::migrate::migrate_req;
use crate::signals::SignalGuard;
use crate::stats::StatsArea;
use crate::worker;

mod command;
mod function;
mod notify;
mod process;
mod reload;
mod shared;
mod steering;
mod takeover;
mod workers;

pub(crate) use shared::Shared;

use notify::NotifySocket;
use process::{describe, on_main_thread};
use reload::Reload;
use steering::Steering;
use takeover::{take_over, Predecessor};
use workers::WorkerProc;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const CONTROL: Token = Token(2);
const SUCCESSOR: Token = Token(3);
const NOTIFY: Token = Token(4);
/// How often the supervisor reaps workers and samples queue lengths when nothing else wakes it.
const TICK: Duration = Duration::from_millis(50);
/// Extra time past `drain_timeout` before workers that still have not exited are killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a successor may take between receiving the sockets and saying `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Byte on a worker's drain pipe that means "drain" (any byte but [`worker::HANDOVER`] does).
const DRAIN_BYTE: u8 = b'd';

/// A bound server: listeners open (connections queue from now on), workers not started yet. The public
/// face is [`crate::Server`]; this is what the supervisor owns while it runs.
pub(crate) struct Bound {
    pub(crate) config: Config,
    pub(crate) addr: SocketAddr,
    pub(crate) listeners: Vec<Tracked<std::net::TcpListener>>,
    stats: Arc<StatsArea>,
    pub(crate) shared: Arc<Shared>,
    poll: Tracked<Poll>,
    control: Option<ControlSocket>,
    predecessor: Option<Predecessor>,
    /// Stall detection and the group's program (see `steering`).
    steering: Steering,
    /// The host's function, when the workers run it ([`crate::FunctionHost`]).
    pub(crate) function: Option<Arc<dyn crate::FunctionHost>>,
}

/// Validates `config`, binds `workers` reuseport listeners (or adopts a running server's on `takeover`)
/// and opens the control socket.
pub(crate) fn bind(config: Config) -> Result<Bound> {
    config.validate()?;
    let wanted = listener::resolve(&config.host, config.port)?;
    let mut listeners = Vec::new();
    let mut predecessor = None;
    if config.takeover {
        if let Some((p, adopted)) = take_over(wanted, !config.command.is_empty())? {
            listeners = adopted.into_iter().map(Tracked::new).collect();
            predecessor = Some(p);
        }
    }
    let adopted = listeners.len();
    let mut addr = match listeners.first() {
        Some(l) => l.local_addr().map_err(|e| Error::io("getsockname", e))?,
        None => wanted,
    };
    while listeners.len() < config.workers {
        let l = listener::bind(addr, config.backlog, true)?;
        addr = l.local_addr().map_err(|e| Error::io("getsockname", e))?;
        listeners.push(Tracked::new(l));
    }
    let migrate_prog = match (config.migrate, listeners.first()) {
        (true, Some(l)) => crate::migrate::enable(l)?,
        _ => None,
    };
    let adopted_order = predecessor.as_ref().and_then(|p| p.order.as_deref());
    let group_order = steering::group_order(addr, adopted, adopted_order, listeners.len());
    let steering = Steering::new(&config, addr, group_order, migrate_prog, adopted > 0);
    let stats = Arc::new(StatsArea::new(listeners.len())?);
    let poll = Tracked::new(Poll::new().map_err(|e| Error::io("epoll", e))?);
    let waker = Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("eventfd", e))?;
    let control = if config.control {
        Some(ControlSocket::bind(addr, poll.registry(), CONTROL)?)
    } else {
        None
    };
    let shared = Arc::new(Shared::new(waker, stats.clone(), addr));
    Ok(Bound {
        config,
        addr,
        listeners,
        stats,
        shared,
        poll,
        control,
        predecessor,
        steering,
        function: None,
    })
}

/// Forks the workers and supervises them until drained; the shared phase is `stopped` afterwards,
/// whatever happened.
pub(crate) fn run(bound: Bound) -> Result<Report> {
    let shared = bound.shared.clone();
    let result = Supervisor::new(bound).and_then(|mut s| s.run());
    shared.set_phase(Phase::Stopped);
    result
}

struct Supervisor {
    server: Bound,
    /// The worker serving each listener (or about to be restarted on it).
    procs: Vec<WorkerProc>,
    /// Workers replaced by a reload, asked to stop and not restarted: `(listener index, worker)`.
    retiring: Vec<(usize, WorkerProc)>,
    /// The reload in progress.
    reload: Option<Reload>,
    /// `NOTIFY_SOCKET` of command workers.
    notify: Option<NotifySocket>,
    signals: Option<SignalGuard>,
    /// A new server that holds our sockets and owes us `ready`, and since when.
    successor: Option<(mio::net::UnixStream, Instant)>,
    draining: Option<(Instant, StopReason)>,
    forced: bool,
    ready: bool,
    started: Instant,
}

impl Supervisor {
    fn new(server: Bound) -> Result<Supervisor> {
        let signals = if server.config.handle_signals && on_main_thread() {
            Some(SignalGuard::install(
                server.poll.registry(),
                SIGNALS,
                crate::signals::SUPERVISOR,
            )?)
        } else {
            None
        };
        let n = server.listeners.len();
        let procs = (0..n).map(|_| WorkerProc::new(0)).collect();
        let notify = if server.config.command.is_empty() {
            None
        } else {
            Some(NotifySocket::bind(
                server.addr,
                server.poll.registry(),
                NOTIFY,
            )?)
        };
        Ok(Supervisor {
            server,
            procs,
            retiring: Vec::new(),
            reload: None,
            notify,
            signals,
            successor: None,
            draining: None,
            forced: false,
            ready: false,
            started: Instant::now(),
        })
    }

    fn run(&mut self) -> Result<Report> {
        let c = &self.server.config;
        let what = if self.server.function.is_some() {
            "function workers".to_string()
        } else if c.command.is_empty() {
            format!("mode {}", c.mode)
        } else {
            format!("command {:?}, ready {}", c.command, c.ready.as_str())
        };
        log!(
            "{} server starting on {}: {} worker(s), {what}, backlog {}, drain timeout {:?}",
            c.runtime,
            self.server.addr,
            self.procs.len(),
            c.backlog,
            c.drain_timeout
        );
        let room = process::connection_room();
        if c.max_connections > room {
            log!(
                "note: max_connections {} is more than the open-files limit allows (RLIMIT_NOFILE hard limit): \
                 each worker serves at most {room} at once",
                c.max_connections
            );
        }
        if migrate_req() == Some(false)
            && self.server.predecessor.is_none()
            && !self.server.steering.migrates()
        {
            log!(
                "note: net.ipv4.tcp_migrate_req=0: closing a listener resets connections queued on it; \
                 use --takeover for rolling upgrades, or sysctl net.ipv4.tcp_migrate_req=1"
            );
        }
        for i in 0..self.procs.len() {
            if let Err(e) = self.spawn(i) {
                self.kill_all();
                self.reap_until_gone(Duration::from_secs(5));
                return Err(e);
            }
        }
        let mut events = Events::with_capacity(64);
        loop {
            if let Err(e) = self.server.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.kill_all();
                    return Err(Error::io("supervisor epoll_wait", e));
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER if self.server.shared.shutdown.swap(false, Ordering::SeqCst) => {
                        self.begin_drain(StopReason::Shutdown)
                    }
                    SIGNALS => self.on_signals(),
                    SUCCESSOR => self.on_successor(),
                    NOTIFY => self.on_notify(),
                    t if self.server.control.as_ref().is_some_and(|c| c.owns(t)) => {
                        self.on_control(Some(t))
                    }
                    _ => {}
                }
            }
            self.on_control(None);
            self.expire_successor();
            self.reap();
            self.update_ready();
            self.drive_reload();
            self.restart_due();
            self.escalate();
            self.sample_queues();
            self.steer();
            self.check_ready();
            self.publish_phase();
            if let Some((since, reason)) = self.draining {
                if self.procs.iter().all(|p| p.pid.is_none()) && self.retiring.is_empty() {
                    let report = Report {
                        reason,
                        forced: self.forced,
                        served: self
                            .server
                            .stats
                            .snapshot()
                            .iter()
                            .map(|w| w.accepted)
                            .sum(),
                        drain: since.elapsed(),
                    };
                    log!(
                        "stopped ({}): all workers exited after {:.2?}; served {} connection(s)",
                        reason.cause(),
                        report.drain,
                        report.served
                    );
                    return Ok(report);
                }
                let limit = self.server.config.drain_timeout.saturating_add(KILL_GRACE);
                if since.elapsed() > limit && !self.forced {
                    log!("drain: workers still running {KILL_GRACE:?} past the drain timeout; killing them");
                    self.forced = true;
                    self.kill_all();
                }
            }
        }
    }

    /// Starts a fresh worker on listener `i` in its slot (the first start, or a restart).
    fn spawn(&mut self, i: usize) -> Result<()> {
        let generation = self.procs[i].generation + 1;
        let fresh = self.start_worker(i, generation, false)?;
        let p = &mut self.procs[i];
        let crashes = p.crashes;
        *p = fresh;
        p.crashes = crashes;
        Ok(())
    }

    fn reap(&mut self) {
        self.reap_retiring();
        for i in 0..self.procs.len() {
            let Some(pid) = self.procs[i].pid else {
                continue;
            };
            let (status, clean) = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(s) => (describe(s), matches!(s, WaitStatus::Exited(_, 0))),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => (format!("gone ({e})"), false), // reaped by someone else (ECHILD)
            };
            let slot = self.server.stats.slot(i);
            if slot.pid() == pid.as_raw() as u32 {
                slot.set_state(Phase::Stopped);
            }
            let command = !self.server.config.command.is_empty();
            let function = self.server.function.is_some();
            let p = &mut self.procs[i];
            p.pid = None;
            p.drain = None;
            if self.draining.is_some() {
                log!("worker {i} (pid {pid}) {status}");
                continue;
            }
            // Replace it on the same listener so its queue is served. A clean exit (the worker alone got
            // SIGTERM and drained) is a graceful restart; quick deaths, and a command that died (or was
            // killed) before it was ready, back off exponentially.
            let lived = p.started.elapsed();
            let failed_start = p.failed_start || (command && !p.ready);
            // A function that returns at once (cleanly or not) would otherwise be re-forked in a loop.
            let quick = lived < Duration::from_secs(1) && (!clean || function);
            p.crashes = if failed_start || quick {
                p.crashes + 1
            } else {
                0
            };
            let delay = match p.crashes {
                0 => Duration::ZERO,
                n => Duration::from_millis(100 << (n - 1).min(7)),
            };
            p.restart_at = Some(Instant::now() + delay);
            slot.restarted();
            let before = if failed_start {
                " before it was ready"
            } else {
                ""
            };
            log!("worker {i} (pid {pid}) {status}{before} after {lived:.2?}; restarting in {delay:?}");
        }
    }

    fn restart_due(&mut self) {
        if self.draining.is_some() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.procs.len() {
            // A reload's new worker on this listener takes over; a restart beside it would exceed N + K.
            if self.reload.as_ref().is_some_and(|r| r.has_pending(i)) {
                continue;
            }
            if self.procs[i].restart_at.is_some_and(|t| now >= t) {
                if let Err(e) = self.spawn(i) {
                    log!("worker {i}: restart failed: {e}; trying again in 1s");
                    self.procs[i].restart_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    fn sample_queues(&self) {
        for (i, l) in self.server.listeners.iter().enumerate() {
            if let Some(n) = listener::queue_len(l) {
                self.server.stats.slot(i).set_queue_len(n.into());
            }
        }
    }

    fn check_ready(&mut self) {
        if self.ready || self.draining.is_some() {
            return;
        }
        if !self.procs.iter().all(|p| p.pid.is_some() && p.ready) {
            return;
        }
        self.ready = true;
        self.server.shared.set_phase(Phase::Serving);
        log!(
            "ready: {} worker(s) serving {}",
            self.procs.len(),
            self.server.addr
        );
        if let Some(mut p) = self.server.predecessor.take() {
            p.client.set_timeout(Duration::from_secs(5));
            let ack = p
                .client
                .send(&Request::Ready)
                .and_then(|_| p.client.answer::<serde_json::Value>());
            match ack {
                Ok(_) => log!(
                    "takeover: {} server pid {} is draining; this server now owns {}",
                    p.runtime,
                    p.pid,
                    self.server.addr
                ),
                Err(e) => log!(
                    "takeover: pid {} did not acknowledge ready ({e}); serving anyway",
                    p.pid
                ),
            }
        }
    }

    fn on_signals(&mut self) {
        let Some(guard) = self.signals.as_mut() else {
            return;
        };
        for sig in guard.drain() {
            // Like nginx: HUP reloads; QUIT drains as TERM does.
            let reason = match sig {
                Signal::SIGHUP => {
                    log!("SIGHUP: reload");
                    if let Err(why) = self.begin_reload(1, None) {
                        log!("reload refused: {why}");
                    }
                    continue;
                }
                Signal::SIGINT => StopReason::Interrupt,
                _ => StopReason::Terminate,
            };
            if self.draining.is_some() {
                log!("{sig} again: stopping now");
                self.forced = true;
                self.kill_all();
            } else {
                log!("{sig}: draining");
                self.begin_drain(reason);
            }
        }
    }

    fn begin_drain(&mut self, reason: StopReason) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some((Instant::now(), reason));
        let open: u64 = self.server.stats.snapshot().iter().map(|s| s.active).sum();
        log!(
            "draining ({}): {} worker(s) stop accepting, {open} connection(s) open, timeout {:?}",
            reason.cause(),
            self.procs.iter().filter(|p| p.pid.is_some()).count(),
            self.server.config.drain_timeout
        );
        self.abort_reload("the server began to drain");
        // A byte, not only EOF: a child the host forked may still hold a copy of the pipe's write end.
        let byte = if reason == StopReason::TakenOver {
            worker::HANDOVER
        } else {
            DRAIN_BYTE
        };
        let stop = self.server.config.stop_signal;
        for (i, p) in self.procs.iter_mut().enumerate() {
            p.ask_to_stop(byte, stop);
            p.restart_at = None;
            if p.pid.is_some() && p.drain.is_none() {
                self.server.stats.slot(i).set_state(Phase::Draining);
            }
        }
        // Our copies must not keep the sockets in the group once the workers close theirs.
        self.server.listeners.clear();
        self.server.shared.set_phase(Phase::Draining);
        if let Some((mut s, _)) = self.successor.take() {
            // Dropping `s` closes it, which removes it from epoll anyway.
            self.server.poll.registry().deregister(&mut s).ok();
        }
    }

    fn kill_all(&mut self) {
        let pending = self.reload.iter().flat_map(|r| r.pending());
        for p in self
            .procs
            .iter()
            .chain(self.retiring.iter().map(|(_, p)| p))
            .chain(pending)
        {
            if let Some(pid) = p.pid {
                // ESRCH: it is already gone, which is what we want.
                nix::sys::signal::kill(pid, Signal::SIGKILL).ok();
            }
        }
    }

    fn reap_until_gone(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.procs.iter().any(|p| p.pid.is_some()) && Instant::now() < until {
            for p in &mut self.procs {
                if let Some(pid) = p.pid {
                    if !matches!(
                        waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                        Ok(WaitStatus::StillAlive)
                    ) {
                        p.pid = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's phase, from what the supervisor knows.
    fn phase(&self) -> Phase {
        if self.draining.is_some() {
            Phase::Draining
        } else if self.successor.is_some() {
            Phase::HandingOver
        } else if self.ready {
            Phase::Serving
        } else {
            Phase::Starting
        }
    }

    /// Publishes the phase to [`crate::Handle`]s when it changed (starting → serving, handing over and back).
    fn publish_phase(&self) {
        let phase = self.phase();
        if self.server.shared.phase() != phase {
            self.server.shared.set_phase(phase);
        }
    }

    fn status(&self) -> ServerStatus {
        let mut workers = self.server.stats.snapshot();
        // The supervisor knows best who serves a listener: after a reload the old built-in worker, still
        // draining, writes to the slot it shares with its successor.
        for (i, (w, p)) in workers.iter_mut().zip(&self.procs).enumerate() {
            let shared = self.retiring.iter().any(|(j, _)| *j == i);
            if let (Some(pid), true, true, None) = (p.pid, p.ready, shared, self.draining) {
                w.pid = pid.as_raw() as u32;
                w.state = Phase::Serving;
            }
        }
        let command = &self.server.config.command;
        ServerStatus {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            addr: self.server.addr,
            mode: if self.server.function.is_some() {
                "function".to_string()
            } else if command.is_empty() {
                self.server.config.mode.to_string()
            } else {
                "command".to_string()
            },
            command: command.clone(),
            state: self.phase(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            control_socket: self
                .server
                .control
                .as_ref()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            workers,
            steering: self.server.steering.status(),
        }
    }

    /// Readiness on the control socket or one of its connections (`None`: the periodic tick); answers
    /// every request that became complete. Never blocks: see [`control`].
    fn on_control(&mut self, token: Option<Token>) {
        let Some(control) = self.server.control.as_mut() else {
            return;
        };
        let registry = self.server.poll.registry();
        let requests = match token {
            Some(t) => control.on_event(registry, t),
            None => control.tick(registry),
        };
        for (id, request) in requests {
            match request {
                Request::Status => {
                    self.sample_queues();
                    let status = self.status();
                    self.respond(id, control::encode(&status));
                }
                Request::Stop => {
                    self.respond(id, control::encode(&serde_json::json!({ "ok": true })));
                    log!("control: stop requested");
                    self.begin_drain(StopReason::Stop);
                }
                Request::Takeover { addr, command } => self.offer(id, addr, command),
                Request::Reload { batch } => self.reload_request(id, batch),
                Request::Ready => self.respond(
                    id,
                    control::error_line("ready is only valid after takeover"),
                ),
            }
        }
    }

    fn respond(&mut self, id: ConnId, line: Vec<u8>) {
        if let Some(control) = self.server.control.as_mut() {
            control.respond(self.server.poll.registry(), id, line);
        }
    }
}
