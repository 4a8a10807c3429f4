//! The kinds of worker, behind one interface ([`Kind`]), chosen once when the supervisor starts
//! ([`choose`]). Nothing else in the supervisor asks which kind its workers are: it asks the kind.
//!
//! | | built-in | function | command |
//! |---|---|---|---|
//! | spawn | fork, the engine's mio loop | fork through the host interpreter, the host's function | fork + exec, listener as fd 3 |
//! | ready | `READY=1` when its loop runs | `READY=1` at its first accept (or `ready()`) | `READY=1` on `NOTIFY_SOCKET`, or alive for `ready_delay` |
//! | ask to stop | drain pipe | drain pipe | `stop_signal` to its process group |
//! | kill after | `drain_timeout` + grace (it bounds its own drain) | `drain_timeout` | `drain_timeout` (SIGKILL to its process group) |
//!
//! To add a kind: implement [`Kind`], and pick it in [`choose`] (or, for a kind the host brings, in a
//! constructor like [`function`]).

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;

use super::command::Prepared;
use super::process::{child_main, udp_child_main};
use super::{Bound, KILL_GRACE};
use crate::config::{Config, Protocol, Ready};
use crate::drain;
use crate::error::{Error, Result};
use crate::function::FunctionHost;
use crate::stats::WorkerKind;

/// What a kind needs to start one worker.
pub(super) struct Spawn<'a> {
    /// The seat (listener) index.
    pub(super) index: usize,
    /// The listener's fd in the supervisor (the worker gets its own copy).
    pub(super) listener: RawFd,
    /// The worker's slot for its counters in the stats area.
    pub(super) counters: usize,
    pub(super) server: &'a Bound,
    /// Where the worker says `READY=1`.
    pub(super) notify: &'a Path,
}

/// How to ask a started worker to stop.
pub(super) enum Stop {
    /// A byte on its drain pipe (built-in and function workers).
    Pipe(drain::Sender),
    /// A signal (command workers: programs that know nothing of the engine).
    Signal(nix::sys::signal::Signal),
}

/// A started worker.
pub(super) struct Spawned {
    pub(super) pid: Pid,
    pub(super) stop: Stop,
    /// It leads a process group of its own, which holds whatever it forks: signals go to the group
    /// (see `pgroup`).
    pub(super) group: bool,
}

/// One kind of worker: how to start it, when it is ready, how long it may take to stop.
pub(super) trait Kind: Send {
    /// What `status` and the stats call it.
    fn tag(&self) -> WorkerKind;
    /// `status`'s mode: `echo`, `once`, `hello`, `function` or `command`.
    fn mode(&self) -> String;
    /// For the start log line: `mode echo`, `function workers`, `command [...], ready delay`.
    fn describe(&self) -> String;
    /// For a worker's start log line: what runs (empty for built-in workers).
    fn detail(&self) -> String;
    /// Starts a worker on a listener.
    fn spawn(&self, s: &Spawn<'_>) -> Result<Spawned>;
    /// Ready without saying `READY=1` once alive this long (command workers under `--ready delay`).
    fn ready_after(&self) -> Option<Duration>;
    /// How long a worker asked to stop may take before it gets SIGKILL.
    fn kill_after(&self) -> Duration;
    /// Whether a clean exit within a second of starting is a crash (a function that returns at once
    /// would otherwise be forked again and again).
    fn quick_clean_exit_is_a_crash(&self) -> bool {
        false
    }
    /// Whether a reload's new worker gets a socket of its own in the group rather than share the old
    /// worker's (which it could disturb: see `seat`'s generations).
    fn own_sockets(&self) -> bool {
        false
    }
    /// Whether workers use their listening sockets in blocking mode (command workers: programs expect
    /// what socket activation passes). `O_NONBLOCK` belongs to the socket, so a successor that takes the
    /// sockets over must agree.
    fn blocking(&self) -> bool {
        false
    }
    /// Why stalls cannot be judged for this kind, when they cannot (UDP: no accept queue).
    fn unsteerable(&self) -> Option<&'static str> {
        None
    }
}

/// Why no kind steers over UDP.
const UDP_UNSTEERABLE: &str =
    "UDP sockets have no accept queue whose stalls could be told from busy ones";

/// The kind `config` asks for: command workers when it names a program, else built-in ones.
pub(super) fn choose(config: &Config) -> Box<dyn Kind> {
    if config.command.is_empty() && config.protocol == Protocol::Udp {
        Box::new(Datagram {
            mode: config.mode,
            drain_timeout: config.drain_timeout,
        })
    } else if config.command.is_empty() {
        Box::new(Builtin {
            mode: config.mode,
            drain_timeout: config.drain_timeout,
        })
    } else {
        Box::new(Command {
            command: config.command.clone(),
            stop: config.stop_signal,
            ready: config.ready,
            ready_delay: config.ready_delay,
            drain_timeout: config.drain_timeout,
            udp: config.protocol == Protocol::Udp,
        })
    }
}

/// Function workers running the host's `host`, for `config`.
///
/// # Errors
/// `config` asks for command workers: one or the other.
pub(super) fn function(host: Arc<dyn FunctionHost>, config: &Config) -> Result<Box<dyn Kind>> {
    if choose(config).blocking() {
        return Err(Error::invalid(
            "command",
            "cannot be combined with a worker function: give one or the other",
        ));
    }
    Ok(Box::new(Function {
        host,
        drain_timeout: config.drain_timeout,
        udp: config.protocol == Protocol::Udp,
    }))
}

/// The engine's own loop (echo, once, hello), forked.
struct Builtin {
    mode: crate::config::Mode,
    drain_timeout: Duration,
}

impl Kind for Builtin {
    fn tag(&self) -> WorkerKind {
        WorkerKind::Builtin
    }
    fn mode(&self) -> String {
        self.mode.to_string()
    }
    fn describe(&self) -> String {
        format!("mode {}", self.mode)
    }
    fn detail(&self) -> String {
        String::new()
    }
    fn spawn(&self, s: &Spawn<'_>) -> Result<Spawned> {
        fork_builtin(s, child_main)
    }
    fn ready_after(&self) -> Option<Duration> {
        None
    }
    fn kill_after(&self) -> Duration {
        // It bounds its own drain by drain_timeout; SIGKILL is for one that hangs.
        self.drain_timeout.saturating_add(KILL_GRACE)
    }
}

/// The engine's UDP loop (echo, hello), forked: one socket of the group per worker.
struct Datagram {
    mode: crate::config::Mode,
    drain_timeout: Duration,
}

impl Kind for Datagram {
    fn tag(&self) -> WorkerKind {
        WorkerKind::Builtin
    }
    fn mode(&self) -> String {
        format!("udp {}", self.mode)
    }
    fn describe(&self) -> String {
        format!("udp, mode {}", self.mode)
    }
    fn detail(&self) -> String {
        " (udp)".to_string()
    }
    fn spawn(&self, s: &Spawn<'_>) -> Result<Spawned> {
        fork_builtin(s, udp_child_main)
    }
    fn ready_after(&self) -> Option<Duration> {
        None
    }
    fn kill_after(&self) -> Duration {
        self.drain_timeout.saturating_add(KILL_GRACE)
    }
    fn own_sockets(&self) -> bool {
        // A socket shared with the old worker would do for stateless replies, but a new socket lets the
        // old one leave the group's selection, be read empty and only then close: each worker keeps the
        // datagrams it was sent, and the old one's exit says its socket has drained.
        true
    }
    fn unsteerable(&self) -> Option<&'static str> {
        Some(UDP_UNSTEERABLE)
    }
}

/// The host's own function (a Python function, a Ruby block), forked through the host.
struct Function {
    host: Arc<dyn FunctionHost>,
    drain_timeout: Duration,
    /// Its listener is a UDP socket (`for data, addr in listener`).
    udp: bool,
}

impl Kind for Function {
    fn tag(&self) -> WorkerKind {
        WorkerKind::Function
    }
    fn mode(&self) -> String {
        if self.udp { "udp function" } else { "function" }.to_string()
    }
    fn describe(&self) -> String {
        if self.udp {
            "udp, function workers"
        } else {
            "function workers"
        }
        .to_string()
    }
    fn detail(&self) -> String {
        " (function)".to_string()
    }
    fn spawn(&self, s: &Spawn<'_>) -> Result<Spawned> {
        let (pid, tx) = super::function::spawn(&self.host, s)?;
        Ok(Spawned {
            pid,
            stop: Stop::Pipe(tx),
            group: false,
        })
    }
    fn ready_after(&self) -> Option<Duration> {
        None
    }
    fn kill_after(&self) -> Duration {
        self.drain_timeout
    }
    fn quick_clean_exit_is_a_crash(&self) -> bool {
        true
    }
    fn own_sockets(&self) -> bool {
        // Over UDP, as for built-in workers: the old socket is read empty before it closes.
        self.udp
    }
    fn unsteerable(&self) -> Option<&'static str> {
        self.udp.then_some(UDP_UNSTEERABLE)
    }
}

/// A program exec'd with its listener as fd 3 (socket activation).
struct Command {
    command: Vec<String>,
    stop: nix::sys::signal::Signal,
    ready: Ready,
    ready_delay: Duration,
    drain_timeout: Duration,
    /// Its fd 3 is a UDP socket.
    udp: bool,
}

impl Kind for Command {
    fn tag(&self) -> WorkerKind {
        WorkerKind::Command
    }
    fn mode(&self) -> String {
        "command".to_string()
    }
    fn describe(&self) -> String {
        format!("command {:?}, ready {}", self.command, self.ready.as_str())
    }
    fn detail(&self) -> String {
        format!(" (fd 3 in the program), command {:?}", self.command)
    }
    fn spawn(&self, s: &Spawn<'_>) -> Result<Spawned> {
        let prepared = Prepared::new(&self.command, s.index, s.server.addr.port(), s.notify)?;
        let pid = prepared.spawn(s.listener, self.stop)?;
        // exec_child made it the leader of a group of its own before exec (and spawn returns after exec).
        Ok(Spawned {
            pid,
            stop: Stop::Signal(self.stop),
            group: true,
        })
    }
    fn ready_after(&self) -> Option<Duration> {
        (self.ready == Ready::Delay).then_some(self.ready_delay)
    }
    fn blocking(&self) -> bool {
        true
    }
    fn own_sockets(&self) -> bool {
        // A program may set O_NONBLOCK (or clear it) on fd 3, which would change it for the worker it
        // replaces: they must not share an open file description.
        true
    }
    fn kill_after(&self) -> Duration {
        self.drain_timeout
    }
    fn unsteerable(&self) -> Option<&'static str> {
        self.udp.then_some(UDP_UNSTEERABLE)
    }
}

/// Forks a built-in worker whose child runs `main` (it leaves with `_exit`, never returning here); the
/// parent keeps the drain pipe's sending end as the worker's stop.
fn fork_builtin(s: &Spawn<'_>, main: fn(&Spawn<'_>, drain::Receiver) -> !) -> Result<Spawned> {
    let (tx, rx) = drain::pipe()?;
    // SAFETY: the child runs only Rust code of this crate and leaves with _exit (see child_main).
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Error::io(format!("fork worker {}", s.index), e.into())),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(tx);
            main(s, rx)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Spawned {
            pid: child,
            stop: Stop::Pipe(tx),
            group: false,
        }),
    }
}
