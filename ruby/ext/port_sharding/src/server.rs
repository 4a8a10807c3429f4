//! `PortSharding::Server`: a server that runs on a Rust thread of this process, so Ruby keeps going.
//!
//! `new` binds (connections queue from then on), `start` forks the workers and returns once they all
//! serve, `stop` drains and waits. The Mutex is never held while the GVL is released: a Ruby thread
//! blocked on it while holding the GVL would deadlock with us waiting to get the GVL back.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Symbol, Value};
use port_sharding::{Handle, Report, Server, StopReason};

use crate::errors::{error, from_panic, to_ruby};
use crate::nogvl::{nogvl, Outcome};
use crate::{convert, options};

/// How long one GVL-free wait lasts before Ruby gets a chance to raise a pending interrupt.
const SLICE: Duration = Duration::from_millis(100);

type Run = JoinHandle<port_sharding::Result<Report>>;

enum State {
    /// Bound, workers not started.
    Bound(Box<Server>),
    /// The supervisor runs on this thread.
    Running(Run),
    /// A `stop`/`wait` is waiting for the thread (it took the JoinHandle out).
    Joining,
    /// Done.
    Stopped,
}

#[magnus::wrap(class = "PortSharding::Server", free_immediately, size)]
struct RbServer {
    state: Mutex<State>,
    handle: Handle,
    addr: SocketAddr,
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Server", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("_bind", function!(RbServer::bind, 1))?;
    class.define_method("port", method!(RbServer::port, 0))?;
    class.define_method("host", method!(RbServer::host, 0))?;
    class.define_method("_start", method!(RbServer::start, 1))?;
    class.define_method("_finish", method!(RbServer::finish, 2))?;
    class.define_method("stats", method!(RbServer::stats, 0))?;
    class.define_method("running?", method!(RbServer::is_running, 0))?;
    Ok(())
}

impl RbServer {
    fn bind(ruby: &Ruby, opts: RHash) -> Result<RbServer, Error> {
        let config = options::config(ruby, opts)?; // handle_signals: false — not the main thread
        let server = Server::bind(config).map_err(|e| to_ruby(ruby, e))?;
        Ok(RbServer {
            handle: server.handle(),
            addr: server.local_addr(),
            state: Mutex::new(State::Bound(Box::new(server))),
        })
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_running(&self) -> bool {
        matches!(*self.lock(), State::Running(_) | State::Joining) && !self.handle.is_stopped()
    }

    /// Forks the workers on a new thread and waits (GVL released, in slices) until all serve.
    fn start(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<(), Error> {
        // Taken in its own statement: a guard in a `match` scrutinee would live through the arms.
        let taken = std::mem::replace(&mut *rb_self.lock(), State::Joining);
        let server = match taken {
            State::Bound(server) => server,
            other => {
                *rb_self.lock() = other;
                return Err(error(
                    ruby,
                    "Error",
                    "this server was already started".to_string(),
                ));
            }
        };
        let thread = std::thread::Builder::new()
            .name(format!("port-sharding {}", rb_self.addr))
            .spawn(move || server.run())
            .map_err(|e| {
                *rb_self.lock() = State::Stopped; // the closure, and the server in it, are dropped
                to_ruby(ruby, port_sharding::Error::io("start the server thread", e))
            })?;
        *rb_self.lock() = State::Running(thread);
        let limit = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::MAX);
        let until = Instant::now().checked_add(limit);
        loop {
            let handle = rb_self.handle.clone();
            let ready = match nogvl(move || handle.wait_ready(SLICE), || {}) {
                Outcome::Done(ready) => ready,
                Outcome::NotRun => false,
                Outcome::Panicked(what) => return Err(from_panic(ruby, &what)),
            };
            if ready {
                return Ok(());
            }
            if rb_self.handle.is_stopped() {
                // It failed to start (or was stopped meanwhile): raise what `run` returned.
                return Self::finish(ruby, rb_self, false, None).map(|_| ());
            }
            if let Err(e) = ruby.thread_check_ints() {
                rb_self.handle.shutdown(); // an interrupted start leaves nothing serving
                return Err(e);
            }
            if until.is_some_and(|t| Instant::now() >= t) {
                rb_self.handle.shutdown();
                let _ = Self::finish(ruby, rb_self, false, None);
                return Err(error(
                    ruby,
                    "Error",
                    format!("the workers were not serving after {timeout} s"),
                ));
            }
        }
    }

    /// `stop` (shutdown = true) or `wait`: waits until `run` returns, with the GVL released in slices so
    /// Ctrl-C and `Thread#raise` still work; `nil` when `timeout` (seconds) passed first.
    fn finish(
        ruby: &Ruby,
        rb_self: &Self,
        shutdown: bool,
        timeout: Option<f64>,
    ) -> Result<Option<Symbol>, Error> {
        if shutdown {
            rb_self.handle.shutdown();
        }
        let taken = std::mem::replace(&mut *rb_self.lock(), State::Joining);
        let thread = match taken {
            State::Running(thread) => thread,
            // Never started: closing the listeners is all a stop needs; a wait has nothing to wait for.
            State::Bound(server) => {
                *rb_self.lock() = if shutdown {
                    State::Stopped
                } else {
                    State::Bound(server)
                };
                return Ok(None);
            }
            other => {
                *rb_self.lock() = other;
                return Ok(None);
            }
        };
        let until = timeout
            .map(|t| Instant::now() + Duration::try_from_secs_f64(t).unwrap_or(Duration::ZERO));
        while !thread.is_finished() {
            let _ = nogvl(
                || {
                    let end = Instant::now() + SLICE;
                    while !thread.is_finished() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                },
                || {},
            );
            let interrupted = ruby.thread_check_ints();
            if interrupted.is_err() || until.is_some_and(|t| Instant::now() >= t) {
                *rb_self.lock() = State::Running(thread); // still running: a later stop/wait joins it
                return interrupted.map(|_| None);
            }
        }
        *rb_self.lock() = State::Stopped;
        let report = match thread.join() {
            Ok(result) => result.map_err(|e| to_ruby(ruby, e))?,
            Err(payload) => {
                return Err(from_panic(
                    ruby,
                    &crate::nogvl::panic_message(payload.as_ref()),
                ))
            }
        };
        Ok(Some(ruby.to_symbol(reason_name(report.reason))))
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        convert::to_ruby(ruby, &rb_self.handle.stats())
    }
}

impl Drop for RbServer {
    /// A Server garbage-collected (or left at exit) while running starts its drain; its workers also drain
    /// by themselves when this process exits.
    fn drop(&mut self) {
        if !self.handle.is_stopped() {
            self.handle.shutdown();
        }
    }
}

fn reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Interrupt => "interrupt",
        StopReason::Terminate => "terminate",
        StopReason::Shutdown => "shutdown",
        StopReason::Stop => "stop",
        StopReason::TakenOver => "taken_over",
        #[allow(unreachable_patterns)]
        _ => "stopped",
    }
}
