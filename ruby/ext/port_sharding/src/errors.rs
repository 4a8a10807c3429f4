//! Core errors → Ruby exceptions. The classes are declared in Ruby (`lib/port_sharding/error.rb`) so they
//! carry documentation; here we only pick the class and its arguments, one class per core variant:
//!
//! | core variant | Ruby |
//! |---|---|
//! | `InvalidArgument` | `PortSharding::ConfigError` (an `ArgumentError`), `#keyword` names the setting |
//! | `WrongType` | `PortSharding::SettingTypeError` (a `ConfigError`), `#keyword` names the setting |
//! | `AddrInUse`, `PermissionDenied`, `Io` | `SystemCallError.new(msg, errno)`, i.e. `Errno::EADDRINUSE` … |
//! | `InvalidAddress` | `PortSharding::AddressError` |
//! | `NotRunning` | `PortSharding::NotRunningError` |
//! | `Takeover` | `PortSharding::TakeoverError` |
//! | `Control` | `PortSharding::ControlError` |
//! | `InvalidState` | `PortSharding::InvalidStateError` |
//! | `Internal` (a caught panic) | `PortSharding::Error` |

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};

/// The Ruby exception for a core error.
pub fn to_ruby(ruby: &Ruby, err: port_sharding::Error) -> Error {
    use port_sharding::Error as E;
    let message = err.to_string();
    let class = match &err {
        E::InvalidArgument { name, .. } => return raise(ruby, "ConfigError", (message, *name)),
        E::WrongType { name, .. } => return raise(ruby, "SettingTypeError", (message, *name)),
        E::AddrInUse { .. } | E::PermissionDenied { .. } | E::Io { .. } => match err.errno() {
            // SystemCallError.new picks the Errno:: subclass, so `rescue Errno::EADDRINUSE` works.
            Some(errno) => {
                let class = ruby.exception_system_call_error();
                return match class.new_instance((message.clone(), errno)) {
                    Ok(exception) => exception.into(),
                    Err(e) => e,
                };
            }
            None => "Error",
        },
        E::InvalidAddress { .. } => "AddressError",
        E::NotRunning { .. } => "NotRunningError",
        E::Takeover(_) => "TakeoverError",
        E::Control(_) => "ControlError",
        E::InvalidState(_) => "InvalidStateError",
        E::Internal(_) => "Error",
        // The core enum is non_exhaustive: a variant added later still raises our base class.
        _ => "Error",
    };
    raise(ruby, class, (message,))
}

/// `PortSharding::<name>.new(*args)`.
pub fn raise<A: magnus::ArgList>(ruby: &Ruby, name: &str, args: A) -> Error {
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
