//! Settings by name: the one place where every host's spelling of a [`Config`] field is turned into the
//! field. The CLI, Python and Ruby hand over only what the caller gave (name → [`Value`]); the rest comes
//! from [`Config::default`], and every error names the setting as the caller wrote it ([`Host::spell`]).
//!
//! Each setting is declared once, as a row of the `settings!` table in `config.rs`, which generates its
//! [`Config`] field, its default, its [`SETTINGS`] entry (help line, default as shown) and its conversion.
//! The CLI builds `serve --help` from [`SETTINGS`]; the bindings' tests check Python's and Ruby's keywords
//! and docs against it.

use std::time::Duration;

use crate::config::{
    parse_duration, parse_signal, Config, Mode, Protocol, Ready, Signal, SETTINGS,
};
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

impl Kind {
    /// The kind's name for the bindings (`"duration"`, `"choice"`, …), whose tests check their types.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Integer => "integer",
            Kind::Duration => "duration",
            Kind::Flag => "flag",
            Kind::Choice(_) => "choice",
            Kind::List => "list",
        }
    }

    /// The words a [`Kind::Choice`] takes; empty for the other kinds.
    pub fn choices(self) -> &'static [&'static str] {
        match self {
            Kind::Choice(words) => words,
            _ => &[],
        }
    }
}

/// One user-facing setting of [`Config`], as declared in `config.rs` (see [`SETTINGS`]).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The field's name (`drain_timeout`); hosts re-spell it.
    pub name: &'static str,
    /// The one-letter CLI option, if any.
    pub short: Option<char>,
    /// What it takes (follows from the field's type).
    pub kind: Kind,
    /// The CLI's placeholder for the value (`DURATION`).
    pub value_name: &'static str,
    /// One line of help, the same in `--help`, the Python docstrings and the Ruby docs.
    pub help: &'static str,
    /// The default as help shows it (and as the field's doc ends: "Default value: …").
    pub default: &'static str,
}

/// Declares every setting once, in `config.rs`: one row per setting gives the [`Config`] field (its doc,
/// ending "Default value: …"), its default, its [`SETTINGS`] row (CLI short flag, value name, help) and
/// its conversion, which follows from the field's type ([`FromValue`]). The fields the host decides
/// (`runtime`, `handle_signals`, `control`, `given`) follow, without a row.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct Config {
            $(
                $(#[doc = $doc:literal])+
                $name:ident: $ty:ty = $default:expr,
                    shown $shown:literal, $(short $short:literal,)? value $value_name:literal,
                    help $help:literal;
            )+
            decided by the host:
            $(
                $(#[doc = $host_doc:literal])+
                $host_name:ident: $host_ty:ty = $host_default:expr;
            )+
        }
    ) => {
        $(#[$meta])*
        pub struct Config {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = concat!("Default value: ", $shown)]
                pub $name: $ty,
            )+
            $(
                $(#[doc = $host_doc])+
                pub $host_name: $host_ty,
            )+
        }

        impl Default for Config {
            fn default() -> Config {
                Config {
                    $($name: $default,)+
                    $($host_name: $host_default,)+
                }
            }
        }

        /// Every setting a user can give, in `--help` order. `runtime`, `handle_signals`, `control` and
        /// `given` are not here: the host decides those.
        pub const SETTINGS: &[Setting] = &[
            $(
                Setting {
                    name: stringify!($name),
                    short: $crate::settings::optional!($($short)?),
                    kind: <$ty as $crate::settings::FromValue>::KIND,
                    value_name: $value_name,
                    help: $help,
                    default: $shown,
                },
            )+
        ];

        impl Config {
            /// Sets the field of setting `s` from `value`, converting it to the field's type.
            pub(crate) fn set_field(&mut self, s: &Setting, value: Value, parse: bool) -> Result<()> {
                use $crate::settings::FromValue;
                match s.name {
                    $(stringify!($name) => self.$name = FromValue::from_value(s, value, parse)?,)+
                    other => return Err(Error::Internal(format!("setting {other} has no field"))),
                }
                Ok(())
            }
        }
    };
}
pub(crate) use settings;

/// `Some(x)` for a given `x`, `None` for nothing: a row's optional parts.
macro_rules! optional {
    () => {
        None
    };
    ($x:expr) => {
        Some($x)
    };
}
pub(crate) use optional;

/// The [`Setting`] called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl Config {
    /// A `Config` from the settings a host was given (`name → value`), the rest from
    /// [`Config::default`], validated. `runtime` comes from `host`. Each value is only converted to its
    /// field's type (strings parsed, for the CLI); [`Config::validate`] alone checks ranges.
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
        // `--workers auto`: the command line's way to ask for the default (elsewhere: leave it out).
        if s.name == "workers"
            && host == Host::Cli
            && matches!(&value, Value::Str(t) if t.trim() == "auto")
        {
            self.workers = crate::config::default_workers();
            return Ok(());
        }
        self.set_field(s, value, host == Host::Cli)?;
        self.given.push(s.name);
        Ok(())
    }
}

/// The type of a setting's field: what it takes ([`Kind`]) and how a host's [`Value`] becomes one. Only
/// conversion: a value of another type is [`Error::WrongType`], a string the CLI gave is parsed, and a
/// number the type cannot hold is an error; whether it is in range is for [`Config::validate`].
pub(crate) trait FromValue: Sized {
    /// What the setting takes.
    const KIND: Kind;
    /// `value`, given for setting `s`, as this type; `parse`: a string may be parsed (the CLI's values).
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Self>;
}

fn wrong(s: &Setting, expected: &'static str, got: &Value) -> Error {
    Error::WrongType {
        name: s.name,
        shown: s.name.to_string(),
        expected,
        got: got.describe(),
    }
}

impl FromValue for String {
    const KIND: Kind = Kind::Text;
    fn from_value(s: &Setting, value: Value, _parse: bool) -> Result<String> {
        match value {
            Value::Str(t) => Ok(t),
            other => Err(wrong(s, "a string", &other)),
        }
    }
}

impl FromValue for Vec<String> {
    const KIND: Kind = Kind::List;
    fn from_value(s: &Setting, value: Value, _parse: bool) -> Result<Vec<String>> {
        match value {
            Value::List(words) => Ok(words),
            other => Err(wrong(
                s,
                "a list of strings (the program and its arguments)",
                &other,
            )),
        }
    }
}

impl FromValue for bool {
    const KIND: Kind = Kind::Flag;
    fn from_value(s: &Setting, value: Value, _parse: bool) -> Result<bool> {
        match value {
            Value::Bool(b) => Ok(b),
            other => Err(wrong(s, "true or false", &other)),
        }
    }
}

impl FromValue for Mode {
    const KIND: Kind = Kind::Choice(Mode::NAMES);
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Mode> {
        String::from_value(s, value, parse)?.parse()
    }
}

impl FromValue for Protocol {
    const KIND: Kind = Kind::Choice(Protocol::NAMES);
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Protocol> {
        String::from_value(s, value, parse)?.parse()
    }
}

impl FromValue for Ready {
    const KIND: Kind = Kind::Choice(Ready::NAMES);
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Ready> {
        String::from_value(s, value, parse)?.parse()
    }
}

impl FromValue for Signal {
    const KIND: Kind = Kind::Text;
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Signal> {
        parse_signal(&String::from_value(s, value, parse)?)
            .map_err(|why| Error::invalid(s.name, why))
    }
}

/// A whole number as a host gave it (the CLI's as a string).
fn whole_number(s: &Setting, value: Value, parse: bool) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(n),
        Value::Str(t) if parse => t
            .trim()
            .parse()
            .map_err(|_| Error::invalid(s.name, format!("{t:?} is not a whole number"))),
        other => Err(wrong(s, "an integer", &other)),
    }
}

/// Unsigned fields: a number the type cannot hold is an error (there is no nearest one that is surely
/// invalid: 0 is a valid port).
macro_rules! unsigned {
    ($($t:ty),+) => {$(
        impl FromValue for $t {
            const KIND: Kind = Kind::Integer;
            fn from_value(s: &Setting, value: Value, parse: bool) -> Result<$t> {
                let n = whole_number(s, value, parse)?;
                <$t>::try_from(n).map_err(|_| {
                    let reason = if n < 0 {
                        format!("must be ≥ 0, got {n}")
                    } else {
                        format!("must be at most {}, got {n}", <$t>::MAX)
                    };
                    Error::invalid(s.name, reason)
                })
            }
        }
    )+};
}
unsigned!(u16, u32, usize);

impl FromValue for Duration {
    const KIND: Kind = Kind::Duration;
    /// Seconds (an integer or a float), or on the CLI `30s`, `500ms`, `2m`. Negative seconds and NaN are
    /// errors; seconds beyond what a `Duration` holds (infinity) become `Duration::MAX`, which `validate`
    /// rejects.
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Duration> {
        let secs = match value {
            Value::Int(n) => n as f64,
            Value::Float(f) => f,
            Value::Str(t) if parse => {
                return parse_duration(&t).map_err(|reason| Error::invalid(s.name, reason))
            }
            other => return Err(wrong(s, "a number of seconds", &other)),
        };
        if secs.is_nan() {
            return Err(Error::invalid(s.name, "is not a number".to_string()));
        }
        // Negative is no nearest duration: for a delay, 0 is valid and would hide the mistake.
        if secs < 0.0 {
            return Err(Error::invalid(
                s.name,
                format!("must not be negative, got {secs}"),
            ));
        }
        if secs == 0.0 {
            return Ok(Duration::ZERO);
        }
        Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
    }
}

/// An optional text (`admin`): off unless given.
impl FromValue for Option<String> {
    const KIND: Kind = Kind::Text;
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Option<String>> {
        String::from_value(s, value, parse).map(Some)
    }
}

/// An optional duration (`idle_timeout`): off unless given.
impl FromValue for Option<Duration> {
    const KIND: Kind = Kind::Duration;
    fn from_value(s: &Setting, value: Value, parse: bool) -> Result<Option<Duration>> {
        Duration::from_value(s, value, parse).map(Some)
    }
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
    fn each_default_as_shown_is_the_default() {
        let defaults = cli(&[]).unwrap();
        for s in SETTINGS {
            let value = match (s.kind, s.default) {
                // Phrases, and "off" for an optional duration (no value a host can give means "none").
                (_, "none: built-in workers") | (Kind::Duration | Kind::Text, "off") => continue,
                (Kind::Flag, shown) => Value::Bool(shown == "on"),
                (_, shown) => Value::Str(shown.to_string()),
            };
            let mut set = Config::from_settings(Host::Cli, [(s.name, value)]).unwrap();
            // `--workers auto` asks for the default: nothing to agree with passed sockets.
            let named: &[&str] = if s.default == "auto" { &[] } else { &[s.name] };
            assert_eq!(set.given, named);
            set.given.clear();
            assert_eq!(set, defaults, "{}: shown as {:?}", s.name, s.default);
        }
        assert_eq!(defaults.workers, crate::config::default_workers());
        assert!(defaults.idle_timeout.is_none() && defaults.stall_restart_after.is_none());
    }

    #[test]
    fn conversion_and_ranges_are_apart() {
        // A number the field cannot hold is the conversion's error; a range, validate's, once.
        let e = cli(&[("port", "70000")]).unwrap_err().to_string();
        assert_eq!(e, "invalid --port: must be at most 65535, got 70000");
        let e = cli(&[("workers", "0")]).unwrap_err().to_string();
        assert_eq!(e, "invalid --workers: must be at least 1, got 0");
        let e = Config::from_settings(Host::Python, [("drain_timeout", Value::Float(0.0))]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "invalid drain_timeout=: must be more than 0 seconds"
        );
        // A delay may be 0, so a negative one is not quietly taken as 0.
        let e = Config::from_settings(Host::Ruby, [("drain_delay", Value::Float(-1.0))]);
        assert_eq!(
            e.unwrap_err().to_string(),
            "invalid drain_delay: must not be negative, got -1"
        );
        let c = Config::from_settings(Host::Python, [("drain_delay", Value::Int(0))]).unwrap();
        assert!(c.drain_delay.is_zero());
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
