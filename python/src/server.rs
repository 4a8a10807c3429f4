//! `port_sharding._port_sharding.Server`: a bound core server, run in the foreground (`run`, used by
//! `serve`) or started on the core's own thread (`start`), and waited on in slices so Ctrl-C works.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use port_sharding::{Error, Handle, Report, Running, StopReason};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{no_panic, to_py};
use crate::keywords::config;

/// How long the GIL is released at a time while waiting: Ctrl-C is noticed between slices.
const SLICE: Duration = Duration::from_millis(100);

/// Where the Python object is in its one run.
enum State {
    /// Bound, not run yet.
    Bound(Box<port_sharding::Server>),
    /// Running on this thread (`run`).
    Foreground,
    /// Started on the core's thread (`start`).
    Started(Arc<Running>),
    /// Stopped before it ran, or its start failed.
    Closed,
}

/// A bound server (listeners open, connections already queue). Runs once.
#[pyclass(module = "port_sharding._port_sharding", frozen)]
pub struct Server {
    handle: Handle,
    state: Mutex<State>,
}

/// A wait in seconds: `None`, infinity or anything beyond `Duration` is no limit; NaN and negatives are 0.
fn limit(timeout: Option<f64>) -> Option<Duration> {
    timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
}

impl Server {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound core server, leaving `then` in its place.
    fn take_bound(&self, then: State) -> PyResult<port_sharding::Server> {
        let mut state = self.state();
        match std::mem::replace(&mut *state, then) {
            State::Bound(server) => Ok(*server),
            other => {
                *state = other;
                Err(PyRuntimeError::new_err(
                    "this Server was already started; create a new one",
                ))
            }
        }
    }

    /// Waits for the run to end, at most `timeout`; `None` on timeout.
    fn wait_report(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Report>> {
        let running = match &*self.state() {
            State::Started(running) => running.clone(),
            State::Closed => {
                return Ok(Some(Report {
                    reason: StopReason::Shutdown,
                    forced: false,
                    served: 0,
                    drain: Duration::ZERO,
                }))
            }
            _ => {
                return Err(PyRuntimeError::new_err(
                    "this Server was not started: call start() first",
                ))
            }
        };
        let report = in_slices(py, timeout, |slice| running.wait(Some(slice)))?;
        report.transpose().map_err(|e| to_py(py, e))
    }
}

/// Calls `wait(slice)` with the GIL released until it answers, or `timeout` passes (`None`: no limit),
/// running Python's signal handlers between slices: Ctrl-C raises `KeyboardInterrupt` here.
fn in_slices<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    wait: impl Fn(Duration) -> Option<T> + Sync,
) -> PyResult<Option<T>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let slice = left.map_or(SLICE, |l| l.min(SLICE));
        if let Some(answer) = py.detach(|| wait(slice)) {
            return Ok(Some(answer));
        }
        if left.is_some_and(|l| l <= SLICE) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

#[pymethods]
impl Server {
    /// Binds with the given settings (name → bool/int/float/str); the engine fills in the rest.
    /// `worker`: a callable every worker runs (forked from this interpreter), instead of built-in loops.
    #[new]
    #[pyo3(signature = (settings, worker=None))]
    fn new(
        py: Python<'_>,
        settings: &Bound<'_, PyDict>,
        worker: Option<Py<PyAny>>,
    ) -> PyResult<Server> {
        let config = config(settings).map_err(|e| to_py(py, e))?;
        // A takeover waits on the old server's control socket: let other Python threads run meanwhile.
        let mut server = py
            .detach(|| no_panic(|| port_sharding::Server::bind(config)))
            .map_err(|e| to_py(py, e))?;
        if let Some(worker) = worker {
            server
                .set_function(crate::function::PyHost::shared(worker))
                .map_err(|e| to_py(py, e))?;
        }
        Ok(Server {
            handle: server.handle(),
            state: Mutex::new(State::Bound(Box::new(server))),
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

    /// Where the server is: starting, serving, handing over, draining or stopped.
    #[getter]
    fn phase(&self) -> &'static str {
        match &*self.state() {
            State::Closed => "stopped",
            _ => self.handle.phase().as_str(),
        }
    }

    /// Whether `run`, `start` or `stop` was called (the context manager starts a server only once).
    #[getter]
    fn started(&self) -> bool {
        !matches!(&*self.state(), State::Bound(_))
    }

    /// Runs the server on this thread until it has drained; returns why it stopped. On the main thread
    /// the engine owns SIGINT/SIGTERM meanwhile (and restores Python's handlers afterwards).
    fn run(&self, py: Python<'_>) -> PyResult<&'static str> {
        let server = self.take_bound(State::Foreground)?;
        let report = py
            .detach(|| no_panic(|| server.run()))
            .map_err(|e| to_py(py, e))?;
        Ok(report.reason.as_str())
    }

    /// Starts the server on the core's thread; returns once every worker serves, or raises why not.
    /// Ctrl-C meanwhile begins the drain, so no server is left running that nobody holds.
    fn start(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let running = Arc::new(
            self.take_bound(State::Closed)?
                .start()
                .map_err(|e| to_py(py, e))?,
        );
        *self.state() = State::Started(running.clone());
        let ready = in_slices(py, limit(Some(timeout)), |slice| {
            match running.wait_ready(Some(slice)) {
                Ok(false) => None,
                answer => Some(answer),
            }
        });
        match ready.inspect_err(|_| self.handle.shutdown())? {
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(to_py(py, e)),
            None => {}
        }
        // Not ready in time: stop it rather than leave a server nobody waits for.
        self.stop(py, Some(10.0))?;
        let message = format!(
            "the server on port {} was not ready within {timeout} s",
            self.port()
        );
        Err(to_py(py, Error::Control(message)))
    }

    /// Starts a drain and waits until it is over, at most `timeout` seconds (`None`: no limit). Returns
    /// whether it stopped in time; raises the error the run ended with, if any.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        // Never started: dropping the core server closes its listeners.
        if let Ok(server) = self.take_bound(State::Closed) {
            drop(server);
            return Ok(true);
        }
        self.handle.shutdown();
        Ok(self.wait_report(py, limit(timeout))?.is_some())
    }

    /// Waits until the run has ended, at most `timeout` seconds (`None`: no limit); returns why it
    /// stopped, or `None` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<&'static str>> {
        Ok(self
            .wait_report(py, limit(timeout))?
            .map(|r| r.reason.as_str()))
    }

    /// Per-worker counters as a JSON array (the façade turns it into dicts).
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.handle.stats()).unwrap_or_else(|_| "[]".to_string())
    }
}
