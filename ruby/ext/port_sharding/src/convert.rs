//! Core records (which derive `serde::Serialize`) → plain Ruby Hashes with Symbol keys, so `stats` and
//! `status` need no Ruby classes and follow any field the core adds.

use magnus::{Error, IntoValue, Ruby, Value};
use serde::Serialize;
use serde_json::Value as Json;

/// `record` as Ruby data: objects become Hashes with Symbol keys, arrays Arrays, and so on.
pub fn to_ruby<T: Serialize>(ruby: &Ruby, record: &T) -> Result<Value, Error> {
    let json = serde_json::to_value(record).map_err(|e| {
        Error::new(
            ruby.exception_runtime_error(),
            format!("cannot convert a record: {e}"),
        )
    })?;
    json_to_ruby(ruby, &json)
}

fn json_to_ruby(ruby: &Ruby, json: &Json) -> Result<Value, Error> {
    Ok(match json {
        Json::Null => ruby.qnil().into_value_with(ruby),
        Json::Bool(b) => b.into_value_with(ruby),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_value_with(ruby),
            (None, Some(i)) => i.into_value_with(ruby),
            _ => n.as_f64().unwrap_or(f64::NAN).into_value_with(ruby),
        },
        Json::String(s) => s.as_str().into_value_with(ruby),
        Json::Array(items) => {
            let array = ruby.ary_new_capa(items.len());
            for item in items {
                array.push(json_to_ruby(ruby, item)?)?;
            }
            array.into_value_with(ruby)
        }
        Json::Object(fields) => {
            let hash = ruby.hash_new();
            for (key, value) in fields {
                hash.aset(ruby.to_symbol(key), json_to_ruby(ruby, value)?)?;
            }
            hash.into_value_with(ruby)
        }
    })
}
