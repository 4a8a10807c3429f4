//! The options Hash built by `lib/port_sharding/options.rb` → a core [`Config`].
//!
//! Ruby already checked each keyword's type (so its `ArgumentError` names the keyword); here a value that
//! still does not fit a Rust type raises `ConfigError` naming it too, and the core checks the ranges.

use std::time::Duration;

use magnus::{value::ReprValue, Error, RHash, Ruby, TryConvert};
use port_sharding::{Config, Mode};

use crate::errors::{bad_argument, to_ruby};

/// A [`Config`] for a server hosted by Ruby (`runtime` is `ruby`, so `hello` replies say so).
pub fn config(ruby: &Ruby, opts: RHash) -> Result<Config, Error> {
    let defaults = Config::default();
    let mode: String = get(ruby, opts, "mode")?.unwrap_or_else(|| defaults.mode.to_string());
    Ok(Config {
        host: get(ruby, opts, "host")?.unwrap_or(defaults.host),
        port: get(ruby, opts, "port")?.unwrap_or(defaults.port),
        workers: get(ruby, opts, "workers")?.unwrap_or(defaults.workers),
        mode: mode.parse::<Mode>().map_err(|e| to_ruby(ruby, e))?,
        backlog: get(ruby, opts, "backlog")?.unwrap_or(defaults.backlog),
        drain_timeout: seconds(ruby, opts, "drain_timeout")?.unwrap_or(defaults.drain_timeout),
        max_connections: get(ruby, opts, "max_connections")?.unwrap_or(defaults.max_connections),
        idle_timeout: seconds(ruby, opts, "idle_timeout")?,
        takeover: get(ruby, opts, "takeover")?.unwrap_or(defaults.takeover),
        migrate: get(ruby, opts, "migrate")?.unwrap_or(defaults.migrate),
        runtime: "ruby".to_string(),
        // Set per call site: `serve` lets the engine own SIGINT/SIGTERM, a background server must not.
        handle_signals: false,
        ..defaults
    })
}

/// `opts[key]` converted, `None` when absent or nil.
fn get<T: TryConvert>(ruby: &Ruby, opts: RHash, key: &str) -> Result<Option<T>, Error> {
    match opts.get(ruby.to_symbol(key)) {
        Some(v) if !v.is_nil() => T::try_convert(v)
            .map(Some)
            .map_err(|e| bad_argument(ruby, key, e)),
        _ => Ok(None),
    }
}

/// `opts[key]` as a duration in seconds (Integer or Float), `None` when absent or nil.
fn seconds(ruby: &Ruby, opts: RHash, key: &str) -> Result<Option<Duration>, Error> {
    let Some(secs) = get::<f64>(ruby, opts, key)? else {
        return Ok(None);
    };
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| bad_argument(ruby, key, format!("{secs} is not a number of seconds >= 0")))
}
