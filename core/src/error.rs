//! One error type for the whole crate; the Python and Ruby bindings map each variant to one exception class.

use std::io;
use std::net::SocketAddr;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range or unparsable. Python: `ConfigError` (a `ValueError`); Ruby: `ArgumentError`.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The parameter's name, as Config, the CLI, Python and Ruby spell it.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
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
    /// The operating system does not balance `SO_REUSEPORT` (macOS, the BSDs): refuse rather than half-work.
    #[error(
        "port sharding needs Linux: on {os} SO_REUSEPORT does not spread connections over the sockets \
         (the last one bound gets them all)"
    )]
    Unsupported {
        /// `std::env::consts::OS`.
        os: &'static str,
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
    /// Any other OS error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `fork worker 2`.
        context: String,
        /// The OS error; its errno is kept.
        source: io::Error,
    },
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

    /// Wraps an OS error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
