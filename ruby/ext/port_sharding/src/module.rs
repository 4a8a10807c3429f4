//! `PortSharding`'s native functions. The public methods (`serve`, `listen`, `status`, `stop`) are
//! defined in `lib/port_sharding.rb`, which checks the keywords and calls these underscored ones.

use std::os::fd::IntoRawFd;

use magnus::{function, prelude::*, Error, RArray, RHash, RModule, Ruby, Symbol, Value};
use port_sharding::{Server, StopReason};

use crate::errors::{from_panic, to_ruby};
use crate::nogvl::{nogvl, Outcome};
use crate::{convert, options};

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    module.const_set("CORE_VERSION", port_sharding::VERSION)?;
    module.define_singleton_method("_serve", function!(serve, 1))?;
    module.define_singleton_method("_listen", function!(listen, 3))?;
    module.define_singleton_method("_status", function!(status, 2))?;
    module.define_singleton_method("_stop", function!(stop, 2))?;
    module.define_singleton_method("_set_quiet", function!(port_sharding::set_quiet, 1))?;
    let _ = ruby;
    Ok(())
}

/// How many times `serve` retries starting when Ruby reports a pending interrupt that then raises
/// nothing (e.g. a signal whose trap handler returned): bounded so it cannot spin.
const START_ATTEMPTS: usize = 100;

/// Binds, forks the workers and supervises them until drained, without the GVL.
///
/// Signals: the engine owns SIGINT/SIGTERM while `run` runs on the main thread (`handle_signals`), so
/// Ctrl-C starts the drain at once and a second Ctrl-C stops at once, exactly as with the CLI, however
/// busy Ruby is, and without relying on how Ruby forwards a signal to a thread outside the GVL. Ruby's
/// handlers are restored when `run` returns; we then raise `Interrupt` as Ruby would have (a drained
/// SIGTERM returns `:terminate`, as the CLI exits 0 and Python's `serve` returns). Everything Ruby itself
/// interrupts us for (`Thread#raise`, `Timeout.timeout`, `Thread#kill`, a signal arriving before the
/// engine's handlers are in) reaches the unblocking function, which starts the same drain;
/// `thread_check_ints` then raises it. Off the main thread the engine leaves signals to Ruby.
fn serve(ruby: &Ruby, opts: RHash) -> Result<Symbol, Error> {
    let mut config = options::config(ruby, opts)?;
    config.handle_signals = true;
    let server = Server::bind(config).map_err(|e| to_ruby(ruby, e))?;
    let handle = server.handle();
    let mut server = Some(server);
    let mut attempts = 0;
    let result = loop {
        match nogvl(|| server.take().map(Server::run), || handle.shutdown()) {
            Outcome::Done(Some(result)) => break result,
            Outcome::Done(None) => return Err(from_panic(ruby, "server ran twice")),
            Outcome::Panicked(what) => return Err(from_panic(ruby, &what)),
            Outcome::NotRun => {
                // An interrupt was pending before we started: raise it (the bound sockets close as
                // `server` drops), or try again if it was handled without an exception.
                if let Err(e) = ruby.thread_check_ints() {
                    drop(server.take());
                    return Err(e);
                }
                attempts += 1;
                if attempts >= START_ATTEMPTS {
                    return Err(from_panic(
                        ruby,
                        "Ruby kept interrupting the start of the server",
                    ));
                }
            }
        }
    };
    // A pending Thread#raise / Timeout / trapped signal wins: it is why we drained.
    ruby.thread_check_ints()?;
    let report = result.map_err(|e| to_ruby(ruby, e))?;
    match report.reason {
        StopReason::Interrupt => Err(ruby.exception_interrupt().new_instance(())?.into()),
        // Like the CLI (exit 0) and the Python package: a drained SIGTERM is a normal end.
        StopReason::Terminate => Ok(ruby.to_symbol("terminate")),
        StopReason::Shutdown => Ok(ruby.to_symbol("shutdown")),
        StopReason::Stop => Ok(ruby.to_symbol("stop")),
        StopReason::TakenOver => Ok(ruby.to_symbol("taken_over")),
        // StopReason may grow; name it rather than fail.
        #[allow(unreachable_patterns)]
        other => Ok(ruby.to_symbol(format!("{other:?}").to_lowercase())),
    }
}

/// A blocking reuseport listener made by the core; Ruby wraps the fd with `Socket.for_fd`.
fn listen(ruby: &Ruby, host: String, port: u16, backlog: u32) -> Result<i32, Error> {
    let listener = port_sharding::listen(&host, port, backlog).map_err(|e| to_ruby(ruby, e))?;
    Ok(listener.into_raw_fd())
}

/// `status` of every server on `port` (and `host`, when given), as Hashes.
fn status(ruby: &Ruby, host: Option<String>, port: u16) -> Result<Value, Error> {
    let servers = without_gvl(ruby, || port_sharding::status(host.as_deref(), port))?;
    convert::to_ruby(ruby, &servers)
}

/// Asks every server on `port` to drain; their pids.
fn stop(ruby: &Ruby, host: Option<String>, port: u16) -> Result<RArray, Error> {
    let pids = without_gvl(ruby, || port_sharding::stop(host.as_deref(), port))?;
    Ok(ruby.ary_from_vec(pids))
}

/// A short control-socket exchange (the core bounds each with a 5 s timeout) with the GVL released, so
/// other Ruby threads run meanwhile. Not interruptible, and need not be.
fn without_gvl<T>(
    ruby: &Ruby,
    call: impl FnOnce() -> port_sharding::Result<T>,
) -> Result<T, Error> {
    let mut call = Some(call);
    for _ in 0..START_ATTEMPTS {
        match nogvl(|| call.take().map(|f| f()), || {}) {
            Outcome::Done(Some(result)) => return result.map_err(|e| to_ruby(ruby, e)),
            Outcome::Done(None) => break,
            Outcome::Panicked(what) => return Err(from_panic(ruby, &what)),
            Outcome::NotRun => ruby.thread_check_ints()?,
        }
    }
    Err(from_panic(ruby, "control request did not run"))
}
