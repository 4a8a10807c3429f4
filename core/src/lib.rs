//! Many processes serving one TCP or UDP port with `SO_REUSEPORT`: the kernel spreads connections (or flows) over them,
//! and a server can be restarted or upgraded without losing a connection.
//!
//! # Quick start
//!
//! ```no_run
//! use port_sharding::{Config, Server};
//!
//! // Echo on :1234 with one worker process per CPU; Ctrl-C or SIGTERM drains and returns.
//! let server = Server::bind(Config { port: 1234, ..Default::default() })?;
//! println!("listening on {}", server.local_addr());
//! let report = server.run()?;
//! println!("stopped: {:?}", report.reason);
//! # Ok::<(), port_sharding::Error>(())
//! ```
//!
//! Or in the background: [`Server::start`] runs it on a thread of its own and returns once every worker
//! serves; [`Server::stop`] drains it and returns the same [`Report`] that `run` would have (any thread may
//! [`Server::wait`] for it, too). A [`Handle`] stops it or reads its stats from anywhere.
//!
//! ```
//! use std::time::Duration;
//! use port_sharding::{Config, Server, StopReason};
//! let server = Server::bind(Config { host: "127.0.0.1".into(), port: 0, workers: 1, ..Default::default() })?;
//! server.start(Some(Duration::from_secs(10)))?;
//! let report = server.stop(None)?.expect("no time limit was given");
//! assert_eq!((report.reason, report.forced), (StopReason::Stop, false));
//! # Ok::<(), port_sharding::Error>(())
//! ```
//!
//! The Python and Ruby bindings drive this same lifecycle; they pass a callback that runs between slices
//! of every wait ([`Server::wait_with`]) to take their interpreter's lock back and check for signals.
//!
//! # Process model
//!
//! The calling process becomes the **supervisor**. [`Server::bind`] creates one reuseport listener per worker
//! *before* forking and keeps them all open; [`Server::run`] forks worker *i* to serve listener *i* with a
//! mio event loop. Because the supervisor holds every listener, a worker that dies loses nothing that was
//! queued: the kernel keeps a socket and its accept queue while any fd to it is open, and the replacement
//! worker is forked on the same listener. A worker runs Rust only, closes every inherited fd it does not
//! serve, and leaves with `_exit` — it never returns into a host interpreter (Python, Ruby).
//!
//! With [`Config::command`] set, each worker is instead that program, exec'd with its listener as fd 3 and
//! the systemd socket-activation environment (`LISTEN_FDS`, `LISTEN_PID`, `NOTIFY_SOCKET`): gunicorn, Puma
//! or your own loop on [`listen`] run unchanged. [`reload`] (or SIGHUP) replaces workers in place: a new one
//! beside the old on the same listener, and the old one stops once the new one is ready.
//!
//! With [`Server::set_function`], each worker instead runs the host's own code — a Python function, a Ruby
//! block — in a process the host forks through its interpreter's fork path ([`FunctionHost`]), with a
//! [`WorkerListener`] giving it ready, drain and accept as the engine defines them.
//!
//! With [`Config::protocol`] = [`Protocol::Udp`], every worker gets a bound UDP socket of the port's group
//! instead: built-in workers answer datagrams in `recvmmsg`/`sendmmsg` batches, command workers get the
//! socket as fd 3, function workers [`WorkerListener::receive`] datagrams. A reload gives each new worker a
//! socket of its own and closes an old one only once it has left selection and been read empty; where
//! `bpf()` is permitted an `SK_REUSEPORT` program keeps each flow on the worker that served it until the
//! flow is idle ([`Config::udp_flow_idle`]). No datagram is lost to a reload or a takeover.
//!
//! Per-worker counters live in a shared memory page ([`WorkerStats`]); a unix control socket answers
//! [`status`], [`stop`] and `takeover` (a successor receives the listening sockets with `SCM_RIGHTS`, so
//! nothing queued is reset during an upgrade).
//!
//! # Stalled workers
//!
//! The kernel's hash ignores load: it keeps queuing new connections on a worker that is stopped, in a long
//! pause or hung. The supervisor judges every worker each tick from what it already samples (its listener's
//! queue and the worker's `accepted` counter): *stalled* when connections are queued and none was accepted for
//! [`Config::stall_after`], *overloaded* when the queue passes half the backlog. While some are and others are
//! not, it attaches a classic BPF program to the port's reuseport group that hashes new connections onto the
//! healthy listeners only, and gives the group back to the kernel's hash when they recover
//! ([`Config::steering`]; `status` shows each worker's [`Health`]). Where other processes' sockets share the
//! group it stays off, since such a program would starve them. [`Config::stall_restart_after`] replaces a
//! worker stalled that long.
//!
//! # Signals
//!
//! | signal | effect |
//! |---|---|
//! | SIGINT, SIGTERM, SIGQUIT (first) | drain: workers stop accepting, accept what is queued, finish open connections, exit; SIGTERM and SIGQUIT after [`Config::drain_delay`] |
//! | SIGINT, SIGTERM, SIGQUIT (second) | stop now: workers are killed, open connections cut |
//! | SIGHUP | reload in place, one worker at a time (as [`reload`]); never fatal, as nginx users expect |
//! | SIGPIPE | never kills: the engine sends with `MSG_NOSIGNAL` and workers ignore it; a client that hung up is an error on that connection only |
//! | SIGKILL a worker | the supervisor forks a replacement on the same listener (crash loops back off) |
//!
//! Handlers are installed only while `run` runs on the main thread (see [`Config::handle_signals`]) and the
//! previous ones are restored afterwards. Workers ignore SIGINT: Ctrl-C reaches the whole process group, and
//! the supervisor alone decides when they drain. A worker whose supervisor dies drains and exits by itself.
//!
//! # Hosts that fork
//!
//! A child the host process forks (Python `os.fork` or `multiprocessing`, Ruby `fork`) inherits the
//! engine's listeners, drain pipes and control socket. It should call [`close_in_forked_child`] first
//! thing (the Python and Ruby bindings do, from their at-fork hooks): otherwise it keeps the listeners in
//! the port's reuseport group after the server stopped. Drains do not wait for such a child: the
//! supervisor tells each worker to drain with a byte on its pipe, not only by closing it.
//!
//! # Platform notes
//!
//! Linux ≥ 3.9 only. macOS and the BSDs have an `SO_REUSEPORT` that does not balance (the last socket bound
//! receives everything), so the crate refuses to build there (one `compile_error!` saying why). Closing a listener
//! resets the connections in its queue unless `net.ipv4.tcp_migrate_req=1`; the takeover path avoids it
//! without privileges. Sockets of different users never share a group.
//!
//! # Dependencies, and why
//!
//! - `mio`: the event loop (epoll) that tokio is built on, without a runtime to fork around.
//! - `socket2`: every socket option before `bind` (`SO_REUSEPORT`, `IPV6_V6ONLY`) with std's types after.
//! - `nix` (and `libc` where nix has no wrapper, e.g. `TCP_INFO`): safe fork, waitpid, sigaction, `SCM_RIGHTS`.
//! - `thiserror`: one typed [`Error`] enum with messages, no boxing.
//! - `serde`/`serde_json`: the control socket's one-line JSON protocol, readable by any language.
//!
//! Not `prometheus-client` for the admin endpoint's `/metrics`: its model is metrics registered once and
//! updated in place, while ours live in shared memory written by the workers, so it would only encode —
//! OpenMetrics, not the Prometheus text format — and it brings `parking_lot` and a proc-macro crate into
//! what the Python and Ruby extensions link. A dozen families and two escaping rules are written here
//! (`supervisor/metrics.rs`), and the tests parse them with Prometheus' own Python parser.

// SO_REUSEPORT balances connections on Linux only; elsewhere the engine would silently half-work.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "port-sharding needs Linux (>= 3.9): on macOS and the BSDs SO_REUSEPORT does not spread connections \
     over the listening sockets (the last one bound receives them all)"
);

mod buffer;
mod config;
mod conns;
mod control;
mod cpus;
mod datagram;
mod drain;
mod error;
mod fds;
mod function;
mod lifecycle;
mod listener;
mod log;
mod migrate;
mod notify;
mod reuseport;
mod server;
mod settings;
mod signals;
mod stats;
mod sticky;
mod supervisor;
mod worker;

pub use buffer::PageAligned;
pub use config::{
    default_workers, parse_duration, parse_signal, Config, Mode, Protocol, Ready, Signal,
    MAX_DURATION, MAX_WORKERS, SETTINGS,
};
pub use control::{
    control_dir, reload, status, stop, upgrade, PidNamespace, ReloadFailure, ReloadReport,
    Replaced, ServerStatus, SteeringState, SteeringStatus, UpgradeReport,
};
pub use drain::DRAIN_GRACE;
pub use error::{Error, Result};
pub use fds::close_in_forked_child;
pub use function::{Accept, FunctionHost, Receive, WorkerListener};
pub use lifecycle::{Phase, Report, StopReason};
pub use listener::{listen, resolve};
pub use log::set_quiet;
pub use server::{Handle, Job, Server, SLICE};
pub use settings::{setting, Host, Kind, Setting, Value};
pub use stats::{Health, Role, WorkerKind, WorkerProcess, WorkerStats};
pub use supervisor::{set_upgrade_command, SERVICE_ENV};

/// The version shared by the crate, the CLI, the Python package and the Ruby gem.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
