//! [`Config`]: everything a server needs to know, with public fields and a [`Default`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::settings::{settings, Setting, Value};

/// What a worker does with each accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// RFC 862 echo: send back every byte until the peer closes; honours half-close.
    #[default]
    Echo,
    /// The talk's loop exactly: one read of up to 1024 bytes, echo it, close.
    Once,
    /// Write `Hello from <runtime> process <pid>\n` and close, so a mixed group shows who answered.
    Hello,
}

impl Mode {
    /// Every mode's name, as [`Mode::as_str`] gives it.
    pub const NAMES: &'static [&'static str] = &["echo", "once", "hello"];

    /// The mode's name as the CLI, Python and Ruby spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Once => "once",
            Mode::Hello => "hello",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "echo" => Ok(Mode::Echo),
            "once" => Ok(Mode::Once),
            "hello" => Ok(Mode::Hello),
            other => Err(Error::invalid(
                "mode",
                format!("{other:?} is not one of echo, once, hello"),
            )),
        }
    }
}

/// Which transport the port is served over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Listening TCP sockets; workers accept connections.
    #[default]
    Tcp,
    /// Bound UDP sockets; workers read datagrams (every worker's socket in the port's reuseport group).
    Udp,
}

impl Protocol {
    /// Every protocol's name, as [`Protocol::as_str`] gives it.
    pub const NAMES: &'static [&'static str] = &["tcp", "udp"];

    /// The protocol's name as the CLI, Python and Ruby spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Protocol> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(Error::invalid(
                "protocol",
                format!("{s:?} is not one of tcp, udp"),
            )),
        }
    }
}

/// When a command worker counts as ready (and a reload may stop the worker it replaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ready {
    /// At `READY=1` on `NOTIFY_SOCKET`, or after [`Config::ready_delay`] alive, whichever comes first: for
    /// programs that never send `READY=1` (Puma 5, the talk's loops).
    #[default]
    Delay,
    /// Only at `READY=1`, within [`Config::ready_timeout`]; otherwise the start failed.
    Notify,
}

impl Ready {
    /// Every word, as [`Ready::as_str`] gives it.
    pub const NAMES: &'static [&'static str] = &["delay", "notify"];

    /// The word the CLI, Python and Ruby use.
    pub fn as_str(self) -> &'static str {
        match self {
            Ready::Delay => "delay",
            Ready::Notify => "notify",
        }
    }
}

impl FromStr for Ready {
    type Err = Error;

    fn from_str(s: &str) -> Result<Ready> {
        match s {
            "delay" => Ok(Ready::Delay),
            "notify" => Ok(Ready::Notify),
            other => Err(Error::invalid(
                "ready",
                format!("{other:?} is not one of delay, notify"),
            )),
        }
    }
}

/// Parses a signal name as users write it: `TERM`, `SIGTERM`, `term`, or a number (`15`).
pub fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name (try TERM, QUIT, INT, USR1)"))
}

settings! {
    /// How a server binds, runs and stops.
    ///
    /// Build one with struct-update syntax and pass it to [`Server::bind`](crate::Server::bind):
    ///
    /// ```
    /// let config = port_sharding::Config { port: 0, workers: 2, ..Default::default() };
    /// assert_eq!(config.backlog, 1024);
    /// ```
    ///
    /// Each setting is declared once, below: its field, doc, default, [`SETTINGS`] row (the CLI's flag and
    /// help, the bindings' keywords) and conversion. [`Config::validate`] checks the ranges.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Config {
        /// Address to bind: an IPv4 or IPv6 literal, or `localhost`. IPv6 listeners set `IPV6_V6ONLY`.
        host: String = "0.0.0.0".to_string(),
            shown "0.0.0.0", value "HOST",
            help "Address to bind: an IPv4 or IPv6 literal, or localhost";
        /// TCP port; 0 asks the kernel for a free one ([`Server::port`](crate::Server::port) tells which).
        port: u16 = 1234,
            shown "1234", short 'p', value "PORT",
            help "Port to bind; 0 picks a free one";
        /// Number of worker processes, each with its own listener in the port's reuseport group (at most
        /// [`MAX_WORKERS`]). The default ([`default_workers`], `auto` on the command line) is what this
        /// process may use: min(CPUs in its affinity mask, its cgroup's CPU quota rounded up).
        workers: usize = default_workers(),
            shown "auto", short 'w', value "N",
            help "Worker processes, each with its own listener; auto: the CPUs this process may use (its CPU \
                  affinity and its cgroup's CPU quota, rounded up)";
        /// The transport: `tcp` (listening sockets, connections) or `udp` (one bound UDP socket per worker
        /// in the port's reuseport group; `echo` sends each datagram back to its sender, `hello` answers
        /// each with the greeting). A reload gives each new worker a socket of its own and retires the old
        /// one only once its receive queue is empty, so no datagram is lost.
        protocol: Protocol = Protocol::Tcp,
            shown "tcp", value "PROTO",
            help "Transport: tcp, or udp (a reuseport UDP socket per worker; reloads and takeovers lose no \
                  datagram)";
        /// UDP with eBPF (where `bpf()` is permitted): at a reload (or a takeover's hand-over of the
        /// group), a replaced worker keeps the flows it served — their datagrams still reach its socket —
        /// until none has sent anything for this long (or `drain_timeout` has passed); then they move to
        /// the new generation and its socket is read empty and closed. Also what `status` counts as a
        /// live flow.
        udp_flow_idle: Duration = Duration::from_secs(3),
            shown "3s", value "DURATION",
            help "UDP: a replaced worker keeps the flows it served until they are idle this long (eBPF, where \
                  permitted), then they move to the new workers";
        /// What workers do with a connection ([`Mode`]).
        mode: Mode = Mode::Echo,
            shown "echo", short 'm', value "MODE",
            help "What workers do with a connection: echo, once (one read, echo, close) or hello";
        /// Accept-queue length asked of `listen(2)` (the kernel caps it at `net.core.somaxconn`).
        backlog: u32 = 1024,
            shown "1024", value "N",
            help "listen(2) backlog per listener";
        /// How long a drain may take before the connections still open are closed.
        drain_timeout: Duration = Duration::from_secs(30),
            shown "30s", value "DURATION",
            help "Longest a drain may take before open connections are closed";
        /// After SIGTERM (or SIGQUIT), keep accepting this long before draining: a load balancer (a
        /// Kubernetes Service, …) takes a few seconds to stop sending new connections to a server that
        /// is going away, and one that stops accepting at once refuses them meanwhile. The server stays
        /// `serving` (and ready) during the delay. A second signal stops at once; a stop request, SIGINT
        /// and a takeover drain at once.
        drain_delay: Duration = Duration::ZERO,
            shown "0s", value "DURATION",
            help "After SIGTERM keep accepting this long before draining, while load balancers stop sending \
                  here (a second signal stops at once)";
        /// Open connections per worker; at the limit a worker stops accepting until one closes.
        max_connections: usize = 10_000,
            shown "10000", value "N",
            help "Open connections per worker; at the limit it stops accepting until one closes";
        /// Close a connection after this long without traffic; `None` never does.
        idle_timeout: Option<Duration> = None,
            shown "off", value "DURATION",
            help "Close connections idle this long";
        /// Run this program as every worker instead of a built-in one (empty: built-in workers, see `mode`).
        /// Each worker gets its own listener as fd 3 and the systemd socket-activation environment
        /// (`LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES`), plus `NOTIFY_SOCKET`, `PORT_SHARDING_WORKER`
        /// and `PORT_SHARDING_PORT`.
        command: Vec<String> = Vec::new(),
            shown "none: built-in workers", value "CMD",
            help "Run this program as every worker (on the CLI: after --): its own listener as fd 3, with \
                  LISTEN_FDS=1, LISTEN_PID, NOTIFY_SOCKET, PORT_SHARDING_WORKER and PORT_SHARDING_PORT";
        /// When a command worker is ready: after `ready_delay` alive or at `READY=1` ([`Ready::Delay`]), or
        /// only at `READY=1` ([`Ready::Notify`]).
        ready: Ready = Ready::Delay,
            shown "delay", value "WHEN",
            help "When a command worker is ready: delay (READY=1, or after --ready-delay alive) or notify \
                  (only READY=1 on NOTIFY_SOCKET, within --ready-timeout)";
        /// How long a command worker that sends no `READY=1` must stay alive to count as ready.
        ready_delay: Duration = Duration::from_secs(1),
            shown "1s", value "DURATION",
            help "A command worker that sends no READY=1 is ready after this long alive";
        /// The longest a new worker may take to be ready (`READY=1` under [`Ready::Notify`], any worker
        /// during a reload) before its start counts as failed.
        ready_timeout: Duration = Duration::from_secs(30),
            shown "30s", value "DURATION",
            help "Longest a new worker may take to be ready (READY=1 with --ready notify; any worker during a \
                  reload) before its start counts as failed";
        /// The signal that asks a command worker to stop gracefully (TERM for gunicorn and Puma); SIGKILL
        /// follows when it has not exited after `drain_timeout`.
        stop_signal: Signal = Signal::SIGTERM,
            shown "TERM", value "SIGNAL",
            help "Signal that stops a command worker gracefully; SIGKILL follows after --drain-timeout";
        /// Adopt the listening sockets of the server already running on host:port (a rolling upgrade);
        /// with none running, start normally.
        takeover: bool = false,
            shown "off", value "",
            help "Rolling upgrade: adopt the listening sockets of the server running on host:port; it drains once \
                  this one is ready (with none running, start normally)";
        /// Make closing a listener move its queued connections to the rest of the group instead of
        /// resetting them: a `SELECT_OR_MIGRATE` eBPF program on this server's group where permitted
        /// (`CAP_BPF`), else `net.ipv4.tcp_migrate_req=1` for the whole network namespace
        /// (`CAP_NET_ADMIN`). Needs privilege.
        migrate: bool = false,
            shown "off", value "",
            help "Closing a listener moves its queue to the others instead of resetting it: a reuseport eBPF \
                  program on this server's group where permitted (CAP_BPF), else net.ipv4.tcp_migrate_req=1 \
                  (CAP_NET_ADMIN)";
        /// Steer new connections away from stalled or overloaded workers while others are healthy, and
        /// around a worker whose queue is backed up (not draining across 2 ms) while another's is not (a
        /// classic BPF program on the port's reuseport group); off, or where the group also holds other
        /// processes' sockets, the kernel's even hashing decides alone.
        steering: bool = true,
            shown "on", value "",
            help "Steer new connections away from stalled or overloaded workers while others are healthy, \
                  and around a backed-up queue (a cBPF program on the port's group; off where other \
                  processes share the port)";
        /// A worker whose listener's accept queue is not empty and does not drain for this long is
        /// *stalled* (any kind: judged from the kernel's queue length, and from the accepted counter
        /// where the kind keeps one).
        stall_after: Duration = Duration::from_millis(100),
            shown "100ms", value "DURATION",
            help "A worker whose accept queue is not empty and does not drain for this long is stalled";
        /// Replace a worker stalled this long: a command worker gets its stop signal, and SIGKILL if it has
        /// not exited `min(stall_restart_after, drain_timeout)` later; the other kinds SIGKILL at once. Its
        /// seat starts a new one on the same listener. `None` never does.
        stall_restart_after: Option<Duration> = None,
            shown "off", value "DURATION",
            help "Replace a worker stalled this long (command workers: their stop signal, then SIGKILL; others: \
                  SIGKILL); a new one serves its queue";
        /// Serve HTTP on this address, from the supervisor: `GET /livez` (200 while the supervisor
        /// runs), `/readyz` (200 exactly while the listeners accept: serving, handing over, and during
        /// the drain delay; 503 while starting and draining) and `/metrics` (Prometheus text format).
        /// `HOST:PORT`, `[IPv6]:PORT`, or `:PORT` for every IPv4 address; `None`: no endpoint.
        admin: Option<String> = None,
            shown "off", value "HOST:PORT",
            help "Serve /livez, /readyz and /metrics (Prometheus) over HTTP on this address (e.g. :9090), from \
                  the supervisor: for Kubernetes probes and scrapes";

        decided by the host:
        /// Who hosts the engine: `rust`, `python` or `ruby`. Named in `hello` replies, logs and `status`.
        ///
        /// Default value: `"rust"`.
        runtime: String = "rust".to_string();
        /// Install SIGINT/SIGTERM handlers while [`Server::run`](crate::Server::run) runs (only on the
        /// main thread); the previous handlers are restored when it returns.
        ///
        /// Default value: `true`.
        handle_signals: bool = true;
        /// Open a control socket so `status`, `stop` and `takeover` can reach this server.
        ///
        /// Default value: `true`.
        control: bool = true;
        /// Reap every child, expected or not, and become a child subreaper (`PR_SET_CHILD_SUBREAPER`)
        /// while running, so that orphans of command workers (a daemonized child, a shell's background
        /// job) are reparented to this process rather than to a PID 1 that may never reap them. The CLI
        /// sets it. A host that waits for children of its own (Python's `subprocess`, Ruby's `spawn`)
        /// must leave it off: reaping every child would take their exit statuses away. As PID 1 (a
        /// container's init) every child is reaped whatever this says.
        ///
        /// Default value: `false`.
        subreaper: bool = false;

        /// The settings the caller named, as [`Config::from_settings`] records them (a `Config` built in
        /// Rust names none). Where something else decides a setting — the sockets a service manager passes
        /// (`LISTEN_FDS`) decide `host`, `port` and `workers` — one the caller named must agree with it.
        ///
        /// Default value: empty.
        given: Vec<&'static str> = Vec::new();
    }
}

/// One worker per CPU this process may use: min(CPUs in its affinity mask — `taskset`, cgroup CPU sets —,
/// its cgroup's CPU quota rounded up — Kubernetes' `limits.cpu`, Docker's `--cpus`), at least 1. A quota
/// of 1.5 CPUs gives 2 workers (where `std::thread::available_parallelism` gives 1).
pub fn default_workers() -> usize {
    crate::cpus::worker_budget().workers
}

/// The most workers one server may run: a takeover hands every listener over in one `SCM_RIGHTS` message,
/// which carries at most 253 fds (`SCM_MAX_FD`).
pub const MAX_WORKERS: usize = 253;

/// The longest duration any setting takes (one year): longer is surely a mistake, and keeps every
/// `Instant + Duration` far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Checks every field, naming the first one that is out of range (as Rust spells it; a host re-spells
    /// it with [`Error::spelled`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Error::invalid(name, reason));
        for (name, n, least, most) in [
            ("workers", self.workers as u64, 1, MAX_WORKERS as u64),
            ("backlog", self.backlog.into(), 1, i32::MAX as u64),
            ("max_connections", self.max_connections as u64, 1, u64::MAX),
        ] {
            if n < least {
                return bad(name, format!("must be at least {least}, got {n}"));
            }
            if n > most {
                return bad(name, format!("must be at most {most}, got {n}"));
            }
        }
        for (name, t) in [
            ("drain_timeout", Some(self.drain_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("ready_delay", Some(self.ready_delay)),
            ("ready_timeout", Some(self.ready_timeout)),
            ("stall_after", Some(self.stall_after)),
            ("stall_restart_after", self.stall_restart_after),
            ("udp_flow_idle", Some(self.udp_flow_idle)),
        ] {
            match t {
                Some(t) if t.is_zero() => {
                    return bad(name, "must be more than 0 seconds".to_string())
                }
                Some(t) if t > MAX_DURATION => {
                    return bad(name, format!("must be at most one year, got {t:?}"))
                }
                _ => {}
            }
        }
        if let Some(a) = &self.admin {
            if let Err(why) = split_host_port(a) {
                return bad("admin", why);
            }
        }
        if self.drain_delay > MAX_DURATION {
            return bad(
                "drain_delay",
                format!("must be at most one year, got {:?}", self.drain_delay),
            );
        }
        if let Some(first) = self.command.first() {
            if first.is_empty() {
                return bad("command", "the program name is empty".to_string());
            }
        }
        if let Some(i) = self.command.iter().position(|a| a.contains('\0')) {
            return bad("command", format!("argument {} contains a NUL byte", i + 1));
        }
        if self.ready == Ready::Delay && self.ready_delay >= self.ready_timeout {
            return bad(
                "ready_delay",
                format!(
                    "must be shorter than the ready timeout ({:?}), got {:?}",
                    self.ready_timeout, self.ready_delay
                ),
            );
        }
        if matches!(self.stop_signal, Signal::SIGKILL | Signal::SIGSTOP) {
            return bad(
                "stop_signal",
                format!(
                    "{} cannot be handled, so it cannot stop a worker gracefully",
                    self.stop_signal
                ),
            );
        }
        if self.protocol == Protocol::Udp {
            if self.mode == Mode::Once {
                return bad(
                    "mode",
                    "once reads one request of a connection; with protocol udp use echo or hello"
                        .to_string(),
                );
            }
            if self.migrate {
                return bad(
                    "migrate",
                    "moves queued TCP connections; a UDP socket's queue is read empty before it closes anyway"
                        .to_string(),
                );
            }
        }
        if !matches!(self.runtime.as_str(), "rust" | "python" | "ruby") {
            return bad(
                "runtime",
                format!("{:?} is not one of rust, python, ruby", self.runtime),
            );
        }
        Ok(())
    }
}

/// Splits an address as `admin` takes it — `HOST:PORT`, `[IPv6]:PORT`, `:PORT` — into host (empty: every
/// IPv4 address) and port; the host is resolved at bind.
pub(crate) fn split_host_port(s: &str) -> std::result::Result<(&str, u16), String> {
    let s = s.trim();
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} is not HOST:PORT (e.g. 0.0.0.0:9090, [::1]:9090, :9090)"
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') && !s.starts_with('[') {
        return Err(format!(
            "{s:?}: write an IPv6 address in brackets, e.g. [::1]:9090"
        ));
    }
    // 0 asks the kernel for a free port (the start log says which).
    port.parse::<u16>()
        .map(|p| (host, p))
        .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"))
}

/// Parses a duration as the CLI, bench and bindings write it: `30` (seconds), `30s`, `500ms`, `2m`, `1.5h`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn admin_addresses_split() {
        assert_eq!(split_host_port(":9090"), Ok(("", 9090)));
        assert_eq!(split_host_port("0.0.0.0:9090"), Ok(("0.0.0.0", 9090)));
        assert_eq!(split_host_port("[::1]:0"), Ok(("::1", 0)));
        assert!(split_host_port("::1:9090")
            .unwrap_err()
            .contains("brackets"));
        assert!(split_host_port("9090").is_err());
        assert!(split_host_port("localhost:http").is_err());
        let err = Config {
            admin: Some("nope".into()),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid admin:"), "{err}");
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        for s in ["TERM", "SIGTERM", "term", "15"] {
            assert_eq!(parse_signal(s), Ok(Signal::SIGTERM), "{s}");
        }
        assert_eq!(parse_signal("usr1"), Ok(Signal::SIGUSR1));
        assert!(parse_signal("NOPE")
            .unwrap_err()
            .contains("not a signal name"));
        assert!(parse_signal("999").is_err());
        let err = Config {
            stop_signal: Signal::SIGKILL,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("invalid stop_signal"), "{err}");
    }

    #[test]
    fn a_command_must_name_a_program_without_nul_bytes() {
        let bad = |command: &[&str]| {
            Config {
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Config::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        assert!(bad(&[""]).contains("the program name is empty"));
        assert!(bad(&["gunicorn", "a\0b"]).contains("argument 2 contains a NUL byte"));
        assert_eq!("notify".parse::<Ready>().unwrap(), Ready::Notify);
        assert!("soon".parse::<Ready>().is_err());
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        assert!(Config::default().validate().is_ok());
        let err = Config {
            workers: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("invalid workers"), "{err}");
        let err = Config {
            drain_timeout: Duration::from_secs(u64::MAX),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("at most one year"), "{err}");
        assert!("loud"
            .parse::<Mode>()
            .unwrap_err()
            .to_string()
            .contains("invalid mode"));
    }
}
