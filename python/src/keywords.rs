//! Python keyword arguments → core settings. Only the conversion of each value lives here; names,
//! defaults, ranges and messages are the engine's (`Config::from_settings`, `port_sharding::SETTINGS`).

use port_sharding::{Config, Error, Host, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

/// The `Config` for the settings a caller gave (`{"workers": 4}`); the engine fills in the rest.
pub fn config(settings: &Bound<'_, PyDict>) -> Result<Config, Error> {
    let mut given = Vec::with_capacity(settings.len());
    for (name, value) in settings {
        let name = name.to_string();
        let value = value_of(&name, &value)?;
        given.push((name, value));
    }
    Config::from_settings(
        Host::Python,
        given.iter().map(|(n, v)| (n.as_str(), v.clone())),
    )
}

/// One Python value as a core [`Value`]: bool, int, float and str (bool first: it is an int subclass).
fn value_of(name: &str, v: &Bound<'_, PyAny>) -> Result<Value, Error> {
    let Some(setting) = port_sharding::setting(name) else {
        // Any value will do: the engine rejects the name, listing the known ones.
        return Ok(Value::Bool(false));
    };
    let shown = Host::Python.spell(name);
    if let Ok(b) = v.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if v.is_instance_of::<PyInt>() {
        v.extract()
            .map(Value::Int)
            .map_err(|_| Error::InvalidArgument {
                name: setting.name,
                shown,
                reason: format!("{v} is out of range"),
            })
    } else if let Ok(f) = v.cast::<PyFloat>() {
        Ok(Value::Float(f.value()))
    } else if let Ok(s) = v.cast::<PyString>() {
        Ok(Value::Str(s.to_string()))
    } else {
        // A type no setting takes: the engine says what the setting takes instead.
        let got = match v.get_type().name() {
            Ok(t) => format!(
                "a {t} ({})",
                v.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ),
            Err(_) => "something else".to_string(),
        };
        Ok(Value::Other(got))
    }
}
