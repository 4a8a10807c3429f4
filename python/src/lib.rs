//! The native half of the Python package: `port_sharding._port_sharding`. Private — users import
//! `port_sharding`, whose pure-Python façade gives the defaults, docstrings and exceptions. This file only
//! converts arguments, errors and the GIL around the core crate.

mod errors;
mod server;

use std::os::fd::IntoRawFd;

use pyo3::prelude::*;

use crate::errors::to_py;

/// A blocking reuseport listening socket made by the core; returns its file descriptor, which the caller
/// owns (the façade wraps it in `socket.socket(fileno=...)`).
#[pyfunction]
fn listen(py: Python<'_>, host: &str, port: i64, backlog: i64) -> PyResult<i32> {
    let arg = |name, v: i64, max: i64| {
        if (0..=max).contains(&v) {
            Ok(v)
        } else {
            let reason = format!("must be between 0 and {max}, got {v}");
            Err(to_py(
                py,
                port_sharding::Error::InvalidArgument { name, reason },
            ))
        }
    };
    let port = arg("port", port, u16::MAX.into())? as u16;
    let backlog = arg("backlog", backlog, i32::MAX.into())? as u32;
    let listener = port_sharding::listen(host, port, backlog).map_err(|e| to_py(py, e))?;
    Ok(listener.into_raw_fd())
}

/// `status` of every server on `port` (bound to `host`, when given), as a JSON array.
#[pyfunction]
#[pyo3(signature = (port, host=None))]
fn status_json(py: Python<'_>, port: u16, host: Option<String>) -> PyResult<String> {
    let servers = py
        .detach(|| port_sharding::status(host.as_deref(), port))
        .map_err(|e| to_py(py, e))?;
    serde_json::to_string(&servers)
        .map_err(|e| to_py(py, port_sharding::Error::Control(e.to_string())))
}

/// Asks every server on `port` (bound to `host`, when given) to drain; returns their pids.
#[pyfunction]
#[pyo3(signature = (port, host=None))]
fn stop(py: Python<'_>, port: u16, host: Option<String>) -> PyResult<Vec<u32>> {
    py.detach(|| port_sharding::stop(host.as_deref(), port))
        .map_err(|e| to_py(py, e))
}

/// Silences (or restores) the engine's log lines on stderr.
#[pyfunction]
fn set_quiet(quiet: bool) {
    port_sharding::set_quiet(quiet);
}

/// The core `Config` defaults, so a test can check that the façade's keyword defaults match them.
#[pyfunction]
fn config_defaults(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let c = port_sharding::Config::default();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("port", c.port)?;
    d.set_item("host", c.host)?;
    d.set_item("mode", c.mode.as_str())?;
    d.set_item("backlog", c.backlog)?;
    d.set_item("drain_timeout", c.drain_timeout.as_secs_f64())?;
    d.set_item("max_connections", c.max_connections)?;
    d.set_item("idle_timeout", c.idle_timeout.map(|t| t.as_secs_f64()))?;
    d.set_item("takeover", c.takeover)?;
    d.set_item("migrate", c.migrate)?;
    Ok(d)
}

#[pymodule]
fn _port_sharding(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("VERSION", port_sharding::VERSION)?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(listen, m)?)?;
    m.add_function(wrap_pyfunction!(status_json, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(set_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(config_defaults, m)?)?;
    Ok(())
}
