//! The native half of the Python package: `port_sharding._port_sharding`. Private — users import
//! `port_sharding`, whose façade gives signatures, docstrings and exceptions. This crate only converts
//! values, errors and the GIL around the engine (`port_sharding`) and its command line
//! (`port_sharding_cli`).

mod errors;
mod function;
mod keywords;
mod server;

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::IntoRawFd;

use port_sharding::{Error, Host};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{no_panic, to_py};

/// The `port-sharding` command line (`argv[0]` is the program name); prints what it prints and returns
/// the exit status. The GIL is released for the whole call: `serve` blocks until drained, and on the
/// main thread the engine handles SIGINT/SIGTERM itself meanwhile.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| {
        let code = std::panic::catch_unwind(|| port_sharding_cli::main(argv, Host::Python))
            .unwrap_or_else(|panic| {
                eprintln!(
                    "port-sharding: error: {}",
                    Error::from_panic(panic.as_ref())
                );
                1
            });
        std::io::stdout().flush().ok();
        code
    })
}

/// A blocking reuseport listening socket made by the engine, with the given settings (`port`, `host`,
/// `backlog`); returns its file descriptor, which the caller owns.
#[pyfunction]
fn listen(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<i32> {
    let c = keywords::config(settings).map_err(|e| to_py(py, e))?;
    let listener = no_panic(|| port_sharding::listen(&c.host, c.port, c.backlog));
    Ok(listener.map_err(|e| to_py(py, e))?.into_raw_fd())
}

/// `status` of every server on `port` (bound to `host`, when given), as a JSON array.
#[pyfunction]
#[pyo3(signature = (port, host=None))]
fn status_json(py: Python<'_>, port: u16, host: Option<String>) -> PyResult<String> {
    let servers = py.detach(|| no_panic(|| port_sharding::status(host.as_deref(), port)));
    let json =
        servers.and_then(|s| serde_json::to_string(&s).map_err(|e| Error::Internal(e.to_string())));
    json.map_err(|e| to_py(py, e))
}

/// Asks every server on `port` (bound to `host`, when given) to drain; returns their pids.
#[pyfunction]
#[pyo3(signature = (port, host=None))]
fn stop(py: Python<'_>, port: u16, host: Option<String>) -> PyResult<Vec<u32>> {
    py.detach(|| no_panic(|| port_sharding::stop(host.as_deref(), port)))
        .map_err(|e| to_py(py, e))
}

/// Reloads every server on `port` (bound to `host`, or the one whose supervisor is `pid`, when given) in
/// place, `batch` workers at a time; the reports as a JSON array.
#[pyfunction]
#[pyo3(signature = (port, host=None, pid=None, batch=None))]
fn reload_json(
    py: Python<'_>,
    port: u16,
    host: Option<String>,
    pid: Option<u32>,
    batch: Option<usize>,
) -> PyResult<String> {
    let reports =
        py.detach(|| no_panic(|| port_sharding::reload(host.as_deref(), port, pid, batch)));
    let json =
        reports.and_then(|r| serde_json::to_string(&r).map_err(|e| Error::Internal(e.to_string())));
    json.map_err(|e| to_py(py, e))
}

/// Upgrades every server on `port` (bound to `host`, or the one whose supervisor is `pid`, when given) in
/// place: each starts its successor, which takes its sockets over; the reports as a JSON array.
#[pyfunction]
#[pyo3(signature = (port, host=None, pid=None))]
fn upgrade_json(
    py: Python<'_>,
    port: u16,
    host: Option<String>,
    pid: Option<u32>,
) -> PyResult<String> {
    let reports = py.detach(|| no_panic(|| port_sharding::upgrade(host.as_deref(), port, pid)));
    let json =
        reports.and_then(|r| serde_json::to_string(&r).map_err(|e| Error::Internal(e.to_string())));
    json.map_err(|e| to_py(py, e))
}

/// Silences (or restores) the engine's log lines on stderr.
#[pyfunction]
fn set_quiet(quiet: bool) {
    port_sharding::set_quiet(quiet);
}

/// In a child the host forked (`os.fork`, `multiprocessing`): let go of the engine's listeners, pipes and
/// control sockets, so the child neither keeps a server's port in its group nor delays its drain.
#[pyfunction]
fn close_in_forked_child() {
    port_sharding::close_in_forked_child();
}

/// Every setting `serve` and `Server` take, from the engine's one table: dicts with `name`, `kind`
/// (`"integer"`, `"duration"`, …), `choices` (the words a `"choice"` takes), `help` and `default` (as
/// help shows it). The façade's docs come from it, and its tests check `Settings` against it.
#[pyfunction]
fn settings(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let row = |s: &port_sharding::Setting| -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("name", s.name)?;
        d.set_item("kind", s.kind.as_str())?;
        d.set_item("choices", s.kind.choices().to_vec())?;
        d.set_item("help", s.help)?;
        d.set_item("default", s.default)?;
        Ok(d)
    };
    port_sharding::SETTINGS.iter().map(row).collect()
}

/// Tells the engine how an upgrade starts this program again: this interpreter (`sys.executable`) with the
/// arguments it was started with (`sys.orig_argv`: its own options, the script or `-m` module, the
/// script's arguments), whatever the program did to `sys.argv` since.
fn upgrade_command(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    let executable: Option<OsString> = sys.getattr("executable")?.extract()?;
    let Some(executable) = executable.filter(|e| !e.is_empty()) else {
        return Ok(()); // embedded without an interpreter to run: the process's own argv will do
    };
    let argv = sys
        .getattr("orig_argv")
        .or_else(|_| sys.getattr("argv"))?
        .extract::<Vec<OsString>>()?;
    let mut command = vec![executable];
    // sys.argv lacks the interpreter: it starts with the script; orig_argv starts with the interpreter.
    let skip = usize::from(sys.hasattr("orig_argv")?);
    command.extend(argv.into_iter().skip(skip));
    port_sharding::set_upgrade_command(command);
    Ok(())
}

#[pymodule]
fn _port_sharding(m: &Bound<'_, PyModule>) -> PyResult<()> {
    upgrade_command(m.py())?;
    m.add("VERSION", port_sharding::VERSION)?;
    m.add_class::<server::Server>()?;
    m.add_class::<function::Listener>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(listen, m)?)?;
    m.add_function(wrap_pyfunction!(status_json, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(reload_json, m)?)?;
    m.add_function(wrap_pyfunction!(upgrade_json, m)?)?;
    m.add_function(wrap_pyfunction!(set_quiet, m)?)?;
    m.add_function(wrap_pyfunction!(close_in_forked_child, m)?)?;
    m.add_function(wrap_pyfunction!(settings, m)?)?;
    Ok(())
}
