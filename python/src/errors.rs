//! Core errors → Python exceptions. The classes are declared in Python (`port_sharding/_errors.py`, one
//! per core variant) so they carry docstrings and multiple inheritance (`AddrInUseError` is also an
//! `OSError`); here we only pick the class and its arguments.

use std::any::Any;

use port_sharding::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The Python exception for a core error. OS errors are built as `cls(errno, message)` so that Python
/// sets `.errno` and `.strerror` the way it does for any `OSError`.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    let errno = err.errno();
    let (class, param) = match &err {
        Error::InvalidArgument { name, .. } => ("ConfigError", Some(*name)),
        Error::InvalidAddress { .. } => ("AddressError", None),
        Error::AddrInUse { .. } => ("AddrInUseError", None),
        Error::PermissionDenied { .. } => ("PermissionDeniedError", None),
        Error::Unsupported { .. } => ("UnsupportedPlatformError", None),
        Error::NotRunning { .. } => ("NotRunningError", None),
        Error::Takeover(_) => ("TakeoverError", None),
        Error::Control(_) => ("ControlError", None),
        Error::Io { .. } => ("IoError", None),
        // The core enum is non_exhaustive: a variant added later still raises our base class.
        _ => ("Error", None),
    };
    build(py, class, &message, errno, param).unwrap_or_else(|e| e)
}

fn build(
    py: Python<'_>,
    class: &str,
    message: &str,
    errno: Option<i32>,
    param: Option<&str>,
) -> PyResult<PyErr> {
    let cls = py.import("port_sharding._errors")?.getattr(class)?;
    let args = match (errno, param) {
        (Some(errno), _) => PyTuple::new(
            py,
            [
                errno.into_pyobject(py)?.into_any(),
                message.into_pyobject(py)?.into_any(),
            ],
        )?,
        (None, Some(param)) => PyTuple::new(py, [message, param])?,
        (None, None) => PyTuple::new(py, [message])?,
    };
    Ok(PyErr::from_value(cls.call1(args)?))
}

/// A Rust panic caught before it reaches Python, as `port_sharding.Error`.
pub fn from_panic(py: Python<'_>, payload: Box<dyn Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let message = format!("internal error in the port-sharding engine (please report it): {what}");
    build(py, "Error", &message, None, None).unwrap_or_else(|_| PyRuntimeError::new_err(message))
}
