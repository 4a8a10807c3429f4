//! Settings by name: the one place where every host's spelling of a [`Config`] field is turned into the
//! field. The CLI, Python and Ruby hand over only what the caller gave (name → [`Value`]); the rest comes
//! from [`Config::default`], and every error names the setting as the caller wrote it ([`Host::spell`]).
//!
//! [`SETTINGS`] also gives each setting's help line and default, from which the CLI builds `serve --help`
//! and the bindings' tests check that Python's and Ruby's signatures name every setting.

use std::time::Duration;

use crate::config::{parse_duration, parse_signal, Config, MAX_DURATION};
use crate::error::{Error, Result};

/// Who is passing settings: decides how a setting is named in errors, and whether strings are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Rust code building a [`Config`]: `drain_timeout`.
    Rust,
    /// The command line: `--drain-timeout`. Values arrive as strings and are parsed (`30s`, `4`, …).
    Cli,
    /// Python keyword arguments: `drain_timeout=`.
    Python,
    /// Ruby keyword arguments: `drain_timeout:`.
    Ruby,
}

impl Host {
    /// `name` as this host writes it.
    pub fn spell(self, name: &str) -> String {
        match self {
            Host::Rust => name.to_string(),
            Host::Cli => format!("--{}", name.replace('_', "-")),
            Host::Python => format!("{name}="),
            Host::Ruby => format!("{name}:"),
        }
    }

    /// The `runtime` a server started from this host reports (`hello` replies, logs, `status`).
    pub fn runtime(self) -> &'static str {
        match self {
            Host::Rust | Host::Cli => "rust",
            Host::Python => "python",
            Host::Ruby => "ruby",
        }
    }
}

/// A value as a host hands it over. "Not given" is not a value: a host leaves such a setting out.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `true`/`false` (or a CLI flag that was given).
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction (seconds, for durations).
    Float(f64),
    /// A string: a host name or mode from any host; anything at all from the CLI, which parses it.
    Str(String),
    /// A list of strings (a program and its arguments).
    List(Vec<String>),
    /// A value of a type no setting takes (a dict, bytes, …), described for the error: `a dict ({})`.
    Other(String),
}

impl Value {
    /// What this value is, for a type error: `a string ("80")`.
    fn describe(&self) -> String {
        match self {
            Value::Bool(b) => format!("a boolean ({b})"),
            Value::Int(i) => format!("an integer ({i})"),
            Value::Float(f) => format!("a number ({f})"),
            Value::Str(s) => format!("a string ({s:?})"),
            Value::List(l) => format!("a list ({l:?})"),
            Value::Other(what) => what.clone(),
        }
    }
}

/// What a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// A whole number.
    Integer,
    /// Seconds (a number), or on the CLI `30s`, `500ms`, `2m`, `1.5h`.
    Duration,
    /// On or off; on the CLI a flag (`--takeover`) that also takes `=false` (`--steering=false`).
    Flag,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// Words: a program and its arguments; on the CLI, everything after `--`.
    List,
}

/// One user-facing setting of [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The field's name (`drain_timeout`); hosts re-spell it.
    pub name: &'static str,
    /// The one-letter CLI option, if any.
    pub short: Option<char>,
    /// What it takes.
    pub kind: Kind,
    /// The CLI's placeholder for the value (`DURATION`).
    pub value_name: &'static str,
    /// One line of help, the same in `--help`, the Python docstrings and the Ruby docs.
    pub help: &'static str,
    /// The default as help shows it.
    pub default: &'static str,
}

const MODES: &[&str] = &["echo", "once", "hello"];
const READY: &[&str] = &["delay", "notify"];

/// Every setting a user can give, in `--help` order. `runtime`, `handle_signals` and `control` are not
/// here: the host decides those.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "host",
        short: None,
        kind: Kind::Text,
        value_name: "HOST",
        help: "Address to bind: an IPv4 or IPv6 literal, or localhost",
        default: "0.0.0.0",
    },
    Setting {
        name: "port",
        short: Some('p'),
        kind: Kind::Integer,
        value_name: "PORT",
        help: "Port to bind; 0 picks a free one",
        default: "1234",
    },
    Setting {
        name: "workers",
        short: Some('w'),
        kind: Kind::Integer,
        value_name: "N",
        help: "Worker processes, each with its own listener",
        default: "number of CPUs",
    },
    Setting {
        name: "mode",
        short: Some('m'),
        kind: Kind::Choice(MODES),
        value_name: "MODE",
        help: "What workers do with a connection: echo, once (one read, echo, close) or hello",
        default: "echo",
    },
    Setting {
        name: "backlog",
        short: None,
        kind: Kind::Integer,
        value_name: "N",
        help: "listen(2) backlog per listener",
        default: "1024",
    },
    Setting {
        name: "drain_timeout",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "Longest a drain may take before open connections are closed",
        default: "30s",
    },
    Setting {
        name: "max_connections",
        short: None,
        kind: Kind::Integer,
        value_name: "N",
        help: "Open connections per worker; at the limit it stops accepting until one closes",
        default: "10000",
    },
    Setting {
        name: "idle_timeout",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "Close connections idle this long",
        default: "off",
    },
    Setting {
        name: "command",
        short: None,
        kind: Kind::List,
        value_name: "CMD",
        help: "Run this program as every worker (on the CLI: after --): its own listener as fd 3, with \
               LISTEN_FDS=1, LISTEN_PID, NOTIFY_SOCKET, PORT_SHARDING_WORKER and PORT_SHARDING_PORT",
        default: "none: built-in workers",
    },
    Setting {
        name: "ready",
        short: None,
        kind: Kind::Choice(READY),
        value_name: "WHEN",
        help: "When a command worker is ready: delay (READY=1, or after --ready-delay alive) or notify \
               (only READY=1 on NOTIFY_SOCKET, within --ready-timeout)",
        default: "delay",
    },
    Setting {
        name: "ready_delay",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "A command worker that sends no READY=1 is ready after this long alive",
        default: "1s",
    },
    Setting {
        name: "ready_timeout",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "Longest a new worker may take to be ready (READY=1 with --ready notify; any worker during a \
               reload) before its start counts as failed",
        default: "30s",
    },
    Setting {
        name: "stop_signal",
        short: None,
        kind: Kind::Text,
        value_name: "SIGNAL",
        help: "Signal that stops a command worker gracefully; SIGKILL follows after --drain-timeout",
        default: "TERM",
    },
    Setting {
        name: "takeover",
        short: None,
        kind: Kind::Flag,
        value_name: "",
        help: "Rolling upgrade: adopt the listening sockets of the server running on host:port; it drains once \
               this one is ready (with none running, start normally)",
        default: "off",
    },
    Setting {
        name: "migrate",
        short: None,
        kind: Kind::Flag,
        value_name: "",
        help: "Closing a listener moves its queue to the others instead of resetting it: a reuseport eBPF \
               program on this server's group where permitted (CAP_BPF), else net.ipv4.tcp_migrate_req=1 \
               (CAP_NET_ADMIN)",
        default: "off",
    },
    Setting {
        name: "steering",
        short: None,
        kind: Kind::Flag,
        value_name: "",
        help: "Steer new connections away from stalled or overloaded workers while others are healthy \
               (a cBPF program on the port's group; off where other processes share the port)",
        default: "on",
    },
    Setting {
        name: "stall_after",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "A worker with connections queued that accepts none for this long is stalled",
        default: "100ms",
    },
    Setting {
        name: "stall_restart_after",
        short: None,
        kind: Kind::Duration,
        value_name: "DURATION",
        help: "Replace a worker stalled this long (SIGKILL; a new one serves its queue)",
        default: "off",
    },
];

/// The [`Setting`] called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl Config {
    /// A `Config` from the settings a host was given (`name → value`), the rest from
    /// [`Config::default`], validated. `runtime` comes from `host`.
    ///
    /// ```
    /// use port_sharding::{Config, Host, Value};
    /// let c = Config::from_settings(Host::Cli, [("port", Value::Str("0".into())), ("drain_timeout", Value::Str("2s".into()))])?;
    /// assert_eq!(c.drain_timeout, std::time::Duration::from_secs(2));
    /// let err = Config::from_settings(Host::Python, [("workers", Value::Int(0))]).unwrap_err();
    /// assert!(err.to_string().starts_with("invalid workers="));
    /// # Ok::<(), port_sharding::Error>(())
    /// ```
    ///
    /// # Errors
    /// An unknown name, a value of the wrong type or out of range: [`Error::InvalidArgument`] or
    /// [`Error::WrongType`], naming the setting as `host` writes it.
    pub fn from_settings<'a>(
        host: Host,
        settings: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Result<Config> {
        let mut config = Config {
            runtime: host.runtime().to_string(),
            ..Config::default()
        };
        for (name, value) in settings {
            config.set(host, name, value).map_err(|e| e.spelled(host))?;
        }
        config.validate().map_err(|e| e.spelled(host))?;
        Ok(config)
    }

    /// Sets one setting by name.
    fn set(&mut self, host: Host, name: &str, value: Value) -> Result<()> {
        let Some(s) = setting(name) else {
            let known: Vec<String> = SETTINGS.iter().map(|s| host.spell(s.name)).collect();
            return Err(Error::InvalidArgument {
                name: "setting",
                shown: host.spell(name),
                reason: format!("not a setting (known: {})", known.join(", ")),
            });
        };
        let cli = host == Host::Cli;
        match s.name {
            "host" => self.host = text(s, value)?,
            "port" => self.port = integer(s, value, cli, 0, u16::MAX.into())? as u16,
            "workers" => self.workers = integer(s, value, cli, 1, i64::MAX)? as usize,
            "mode" => self.mode = text(s, value)?.parse()?,
            "backlog" => self.backlog = integer(s, value, cli, 1, u32::MAX.into())? as u32,
            "drain_timeout" => self.drain_timeout = duration(s, value, cli)?,
            "max_connections" => {
                self.max_connections = integer(s, value, cli, 1, i64::MAX)? as usize
            }
            "idle_timeout" => self.idle_timeout = Some(duration(s, value, cli)?),
            "command" => self.command = list(s, value)?,
            "ready" => self.ready = text(s, value)?.parse()?,
            "ready_delay" => self.ready_delay = duration(s, value, cli)?,
            "ready_timeout" => self.ready_timeout = duration(s, value, cli)?,
            "stop_signal" => {
                self.stop_signal =
                    parse_signal(&text(s, value)?).map_err(|why| Error::invalid(s.name, why))?
            }
            "takeover" => self.takeover = flag(s, value)?,
            "migrate" => self.migrate = flag(s, value)?,
            "steering" => self.steering = flag(s, value)?,
            "stall_after" => self.stall_after = duration(s, value, cli)?,
            "stall_restart_after" => self.stall_restart_after = Some(duration(s, value, cli)?),
            other => unreachable!("setting {other} is in SETTINGS but not handled"),
        }
        Ok(())
    }
}

/// Every field of [`Config`], so adding one fails to compile here until it is given a [`Setting`] (or
/// is listed as the host's to decide).
#[allow(dead_code)]
fn every_field_is_a_setting(c: Config) {
    let Config {
        host: _,
        port: _,
        workers: _,
        mode: _,
        backlog: _,
        drain_timeout: _,
        max_connections: _,
        idle_timeout: _,
        command: _,
        ready: _,
        ready_delay: _,
        ready_timeout: _,
        stop_signal: _,
        takeover: _,
        migrate: _,
        steering: _,
        stall_after: _,
        stall_restart_after: _,
        // Decided by the host, not by its user:
        runtime: _,
        handle_signals: _,
        control: _,
    } = c;
}

fn wrong(s: &Setting, expected: &'static str, got: &Value) -> Error {
    Error::WrongType {
        name: s.name,
        shown: s.name.to_string(),
        expected,
        got: got.describe(),
    }
}

fn text(s: &Setting, value: Value) -> Result<String> {
    match value {
        Value::Str(t) => Ok(t),
        other => Err(wrong(s, "a string", &other)),
    }
}

fn list(s: &Setting, value: Value) -> Result<Vec<String>> {
    match value {
        Value::List(words) => Ok(words),
        other => Err(wrong(
            s,
            "a list of strings (the program and its arguments)",
            &other,
        )),
    }
}

fn flag(s: &Setting, value: Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(b),
        other => Err(wrong(s, "true or false", &other)),
    }
}

fn integer(s: &Setting, value: Value, parse: bool, min: i64, max: i64) -> Result<i64> {
    let n = match value {
        Value::Int(n) => n,
        Value::Str(t) if parse => t
            .trim()
            .parse()
            .map_err(|_| Error::invalid(s.name, format!("{t:?} is not a whole number")))?,
        other => return Err(wrong(s, "an integer", &other)),
    };
    if n < min {
        let least = if min == 0 { "≥ 0" } else { "at least 1" };
        return Err(Error::invalid(s.name, format!("must be {least}, got {n}")));
    }
    if n > max {
        return Err(Error::invalid(
            s.name,
            format!("must be at most {max}, got {n}"),
        ));
    }
    Ok(n)
}

fn duration(s: &Setting, value: Value, parse: bool) -> Result<Duration> {
    let secs = match value {
        Value::Int(n) => n as f64,
        Value::Float(f) => f,
        Value::Str(t) if parse => {
            return parse_duration(&t).map_err(|reason| Error::invalid(s.name, reason))
        }
        other => return Err(wrong(s, "a number of seconds", &other)),
    };
    if secs.is_nan() || secs <= 0.0 {
        return Err(Error::invalid(
            s.name,
            format!("must be more than 0 seconds, got {secs}"),
        ));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(Error::invalid(
            s.name,
            format!("must be at most one year, got {secs} s"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(pairs: &[(&'static str, &str)]) -> Result<Config> {
        Config::from_settings(
            Host::Cli,
            pairs.iter().map(|&(n, v)| (n, Value::Str(v.to_string()))),
        )
    }

    #[test]
    fn the_cli_parses_strings_and_names_flags() {
        let c = cli(&[("port", "0"), ("drain_timeout", "500ms"), ("mode", "once")]).unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.drain_timeout, Duration::from_millis(500));
        assert_eq!(c.runtime, "rust");
        let e = cli(&[("port", "-1")]).unwrap_err().to_string();
        assert_eq!(e, "invalid --port: must be ≥ 0, got -1");
        let e = cli(&[("drain_timeout", "1000000h")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid --drain-timeout: must be at most one year"),
            "{e}"
        );
    }

    #[test]
    fn hosts_spell_the_setting_their_way() {
        let e = Config::from_settings(Host::Ruby, [("drain_timeout", Value::Float(0.0))]);
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("invalid drain_timeout:"));
        let e = Config::from_settings(Host::Python, [("port", Value::Str("80".into()))]);
        let e = e.unwrap_err();
        assert!(matches!(e, Error::WrongType { name: "port", .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "invalid port=: expected an integer, got a string (\"80\")"
        );
        let e = Config::from_settings(Host::Python, [("wrokers", Value::Int(2))]);
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("invalid wrokers=: not a setting (known: host=, port="));
        let e = Config::from_settings(Host::Ruby, [("port", Value::Str("80".into()))]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "invalid port: expected an integer, got a string (\"80\")"
        );
        let e = Config::from_settings(
            Host::Python,
            [("idle_timeout", Value::Float(f64::INFINITY))],
        );
        assert!(e.unwrap_err().to_string().contains("at most one year"));
        let c = Config::from_settings(Host::Python, [("workers", Value::Int(3))]).unwrap();
        assert_eq!((c.workers, c.runtime.as_str()), (3, "python"));
    }

    #[test]
    fn a_command_is_a_list_of_words_from_every_host() {
        let words = Value::List(vec!["gunicorn".into(), "app:app".into()]);
        let c = Config::from_settings(Host::Python, [("command", words)]).unwrap();
        assert_eq!(c.command, ["gunicorn", "app:app"]);
        let e = Config::from_settings(Host::Ruby, [("command", Value::Str("puma".into()))]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "invalid command: expected a list of strings (the program and its arguments), got a string (\"puma\")"
        );
        let c = cli(&[
            ("stop_signal", "QUIT"),
            ("ready", "notify"),
            ("ready_delay", "250ms"),
        ])
        .unwrap();
        assert_eq!(c.stop_signal, crate::config::Signal::SIGQUIT);
        assert_eq!(c.ready_delay, Duration::from_millis(250));
        let e = cli(&[("stop_signal", "NOPE")]).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid --stop-signal: \"NOPE\" is not a signal name"),
            "{e}"
        );
    }

    #[test]
    fn every_setting_is_handled() {
        for s in SETTINGS {
            let value = match s.kind {
                Kind::Text => Value::Str("127.0.0.1".into()),
                Kind::Integer => Value::Int(1),
                Kind::Duration => Value::Float(1.0),
                Kind::Flag => Value::Bool(false),
                Kind::Choice(c) => Value::Str(c[0].into()),
                Kind::List => Value::List(vec!["true".into()]),
            };
            let value = if s.name == "stop_signal" {
                Value::Str("TERM".into())
            } else {
                value
            };
            Config::default().set(Host::Rust, s.name, value).unwrap();
        }
    }
}
