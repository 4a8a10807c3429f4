//! `PortSharding`'s native functions. The public methods (`serve`, `listen`, `status`, `stop`) are
//! defined in `lib/port_sharding.rb`, which passes the given keywords to these underscored ones.

use std::io::Write as _;
use std::os::fd::IntoRawFd;

use magnus::{function, prelude::*, Error, RArray, RHash, RModule, Ruby, Value};
use port_sharding::{Host, Server, StopReason};

use crate::errors::to_ruby;
use crate::nogvl::nogvl;
use crate::settings;

pub fn init(module: RModule) -> Result<(), Error> {
    // The Cargo workspace's version: the engine's, the CLI's, the Python package's and this gem's.
    module.const_set("VERSION", port_sharding::VERSION)?;
    module.const_set("CORE_VERSION", port_sharding::VERSION)?;
    module.define_singleton_method("_serve", function!(serve, 2))?;
    module.define_singleton_method("_listen", function!(listen, 1))?;
    module.define_singleton_method("_status", function!(status, 2))?;
    module.define_singleton_method("_stop", function!(stop, 2))?;
    module.define_singleton_method("_reload", function!(reload, 4))?;
    module.define_singleton_method("_upgrade", function!(upgrade, 3))?;
    module.define_singleton_method("_set_upgrade_command", function!(set_upgrade_command, 1))?;
    module.define_singleton_method("_cli_main", function!(cli_main, 1))?;
    module.define_singleton_method("_settings", function!(settings::list, 0))?;
    module.define_singleton_method("_set_quiet", function!(port_sharding::set_quiet, 1))?;
    module.define_singleton_method(
        "_close_in_forked_child",
        function!(port_sharding::close_in_forked_child, 0),
    )?;
    Ok(())
}

/// Binds, forks the workers and supervises them until drained, without the GVL.
///
/// Signals: the engine owns SIGINT/SIGTERM while `run` runs on the main thread, so Ctrl-C starts the
/// drain at once and a second Ctrl-C stops at once, exactly as with the CLI, however busy Ruby is. Ruby's
/// handlers are restored when `run` returns; we then raise `Interrupt` as Ruby would have. Everything Ruby
/// itself interrupts us for (`Thread#raise`, `Timeout.timeout`, `Thread#kill`) reaches the unblocking
/// function, which starts the same drain; `thread_check_ints` then raises it.
///
/// `worker`: a block every worker runs (forked from this interpreter) instead of a built-in loop.
fn serve(ruby: &Ruby, given: RHash, worker: Option<Value>) -> Result<Value, Error> {
    let mut server = Server::bind(settings::config(ruby, given)?).map_err(|e| to_ruby(ruby, e))?;
    if let Some(block) = worker {
        server
            .set_function(crate::function::RbHost::shared(block))
            .map_err(|e| to_ruby(ruby, e))?;
    }
    let handle = server.handle();
    let result = nogvl(ruby, || server.run(), || handle.stop())?;
    // A pending Thread#raise / Timeout / trapped signal wins: it is why we drained.
    ruby.thread_check_ints()?;
    let report = result.map_err(|e| to_ruby(ruby, e))?;
    match report.reason {
        StopReason::Interrupt => Err(Error::from(ruby.exception_interrupt().new_instance(())?)),
        _ => crate::server::report(ruby, report),
    }
}

/// A blocking reuseport listener made by the core for `port:`, `host:`, `backlog:`; Ruby wraps the fd
/// with `Socket.for_fd`.
fn listen(ruby: &Ruby, given: RHash) -> Result<i32, Error> {
    let c = settings::config(ruby, given)?;
    let listener =
        port_sharding::listen(&c.host, c.port, c.backlog).map_err(|e| to_ruby(ruby, e))?;
    Ok(listener.into_raw_fd())
}

/// `record` as JSON, which Ruby reads into Hashes with Symbol keys, so `stats` and `status` follow any
/// field the engine adds.
pub fn json<T: serde::Serialize>(ruby: &Ruby, record: &T) -> Result<String, Error> {
    serde_json::to_string(record)
        .map_err(|e| to_ruby(ruby, port_sharding::Error::Internal(e.to_string())))
}

/// `status` of every server on the port in `given` (and `host`, when given), as JSON.
fn status(ruby: &Ruby, given: RHash, host: Option<String>) -> Result<String, Error> {
    let port = settings::config(ruby, given)?.port;
    let servers = control(ruby, || port_sharding::status(host.as_deref(), port))?;
    json(ruby, &servers)
}

/// Asks every server on the port in `given` (and `host`) to drain; their pids.
fn stop(ruby: &Ruby, given: RHash, host: Option<String>) -> Result<RArray, Error> {
    let port = settings::config(ruby, given)?.port;
    let pids = control(ruby, || port_sharding::stop(host.as_deref(), port))?;
    Ok(ruby.ary_from_vec(pids))
}

/// Reloads every server on the port in `given` (and `host`, or supervisor `pid`) in place, `batch` at a
/// time; the reports as JSON. Waits (GVL released) until each reload is over.
fn reload(
    ruby: &Ruby,
    given: RHash,
    host: Option<String>,
    pid: Option<u32>,
    batch: Option<usize>,
) -> Result<String, Error> {
    let port = settings::config(ruby, given)?.port;
    let reports = control(ruby, || {
        port_sharding::reload(host.as_deref(), port, pid, batch)
    })?;
    json(ruby, &reports)
}

/// Upgrades every server on the port in `given` (and `host`, or supervisor `pid`) in place: each starts its
/// successor, which takes its sockets over; the reports as JSON. Waits (GVL released) until each is over.
fn upgrade(
    ruby: &Ruby,
    given: RHash,
    host: Option<String>,
    pid: Option<u32>,
) -> Result<String, Error> {
    let port = settings::config(ruby, given)?.port;
    let reports = control(ruby, || port_sharding::upgrade(host.as_deref(), port, pid))?;
    json(ruby, &reports)
}

/// How an upgrade starts this program again (the interpreter and its command line, as Ruby saw it at load).
fn set_upgrade_command(argv: Vec<String>) {
    port_sharding::set_upgrade_command(argv.into_iter().map(Into::into).collect());
}

/// A short control-socket exchange (the core bounds each with a 5 s timeout) with the GVL released, so
/// other Ruby threads run meanwhile; not interruptible, and need not be.
fn control<T>(ruby: &Ruby, call: impl Fn() -> port_sharding::Result<T>) -> Result<T, Error> {
    nogvl(ruby, call, || {})?.map_err(|e| to_ruby(ruby, e))
}

/// The `port-sharding` command line (`args[0]` is the program name): the engine's own, which prints help,
/// tables and errors itself; returns the exit status. The GVL is released for the whole call (`serve`
/// blocks until drained); Ruby's interrupts start the drain of the server it runs.
fn cli_main(ruby: &Ruby, args: Vec<String>) -> Result<u8, Error> {
    let code = nogvl(
        ruby,
        || port_sharding_cli::main(args.clone(), Host::Ruby),
        port_sharding_cli::interrupt,
    );
    // Rust's stdout buffers a line at most, but Ruby's `exit` would not flush it.
    std::io::stdout().flush().ok();
    let code = code?;
    ruby.thread_check_ints()?;
    Ok(code)
}
