//! Ruby keywords → the engine's settings. Ruby hands over a Hash of only the keywords the caller gave
//! (nil ones left out); each value becomes a [`Value`] and the engine fills in, checks and names the
//! rest (`drain_timeout:`), so this file converts types and decides nothing.

use std::time::Duration;

use magnus::value::{Qfalse, Qtrue, ReprValue};
use magnus::{
    Error, Float, Integer, RArray, RHash, RRational, RString, Ruby, Symbol, TryConvert,
    Value as RValue,
};
use port_sharding::{Config, Host, Value, SETTINGS};

use crate::errors::to_ruby;

/// A [`Config`] from the keywords in `given` (Symbol or String keys), the rest from the engine's defaults.
pub fn config(ruby: &Ruby, given: RHash) -> Result<Config, Error> {
    let mut pairs: Vec<(String, Value)> = Vec::new();
    given.foreach(|key: RValue, value: RValue| {
        let name = match Symbol::from_value(key) {
            Some(symbol) => symbol.name()?.into_owned(),
            None => String::try_convert(key)?,
        };
        let value = convert(value)?;
        pairs.push((name, value));
        Ok(magnus::r_hash::ForEach::Continue)
    })?;
    let pairs = pairs
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()));
    Config::from_settings(Host::Ruby, pairs).map_err(|e| to_ruby(ruby, e))
}

/// true/false → Bool, Integer → Int, Float and Rational → Float, String and Symbol → Str (so
/// `mode: :once` works); anything else is `Other`, which the engine turns into a `WrongType`
/// (`SettingTypeError`) naming the keyword and what it takes.
fn convert(value: RValue) -> Result<Value, Error> {
    if Qtrue::from_value(value).is_some() {
        return Ok(Value::Bool(true));
    }
    if Qfalse::from_value(value).is_some() {
        return Ok(Value::Bool(false));
    }
    if let Some(n) = Integer::from_value(value) {
        // Beyond i64 it can only be out of range: the engine says so for a number of seconds too.
        return match n.to_i64() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => Ok(Value::Float(f64::try_convert(value)?)),
        };
    }
    if let Some(f) = Float::from_value(value) {
        return Ok(Value::Float(f.to_f64()));
    }
    if RRational::from_value(value).is_some() {
        return Ok(Value::Float(f64::try_convert(value)?));
    }
    if let Some(s) = Symbol::from_value(value) {
        return Ok(Value::Str(s.name()?.into_owned()));
    }
    if let Some(s) = RString::from_value(value) {
        return Ok(Value::Str(s.to_string()?));
    }
    // A type no setting takes: the engine names the keyword and what it takes instead.
    Ok(Value::Other(value.inspect()))
}

/// `[[name, help, default], …]` for every setting, so Ruby's tests can check its docs name them all.
pub fn list(ruby: &Ruby) -> Result<RArray, Error> {
    let all = ruby.ary_new_capa(SETTINGS.len());
    for s in SETTINGS {
        all.push((s.name, s.help, s.default))?;
    }
    Ok(all)
}

/// A wait's `timeout:` in seconds: `None` (no limit) for nil, infinity or more than a `Duration` holds;
/// an `ArgumentError` for a negative or NaN one.
pub fn timeout(ruby: &Ruby, seconds: Option<f64>) -> Result<Option<Duration>, Error> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_nan() || s < 0.0 => Err(Error::new(
            ruby.exception_arg_error(),
            format!("timeout: must be nil or at least 0 seconds, got {s}"),
        )),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}
