//! Core errors → Python exceptions. The classes live in Python (`port_sharding/_errors.py`, one per core
//! variant) for their docstrings and multiple inheritance (`AddrInUseError` is also an `OSError`); here we
//! only pick the class and its arguments.

use port_sharding::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The Python exception for a core error. OS errors are built as `cls(errno, message)` so that Python
/// sets `.errno` and `.strerror` as for any `OSError`; setting errors as `cls(message, param)`.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    let (class, param) = match &err {
        Error::InvalidArgument { name, .. } => ("ConfigError", Some(*name)),
        Error::WrongType { name, .. } => ("SettingTypeError", Some(*name)),
        Error::InvalidAddress { .. } => ("AddressError", None),
        Error::AddrInUse { .. } => ("AddrInUseError", None),
        Error::PermissionDenied { .. } => ("PermissionDeniedError", None),
        Error::NotRunning { .. } => ("NotRunningError", None),
        Error::Takeover(_) => ("TakeoverError", None),
        Error::Control(_) => ("ControlError", None),
        Error::InvalidState(_) => ("InvalidStateError", None),
        Error::Io { .. } => ("IoError", None),
        // Internal (a caught panic), and any variant the non_exhaustive enum gains later.
        _ => ("Error", None),
    };
    let build = || -> PyResult<PyErr> {
        let cls = py.import("port_sharding._errors")?.getattr(class)?;
        let args = match (err.errno(), param) {
            (Some(errno), _) => (errno, &message).into_pyobject(py)?,
            (None, Some(param)) => (&message, param).into_pyobject(py)?,
            (None, None) => PyTuple::new(py, [&message])?,
        };
        Ok(PyErr::from_value(cls.call1(args)?))
    };
    build().unwrap_or_else(|e| {
        PyRuntimeError::new_err(format!("{message} (and raising it failed: {e})"))
    })
}

/// Runs `f`, turning a panic into `port_sharding.Error` so that none unwinds into Python.
pub fn no_panic<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(Error::from_panic(panic.as_ref())))
}
