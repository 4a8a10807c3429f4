//! [`Config`]: everything a server needs to know, with public fields and a [`Default`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use nix::sys::signal::Signal;

use crate::error::{Error, Result};

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

/// How a server binds, runs and stops.
///
/// Build one with struct-update syntax and pass it to [`Server::bind`](crate::Server::bind):
///
/// ```
/// let config = port_sharding::Config { port: 0, workers: 2, ..Default::default() };
/// assert_eq!(config.backlog, 1024);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to bind: an IPv4 or IPv6 literal, or `localhost`. IPv6 listeners set `IPV6_V6ONLY`.
    ///
    /// Default value: `"0.0.0.0"`.
    pub host: String,
    /// TCP port; 0 asks the kernel for a free one ([`Server::port`](crate::Server::port) tells which).
    ///
    /// Default value: `1234`.
    pub port: u16,
    /// Number of worker processes, each with its own listener in the port's reuseport group.
    ///
    /// Default value: the number of CPUs this process may run on.
    pub workers: usize,
    /// What workers do with a connection.
    ///
    /// Default value: [`Mode::Echo`].
    pub mode: Mode,
    /// Accept-queue length asked of `listen(2)` (the kernel caps it at `net.core.somaxconn`).
    ///
    /// Default value: `1024`.
    pub backlog: u32,
    /// How long a drain may take before the connections still open are closed.
    ///
    /// Default value: 30 seconds.
    pub drain_timeout: Duration,
    /// Open connections per worker; at the limit a worker stops accepting until one closes.
    ///
    /// Default value: `10_000`.
    pub max_connections: usize,
    /// Close a connection after this long without traffic; `None` never does.
    ///
    /// Default value: `None`.
    pub idle_timeout: Option<Duration>,
    /// Run this program as every worker instead of a built-in one (empty: built-in workers, see `mode`).
    /// Each worker gets its own listener as fd 3 and the systemd socket-activation environment
    /// (`LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES`), plus `NOTIFY_SOCKET`, `PORT_SHARDING_WORKER`
    /// and `PORT_SHARDING_PORT`.
    ///
    /// Default value: empty.
    pub command: Vec<String>,
    /// When a command worker is ready: after `ready_delay` alive or at `READY=1` ([`Ready::Delay`]), or only
    /// at `READY=1` ([`Ready::Notify`]).
    ///
    /// Default value: [`Ready::Delay`].
    pub ready: Ready,
    /// How long a command worker that sends no `READY=1` must stay alive to count as ready.
    ///
    /// Default value: 1 second.
    pub ready_delay: Duration,
    /// The longest a new worker may take to be ready (`READY=1` under [`Ready::Notify`], any worker during a
    /// reload) before its start counts as failed.
    ///
    /// Default value: 30 seconds.
    pub ready_timeout: Duration,
    /// The signal that asks a command worker to stop gracefully (TERM for gunicorn and Puma); SIGKILL
    /// follows when it has not exited after `drain_timeout`.
    ///
    /// Default value: `SIGTERM`.
    pub stop_signal: Signal,
    /// Who hosts the engine: `rust`, `python` or `ruby`. Named in `hello` replies, logs and `status`.
    ///
    /// Default value: `"rust"`.
    pub runtime: String,
    /// Adopt the listening sockets of the server already running on host:port (a rolling upgrade);
    /// with none running, start normally.
    ///
    /// Default value: `false`.
    pub takeover: bool,
    /// Make closing a listener move its queued connections to the rest of the group instead of resetting
    /// them: a `SELECT_OR_MIGRATE` eBPF program on this server's group where permitted (`CAP_BPF`), else
    /// `net.ipv4.tcp_migrate_req=1` for the whole network namespace (`CAP_NET_ADMIN`). Needs privilege.
    ///
    /// Default value: `false`.
    pub migrate: bool,
    /// Steer new connections away from stalled or overloaded workers while others are healthy (a classic
    /// BPF program on the port's reuseport group); off, or where the group also holds other processes'
    /// sockets, the kernel's even hashing decides alone.
    ///
    /// Default value: `true`.
    pub steering: bool,
    /// A worker with connections queued that accepts none for this long is *stalled*.
    ///
    /// Default value: 100 ms.
    pub stall_after: Duration,
    /// Replace (SIGKILL, then fork anew on the same listener) a worker stalled this long; `None` never does.
    ///
    /// Default value: `None`.
    pub stall_restart_after: Option<Duration>,
    /// Install SIGINT/SIGTERM handlers while [`Server::run`](crate::Server::run) runs (only on the main
    /// thread); the previous handlers are restored when it returns.
    ///
    /// Default value: `true`.
    pub handle_signals: bool,
    /// Open a control socket so `status`, `stop` and `takeover` can reach this server.
    ///
    /// Default value: `true`.
    pub control: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "0.0.0.0".to_string(),
            port: 1234,
            workers: default_workers(),
            mode: Mode::Echo,
            backlog: 1024,
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            idle_timeout: None,
            command: Vec::new(),
            ready: Ready::Delay,
            ready_delay: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(30),
            stop_signal: Signal::SIGTERM,
            runtime: "rust".to_string(),
            takeover: false,
            migrate: false,
            steering: true,
            stall_after: Duration::from_millis(100),
            stall_restart_after: None,
            handle_signals: true,
            control: true,
        }
    }
}

/// One worker per CPU this process may run on (honours `taskset` and cgroup CPU sets).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return bad(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}, got {}", self.workers),
            );
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return bad(
                "backlog",
                format!("must be between 1 and {}, got {}", i32::MAX, self.backlog),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1, got 0".to_string());
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
        for (name, t) in [
            ("drain_timeout", Some(self.drain_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("ready_delay", Some(self.ready_delay)),
            ("ready_timeout", Some(self.ready_timeout)),
            ("stall_after", Some(self.stall_after)),
            ("stall_restart_after", self.stall_restart_after),
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
        if !matches!(self.runtime.as_str(), "rust" | "python" | "ruby") {
            return bad(
                "runtime",
                format!("{:?} is not one of rust, python, ruby", self.runtime),
            );
        }
        Ok(())
    }
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
