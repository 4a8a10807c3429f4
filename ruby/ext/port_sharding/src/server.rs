//! `PortSharding::Server`: the engine's background runner ([`Running`]) as a Ruby object.
//!
//! `new` binds (connections queue from then on), `start` forks the workers on the engine's own thread
//! and returns once they all serve, `stop` drains and waits, `wait` waits. Every wait releases the GVL
//! in slices and lets Ruby raise pending interrupts between them. The Mutex is never held while the GVL
//! is released: a Ruby thread blocked on it while holding the GVL would deadlock with us.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use magnus::{function, method, prelude::*, Error, RHash, RModule, Ruby, Symbol, Value};
use port_sharding::{Handle, Running, Server};

use crate::errors::{raise, to_ruby};
use crate::module::json;
use crate::nogvl::nogvl;
use crate::settings;

/// How long one GVL-free wait lasts before Ruby gets a chance to raise a pending interrupt.
const SLICE: Duration = Duration::from_millis(100);

enum State {
    /// Bound, workers not started.
    Bound(Box<Server>),
    /// Started; shared so a waiting thread can hold it without the lock.
    Started(Arc<Running>),
    /// Stopped, and a `stop`/`wait` has returned why.
    Done,
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
    class.define_singleton_method("_bind", function!(RbServer::bind, 2))?;
    class.define_method("_run_here", method!(RbServer::run_here, 0))?;
    class.define_method("_wait_ready", method!(RbServer::wait_ready, 1))?;
    class.define_method("_shutdown", method!(RbServer::shutdown, 0))?;
    class.define_method("port", method!(RbServer::port, 0))?;
    class.define_method("host", method!(RbServer::host, 0))?;
    class.define_method("phase", method!(RbServer::phase, 0))?;
    class.define_method("_stats", method!(RbServer::stats, 0))?;
    class.define_method("running?", method!(RbServer::is_running, 0))?;
    class.define_method("_start", method!(RbServer::start, 1))?;
    class.define_method("_stop", method!(RbServer::stop, 1))?;
    class.define_method("_wait", method!(RbServer::wait, 1))?;
    Ok(())
}

/// When a wait of `timeout` started now ends; `None`: never.
fn deadline(ruby: &Ruby, timeout: Option<f64>) -> Result<Option<Instant>, Error> {
    Ok(settings::timeout(ruby, timeout)?.and_then(|t| Instant::now().checked_add(t)))
}

/// The next slice of a wait that ends at `until` (zero once it has passed).
fn slice(until: Option<Instant>) -> Duration {
    until.map_or(SLICE, |t| {
        t.saturating_duration_since(Instant::now()).min(SLICE)
    })
}

/// Whether a wait that ends at `until` is over.
fn passed(until: Option<Instant>) -> bool {
    until.is_some_and(|t| Instant::now() >= t)
}

impl RbServer {
    /// `worker`: a block every worker runs; such a server runs on a Ruby `Thread` (`_run_here`), so
    /// that its supervisor can take the GVL to fork through Ruby.
    fn bind(ruby: &Ruby, given: RHash, worker: Option<Value>) -> Result<RbServer, Error> {
        let mut server =
            Server::bind(settings::config(ruby, given)?).map_err(|e| to_ruby(ruby, e))?;
        if let Some(block) = worker {
            server
                .set_function(crate::function::RbHost::shared(block))
                .map_err(|e| to_ruby(ruby, e))?;
        }
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

    fn phase(&self) -> &'static str {
        self.handle.phase().as_str()
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        json(ruby, &rb_self.handle.stats())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The background run, if started and not yet reported.
    fn running(&self) -> Option<Arc<Running>> {
        match &*self.lock() {
            State::Started(running) => Some(running.clone()),
            _ => None,
        }
    }

    fn is_running(&self) -> bool {
        self.running().is_some_and(|r| !r.is_finished())
    }

    /// Forks the workers on the engine's thread and waits until all serve, at most `timeout` seconds.
    fn start(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<(), Error> {
        let until = deadline(ruby, timeout)?;
        // Taken in its own statement: a guard in a `match` scrutinee would live through the arms.
        let taken = std::mem::replace(&mut *rb_self.lock(), State::Done);
        let server = match taken {
            State::Bound(server) => server,
            other => {
                *rb_self.lock() = other;
                let message = format!(
                    "the server on {} was already started or stopped",
                    rb_self.addr
                );
                return Err(raise(ruby, "Error", (message,)));
            }
        };
        let running = Arc::new(server.start().map_err(|e| to_ruby(ruby, e))?);
        *rb_self.lock() = State::Started(running.clone());
        loop {
            match nogvl(ruby, || running.wait_ready(Some(slice(until))), || {})? {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    *rb_self.lock() = State::Done;
                    return Err(to_ruby(ruby, e));
                }
            }
            if let Err(e) = ruby.thread_check_ints() {
                running.handle().shutdown(); // an interrupted start leaves nothing serving
                return Err(e);
            }
            if passed(until) {
                Self::stop(ruby, rb_self, None)?;
                let message = format!("the workers on {} were not serving in time", rb_self.addr);
                return Err(raise(ruby, "Error", (message,)));
            }
        }
    }

    /// Runs the server on this (Ruby) thread until drained, GVL released; Ruby's interrupts start the
    /// drain. Returns why it stopped. `Server#start` calls it on a `Thread` for function workers.
    fn run_here(ruby: &Ruby, rb_self: &Self) -> Result<Symbol, Error> {
        let taken = std::mem::replace(&mut *rb_self.lock(), State::Done);
        let State::Bound(server) = taken else {
            *rb_self.lock() = taken;
            let message = format!(
                "the server on {} was already started or stopped",
                rb_self.addr
            );
            return Err(raise(ruby, "Error", (message,)));
        };
        let mut server = Some(server);
        let handle = rb_self.handle.clone();
        let result = nogvl(
            ruby,
            || server.take().map(|s| s.run()),
            || handle.shutdown(),
        )?;
        let report = result
            .unwrap_or_else(|| {
                Err(port_sharding::Error::Internal(
                    "the server ran twice".into(),
                ))
            })
            .map_err(|e| to_ruby(ruby, e))?;
        Ok(ruby.to_symbol(report.reason.as_str()))
    }

    /// Waits at most `seconds` for every worker to serve (GVL released); false when they do not by then,
    /// or the server began to drain first.
    fn wait_ready(ruby: &Ruby, rb_self: &Self, seconds: f64) -> Result<bool, Error> {
        let slice = settings::timeout(ruby, Some(seconds))?;
        nogvl(ruby, || rb_self.handle.wait_ready(slice), || {})
    }

    /// Starts a drain and returns at once.
    fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Starts a drain (closes the listeners if never started), then waits as `wait` does.
    fn stop(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<Symbol>, Error> {
        rb_self.handle.shutdown();
        if matches!(*rb_self.lock(), State::Bound(_)) {
            *rb_self.lock() = State::Done; // dropping the bound server closes its listeners
        }
        Self::wait(ruby, rb_self, timeout)
    }

    /// Waits until the run has ended and returns why (`:stop`, `:taken_over`, …), or raises what it failed
    /// with; `nil` after `timeout` seconds, when never started, or when that was already reported.
    fn wait(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<Symbol>, Error> {
        let until = deadline(ruby, timeout)?;
        let Some(running) = rb_self.running() else {
            return Ok(None);
        };
        loop {
            if let Some(result) = nogvl(ruby, || running.wait(Some(slice(until))), || {})? {
                *rb_self.lock() = State::Done;
                let report = result.map_err(|e| to_ruby(ruby, e))?;
                return Ok(Some(ruby.to_symbol(report.reason.as_str())));
            }
            ruby.thread_check_ints()?;
            if passed(until) {
                return Ok(None);
            }
        }
    }
}
