//! `PortSharding::Server`: the engine's [`port_sharding::Server`] as a Ruby object. The lifecycle is the
//! engine's (bound, then started, then done with a report, each once); this file releases the GVL around
//! each wait and, between slices, takes it back to let Ruby raise what interrupts the thread (Ctrl-C
//! trapped by Ruby, `Thread#raise`, `Timeout.timeout`, `Thread#kill`).
//!
//! A block server runs its supervisor on a Ruby `Thread` made here ([`port_sharding::Server::start_on`]),
//! so that it can take the GVL to fork each worker through Ruby; a plain one on the engine's own thread.

use std::sync::atomic::{AtomicBool, Ordering};

use magnus::value::BoxValue;
use magnus::{
    error::ErrorType, function, method, prelude::*, Error, Exception, RClass, RHash, RModule, Ruby,
    Value,
};
use port_sharding::{Job, Report, Server};

use crate::errors::to_ruby;
use crate::module::json;
use crate::nogvl::{nogvl, with_gvl};
use crate::settings;

#[magnus::wrap(class = "PortSharding::Server", free_immediately, size)]
struct RbServer {
    inner: Server,
    /// Its workers run a Ruby block: the supervisor must run on a Ruby thread.
    on_ruby_thread: bool,
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Server", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("_bind", function!(RbServer::bind, 2))?;
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

/// `PortSharding::Report.new(reason, forced, served, drain)`, `reason` a Symbol and `drain` in seconds.
pub fn report(ruby: &Ruby, r: Report) -> Result<Value, Error> {
    let class: RClass = ruby
        .class_object()
        .const_get::<_, RModule>("PortSharding")?
        .const_get("Report")?;
    let reason = ruby.to_symbol(r.reason.as_str());
    class.funcall("new", (reason, r.forced, r.served, r.drain.as_secs_f64()))
}

/// What ended a wait without a report: what Ruby raised between two slices, or the engine's error.
enum Stop {
    Ruby(Raised),
    Engine(port_sharding::Error),
}

impl From<port_sharding::Error> for Stop {
    fn from(e: port_sharding::Error) -> Stop {
        Stop::Engine(e)
    }
}

/// What Ruby raised, kept from the garbage collector while the GVL is released (a boxed exception is a
/// GC root; it is unboxed, and the box dropped, only once the GVL is back).
enum Raised {
    Exception(BoxValue<Exception>),
    /// `Thread#kill`, `throw`: a jump tag; or an error made in Rust, whose class is a constant.
    Other(Error),
}

impl Raised {
    /// Called with the GVL held.
    fn keep(e: Error) -> Raised {
        match e.error_type() {
            ErrorType::Exception(ex) => Raised::Exception(BoxValue::new(*ex)),
            _ => Raised::Other(e),
        }
    }

    /// Called with the GVL held.
    fn into_error(self) -> Error {
        match self {
            Raised::Exception(ex) => Error::from(*ex),
            Raised::Other(e) => e,
        }
    }
}

/// Calls `wait(between)`, one of the engine's waits, with the GVL released. `between` runs between its
/// slices: when Ruby wants to interrupt this thread (its unblocking function said so), it takes the GVL
/// back and lets Ruby raise; what Ruby raises ends the wait and is raised here. A pending interrupt that
/// raises nothing (a trap handler that returned) lets the wait go on.
fn interruptible<T>(
    ruby: &Ruby,
    wait: impl Fn(&mut dyn FnMut() -> Result<(), Stop>) -> Result<T, Stop>,
) -> Result<T, Error> {
    let interrupted = AtomicBool::new(false);
    let mut between = || -> Result<(), Stop> {
        if !interrupted.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let checked = with_gvl(|| ruby.thread_check_ints().map_err(Raised::keep));
        let checked = checked.unwrap_or_else(|_| {
            Err(Raised::Other(Error::new(
                ruby.exception_runtime_error(),
                "a panic while checking Ruby's interrupts",
            )))
        });
        checked.map_err(Stop::Ruby)
    };
    let result = nogvl(
        ruby,
        || wait(&mut between),
        || interrupted.store(true, Ordering::SeqCst),
    )?;
    result.map_err(|stop| match stop {
        Stop::Ruby(raised) => raised.into_error(),
        Stop::Engine(e) => to_ruby(ruby, e),
    })
}

/// The report as Ruby sees it, or nil.
fn maybe_report(ruby: &Ruby, r: Option<Report>) -> Result<Option<Value>, Error> {
    r.map(|r| report(ruby, r)).transpose()
}

impl RbServer {
    /// `worker`: a block every worker runs; such a server's supervisor runs on a Ruby `Thread`, so that it
    /// can take the GVL to fork through Ruby.
    fn bind(ruby: &Ruby, given: RHash, worker: Option<Value>) -> Result<RbServer, Error> {
        let mut inner =
            Server::bind(settings::config(ruby, given)?).map_err(|e| to_ruby(ruby, e))?;
        let on_ruby_thread = worker.is_some();
        if let Some(block) = worker {
            inner
                .set_function(crate::function::RbHost::shared(block))
                .map_err(|e| to_ruby(ruby, e))?;
        }
        Ok(RbServer {
            inner,
            on_ruby_thread,
        })
    }

    fn port(&self) -> u16 {
        self.inner.port()
    }

    fn host(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    fn phase(&self) -> &'static str {
        self.inner.phase().as_str()
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        json(ruby, &rb_self.inner.handle().stats())
    }

    fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Forks the workers and waits until all serve, at most `timeout` seconds; a start that does not get
    /// there is undone (stopped, or draining after an interrupt) and raises why.
    fn start(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<(), Error> {
        let timeout = settings::timeout(ruby, timeout)?;
        let server = &rb_self.inner;
        if !rb_self.on_ruby_thread {
            return interruptible(ruby, |between| server.start_with(timeout, between));
        }
        server
            .start_on(|job| {
                run_on_ruby_thread(ruby, job, server);
                Ok(())
            })
            .map_err(|e| to_ruby(ruby, e))?;
        interruptible(ruby, |between| server.wait_started_with(timeout, between))
    }

    /// Starts a drain (closes the listeners if never started) and waits until it is over, at most
    /// `timeout` seconds: the report, or nil when `timeout` passed first.
    fn stop(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<Value>, Error> {
        let timeout = settings::timeout(ruby, timeout)?;
        let stopped = interruptible(ruby, |between| rb_self.inner.stop_with(timeout, between))?;
        maybe_report(ruby, stopped)
    }

    /// Waits until the run has ended, at most `timeout` seconds: the report, or nil when `timeout` passed
    /// first; raises what the run failed with.
    fn wait(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<Value>, Error> {
        let timeout = settings::timeout(ruby, timeout)?;
        let waited = interruptible(ruby, |between| rb_self.inner.wait_with(timeout, between))?;
        maybe_report(ruby, waited)
    }
}

/// Runs `job` (a block server's supervisor) on a new Ruby `Thread`, without the GVL but able to take it
/// to fork. Whatever interrupts that thread (`Thread#kill`, the exit of the process) starts the drain.
/// The thread's own value is nil: waiters get the report from the engine.
fn run_on_ruby_thread(ruby: &Ruby, job: Job, server: &Server) {
    let handle = server.handle();
    let mut job = Some(job);
    ruby.thread_create_from_fn(move |ruby| {
        // Unrun (an interrupt before it began), the job ends the server as if stopped when dropped.
        nogvl(ruby, || job.take().map(Job::run), || handle.stop()).ok();
        ruby.qnil()
    });
}
