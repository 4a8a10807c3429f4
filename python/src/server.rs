//! `port_sharding._port_sharding.Server`: the engine's [`port_sharding::Server`] as a Python object. The
//! lifecycle is the engine's (bound, then run here or started, then done with a report, each once); this
//! file releases the GIL around each call and, between slices of a wait, takes it back to run Python's
//! signal handlers, so Ctrl-C raises `KeyboardInterrupt` in a waiting `start`, `stop` or `wait`.

use std::time::Duration;

use port_sharding::{Error, Report};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{no_panic, to_py};
use crate::keywords::config;

/// A bound server (listeners open, connections already queue). Runs once.
#[pyclass(module = "port_sharding._port_sharding", frozen)]
pub struct Server {
    inner: port_sharding::Server,
}

/// What ended a wait without a report: a Python exception (from a signal handler), or the engine's error.
enum Stop {
    Python(PyErr),
    Engine(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Engine(e)
    }
}

impl Stop {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Stop::Python(e) => e,
            Stop::Engine(e) => to_py(py, e),
        }
    }
}

/// Between two slices of a wait (GIL released): take the GIL back and run Python's signal handlers.
fn check_signals() -> Result<(), Stop> {
    Python::attach(|py| py.check_signals()).map_err(Stop::Python)
}

/// A report as the façade's `port_sharding.Report` takes it: `(reason, forced, served, drain seconds)`.
type ReportTuple = (&'static str, bool, u64, f64);

fn report(r: Report) -> ReportTuple {
    (r.reason.as_str(), r.forced, r.served, r.drain.as_secs_f64())
}

/// A wait in seconds: `None`, infinity or anything beyond `Duration` is no limit; NaN and negatives are 0.
fn limit(timeout: Option<f64>) -> Option<Duration> {
    timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
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
        let mut inner = py
            .detach(|| no_panic(|| port_sharding::Server::bind(config)))
            .map_err(|e| to_py(py, e))?;
        forget_service_env(py)?;
        if let Some(worker) = worker {
            inner
                .set_function(crate::function::PyHost::shared(worker))
                .map_err(|e| to_py(py, e))?;
        }
        Ok(Server { inner })
    }

    /// The bound port (the real one when 0 was asked).
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    /// The bound IP address.
    #[getter]
    fn host(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    /// Where the server is: starting, serving, handing over, draining or stopped.
    #[getter]
    fn phase(&self) -> &'static str {
        self.inner.phase().as_str()
    }

    /// Whether `run`, `start` or `stop` was called (the context manager starts a server only once).
    #[getter]
    fn started(&self) -> bool {
        self.inner.is_started()
    }

    /// Runs the server on this thread until it has drained; returns its report. On the main thread the
    /// engine owns SIGINT/SIGTERM meanwhile (and restores Python's handlers afterwards).
    fn run(&self, py: Python<'_>) -> PyResult<ReportTuple> {
        py.detach(|| self.inner.run())
            .map(report)
            .map_err(|e| to_py(py, e))
    }

    /// Starts the server on the engine's thread; returns once every worker serves, or raises why not
    /// (the server is then stopped, or draining after Ctrl-C).
    fn start(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        py.detach(|| self.inner.start_with(limit(Some(timeout)), check_signals))
            .map_err(|e| e.into_py(py))
    }

    /// Starts a drain (closes the listeners if never started) and waits until it is over, at most
    /// `timeout` seconds (`None`: no limit). Returns the report, or `None` on timeout; raises the error
    /// the run ended with, if any.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ReportTuple>> {
        py.detach(|| self.inner.stop_with(limit(timeout), check_signals))
            .map(|r| r.map(report))
            .map_err(|e| e.into_py(py))
    }

    /// Waits until the run has ended, at most `timeout` seconds (`None`: no limit); returns its report,
    /// or `None` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<ReportTuple>> {
        py.detach(|| self.inner.wait_with(limit(timeout), check_signals))
            .map(|r| r.map(report))
            .map_err(|e| e.into_py(py))
    }

    /// Per-worker counters as a JSON array (the façade turns it into dicts).
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.inner.handle().stats()).unwrap_or_else(|_| "[]".to_string())
    }
}

/// The service manager's variables the engine took out of the process environment when it bound
/// (`NOTIFY_SOCKET`, `LISTEN_*`, …) go from `os.environ` too, Python's own copy: a function worker, or a
/// `subprocess` it starts, must not see them.
fn forget_service_env(py: Python<'_>) -> PyResult<()> {
    let environ = py.import("os")?.getattr("environ")?;
    for name in port_sharding::SERVICE_ENV {
        if std::env::var_os(name).is_none() {
            environ.call_method1("pop", (*name, py.None()))?;
        }
    }
    Ok(())
}
