//! `port_sharding._port_sharding.Server`: a bound core server that runs on the calling thread (`run`, used
//! by `serve`) or on a Rust thread of its own (`start`), and stops through the core's `Handle`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use port_sharding::{Config, Error, Handle, Report, StopReason};
use pyo3::prelude::*;

use crate::errors::{from_panic, to_py};

/// What `Server::run` gives back, with a panic caught instead of unwinding into Python.
type Outcome = std::thread::Result<port_sharding::Result<Report>>;

/// How long the GIL is released at a time while waiting, so Ctrl-C is noticed between slices.
const SLICE: Duration = Duration::from_millis(100);

fn bad(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument { name, reason }
}

fn int<T: TryFrom<i64>>(name: &'static str, v: i64, range: &str) -> Result<T, Error> {
    T::try_from(v).map_err(|_| bad(name, format!("must be {range}, got {v}")))
}

fn seconds(name: &'static str, v: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        bad(
            name,
            format!("must be a number of seconds above 0, got {v}"),
        )
    })
}

/// Builds the core `Config` from Python's arguments; every range error names its parameter.
#[allow(clippy::too_many_arguments)]
fn config(
    port: i64,
    host: String,
    workers: Option<i64>,
    mode: &str,
    backlog: i64,
    drain_timeout: f64,
    max_connections: i64,
    idle_timeout: Option<f64>,
    takeover: bool,
    migrate: bool,
) -> Result<Config, Error> {
    Ok(Config {
        host,
        port: int("port", port, "between 0 and 65535")?,
        workers: match workers {
            Some(w) => int("workers", w, "at least 1")?,
            None => port_sharding::default_workers(),
        },
        mode: mode.parse()?,
        backlog: int("backlog", backlog, "at least 1")?,
        drain_timeout: seconds("drain_timeout", drain_timeout)?,
        max_connections: int("max_connections", max_connections, "at least 1")?,
        idle_timeout: idle_timeout
            .map(|t| seconds("idle_timeout", t))
            .transpose()?,
        runtime: "python".to_string(),
        takeover,
        migrate,
        ..Config::default()
    })
}

/// Locks `m`, even if a panic poisoned it (our critical sections leave nothing half-done).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A wait in seconds as a `Duration`, never panicking: NaN and negatives are 0, anything above `cap` is `cap`.
fn bounded_secs(t: f64, cap: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0).min(cap))
}

fn reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Interrupt => "interrupt",
        StopReason::Terminate => "terminate",
        StopReason::Shutdown => "shutdown",
        StopReason::Stop => "stop",
        StopReason::TakenOver => "taken over",
    }
}

/// `(reason, forced)` for Python, or the error the run ended with.
fn finish(py: Python<'_>, outcome: Outcome) -> PyResult<(&'static str, bool)> {
    match outcome {
        Ok(Ok(report)) => Ok((reason_name(report.reason), report.forced)),
        Ok(Err(e)) => Err(to_py(py, e)),
        Err(panic) => Err(from_panic(py, panic)),
    }
}

/// Releases the GIL in slices until `done()` or `deadline`, checking for Ctrl-C (and running Python's
/// signal handlers) between slices. Returns whether `done()` became true.
fn wait_until(
    py: Python<'_>,
    deadline: Option<Instant>,
    done: impl Fn() -> bool + Sync,
) -> PyResult<bool> {
    loop {
        if done() {
            return Ok(true);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(false);
        }
        let step = left.map_or(SLICE, |l| l.min(SLICE));
        py.detach(|| {
            let until = Instant::now() + step;
            while !done() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        py.check_signals()?;
    }
}

/// A bound server (listeners open, connections already queue). Runs once.
#[pyclass(module = "port_sharding._port_sharding", frozen)]
pub struct Server {
    handle: Handle,
    /// The core server until it runs.
    bound: Mutex<Option<port_sharding::Server>>,
    /// The engine thread started by `start`.
    thread: Mutex<Option<JoinHandle<Outcome>>>,
    /// `stop` was called before the server ever ran.
    closed: AtomicBool,
}

impl Server {
    /// Whether the run is over: our engine thread has returned, or (for `run` on a Python thread, which
    /// has no thread of ours) the core says it stopped.
    fn finished(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        match lock(&self.thread).as_ref() {
            Some(t) => t.is_finished(),
            None => self.handle.is_stopped(),
        }
    }

    fn take_bound(&self) -> PyResult<port_sharding::Server> {
        let taken = lock(&self.bound).take();
        taken.ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err(
                "this Server was already started; create a new one",
            )
        })
    }
}

#[pymethods]
impl Server {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        port: i64,
        host: String,
        workers: Option<i64>,
        mode: &str,
        backlog: i64,
        drain_timeout: f64,
        max_connections: i64,
        idle_timeout: Option<f64>,
        takeover: bool,
        migrate: bool,
    ) -> PyResult<Server> {
        let config = config(
            port,
            host,
            workers,
            mode,
            backlog,
            drain_timeout,
            max_connections,
            idle_timeout,
            takeover,
            migrate,
        )
        .map_err(|e| to_py(py, e))?;
        // A takeover waits on the old server's control socket: let other Python threads run meanwhile.
        let bound = py
            .detach(|| catch_unwind(AssertUnwindSafe(|| port_sharding::Server::bind(config))))
            .map_err(|p| from_panic(py, p))?
            .map_err(|e| to_py(py, e))?;
        Ok(Server {
            handle: bound.handle(),
            bound: Mutex::new(Some(bound)),
            thread: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    /// The bound port (the real one when 0 was asked).
    #[getter]
    fn port(&self) -> u16 {
        self.handle.local_addr().port()
    }

    /// The bound IP address.
    #[getter]
    fn host(&self) -> String {
        self.handle.local_addr().ip().to_string()
    }

    /// Runs the server on this thread until it has drained; returns `(reason, forced)`. On the main thread
    /// the engine owns SIGINT/SIGTERM meanwhile (and restores Python's handlers afterwards).
    fn run(&self, py: Python<'_>) -> PyResult<(&'static str, bool)> {
        let server = self.take_bound()?;
        let outcome = py.detach(move || catch_unwind(AssertUnwindSafe(move || server.run())));
        finish(py, outcome)
    }

    /// Runs the server on a new Rust thread; returns once every worker serves (or raises why not).
    fn start(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let server = self.take_bound()?;
        let spawned = std::thread::Builder::new()
            .name("port-sharding".to_string())
            .spawn(move || catch_unwind(AssertUnwindSafe(move || server.run())));
        let thread = spawned.map_err(|e| to_py(py, Error::io("spawn the engine thread", e)))?;
        *lock(&self.thread) = Some(thread);
        let deadline = Instant::now() + bounded_secs(timeout, 3600.0);
        let handle = self.handle.clone();
        let waited = wait_until(py, Some(deadline), move || {
            handle.wait_ready(Duration::ZERO) || handle.is_stopped()
        });
        // Ctrl-C while starting: begin the drain, so no server is left running that nobody can stop.
        let ready = waited.inspect_err(|_| self.handle.shutdown())?;
        if ready && !self.handle.is_stopped() && self.handle.wait_ready(Duration::ZERO) {
            return Ok(());
        }
        // Not ready in time, or the run failed: stop it and raise what happened.
        self.handle.shutdown();
        self.stop(py, Some(10.0))?;
        let message = format!(
            "the server on port {} was not ready within {timeout} s",
            self.port()
        );
        Err(to_py(py, Error::Control(message)))
    }

    /// Starts a drain and waits until the server has stopped, at most `timeout` seconds (None: no limit).
    /// Returns whether it stopped in time; raises the error the run ended with, if any.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        // Never started: dropping the core server closes its listeners.
        if lock(&self.bound).take().is_some() {
            self.closed.store(true, Ordering::Relaxed);
            return Ok(true);
        }
        self.handle.shutdown();
        let deadline = timeout.map(|t| Instant::now() + bounded_secs(t, 86_400.0));
        if !wait_until(py, deadline, || self.finished())? {
            return Ok(false);
        }
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let outcome = py.detach(|| thread.join()).unwrap_or_else(Err);
            finish(py, outcome)?;
        }
        Ok(true)
    }

    /// Starts a drain and returns at once.
    fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Whether `run` or `start` was called (or `stop` before either).
    #[getter]
    fn started(&self) -> bool {
        lock(&self.bound).is_none()
    }

    /// Whether the server has stopped (or failed to start).
    #[getter]
    fn stopped(&self) -> bool {
        self.finished()
    }

    /// Per-worker counters as a JSON array (the façade turns it into dicts).
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.handle.stats()).unwrap_or_else(|_| "[]".to_string())
    }
}

impl Drop for Server {
    /// A running server whose Python object goes away drains in the background rather than run forever.
    fn drop(&mut self) {
        if self.thread.get_mut().is_ok_and(|t| t.is_some()) {
            self.handle.shutdown();
        }
    }
}
