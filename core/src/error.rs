//! One error type for the whole crate; the Python and Ruby bindings map each variant to one exception class.

use std::io;
use std::net::SocketAddr;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range, unknown or unparsable. Python: `ConfigError` (a `ValueError`); Ruby:
    /// `ConfigError` (an `ArgumentError`).
    #[error("invalid {} {reason}", label(shown))]
    InvalidArgument {
        /// The setting's name, as [`Config`](crate::Config) spells it (`drain_timeout`).
        name: &'static str,
        /// The setting as the caller wrote it: `--drain-timeout` (CLI), `drain_timeout=` (Python),
        /// `drain_timeout:` (Ruby), `drain_timeout` (Rust). See [`Host::spell`](crate::Host::spell).
        shown: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting was given a value of the wrong type. Python: `SettingTypeError` (a `ConfigError` and a
    /// `TypeError`); Ruby: `SettingTypeError` (a `ConfigError`).
    #[error("invalid {} expected {expected}, got {got}", label(shown))]
    WrongType {
        /// The setting's name, as [`Config`](crate::Config) spells it.
        name: &'static str,
        /// The setting as the caller wrote it (see `InvalidArgument`).
        shown: String,
        /// What it takes, e.g. `an integer`.
        expected: &'static str,
        /// What it was given, e.g. `a string ("80")`.
        got: String,
    },
    /// The host is not an address this machine can bind.
    #[error("invalid address {host:?}: {reason}")]
    InvalidAddress {
        /// The host as given.
        host: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// `bind` failed with `EADDRINUSE`.
    #[error(
        "{addr} is already in use ({source}): another process holds it without SO_REUSEPORT, \
         or it belongs to another user (the kernel only groups sockets of one uid), \
         or it was bound with different options (address, IPV6_V6ONLY)"
    )]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The OS error (errno `EADDRINUSE`).
        source: io::Error,
    },
    /// `bind` failed with `EACCES`.
    #[error("permission denied binding {addr} ({source}): ports below 1024 need root or CAP_NET_BIND_SERVICE")]
    PermissionDenied {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The OS error (errno `EACCES`).
        source: io::Error,
    },
    /// No live server answers on the control socket for this host and port.
    #[error("no port-sharding server is running on {what} (no live control socket in {dir})")]
    NotRunning {
        /// `host:port` as asked.
        what: String,
        /// Where control sockets live.
        dir: String,
    },
    /// A takeover could not complete; the old server keeps serving.
    #[error("takeover failed: {0}")]
    Takeover(String),
    /// The control socket answered something unexpected.
    #[error("control socket: {0}")]
    Control(String),
    /// A server was asked for something its state does not allow: started twice, waited for before it
    /// started. Python: `InvalidStateError` (a `RuntimeError`); Ruby: `InvalidStateError`.
    #[error("{0}")]
    InvalidState(String),
    /// A bug: the engine panicked. Caught before it could cross into a host interpreter.
    #[error("internal error in the port-sharding engine (please report it): {0}")]
    Internal(String),
    /// Any other OS error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `fork worker 2`.
        context: String,
        /// The OS error; its errno is kept.
        source: io::Error,
    },
}

/// `shown` followed by a colon, unless it already ends with one (Ruby's `drain_timeout:`).
fn label(shown: &str) -> String {
    if shown.ends_with(':') {
        shown.to_string()
    } else {
        format!("{shown}:")
    }
}

impl Error {
    /// The OS errno behind this error, when there is one (the bindings raise `OSError`/`Errno::*` with it).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::AddrInUse { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// A setting that is out of range, named as Rust spells it (a host re-spells it with [`Error::spelled`]).
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            name,
            shown: name.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error with a setting named as `host` writes it (`--drain-timeout`, `drain_timeout=`, …);
    /// one already named by a host keeps its name.
    pub fn spelled(self, host: crate::Host) -> Error {
        match self {
            Error::InvalidArgument {
                ref name,
                ref shown,
                ..
            }
            | Error::WrongType {
                ref name,
                ref shown,
                ..
            } if shown != name => self,
            Error::InvalidArgument { name, reason, .. } => Error::InvalidArgument {
                name,
                shown: host.spell(name),
                reason,
            },
            Error::WrongType {
                name,
                expected,
                got,
                ..
            } => Error::WrongType {
                name,
                shown: host.spell(name),
                expected,
                got,
            },
            other => other,
        }
    }

    /// The error a caught panic becomes.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Error {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Error::Internal(what)
    }

    /// Wraps an OS error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Errors are cloned when several waiters ask how one background run ended. The OS error keeps its errno
/// (and kind); its message is rebuilt from the errno, which is what `io::Error` shows anyway.
impl Clone for Error {
    fn clone(&self) -> Error {
        fn io(e: &io::Error) -> io::Error {
            match e.raw_os_error() {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::new(e.kind(), e.to_string()),
            }
        }
        match self {
            Error::InvalidArgument {
                name,
                shown,
                reason,
            } => Error::InvalidArgument {
                name,
                shown: shown.clone(),
                reason: reason.clone(),
            },
            Error::WrongType {
                name,
                shown,
                expected,
                got,
            } => Error::WrongType {
                name,
                shown: shown.clone(),
                expected,
                got: got.clone(),
            },
            Error::InvalidAddress { host, reason } => Error::InvalidAddress {
                host: host.clone(),
                reason: reason.clone(),
            },
            Error::AddrInUse { addr, source } => Error::AddrInUse {
                addr: *addr,
                source: io(source),
            },
            Error::PermissionDenied { addr, source } => Error::PermissionDenied {
                addr: *addr,
                source: io(source),
            },
            Error::NotRunning { what, dir } => Error::NotRunning {
                what: what.clone(),
                dir: dir.clone(),
            },
            Error::Takeover(m) => Error::Takeover(m.clone()),
            Error::Control(m) => Error::Control(m.clone()),
            Error::InvalidState(m) => Error::InvalidState(m.clone()),
            Error::Internal(m) => Error::Internal(m.clone()),
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: io(source),
            },
        }
    }
}
