//! The supervisor as a service: what it tells the service manager above it (systemd, or anything that
//! speaks `man sd_notify`) through `NOTIFY_SOCKET`.
//!
//! | when | message |
//! |---|---|
//! | every worker is ready (an upgrade's successor: once its predecessor has handed over `MAINPID`) | `READY=1`, `STATUS=`, then `WATCHDOG=1` |
//! | reload begins (SIGHUP, `reload`) / ends, or fails | `RELOADING=1` + `MONOTONIC_USEC=` / `READY=1` + `STATUS=` (why, when it failed) |
//! | drain begins / still makes progress | `STOPPING=1` / `EXTEND_TIMEOUT_USEC=` |
//! | an upgrade's successor is ready | `MAINPID=<successor>`; this process says nothing more |
//! | every half `WATCHDOG_USEC`, from the loop itself (no thread: a loop that hangs stops pinging) | `WATCHDOG=1` |
//! | a listener joins / leaves, where the fd store is on (`FDSTORE`) | `FDSTORE=1` + `FDNAME=` + the fd / `FDSTOREREMOVE=1` |
//!
//! The supervisor takes `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` and `FDSTORE` out of its own
//! environment when it binds (as `sd_notify(3)` does with `unset_environment`), so no worker it forks or
//! execs inherits them: only an upgrade's successor is given them back. Without `NOTIFY_SOCKET` every
//! call here does nothing.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::Supervisor;
use crate::log::log;
use crate::notify;

/// What the supervisor takes out of its environment (and gives an upgrade's successor).
pub(crate) const ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE"];

/// The shortest `STATUS=` interval: the text changes with every connection.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often a drain that still makes progress asks for more time, and how much it asks for.
const EXTEND_EVERY: Duration = Duration::from_secs(5);

/// The service manager's side of this server, when there is one.
pub(super) struct Service {
    /// `NOTIFY_SOCKET` as given (a path or `@abstract`); `None`: no manager listens.
    socket: Option<OsString>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on and meant for this process.
    ping_every: Option<Duration>,
    /// `WATCHDOG_USEC` as given, for a successor.
    watchdog_usec: Option<String>,
    /// `FDSTORE` (systemd ≥ 254, or set in the unit): how many fds the manager keeps for us.
    fdstore: usize,
    /// When the next `WATCHDOG=1` is due (from the first `READY=1` on).
    next_ping: Option<Instant>,
    last_status: Option<(Instant, String)>,
    /// An upgrade's successor is the main process now: nothing more is ours to say.
    handed_over: bool,
    /// During a drain: the next extension, and what the drain looked like at the last one.
    extend: Option<(Instant, (u64, u64, usize))>,
    /// A send failed once (logged once).
    failed: bool,
}

/// `var` out of the environment, removed.
fn take(var: &str) -> Option<OsString> {
    let value = std::env::var_os(var);
    std::env::remove_var(var);
    value
}

impl Service {
    /// Takes `NOTIFY_SOCKET`, `WATCHDOG_*` and `FDSTORE` out of this process's environment.
    pub(super) fn from_env() -> Service {
        let socket = take("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let usec = take("WATCHDOG_USEC").and_then(|u| u.into_string().ok());
        let pid = take("WATCHDOG_PID").and_then(|p| p.into_string().ok());
        let fdstore = take("FDSTORE")
            .and_then(|n| n.into_string().ok())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        // WATCHDOG_PID names the process the watchdog is for: another one (a parent's) is not ours.
        let ours = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let interval = usec
            .as_deref()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        if let Some(s) = &socket {
            let watchdog = interval.map_or_else(|| "off".to_string(), |i| format!("{i:?}"));
            let store = match fdstore {
                0 => "off".to_string(),
                n => format!("{n} fd(s)"),
            };
            log!(
                "service manager: notify socket {}, watchdog {watchdog}, fd store {store}",
                s.to_string_lossy()
            );
        }
        Service {
            socket,
            ping_every: interval.map(|i| i / 2),
            watchdog_usec: usec.filter(|_| interval.is_some()),
            fdstore,
            next_ping: None,
            last_status: None,
            handed_over: false,
            extend: None,
            failed: false,
        }
    }

    /// Whether a service manager listens.
    pub(super) fn is_on(&self) -> bool {
        self.socket.is_some() && !self.handed_over
    }

    /// Whether the manager keeps fds for us (`FDSTORE=1`).
    pub(super) fn fd_store(&self) -> bool {
        self.is_on() && self.fdstore > 0
    }

    fn send(&mut self, message: &str, fds: &[RawFd]) {
        let Some(socket) = self.socket.as_ref().filter(|_| !self.handed_over) else {
            return;
        };
        if let Err(e) = notify::send(socket, message, fds) {
            if !std::mem::replace(&mut self.failed, true) {
                log!(
                    "service manager: cannot send to NOTIFY_SOCKET {} ({e}); carrying on",
                    socket.to_string_lossy()
                );
            }
        }
    }

    /// `READY=1` with the status, and the first watchdog ping right after it.
    pub(super) fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"), &[]);
        self.last_status = Some((Instant::now(), status.to_string()));
        if self.ping_every.is_some() {
            self.send("WATCHDOG=1", &[]);
            self.next_ping = self.ping_every.map(|d| Instant::now() + d);
        }
    }

    /// `RELOADING=1` stamped with `CLOCK_MONOTONIC` (without it `systemctl reload` waits forever).
    pub(super) fn reloading(&mut self, status: &str) {
        let message = format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}",
            monotonic_usec()
        );
        self.send(&message, &[]);
        self.last_status = Some((Instant::now(), status.to_string()));
    }

    /// `READY=1` after a reload, with how it went.
    pub(super) fn reloaded(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"), &[]);
        self.last_status = Some((Instant::now(), status.to_string()));
    }

    /// `STOPPING=1`: the drain begins.
    pub(super) fn stopping(&mut self, status: &str, progress: (u64, u64, usize)) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"), &[]);
        self.last_status = Some((Instant::now(), status.to_string()));
        self.extend = Some((Instant::now() + EXTEND_EVERY, progress));
    }

    /// `MAINPID=<pid>`: an upgrade's successor is ready and takes over as the main process. From now on
    /// this process says nothing (the successor says `READY=1` once it has this).
    pub(super) fn hand_over(&mut self, pid: u32) {
        self.send(
            &format!("MAINPID={pid}\nSTATUS=upgraded: pid {pid} serves now"),
            &[],
        );
        self.handed_over = true;
    }

    /// `STATUS=` now.
    pub(super) fn say(&mut self, status: &str) {
        self.send(&format!("STATUS={status}"), &[]);
        self.last_status = Some((Instant::now(), status.to_string()));
    }

    /// Whether a periodic `STATUS=` is due (the last one is old enough).
    pub(super) fn status_due(&self, now: Instant) -> bool {
        self.is_on()
            && self
                .last_status
                .as_ref()
                .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= STATUS_EVERY)
    }

    /// A periodic `STATUS=`: sent when it changed.
    pub(super) fn status(&mut self, now: Instant, text: String) {
        if self.last_status.as_ref().is_none_or(|(_, t)| *t != text) {
            self.send(&format!("STATUS={text}"), &[]);
        }
        self.last_status = Some((now, text));
    }

    /// The next time something is due by the clock: `WATCHDOG=1`, or a `STATUS=` whose text (`line`, the
    /// one it would send now) changed since the last. `None`: nothing.
    pub(super) fn next_due(&self, line: impl FnOnce() -> String) -> Option<Instant> {
        if !self.is_on() {
            return None;
        }
        let ping = self.next_ping.filter(|_| self.ping_every.is_some());
        let status = match &self.last_status {
            Some((at, text)) if *text != line() => Some(*at + STATUS_EVERY),
            _ => None,
        };
        match (ping, status) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `WATCHDOG=1` when due (from the first `READY=1` on). Called once per pass of the loop.
    pub(super) fn tick(&mut self, now: Instant) {
        if let (Some(next), Some(every)) = (self.next_ping, self.ping_every) {
            if now >= next {
                self.send("WATCHDOG=1", &[]);
                self.next_ping = Some(now + every);
            }
        }
    }

    /// During a drain: `EXTEND_TIMEOUT_USEC=` every few seconds while `progress` (connections served,
    /// connections still open, workers left) changes, so a long drain that still gets somewhere is not
    /// cut by `TimeoutStopSec=`; one that is stuck gets no more time.
    pub(super) fn drain_tick(&mut self, now: Instant, progress: (u64, u64, usize)) {
        let Some((due, last)) = self.extend else {
            return;
        };
        if now < due {
            return;
        }
        if progress != last {
            let usec = (2 * EXTEND_EVERY).as_micros();
            self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"), &[]);
        }
        self.extend = Some((now + EXTEND_EVERY, progress));
    }

    /// Hands `fd` to the manager's fd store under `name`.
    pub(super) fn store(&mut self, fd: RawFd, name: &str) {
        if self.fd_store() {
            self.send(&format!("FDSTORE=1\nFDNAME={name}"), &[fd]);
        }
    }

    /// Takes the fds stored under `name` out of the manager's store.
    pub(super) fn unstore(&mut self, name: &str) {
        if self.fd_store() {
            self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]);
        }
    }

    /// What an upgrade's successor gets back of [`ENV`]: the notify socket, the watchdog (it is the main
    /// process once ready, so no `WATCHDOG_PID`) and the fd store's size.
    pub(super) fn successor_env(&self) -> Vec<(String, OsString)> {
        let mut env = Vec::new();
        if let Some(s) = &self.socket {
            env.push(("NOTIFY_SOCKET".to_string(), s.clone()));
            if let Some(u) = &self.watchdog_usec {
                env.push(("WATCHDOG_USEC".to_string(), u.into()));
            }
            if self.fdstore > 0 {
                env.push(("FDSTORE".to_string(), self.fdstore.to_string().into()));
            }
        }
        env
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd compares `MONOTONIC_USEC` with its own.
pub(crate) fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime writes a timespec into the zeroed struct.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

impl Supervisor {
    /// At start: our listeners into the manager's fd store (not the manager's own sockets: it holds
    /// those), and the names it should no longer keep out of it.
    pub(super) fn service_start(&mut self) {
        for name in std::mem::take(&mut self.server.unstore) {
            self.server.service.unstore(&name);
        }
        // UDP sockets stay out of the store: what comes back from it is taken for TCP listeners.
        let udp = self.server.config.protocol == crate::config::Protocol::Udp;
        if self.server.managed || !self.server.service.fd_store() || udp {
            return;
        }
        let fds: Vec<RawFd> = self
            .seats
            .iter()
            .filter_map(|s| s.listener().map(|l| l.as_raw_fd()))
            .collect();
        for fd in &fds {
            self.store(*fd);
        }
        log!(
            "fd store: {} listener(s) kept by the service manager too (a crash loses nothing queued)",
            fds.len()
        );
    }

    /// A seat's new listener (a reload's socket of its own, once its worker is promoted) into the fd store.
    pub(super) fn store(&mut self, fd: RawFd) {
        if !self.server.managed && self.server.config.protocol != crate::config::Protocol::Udp {
            let name = super::activation::fd_name(&fd);
            self.server.service.store(fd, &name);
        }
    }

    /// A listener that is no longer a seat's (it will leave the group once its worker has emptied it) out
    /// of the fd store, well before we close it: a copy the manager kept would keep it in the group,
    /// queueing connections nobody accepts.
    pub(super) fn unstore(&mut self, fd: RawFd) {
        if !self.server.managed {
            let name = super::activation::fd_name(&fd);
            self.server.service.unstore(&name);
        }
    }

    /// Once per pass: the watchdog, `STATUS=` now and then, and a long drain's extensions.
    pub(super) fn service_tick(&mut self, now: Instant) {
        if !self.server.service.is_on() {
            return;
        }
        self.server.service.tick(now);
        if self.draining.is_some() {
            let progress = self.drain_progress();
            self.server.service.drain_tick(now, progress);
        }
        if (self.ready || self.draining.is_some()) && self.server.service.status_due(now) {
            let line = self.status_line();
            self.server.service.status(now, line);
        }
    }

    /// What a drain has got to: connections served, connections open, workers left.
    pub(super) fn drain_progress(&self) -> (u64, u64, usize) {
        let snapshot = self.server.stats.snapshot();
        let served = snapshot.iter().map(|w| w.accepted).sum();
        let open = snapshot.iter().map(|w| w.active).sum();
        let workers = self.seats.iter().map(|s| s.pids().count()).sum();
        (served, open, workers)
    }

    /// `STATUS=` for a person reading `systemctl status`: phase, workers, connections, the last reload.
    pub(super) fn status_line(&self) -> String {
        let snapshot = self.server.stats.snapshot();
        let open: u64 = snapshot.iter().map(|w| w.active).sum();
        let served: u64 = snapshot.iter().map(|w| w.accepted).sum();
        let n = self.seats.len();
        let ready = self.seats.iter().filter(|s| s.is_ready()).count();
        let addr = self.server.addr;
        let mut line = if self.draining.is_some() {
            let left: usize = self.seats.iter().map(|s| s.pids().count()).sum();
            format!("draining {addr}: {left} worker(s) left, {open} connection(s) open, {served} served")
        } else {
            format!("serving {addr}: {ready}/{n} workers ready, {open} connection(s) open, {served} served")
        };
        if let Some(r) = &self.last_reload {
            line.push_str("; last reload: ");
            line.push_str(r);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_variable_the_supervisor_takes_is_listed_for_the_hosts() {
        let mut taken: Vec<&str> = super::ENV.to_vec();
        taken.extend(super::super::activation::ENV);
        taken.push("PORT_SHARDING_UPGRADE_FROM");
        taken.sort_unstable();
        let mut listed = super::super::SERVICE_ENV.to_vec();
        listed.sort_unstable();
        assert_eq!(taken, listed);
    }
}
