//! Seats: one per listener of the port, holding the workers on it — the one serving, at most one incoming
//! (a reload's new worker) and the retiring ones (asked to stop, finishing their connections). A worker is
//! one small state machine; this module is the only place that changes a worker's state, and the only
//! writer of what the stats area says about it.
//!
//! ```text
//!          spawn            READY=1 (or its ready delay)       asked to stop, or STOPPING=1
//!   ────────────► starting ───────────────────────────► ready ────────────────────────────► draining
//!                    │ not ready within ready_timeout:     │ exits unasked: a crash           │ still running after
//!                    │ SIGKILL                             ▼                                  │ kill_after: SIGKILL
//!                    ▼                              seat restarts it on the                   ▼
//!     exits: a failed start ──► back-off ─────────► same listener (back-off                 exits: stopped
//!                                                    after quick deaths)
//! ```
//!
//! Reload ([`super::reload`]) and takeover ([`super::takeover`]) are policies over seats: a reload starts
//! an incoming worker on a seat and, once it is ready, [`Seat::promote`]s it; a drain asks every worker
//! of every seat to stop.
//!
//! **Generations.** Where old and new workers must not share a socket (a command worker's listener is
//! one open file description, and `O_NONBLOCK` belongs to it: an exec'd successor that makes fd 3
//! blocking would block its predecessor's event loop), the incoming worker gets a socket of its own in the
//! port's group, kept out of the group's program until it is promoted. The old worker then keeps serving
//! its own socket, out of selection, until that socket's accept queue has stayed empty for
//! [`EMPTY_GRACE`] — so nothing queued on it, and no connection still on its way to it, is cut — and it
//! has read from every connection it accepted (`crate::conns`: none whose request has not arrived or has
//! not been read, which uvicorn or Puma would close unanswered on a stop) — and only then is it asked to
//! stop (at the latest after `drain_timeout`); its socket closes once it (its process group) has exited.
//!
//! ```text
//!   ready (serving) ──promoted away, own socket──► emptying ──queue empty for EMPTY_GRACE,──► draining
//!                                                              nothing accepted unread
//! ```
//!
//! Over UDP with the flow-sticky eBPF program (`flows`), the old socket stays in the program's socket array
//! while the old worker's flows are live (it publishes them as `active`): they keep reaching it. Once they
//! are idle (`udp_flow_idle`), or `drain_timeout` has passed, the supervisor lets go of the socket
//! ([`Seat::take_let_go`]) and the emptying above begins.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::group::Listener;
use super::kind::{Kind, Spawn, Stop};
use super::pgroup::{self, Leftover};
use super::process::describe;
use super::reaper::ExitWatch;
use crate::drain::Ask;
use crate::error::{Error, Result};
use crate::lifecycle::Phase;
use crate::log::log;
use crate::stats::{Role, StatsArea};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Started; owes `READY=1` (or its ready delay). `killed`: it was not ready in time.
    Starting { killed: bool },
    /// Serving its seat (or, incoming, ready to take it over).
    Ready,
    /// Replaced by a worker on a socket of its own: still serving its socket, which new connections no
    /// longer reach, until its queue has stayed empty (since `empty`) for [`EMPTY_GRACE`].
    Emptying {
        since: Instant,
        empty: Option<Instant>,
        /// Its socket is out of every selection. Not yet while flows stick to it (UDP with eBPF): it
        /// keeps them until they are idle (`udp_flow_idle`) or `drain_timeout` has passed; then the
        /// supervisor lets go of the socket and `since` starts again.
        released: bool,
    },
    /// Asked to stop (or stopping by itself) since `since`; `killed` once SIGKILL was sent.
    Draining { since: Instant, killed: bool },
}

/// How long the socket of a worker replaced by one on a socket of its own must have had an empty queue
/// before that worker is asked to stop: connections whose handshake was under way when new connections
/// were steered away land in its queue meanwhile, and requests already sent reach the worker.
pub(super) const EMPTY_GRACE: Duration = Duration::from_millis(250);

/// One worker process as the supervisor sees it.
pub(super) struct Worker {
    pub(super) pid: Pid,
    pub(super) generation: u64,
    started: Instant,
    state: State,
    stop: Option<Stop>,
    /// How it is asked to stop, for the log: `to drain`, `SIGTERM`.
    asked: String,
    /// Its own socket, when it does not share the seat's (generations): held here until it exits.
    socket: Option<Listener>,
    /// It leads a process group of its own (command workers): signals reach all of it.
    group: bool,
    /// Its counters' slot in the stats area, given back when it has exited.
    counters: usize,
    /// Wakes the supervisor when it exits; closed (and unregistered) with it.
    exit_watch: Option<ExitWatch>,
}

impl Worker {
    pub(super) fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    fn phase(&self) -> Phase {
        match self.state {
            State::Starting { .. } => Phase::Starting,
            State::Ready => Phase::Serving,
            State::Emptying { .. } | State::Draining { .. } => Phase::Draining,
        }
    }

    /// Asks it to stop (once); it drains from now on.
    fn ask_to_stop(&mut self, ask: Ask) {
        match self.stop.take() {
            Some(Stop::Pipe(pipe)) => pipe.ask(ask),
            Some(Stop::Signal(sig)) => pgroup::signal(self.pid, self.group, sig),
            None => {}
        }
        self.draining(Instant::now());
    }

    fn draining(&mut self, now: Instant) {
        if !matches!(self.state, State::Draining { .. }) {
            self.state = State::Draining {
                since: now,
                killed: false,
            };
        }
    }

    /// How many connections on its own socket's port it (its process group) holds without having read
    /// anything from them (see `conns`); 0 when that cannot be known.
    fn unread(&self) -> usize {
        let Some(addr) = self
            .socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .and_then(|a| a.as_socket())
        else {
            return 0;
        };
        let pids = if self.group {
            pgroup::members(self.pid, 1024)
        } else {
            vec![self.pid]
        };
        crate::conns::unread(addr, &crate::conns::socket_inodes(&pids)).unwrap_or(0)
    }

    /// The signal that asks it to stop, when it has one (command workers; the others have a drain pipe).
    pub(super) fn stop_signal(&self) -> Option<Signal> {
        match self.stop {
            Some(Stop::Signal(sig)) => Some(sig),
            _ => None,
        }
    }

    /// Sends its stop signal, leaving its state as it is: a stalled worker replaced by
    /// `stall_restart_after` is restarted as one that exited unasked once it exits.
    pub(super) fn signal_stop(&self) {
        if let Some(sig) = self.stop_signal() {
            pgroup::signal(self.pid, self.group, sig);
        }
    }

    /// SIGKILL, to its whole process group when it leads one. `ESRCH`: it is gone already, which the
    /// reaper will see.
    pub(super) fn kill(&self) {
        pgroup::signal(self.pid, self.group, Signal::SIGKILL);
    }
}

/// A worker that exited, already logged; what the seat did about it.
pub(super) struct Exit {
    pub(super) index: usize,
    pub(super) pid: Pid,
    pub(super) role: Role,
    /// How it ended, for a report: `exited with status 1`, `was killed by SIGKILL`.
    pub(super) status: String,
    /// Its own socket, to leave the group now that nobody else holds it.
    pub(super) socket: Option<Listener>,
    /// It served and died unasked (not after `STOPPING=1`), or died before it was ready: a crash.
    pub(super) crashed: bool,
}

/// Something a reload must hear about: its incoming worker was not ready in time (and was killed).
pub(super) struct Late {
    pub(super) index: usize,
    pub(super) pid: Pid,
    pub(super) timeout: Duration,
}

/// What the seats need from the supervisor to start and judge workers.
pub(super) struct Ctx<'a> {
    pub(super) kind: &'a dyn Kind,
    pub(super) stats: &'a StatsArea,
    pub(super) ready_timeout: Duration,
    /// The server is draining: exits are stops, never crashes.
    pub(super) draining: bool,
    /// The longest a replaced worker's socket may take to empty before it is asked to stop anyway.
    pub(super) drain_timeout: Duration,
    /// Flows stick to the socket that got their first datagram (UDP with eBPF): a replaced worker keeps
    /// its socket in the array until its flows are idle.
    pub(super) sticky: bool,
}

/// One listener and the workers on it.
pub(super) struct Seat {
    pub(super) index: usize,
    /// The listener new connections of this seat reach (closed once the server drains).
    listener: Option<Listener>,
    serving: Option<Worker>,
    incoming: Option<Worker>,
    retiring: Vec<Worker>,
    /// Process groups of workers that exited while processes they started live on (see `pgroup`).
    leftovers: Vec<Leftover>,
    /// The last generation started here (the first worker is generation 1).
    generation: u64,
    /// Retiring sockets whose sticky flows are over: the supervisor takes them out of the eBPF socket
    /// array ([`Seat::take_let_go`]).
    let_go: Vec<super::group::SockId>,
    /// Quick deaths in a row, for the back-off.
    crashes: u32,
    restart_at: Option<Instant>,
    /// The serving worker's pid, kept while it is restarted (what `status` shows then).
    last_pid: Pid,
}

impl Seat {
    pub(super) fn new(index: usize, listener: Listener) -> Seat {
        Seat {
            index,
            listener: Some(listener),
            serving: None,
            incoming: None,
            retiring: Vec::new(),
            leftovers: Vec::new(),
            generation: 0,
            let_go: Vec::new(),
            crashes: 0,
            restart_at: None,
            last_pid: Pid::from_raw(0),
        }
    }

    /// The seat's listener (until the server drains).
    pub(super) fn listener(&self) -> Option<&Listener> {
        self.listener.as_ref()
    }

    /// The serving worker.
    pub(super) fn serving(&self) -> Option<&Worker> {
        self.serving.as_ref()
    }

    /// The incoming worker (a reload's), if any.
    pub(super) fn incoming(&self) -> Option<&Worker> {
        self.incoming.as_ref()
    }

    fn workers(&self) -> impl Iterator<Item = (Role, &Worker)> {
        let serving = self.serving.iter().map(|w| (Role::Serving, w));
        let incoming = self.incoming.iter().map(|w| (Role::Incoming, w));
        let retiring = self.retiring.iter().map(|w| (Role::Retiring, w));
        serving.chain(incoming).chain(retiring)
    }

    fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        let serving = self.serving.iter_mut();
        serving
            .chain(self.incoming.iter_mut())
            .chain(self.retiring.iter_mut())
    }

    /// Every live worker's pid.
    pub(super) fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.workers().map(|(_, w)| w.pid)
    }

    /// No worker process is left on this seat, nor any process a worker started.
    pub(super) fn is_empty(&self) -> bool {
        self.serving.is_none()
            && self.incoming.is_none()
            && self.retiring.is_empty()
            && self.leftovers.is_empty()
    }

    /// Whether processes of an exited worker's group live on (orphans, reaped by a subreaper's pass).
    pub(super) fn has_leftovers(&self) -> bool {
        !self.leftovers.is_empty()
    }

    /// Whether the seat's worker serves.
    pub(super) fn is_ready(&self) -> bool {
        self.serving.as_ref().is_some_and(Worker::is_ready)
    }

    /// Nothing on this seat is due by the clock: its worker serves, none is incoming or retiring, no
    /// restart waits, and its exit will wake the supervisor (a pidfd).
    pub(super) fn at_rest(&self) -> bool {
        self.incoming.is_none()
            && self.retiring.is_empty()
            && !self.has_leftovers()
            && self.restart_at.is_none()
            && self
                .serving
                .as_ref()
                .is_some_and(|w| w.is_ready() && w.exit_watch.is_some())
    }

    /// Whether a replaced worker still holds a socket of its own: out of the group's program, but in the
    /// group until that worker (and its process group) has exited and the socket closes.
    pub(super) fn has_retiring_socket(&self) -> bool {
        self.retiring.iter().any(|w| w.socket.is_some())
            || self.leftovers.iter().any(|l| l.socket.is_some())
    }

    /// Starts a worker on this seat: a fresh serving one (first start, restart), or an incoming one —
    /// on the seat's listener, or on `own` socket (generations).
    pub(super) fn start(
        &mut self,
        ctx: &Ctx<'_>,
        spawn: Spawner<'_>,
        role: Role,
        own: Option<Listener>,
    ) -> Result<Pid> {
        let i = self.index;
        let listener = match own.as_ref().or(self.listener.as_ref()) {
            Some(l) => l.as_raw_fd(),
            None => {
                return Err(Error::Control(format!(
                    "worker {i}: the listener is closed"
                )))
            }
        };
        let counters = ctx.stats.claim(i).ok_or_else(|| {
            Error::Control(format!(
                "worker {i}: too many workers still finishing their connections on this listener"
            ))
        })?;
        let generation = self.generation + 1;
        let s = Spawn {
            index: i,
            listener,
            counters,
            server: spawn.server,
            notify: spawn.notify,
        };
        let spawned = match ctx.kind.spawn(&s) {
            Ok(spawned) => spawned,
            Err(e) => {
                ctx.stats.release(counters);
                return Err(e);
            }
        };
        let pid = spawned.pid;
        self.generation = generation;
        let asked = match &spawned.stop {
            Stop::Pipe(_) => "to drain".to_string(),
            Stop::Signal(sig) => sig.to_string(),
        };
        let w = Worker {
            pid,
            generation,
            started: Instant::now(),
            state: State::Starting { killed: false },
            stop: Some(spawned.stop),
            asked,
            socket: own,
            group: spawned.group,
            counters,
            exit_watch: ExitWatch::new(spawn.registry, spawn.exits, pid),
        };
        log!(
            "worker {i} started: pid {pid}, listener fd {listener}{}, generation {generation}",
            ctx.kind.detail()
        );
        match role {
            Role::Incoming => self.incoming = Some(w),
            _ => {
                self.serving = Some(w);
                self.restart_at = None;
            }
        }
        self.publish(ctx);
        Ok(pid)
    }

    /// `READY=1` from `pid`, if it is one of ours and was starting; returns whether it was.
    pub(super) fn on_ready(&mut self, ctx: &Ctx<'_>, pid: Pid, status: Option<&str>) -> bool {
        let i = self.index;
        let Some(w) = self.workers_mut().find(|w| w.pid == pid) else {
            return false;
        };
        if !matches!(w.state, State::Starting { killed: false }) {
            return true;
        }
        w.state = State::Ready;
        let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
        log!("worker {i} (pid {pid}) sent READY=1{status}");
        self.publish(ctx);
        true
    }

    /// `STOPPING=1` from `pid`: it drains by itself (SIGTERM to that worker alone).
    pub(super) fn on_stopping(&mut self, ctx: &Ctx<'_>, pid: Pid) -> bool {
        let Some(w) = self.workers_mut().find(|w| w.pid == pid) else {
            return false;
        };
        w.draining(Instant::now());
        self.publish(ctx);
        true
    }

    /// The incoming worker, ready, now serves; the one it replaces retires: it hands the listener over
    /// when they share it, or empties its own (generations). Returns the old worker's pid (0 when none
    /// was running).
    pub(super) fn promote(&mut self, ctx: &Ctx<'_>) -> Option<(Pid, &Worker)> {
        let mut new = self.incoming.take()?;
        let own = new.socket.take();
        let old = self.serving.replace(new);
        let old_pid = old.as_ref().map_or(Pid::from_raw(0), |w| w.pid);
        let old_socket = match own {
            // The seat's listener is the new worker's from now on; the old one keeps its own.
            Some(own) => self.listener.replace(own),
            None => None,
        };
        if let Some(mut old) = old {
            match old_socket {
                Some(socket) => {
                    old.socket = Some(socket);
                    old.state = State::Emptying {
                        since: Instant::now(),
                        empty: None,
                        released: !ctx.sticky,
                    };
                }
                // The new worker serves this very listener and its queue: a built-in worker lets go
                // of it at once.
                None => old.ask_to_stop(Ask::Handover),
            }
            self.retiring.push(old);
        }
        self.restart_at = None;
        self.publish(ctx);
        Some((old_pid, self.serving.as_ref()?))
    }

    /// Asks every worker to stop: the serving one as `ask` says, an incoming one and one still emptying
    /// its own socket to drain. No restarts. The supervisor's copies of the sockets close.
    pub(super) fn stop(&mut self, ctx: &Ctx<'_>, ask: Ask) {
        if let Some(w) = self.serving.as_mut() {
            w.ask_to_stop(ask);
        }
        if let Some(mut w) = self.incoming.take() {
            w.ask_to_stop(Ask::Drain);
            self.retiring.push(w);
        }
        for w in &mut self.retiring {
            if matches!(w.state, State::Emptying { .. }) {
                w.ask_to_stop(Ask::Drain);
            }
            w.socket = None;
        }
        self.listener = None;
        self.restart_at = None;
        self.publish(ctx);
    }

    /// Stops the incoming worker (a reload that failed); it retires.
    pub(super) fn drop_incoming(&mut self, ctx: &Ctx<'_>) {
        if let Some(mut w) = self.incoming.take() {
            w.ask_to_stop(Ask::Drain);
            self.retiring.push(w);
        }
        self.publish(ctx);
    }

    /// SIGKILL to every worker of the seat, and to what is left of exited ones.
    pub(super) fn kill_all(&mut self) {
        for w in self.workers_mut() {
            w.kill();
            if let State::Draining { killed, .. } = &mut w.state {
                *killed = true;
            }
        }
        for l in &mut self.leftovers {
            l.kill();
        }
    }

    /// `pid` exited with `status`, if it is one of ours: logs it, frees its slot, and schedules the
    /// restart of a serving worker that died (with back-off after quick deaths).
    pub(super) fn on_exit(
        &mut self,
        ctx: &Ctx<'_>,
        pid: Pid,
        status: Option<WaitStatus>,
    ) -> Option<Exit> {
        let i = self.index;
        let (role, w) = if self.serving.as_ref().is_some_and(|w| w.pid == pid) {
            (Role::Serving, self.serving.take()?)
        } else if self.incoming.as_ref().is_some_and(|w| w.pid == pid) {
            (Role::Incoming, self.incoming.take()?)
        } else {
            let k = self.retiring.iter().position(|w| w.pid == pid)?;
            (Role::Retiring, self.retiring.remove(k))
        };
        ctx.stats.release(w.counters);
        let said = status.map_or_else(|| "is gone (reaped elsewhere)".to_string(), describe);
        let clean = matches!(status, Some(WaitStatus::Exited(_, 0)));
        let lived = w.started.elapsed();
        let mut w = w;
        let stopped_itself = matches!(w.state, State::Draining { .. }) && clean;
        let mut exit = Exit {
            index: i,
            pid,
            role,
            status: said.clone(),
            socket: w.socket.take(),
            crashed: role == Role::Serving && !ctx.draining && !stopped_itself,
        };
        if w.group && pgroup::alive(pid) {
            self.keep_leftover(ctx, &w, &mut exit);
        }
        match role {
            Role::Retiring => {
                let since = match w.state {
                    State::Draining { since, .. } => since,
                    _ => w.started,
                };
                log!(
                    "worker {i} (pid {pid}, generation {}) retired: {said} {:.2?} after it was asked to stop",
                    w.generation,
                    since.elapsed()
                )
            }
            // The reload that started it reports why it ended.
            Role::Incoming => {}
            Role::Serving if ctx.draining => log!("worker {i} (pid {pid}) {said}"),
            Role::Serving => {
                self.last_pid = pid;
                ctx.stats.seat(i).restarted();
                // A clean exit of a worker that drained (it alone got SIGTERM) is a graceful restart;
                // quick deaths, and a worker that died before it was ready, back off exponentially.
                let failed_start = matches!(w.state, State::Starting { .. });
                let quick = lived < Duration::from_secs(1)
                    && (!clean || ctx.kind.quick_clean_exit_is_a_crash());
                self.crashes = if failed_start || quick {
                    self.crashes + 1
                } else {
                    0
                };
                let delay = match self.crashes {
                    0 => Duration::ZERO,
                    n => Duration::from_millis(100 << (n - 1).min(7)),
                };
                self.restart_at = Some(Instant::now() + delay);
                let before = if failed_start {
                    " before it was ready"
                } else {
                    ""
                };
                log!("worker {i} (pid {pid}) {said}{before} after {lived:.2?}; restarting in {delay:?}");
            }
        }
        self.publish(ctx);
        Some(exit)
    }

    /// `w`'s leader exited but its group lives on: the seat keeps the group (and `exit`'s socket, which
    /// its processes may hold) until it is empty. Asked to stop if `w` was not (a crash: what it forked is
    /// told to stop too), SIGKILL by the worker's own deadline.
    fn keep_leftover(&mut self, ctx: &Ctx<'_>, w: &Worker, exit: &mut Exit) {
        let kill_after = ctx.kind.kill_after();
        let (kill_at, killed) = match w.state {
            State::Draining { since, killed } => (since + kill_after, killed),
            _ => {
                if let Some(Stop::Signal(sig)) = &w.stop {
                    pgroup::signal(w.pid, true, *sig);
                }
                (Instant::now() + kill_after, false)
            }
        };
        let left = Leftover::new(self.index, w.pid, w.generation, kill_at, killed);
        self.leftovers.push(left.with_socket(exit.socket.take()));
    }

    /// Groups of exited workers: the sockets of those now empty (to leave the port's group), and SIGKILL
    /// to those past their deadline (and whether any got it).
    pub(super) fn tick_leftovers(&mut self, now: Instant) -> (Vec<Listener>, bool) {
        pgroup::tick(&mut self.leftovers, self.index, now)
    }

    /// Due work by the clock: a worker ready by its ready delay, one not ready in time (SIGKILL), one
    /// asked to stop that has not (SIGKILL). Returns an incoming worker that was late (for its reload),
    /// and whether a drain had to kill.
    pub(super) fn tick(&mut self, ctx: &Ctx<'_>, now: Instant) -> (Option<Late>, bool) {
        let i = self.index;
        let mut late = None;
        let mut killed_any = false;
        let mut changed = false;
        let ready_after = ctx.kind.ready_after();
        let kill_after = ctx.kind.kill_after();
        let timeout = ctx.ready_timeout;
        let incoming_pid = self.incoming.as_ref().map(|w| w.pid);
        let mut let_go = Vec::new();
        for w in self.workers_mut() {
            let pid = w.pid;
            let age = now.saturating_duration_since(w.started);
            match w.state {
                State::Starting { killed: false } if ready_after.is_some_and(|d| age >= d) => {
                    w.state = State::Ready;
                    changed = true;
                }
                State::Starting { killed: false } if age > timeout => {
                    w.kill();
                    w.state = State::Starting { killed: true };
                    if incoming_pid == Some(pid) {
                        late = Some(Late {
                            index: i,
                            pid,
                            timeout,
                        });
                    } else {
                        log!("worker {i} (pid {pid}) was not ready within {timeout:?} (no READY=1); killing it");
                    }
                }
                State::Emptying {
                    since,
                    released: false,
                    ..
                } => {
                    let flows = ctx.stats.counters(w.counters).flows();
                    let overdue = now.saturating_duration_since(since) > ctx.drain_timeout;
                    if flows > 0 && !overdue {
                        continue;
                    }
                    let why = if flows == 0 {
                        "its flows are idle".to_string()
                    } else {
                        format!(
                            "{flows} flow(s) still live {:?} after it was replaced",
                            ctx.drain_timeout
                        )
                    };
                    log!("worker {i} (pid {pid}): {why}; its socket leaves the eBPF socket array (those flows move to the new generation)");
                    if let Some(s) = &w.socket {
                        let_go.push(s.id);
                    }
                    w.state = State::Emptying {
                        since: now,
                        empty: None,
                        released: true,
                    };
                    changed = true;
                }
                State::Emptying { since, empty, .. } => {
                    let queued = w
                        .socket
                        .as_ref()
                        .and_then(crate::listener::queue_len)
                        .unwrap_or(0);
                    let empty = if queued == 0 {
                        empty.or(Some(now))
                    } else {
                        None
                    };
                    w.state = State::Emptying {
                        since,
                        empty,
                        released: true,
                    };
                    let emptied =
                        empty.is_some_and(|t| now.saturating_duration_since(t) >= EMPTY_GRACE);
                    // And it has read from every connection it accepted: it would close one it has not
                    // (a request not arrived, or not read) unanswered.
                    let unread = if emptied { w.unread() } else { 0 };
                    let done = emptied && unread == 0;
                    let overdue = now.saturating_duration_since(since) > ctx.drain_timeout;
                    if overdue && !done {
                        log!("worker {i} (pid {pid}) still has {queued} connection(s) queued and {unread} accepted but unread {:?} after it was replaced; asking it to stop anyway", ctx.drain_timeout);
                    }
                    if done {
                        log!("worker {i} (pid {pid}): its socket has stayed empty for {EMPTY_GRACE:?} since it was replaced and it has read from every connection it holds; asking it {}", w.asked);
                    }
                    if done || overdue {
                        w.ask_to_stop(Ask::Drain);
                        changed = true;
                    }
                }
                State::Draining {
                    since,
                    killed: false,
                } if now.saturating_duration_since(since) > kill_after => {
                    let asked = &w.asked;
                    log!("worker {i} (pid {pid}) still running {kill_after:?} after it was asked {asked}; sending SIGKILL");
                    w.kill();
                    w.state = State::Draining {
                        since,
                        killed: true,
                    };
                    killed_any = true;
                }
                _ => {}
            }
        }
        self.let_go.extend(let_go);
        if changed {
            self.publish(ctx);
        }
        (late, killed_any)
    }

    /// The retiring sockets to take out of the eBPF socket array now.
    pub(super) fn take_let_go(&mut self) -> Vec<super::group::SockId> {
        std::mem::take(&mut self.let_go)
    }

    /// Whether a restart of the serving worker is due (never while an incoming one is starting: that
    /// one takes over, and a restart beside it would exceed N + batch workers).
    pub(super) fn restart_due(&self, now: Instant) -> bool {
        self.incoming.is_none() && self.restart_at.is_some_and(|t| now >= t)
    }

    /// A restart that failed: try again in a second.
    pub(super) fn retry_later(&mut self, now: Instant) {
        self.restart_at = Some(now + Duration::from_secs(1));
    }

    /// Writes what the stats area says about this seat: the serving worker and its phase (or the last
    /// one, stopped, while it is restarted), the kind and the generation, and each live worker's pid,
    /// role and phase.
    fn publish(&mut self, ctx: &Ctx<'_>) {
        for (role, w) in self.workers() {
            let pid = w.pid.as_raw() as u32;
            ctx.stats
                .set_process(w.counters, pid, w.generation, role, w.phase());
        }
        let record = ctx.stats.seat(self.index);
        match &self.serving {
            Some(w) => {
                self.last_pid = w.pid;
                record.set_worker(w.pid.as_raw() as u32, w.phase());
                record.set_generation(ctx.kind.tag(), w.generation);
            }
            None => record.set_worker(self.last_pid.as_raw() as u32, Phase::Stopped),
        }
    }
}

/// What starting a worker needs besides the seat: the server (its listeners, config, stats), the notify
/// socket, and the loop that watches for exits.
#[derive(Clone, Copy)]
pub(super) struct Spawner<'a> {
    pub(super) server: &'a super::Bound,
    pub(super) notify: &'a std::path::Path,
    pub(super) registry: &'a mio::Registry,
    pub(super) exits: mio::Token,
}
