//! The supervisor: binds every listener before forking, keeps one [`Seat`] per listener with the workers
//! on it, turns events into the lifecycle `starting → serving → draining → stopped`, and hands its
//! sockets to a successor on `takeover`.
//!
//! By job: [`seat`] (a worker's state machine, restarts; the one writer of worker state), [`kind`]
//! (built-in, function and command workers behind one interface), [`reaper`] (the one place children are
//! reaped), [`reload`] and [`takeover`] (policies over seats), [`steering`] (stall detection and the
//! group's program). This file is the event loop: it hears signals, `READY=1`/`STOPPING=1`, exits and
//! control requests, and hands each to the part whose job it is.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use socket2::Socket;

use crate::config::{Config, Protocol};
use crate::control::{self, ConnId, ControlSocket, Request, ServerStatus};
use crate::drain::Ask;
use crate::error::{Error, Result};
use crate::fds::Tracked;
use crate::lifecycle::{Phase, Report, StopReason};
use crate::listener;
use crate::log::log;
use crate::migrate::migrate_req;
use crate::notify::NotifySocket;
use crate::signals::SignalGuard;
use crate::stats::{Role, StatsArea};

mod activation;
mod admin;
mod command;
mod delay;
mod flows;
mod function;
mod group;
mod kind;
mod metrics;
mod pgroup;
mod process;
mod reaper;
mod reload;
mod rest;
mod seat;
mod service;
mod shared;
mod steering;
mod takeover;
mod upgrade;

pub(crate) use shared::Shared;
pub use upgrade::set_upgrade_command;

/// The environment variables a supervisor takes out of its own process when it binds, so that no worker
/// inherits them: the service manager's (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`, `FDSTORE`,
/// `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) and an upgrade's (`PORT_SHARDING_UPGRADE_FROM`). A host
/// with a copy of its environment of its own (Python's `os.environ`) drops them there too.
pub const SERVICE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "FDSTORE",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "PORT_SHARDING_UPGRADE_FROM",
];

use admin::Admin;
use group::{Group, Listener};
use kind::Kind;
use process::on_main_thread;
use reaper::Reaper;
use reload::Reload;
use rest::Rest;
use seat::{Ctx, Seat, Spawner};
use service::Service;
use steering::Steering;
use takeover::{take_over, take_over_from, Predecessor};
use upgrade::Upgrade;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const CONTROL: Token = Token(2);
const SUCCESSOR: Token = Token(3);
const NOTIFY: Token = Token(4);
/// Every worker's pidfd: readable once it has exited (which one does not matter: the reaper looks).
const EXITS: Token = Token(5);
/// How often the supervisor looks at its clocks (ready delays and timeouts, kills, restarts, queue
/// samples for steering) when nothing else wakes it — while anything is due; at rest it sleeps until an
/// event (see `rest`).
const TICK: Duration = Duration::from_millis(50);
/// Extra time past `drain_timeout` before workers that still have not exited are killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the supervisor reaps without being woken by an exit (a kernel without pidfds; a pidfd that
/// could not be made).
const REAP_ANYWAY: Duration = Duration::from_secs(1);
/// How long a successor may take between receiving the sockets and saying `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A bound server: listeners open (connections queue from now on), workers not started yet. The public
/// face is [`crate::Server`]; this is what the supervisor owns while it runs.
pub(crate) struct Bound {
    pub(crate) config: Config,
    pub(crate) addr: SocketAddr,
    /// Each seat's current listener, in seat order.
    listeners: Vec<Listener>,
    /// The port's reuseport group: our sockets' order, its program.
    group: Group,
    stats: Arc<StatsArea>,
    pub(crate) shared: Arc<Shared>,
    poll: Tracked<Poll>,
    control: Option<ControlSocket>,
    predecessor: Option<Predecessor>,
    /// Stall detection and the group's program (see `steering`).
    steering: Steering,
    /// What the workers are: chosen once, at bind from the config (or by [`Bound::set_function`]).
    kind: Box<dyn Kind>,
    /// `/livez`, `/readyz`, `/metrics` (`Config::admin`).
    admin: Option<Admin>,
    /// The service manager above us (`NOTIFY_SOCKET`), if any.
    service: Service,
    /// The listeners are the service manager's (socket activation): it holds a copy of each, so none
    /// leaves the group when we close ours — we never bind a socket beside them nor store them.
    managed: bool,
    /// Names to take out of the manager's fd store at start (listeners we no longer serve).
    unstore: Vec<String>,
}

/// Validates `config`, binds `workers` reuseport listeners — or adopts the ones a service manager passed
/// (socket activation, its fd store), or a running server's (`takeover`, an upgrade's successor) — and
/// opens the control socket.
pub(crate) fn bind(mut config: Config) -> Result<Bound> {
    config.validate()?;
    let kind = kind::choose(&config);
    // The service manager's environment is ours alone from here on: no worker inherits it.
    let service = Service::from_env();
    upgrade::remember();
    let upgrading = upgrade::from_env()?;
    let activation = activation::take(&mut config, kind.blocking())?;
    let udp = config.protocol == Protocol::Udp;
    if udp && activation.passed.is_some() {
        return Err(Error::invalid(
            "protocol",
            "udp: sockets passed by a service manager (LISTEN_FDS) are taken for TCP listeners; \
             start a UDP server without socket activation",
        ));
    }
    let wanted = listener::resolve(&config.host, config.port)?;
    let mut listeners = Vec::new();
    let mut predecessor = None;
    let mut managed = false;
    // The group's order of passed sockets: the manager binds a socket unit's in unit order.
    let mut passed_order = None;
    if let Some(p) = activation.passed {
        managed = p.managed;
        passed_order = Some(match (p.managed, p.reuseport) {
            (true, true) => Ok((0..p.listeners.len() as u32).collect::<Vec<_>>()),
            (true, false) => Err("the service manager's socket has no SO_REUSEPORT, so no group to steer".to_string()),
            (false, _) => Err("the listeners came back from the service manager's fd store without their order in the group".to_string()),
        });
        listeners = p.listeners.into_iter().map(member).collect();
    } else if let Some((pid, addr)) = upgrading {
        let (p, adopted) = take_over_from(pid, addr, kind.blocking(), udp)?;
        listeners = adopted.into_iter().map(Tracked::new).collect();
        managed = p.managed;
        predecessor = Some(p);
    } else if config.takeover {
        if let Some((p, adopted)) = take_over(wanted, kind.blocking(), udp)? {
            listeners = adopted.into_iter().map(Tracked::new).collect();
            managed = p.managed;
            predecessor = Some(p);
        }
    }
    let adopted = listeners.len();
    let mut addr = match listeners.first() {
        Some(l) => socket_addr(l)?,
        None => wanted,
    };
    // The manager's sockets are all there is: we bind none beside them.
    while listeners.len() < config.workers && !managed {
        let l = if udp {
            Socket::from(crate::datagram::bind(addr, true)?)
        } else {
            Socket::from(listener::bind(addr, config.backlog, true)?)
        };
        addr = socket_addr(&l)?;
        listeners.push(Tracked::new(l));
    }
    let migrate_prog = match (config.migrate, listeners.first()) {
        (true, Some(l)) => crate::migrate::enable(l)?,
        _ => None,
    };
    let adopted_order = predecessor.as_ref().and_then(|p| p.order.as_deref());
    let order = match passed_order {
        Some(Ok(o)) => group::group_order(addr, udp, adopted, Some(&o), listeners.len()),
        Some(Err(why)) => Err(why),
        None => group::group_order(addr, udp, adopted, adopted_order, listeners.len()),
    };
    let inherited = predecessor.as_mut().and_then(|p| p.flows.take());
    let (group, listeners) = Group::new(
        addr,
        listeners,
        udp,
        order,
        migrate_prog,
        adopted > 0,
        inherited,
    );
    let steering = Steering::new(&config, listeners.len());
    let stats = Arc::new(StatsArea::new(listeners.len())?);
    let poll = Tracked::new(Poll::new().map_err(|e| Error::io("epoll", e))?);
    let waker = Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("eventfd", e))?;
    let control = if config.control {
        Some(ControlSocket::bind(addr, poll.registry(), CONTROL)?)
    } else {
        None
    };
    let admin = match config.admin.as_deref() {
        Some(spec) => Some(Admin::bind(spec, poll.registry(), predecessor.is_some())?),
        None => None,
    };
    let shared = Arc::new(Shared::new(waker, stats.clone(), addr));
    Ok(Bound {
        config,
        addr,
        listeners,
        group,
        stats,
        shared,
        poll,
        control,
        predecessor,
        steering,
        kind,
        admin,
        service,
        managed,
        unstore: activation.unstore,
    })
}

/// A passed TCP listener as a member of the group.
fn member(l: std::net::TcpListener) -> Tracked<Socket> {
    Tracked::new(Socket::from(l))
}

/// The address a member of the group is bound to.
fn socket_addr(s: &Socket) -> Result<SocketAddr> {
    let addr = s.local_addr().map_err(|e| Error::io("getsockname", e))?;
    addr.as_socket()
        .ok_or_else(|| Error::io("getsockname", io::Error::other("not an IP socket")))
}

impl Bound {
    /// How many workers `run` starts (one per listener).
    pub(crate) fn workers(&self) -> usize {
        self.listeners.len()
    }

    /// Makes every worker run the host's function instead of a built-in loop.
    ///
    /// # Errors
    /// The config asks for command workers.
    pub(crate) fn set_function(&mut self, host: Arc<dyn crate::FunctionHost>) -> Result<()> {
        self.kind = kind::function(host, &self.config)?;
        Ok(())
    }
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
    /// One per listener, in listener order.
    seats: Vec<Seat>,
    reaper: Reaper,
    /// The reload in progress.
    reload: Option<Reload>,
    /// How the last reload went, for `STATUS=`.
    last_reload: Option<String>,
    /// The upgrade in progress: our successor, until it is ready.
    upgrade: Option<Upgrade>,
    /// Where workers say `READY=1` and `STOPPING=1`.
    notify: NotifySocket,
    signals: Option<SignalGuard>,
    /// A new server that holds our sockets and owes us `ready`, and since when.
    successor: Option<(mio::net::UnixStream, Instant)>,
    draining: Option<(Instant, StopReason)>,
    /// The drain delay runs: when the drain begins, and what asked for it (see `delay`).
    drain_due: Option<(Instant, StopReason)>,
    forced: bool,
    /// Every seat's worker was ready once (sticky: the server is serving).
    ready: bool,
    /// Counts of the supervisor's own events, for `/metrics`.
    counters: metrics::Counters,
    started: Instant,
    /// The listeners watched while the loop sleeps at rest.
    rest: Rest,
}

impl Supervisor {
    fn new(mut server: Bound) -> Result<Supervisor> {
        let reaper = Reaper::new(server.config.subreaper);
        let signals = if server.config.handle_signals && on_main_thread() {
            // As PID 1 or a subreaper, SIGCHLD says an orphan exited (it has no pidfd): see `rest`.
            let mut set = crate::signals::SUPERVISOR.to_vec();
            if reaper.reaps_orphans() {
                set.push(Signal::SIGCHLD);
            }
            Some(SignalGuard::install(server.poll.registry(), SIGNALS, &set)?)
        } else {
            None
        };
        let orphans_signalled = signals.is_some() && reaper.reaps_orphans();
        let seats = std::mem::take(&mut server.listeners)
            .into_iter()
            .enumerate()
            .map(|(i, l)| Seat::new(i, l))
            .collect();
        let dir = control::control_dir();
        control::ensure_dir(&dir)?;
        let notify = NotifySocket::bind(&dir, server.addr, server.poll.registry(), NOTIFY)?;
        Ok(Supervisor {
            server,
            seats,
            reaper,
            reload: None,
            last_reload: None,
            upgrade: None,
            notify,
            signals,
            successor: None,
            draining: None,
            drain_due: None,
            forced: false,
            ready: false,
            counters: metrics::Counters::default(),
            started: Instant::now(),
            rest: Rest::new(orphans_signalled),
        })
    }

    /// The seats, and what they need to start and judge workers (disjoint parts of `self`).
    fn seats(&mut self) -> (&mut [Seat], Ctx<'_>, Spawner<'_>) {
        let ctx = Ctx {
            kind: &*self.server.kind,
            stats: &self.server.stats,
            ready_timeout: self.server.config.ready_timeout,
            draining: self.draining.is_some(),
            drain_timeout: self.server.config.drain_timeout,
            sticky: self.server.group.sticky().is_ok(),
        };
        let spawner = Spawner {
            server: &self.server,
            notify: &self.notify.path,
            registry: self.server.poll.registry(),
            exits: EXITS,
        };
        (&mut self.seats, ctx, spawner)
    }

    fn run(&mut self) -> Result<Report> {
        let c = &self.server.config;
        log!(
            "{} server starting on {}: {} worker(s) ({}), {}, backlog {}, drain timeout {:?}",
            c.runtime,
            self.server.addr,
            self.seats.len(),
            crate::cpus::why_this_many(self.seats.len()),
            self.server.kind.describe(),
            c.backlog,
            c.drain_timeout
        );
        if let Some(admin) = &self.server.admin {
            log!("{}", admin.describe());
        }
        if c.protocol == Protocol::Udp {
            let group = &self.server.group;
            let how = match (group.known(), group.sticky()) {
                (Ok(()), Ok(())) => format!(
                    "a socket of its own per new worker, steered by an eBPF program: new flows go to the new \
                     workers, a replaced worker keeps its flows until they are idle for {:?}",
                    c.udp_flow_idle
                ),
                (Ok(()), Err(why)) => format!(
                    "a socket of its own per new worker, steered by a classic BPF program (stateless: every \
                     flow moves to the new workers; no eBPF: {why})"
                ),
                (Err(why), _) => format!("the old worker's socket, shared with the new one ({why})"),
            };
            log!("udp: reloads use {how}; a socket closes only once read empty");
        }
        let room = process::connection_room();
        if c.max_connections > room {
            log!(
                "note: max_connections {} is more than the open-files limit allows (RLIMIT_NOFILE hard limit): \
                 each worker serves at most {room} at once",
                c.max_connections
            );
        }
        // Sockets the service manager holds (socket unit, fd store) outlive a restart anyway.
        if migrate_req() == Some(false)
            && c.protocol == Protocol::Tcp
            && self.server.predecessor.is_none()
            && !self.server.group.migrates()
            && !self.server.managed
            && !self.server.service.fd_store()
        {
            log!(
                "note: net.ipv4.tcp_migrate_req=0: closing a listener resets connections queued on it; \
                 use --takeover for rolling upgrades, or sysctl net.ipv4.tcp_migrate_req=1"
            );
        }
        self.service_start();
        let (seats, ctx, spawner) = self.seats();
        let mut failed = None;
        for seat in seats.iter_mut() {
            if let Err(e) = seat.start(&ctx, spawner, Role::Serving, None) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.kill_all();
            self.reap_until_gone(Duration::from_secs(5));
            return Err(e);
        }
        let mut events = Events::with_capacity(64);
        let mut next_reap = Instant::now();
        let mut sleep = Some(TICK);
        loop {
            if let Err(e) = self.server.poll.poll(&mut events, sleep) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.kill_all();
                    return Err(Error::io("supervisor epoll_wait", e));
                }
            }
            // Before anything may close a listener (see `rest`).
            self.rest.disarm(self.server.poll.registry());
            let mut exited = false;
            for event in events.iter() {
                match event.token() {
                    WAKER if self.server.shared.stop.swap(false, Ordering::SeqCst) => {
                        self.begin_drain(StopReason::Stop)
                    }
                    SIGNALS => self.on_signals(),
                    SUCCESSOR => self.on_successor(),
                    NOTIFY => self.on_notify(),
                    t if self.server.admin.as_ref().is_some_and(|a| a.owns(t)) => {
                        self.on_admin(Some(t))
                    }
                    t if self.server.control.as_ref().is_some_and(|c| c.owns(t)) => {
                        self.on_control(Some(t))
                    }
                    EXITS => exited = true,
                    // A connection arrived while at rest: watch the queues again.
                    t if Rest::owns(t) => self.server.steering.moved(Instant::now()),
                    _ => {}
                }
            }
            let now = Instant::now();
            // A worker's pidfd says when it exited; the periodic pass covers a kernel without pidfds, and
            // orphans (at most one pass a second however many SIGCHLDs say they exit). While an exited
            // worker's group lives on, its orphans (ours as a subreaper) are reaped each pass: a zombie
            // keeps the group alive.
            let leftovers = self.seats.iter().any(Seat::has_leftovers);
            if exited || now >= next_reap || leftovers {
                self.reap();
                self.rest.orphans_reaped();
                next_reap = now + REAP_ANYWAY;
            }
            self.on_control(None);
            self.on_admin(None);
            self.expire_successor();
            self.drain_when_due(now);
            self.expire_upgrade(now);
            self.tick(now);
            self.drive_reload();
            self.steer();
            let settled = self.settle();
            self.service_tick(now);
            if let Some(report) = settled {
                return Ok(report);
            }
            sleep = self.sleep_for(Instant::now(), next_reap);
        }
    }

    /// Reaps the workers that exited and tells their seats (and a reload whose new worker it was).
    fn reap(&mut self) {
        let mut known: Vec<Pid> = self.seats.iter().flat_map(Seat::pids).collect();
        let successor = self.upgrade_pid();
        known.extend(successor);
        let exited = self.reaper.reap(known.into_iter());
        if exited.is_empty() {
            return;
        }
        let (seats, ctx, _) = self.seats();
        let mut exits = Vec::new();
        let mut successor_exit = None;
        for (pid, status) in exited {
            if Some(pid) == successor {
                successor_exit = Some(status);
                continue;
            }
            exits.extend(seats.iter_mut().find_map(|s| s.on_exit(&ctx, pid, status)));
        }
        if let Some(status) = successor_exit {
            self.upgrade_exited(status);
        }
        for mut exit in exits {
            if exit.crashed {
                self.counters.crashes += 1;
            }
            // Its own socket leaves the group, without a new connection reaching one it must not.
            if let Some(socket) = exit.socket.take() {
                let any = self.seats.iter().find_map(Seat::listener);
                self.server.group.close(socket, any);
            }
            if exit.role == Role::Incoming {
                self.incoming_exited(exit);
            }
        }
    }

    /// The seats' clocks: ready delays and timeouts, kills after `kill_after`, restarts due.
    fn tick(&mut self, now: Instant) {
        let (seats, ctx, _) = self.seats();
        let mut late = Vec::new();
        let mut killed_any = false;
        for seat in seats.iter_mut() {
            let (l, k) = seat.tick(&ctx, now);
            late.extend(l);
            killed_any |= k;
        }
        for seat in &mut self.seats {
            for id in seat.take_let_go() {
                self.server.group.let_go(id);
            }
        }
        // A drain that had to kill was cut short (the CLI exits 1).
        if killed_any && self.draining.is_some() {
            self.forced = true;
        }
        for l in late {
            self.incoming_late(l);
        }
        self.leftovers(now);
        self.restart_due(now);
    }

    /// Groups of exited workers: SIGKILL when due; those that have emptied are forgotten, and their
    /// sockets leave the port's group now.
    fn leftovers(&mut self, now: Instant) {
        let mut gone = Vec::new();
        for seat in self.seats.iter_mut().filter(|s| s.has_leftovers()) {
            let (sockets, killed) = seat.tick_leftovers(now);
            gone.extend(sockets);
            // A drain that had to kill was cut short (the CLI exits 1).
            self.forced |= killed && self.draining.is_some();
        }
        for socket in gone {
            let any = self.seats.iter().find_map(Seat::listener);
            self.server.group.close(socket, any);
        }
    }

    /// Starts a fresh worker on each seat whose worker died and whose back-off is over.
    fn restart_due(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        let (seats, ctx, spawner) = self.seats();
        for seat in seats.iter_mut().filter(|s| s.restart_due(now)) {
            if let Err(e) = seat.start(&ctx, spawner, Role::Serving, None) {
                log!(
                    "worker {}: restart failed: {e}; trying again in 1s",
                    seat.index
                );
                seat.retry_later(now);
            }
        }
    }

    /// Where the server stands after this pass: serving once every seat's worker is ready (the phase
    /// published for handles); the report once a drain is over.
    fn settle(&mut self) -> Option<Report> {
        self.check_ready();
        self.publish_phase();
        self.drained()
    }

    /// The report, once a drain is over (every worker exited); kills what outlived the drain.
    fn drained(&mut self) -> Option<Report> {
        let (since, reason) = self.draining?;
        if self.seats.iter().all(Seat::is_empty) {
            let report = Report {
                reason,
                forced: self.forced,
                // A worker counts connections or, over UDP, datagrams: one of the two is 0.
                served: self
                    .server
                    .stats
                    .snapshot()
                    .iter()
                    .map(|w| w.accepted + w.datagrams_in)
                    .sum(),
                drain: since.elapsed(),
            };
            let what = match self.server.config.protocol {
                Protocol::Tcp => "connection(s)",
                Protocol::Udp => "datagram(s)",
            };
            log!(
                "stopped ({}): all workers exited after {:.2?}; served {} {what}",
                reason.cause(),
                report.drain,
                report.served
            );
            return Some(report);
        }
        let limit = self.server.config.drain_timeout.saturating_add(KILL_GRACE);
        if since.elapsed() > limit && !self.forced {
            log!(
                "drain: workers still running {KILL_GRACE:?} past the drain timeout; killing them"
            );
            self.forced = true;
            self.kill_all();
        }
        None
    }

    fn sample_queues(&self) {
        for seat in &self.seats {
            if let Some(n) = seat.listener().and_then(listener::queue_len) {
                self.server.stats.seat(seat.index).set_queue_len(n.into());
            }
        }
    }

    fn check_ready(&mut self) {
        if self.ready || self.draining.is_some() || !self.seats.iter().all(Seat::is_ready) {
            return;
        }
        self.ready = true;
        self.server.shared.set_phase(Phase::Serving);
        log!(
            "ready: {} worker(s) serving {}",
            self.seats.len(),
            self.server.addr
        );
        if let Some(mut p) = self.server.predecessor.take() {
            p.client.set_timeout(Duration::from_secs(5));
            let ack = p
                .client
                .send(&Request::Ready)
                .and_then(|_| p.client.answer::<serde_json::Value>());
            if ack.is_ok() {
                self.counters.adopted += 1;
            }
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
        // After the predecessor's acknowledgement: an upgrade's successor is the main process only once
        // its predecessor has said MAINPID=.
        let status = self.status_line();
        self.server.service.ready(&status);
    }

    /// `READY=1` and `STOPPING=1` from workers, by the sender's pid (as the kernel tells it).
    fn on_notify(&mut self) {
        let messages = self.notify.receive();
        let (seats, ctx, _) = self.seats();
        for msg in messages {
            let pid = Pid::from_raw(msg.pid as i32);
            // Not one of ours (a grandchild, or one that already exited): ignored.
            if msg.ready() {
                let status = msg.status();
                seats.iter_mut().any(|s| s.on_ready(&ctx, pid, status));
            }
            if msg.stopping() {
                seats.iter_mut().any(|s| s.on_stopping(&ctx, pid));
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
                // An orphan (or a worker) exited: the next reap pass collects it.
                Signal::SIGCHLD => {
                    self.rest.orphan_exited();
                    continue;
                }
                Signal::SIGHUP => {
                    log!("SIGHUP: reload");
                    if let Err(why) = self.begin_reload(1, None) {
                        log!("reload refused: {why}");
                        self.reload_refused(&why);
                    }
                    continue;
                }
                Signal::SIGUSR2 => {
                    log!("SIGUSR2: upgrade");
                    if let Err(why) = self.begin_upgrade(None) {
                        log!("upgrade refused: {why}");
                    }
                    continue;
                }
                Signal::SIGINT => StopReason::Interrupt,
                _ => StopReason::Terminate,
            };
            self.on_stop_signal(sig, reason);
        }
    }

    fn begin_drain(&mut self, reason: StopReason) {
        if self.draining.is_some() {
            return;
        }
        // A stop request during the drain delay drains now; the report keeps what began the stop.
        let reason = self.cut_drain_delay(reason).unwrap_or(reason);
        self.draining = Some((Instant::now(), reason));
        let (status, progress) = (self.status_line(), self.drain_progress());
        self.server.service.stopping(&status, progress);
        let open: u64 = self.server.stats.snapshot().iter().map(|s| s.active).sum();
        let running = self.seats.iter().filter(|s| s.serving().is_some()).count();
        let (stop, open_what) = match self.server.config.protocol {
            Protocol::Tcp => ("stop accepting", "connection(s) open"),
            Protocol::Udp => ("read their sockets empty", "live flow(s)"),
        };
        log!(
            "draining ({}): {running} worker(s) {stop}, {open} {open_what}, timeout {:?}",
            reason.cause(),
            self.server.config.drain_timeout
        );
        self.abort_reload("the server began to drain");
        self.abort_upgrade();
        // A successor that took over serves our listeners' queues: our workers let go of them at once.
        let ask = if reason == StopReason::TakenOver {
            self.counters.handed_over += 1;
            // The successor binds our admin address as soon as we let go of it.
            if let Some(admin) = self.server.admin.as_mut() {
                admin.release(self.server.poll.registry());
            }
            Ask::Handover
        } else {
            Ask::Drain
        };
        // Our copies of the listeners close: they must not keep the sockets in the group once the
        // workers close theirs.
        let (seats, ctx, _) = self.seats();
        for seat in seats.iter_mut() {
            seat.stop(&ctx, ask);
        }
        self.server.shared.set_phase(Phase::Draining);
        if let Some((mut s, _)) = self.successor.take() {
            // Dropping `s` closes it, which removes it from epoll anyway.
            self.server.poll.registry().deregister(&mut s).ok();
        }
    }

    fn kill_all(&mut self) {
        for seat in &mut self.seats {
            seat.kill_all();
        }
    }

    /// After a failed start: waits (bounded) until every worker started so far has been reaped.
    fn reap_until_gone(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        self.draining
            .get_or_insert((Instant::now(), StopReason::Stop));
        while !self.seats.iter().all(Seat::is_empty) && Instant::now() < until {
            self.reap();
            self.leftovers(Instant::now());
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
        ServerStatus {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            addr: self.server.addr,
            mode: self.server.kind.mode(),
            command: self.server.config.command.clone(),
            state: self.phase(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            control_socket: self
                .server
                .control
                .as_ref()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            workers: self.server.stats.snapshot(),
            steering: self.server.steering.status(&self.server.group),
            drain_in_secs: self.drain_in().map(|d| d.as_secs_f64()),
            pid_namespace: control::pid_namespace(),
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
                Request::Takeover { addr, command, udp } => self.offer(id, addr, command, udp),
                Request::Reload { batch } => self.reload_request(id, batch),
                Request::Upgrade => self.upgrade_request(id),
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
