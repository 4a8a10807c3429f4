//! Core errors → Ruby exceptions. The classes are declared in Ruby (`lib/port_sharding/error.rb`) so they
//! carry documentation; here we only pick the class and its arguments.
//!
//! | core variant | Ruby |
//! |---|---|
//! | `InvalidArgument` | `PortSharding::ConfigError` (an `ArgumentError`), `#keyword` names the argument |
//! | `AddrInUse`, `PermissionDenied`, `Io` | `SystemCallError.new(msg, errno)`, i.e. `Errno::EADDRINUSE` … |
//! | `InvalidAddress` | `PortSharding::AddressError` |
//! | `Unsupported` | `PortSharding::UnsupportedPlatformError` |
//! | `NotRunning` | `PortSharding::NotRunningError` |
//! | `Takeover` | `PortSharding::TakeoverError` |
//! | `Control` | `PortSharding::ControlError` |

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};

/// The Ruby exception for a core error.
pub fn to_ruby(ruby: &Ruby, err: port_sharding::Error) -> Error {
    use port_sharding::Error as E;
    let message = err.to_string();
    if let Some(errno) = err.errno() {
        // SystemCallError.new picks the Errno:: subclass, so `rescue Errno::EADDRINUSE` works.
        return match ruby
            .exception_system_call_error()
            .new_instance((message.clone(), errno))
        {
            Ok(exception) => exception.into(),
            Err(_) => Error::new(ruby.exception_runtime_error(), message),
        };
    }
    let name = match &err {
        E::InvalidArgument { name, .. } => return raise(ruby, "ConfigError", (message, *name)),
        E::InvalidAddress { .. } => "AddressError",
        E::Unsupported { .. } => "UnsupportedPlatformError",
        E::NotRunning { .. } => "NotRunningError",
        E::Takeover(_) => "TakeoverError",
        E::Control(_) => "ControlError",
        // The core enum is non_exhaustive: a variant added later still raises our base class.
        _ => "Error",
    };
    raise(ruby, name, (message,))
}

/// `PortSharding::Error` for a Rust panic caught before it reached Ruby.
pub fn from_panic(ruby: &Ruby, what: &str) -> Error {
    let message = format!("internal error in the port-sharding engine (please report it): {what}");
    raise(ruby, "Error", (message,))
}

/// `PortSharding::<name>` with `message`, e.g. for a misuse the engine cannot see.
pub fn error(ruby: &Ruby, name: &str, message: String) -> Error {
    raise(ruby, name, (message,))
}

/// `ArgumentError` naming the keyword, for a value Ruby handed us that does not fit.
pub fn bad_argument(ruby: &Ruby, keyword: &str, reason: impl std::fmt::Display) -> Error {
    raise(
        ruby,
        "ConfigError",
        (format!("invalid {keyword}: {reason}"), keyword.to_string()),
    )
}

fn raise<A: magnus::ArgList>(ruby: &Ruby, name: &str, args: A) -> Error {
    let built = ruby
        .class_object()
        .const_get::<_, RModule>("PortSharding")
        .and_then(|m| m.const_get::<_, ExceptionClass>(name))
        .and_then(|class| class.new_instance(args));
    match built {
        Ok(exception) => exception.into(),
        // Only if lib/port_sharding/error.rb was not loaded: still raise something readable.
        Err(e) => e,
    }
}
