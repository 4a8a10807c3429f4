//! Python functions as workers: the fork (GIL held, `PyOS_BeforeFork`/`PyOS_AfterFork_*`, as `os.fork`
//! does) and the call into `port_sharding._run_worker`, which runs the function and reports how it
//! ended; `Listener` wraps the engine's [`WorkerListener`] primitives.

use std::convert::Infallible;
use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use port_sharding::{Accept, FunctionHost, Receive, WorkerListener};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// The function every worker runs.
pub struct PyHost {
    function: Py<PyAny>,
}

impl PyHost {
    pub fn shared(function: Py<PyAny>) -> Arc<dyn FunctionHost> {
        Arc::new(PyHost { function })
    }
}

impl FunctionHost for PyHost {
    /// Called on the supervisor's thread, which holds no GIL (`serve` released it; `Server.start` runs
    /// the supervisor on a thread of its own): take it, then fork as `os.fork` does, so the child's
    /// interpreter has this thread's state and Python's at-fork hooks run.
    fn fork(&self, in_child: &mut dyn FnMut() -> Infallible) -> io::Result<u32> {
        Python::attach(|_py| {
            // SAFETY: the GIL is held, as these three require; in the child only this thread exists.
            unsafe {
                pyo3::ffi::PyOS_BeforeFork();
                let pid = libc::fork();
                if pid == 0 {
                    pyo3::ffi::PyOS_AfterFork_Child();
                    match in_child() {}
                }
                let error = io::Error::last_os_error();
                pyo3::ffi::PyOS_AfterFork_Parent();
                if pid < 0 {
                    Err(error)
                } else {
                    Ok(pid as u32)
                }
            }
        })
    }

    fn run(&self, listener: Arc<WorkerListener>) -> i32 {
        Python::attach(|py| {
            let run = || -> PyResult<i32> {
                let listener = Py::new(
                    py,
                    Listener {
                        inner: listener,
                        buf: std::sync::Mutex::new(Vec::new()),
                    },
                )?;
                let runner = py.import("port_sharding")?.getattr("_run_worker")?;
                runner.call1((self.function.bind(py), listener))?.extract()
            };
            run().unwrap_or_else(|e| {
                e.print(py);
                1
            })
        })
    }
}

/// The engine's side of a function worker's listener (`port_sharding.Listener` wraps it).
#[pyclass(module = "port_sharding._port_sharding", frozen)]
pub struct Listener {
    inner: Arc<WorkerListener>,
    /// `receive`'s buffer (room for the largest datagram), made on its first call.
    buf: std::sync::Mutex<Vec<u8>>,
}

#[pymethods]
impl Listener {
    /// The worker's index: the listener it serves.
    #[getter]
    fn index(&self) -> usize {
        self.inner.index()
    }

    /// The listening socket's fd (-1 once drained); wrap a dup of it, never this one.
    fn fileno(&self) -> i32 {
        self.inner.fileno()
    }

    /// The drain pipe's read end: readable once the supervisor asks this worker to drain.
    fn drain_fileno(&self) -> i32 {
        self.inner.drain_fileno()
    }

    /// Whether the supervisor asked this worker to drain.
    #[getter]
    fn draining(&self) -> bool {
        self.inner.draining()
    }

    /// Draining and the queue stayed empty for the grace window (or handed over): stop accepting now.
    fn drained(&self) -> bool {
        self.inner.drained()
    }

    /// Tells the supervisor this worker serves.
    fn ready(&self) {
        self.inner.ready()
    }

    /// Whether the socket is a UDP socket (`receive`, not `accept`).
    #[getter]
    fn udp(&self) -> bool {
        self.inner.is_udp()
    }

    /// The next datagram and its sender's address (as `socket.recvfrom` gives them), or `None` once
    /// drained or after `timeout` seconds; the GIL is released while waiting.
    #[pyo3(signature = (timeout=None))]
    fn receive<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)>> {
        let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok());
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.is_empty() {
            buf.resize(65_536, 0);
        }
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let space: &mut [u8] = &mut buf;
            match py.detach(|| self.inner.receive(space, left))? {
                Receive::Datagram { len, from, .. } => {
                    let data = PyBytes::new(py, &buf[..len]);
                    let addr = match from {
                        std::net::SocketAddr::V4(a) => {
                            (a.ip().to_string(), a.port()).into_pyobject(py)?
                        }
                        std::net::SocketAddr::V6(a) => {
                            (a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
                                .into_pyobject(py)?
                        }
                    };
                    return Ok(Some((data, addr)));
                }
                Receive::Drained | Receive::TimedOut => return Ok(None),
                Receive::Interrupted => py.check_signals()?,
            }
        }
    }

    /// The next connection's fd, or `None` once drained or after `timeout` seconds; the GIL is released
    /// while waiting and Python's signal handlers run between waits.
    #[pyo3(signature = (timeout=None))]
    fn accept(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<i32>> {
        let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok());
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            match py.detach(|| self.inner.accept(left))? {
                Accept::Connection(fd) => return Ok(Some(fd.into_raw_fd())),
                Accept::Drained | Accept::TimedOut => return Ok(None),
                Accept::Interrupted => py.check_signals()?,
            }
        }
    }
}
