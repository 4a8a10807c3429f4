//! Ruby blocks as workers: the fork (GVL held, Ruby's own `Process._fork`, so Ruby's at-fork work and
//! hooks run) and the call into `PortSharding._run_worker`; `PortSharding::Listener` wraps the engine's
//! [`WorkerListener`] primitives (the Ruby side adds `socket`, `accept` and `each`).

use std::convert::Infallible;
use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use magnus::value::Opaque;
use magnus::{method, prelude::*, Error, RModule, Ruby, Value};
use port_sharding::{Accept, FunctionHost, Receive, WorkerListener};

use crate::nogvl::{nogvl, with_gvl};
use crate::settings;

/// The block every worker runs. Ruby keeps it alive: `serve`'s caller holds it, a `Server` has it in
/// `@worker`.
pub struct RbHost {
    block: Opaque<Value>,
}

impl RbHost {
    pub fn shared(block: Value) -> Arc<dyn FunctionHost> {
        Arc::new(RbHost {
            block: Opaque::from(block),
        })
    }
}

impl FunctionHost for RbHost {
    /// Called on the supervisor's thread, a Ruby thread without the GVL (`serve` released it;
    /// `Server#start` runs the supervisor on a `Thread`): take the GVL and fork through `Process._fork`.
    fn fork(&self, in_child: &mut dyn FnMut() -> Infallible) -> io::Result<u32> {
        let forked = with_gvl(|| -> io::Result<u32> {
            let ruby = Ruby::get().map_err(|e| io::Error::other(e.to_string()))?;
            let process: RModule = ruby
                .class_object()
                .const_get("Process")
                .map_err(|e| io::Error::other(e.to_string()))?;
            let pid: Option<i64> = process
                .funcall("_fork", ())
                .map_err(|e| io::Error::other(e.to_string()))?;
            match pid {
                Some(0) | None => match in_child() {},
                Some(pid) => Ok(pid as u32),
            }
        });
        forked.unwrap_or_else(|_| Err(io::Error::other("a panic while forking")))
    }

    /// In the child, still inside `fork`'s GVL.
    fn run(&self, listener: Arc<WorkerListener>) -> i32 {
        let Ok(ruby) = Ruby::get() else { return 1 };
        let block = ruby.get_inner(self.block);
        let run = || -> Result<i32, Error> {
            let module: RModule = ruby.class_object().const_get("PortSharding")?;
            module.funcall(
                "_run_worker",
                (
                    block,
                    RbListener {
                        inner: listener,
                        buf: std::sync::Mutex::new(Vec::new()),
                    },
                ),
            )
        };
        run().unwrap_or_else(|e| {
            eprintln!("port-sharding: the worker could not run: {e}");
            1
        })
    }
}

/// `PortSharding::Listener`'s native half.
#[magnus::wrap(class = "PortSharding::Listener", free_immediately, size)]
pub struct RbListener {
    inner: Arc<WorkerListener>,
    /// `_receive`'s buffer (room for the largest datagram), made on its first call.
    buf: std::sync::Mutex<Vec<u8>>,
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("Listener", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_method("index", method!(RbListener::index, 0))?;
    class.define_method("fileno", method!(RbListener::fileno, 0))?;
    class.define_method("drain_fileno", method!(RbListener::drain_fileno, 0))?;
    class.define_method("draining?", method!(RbListener::draining, 0))?;
    class.define_method("drained?", method!(RbListener::drained, 0))?;
    class.define_method("ready", method!(RbListener::ready, 0))?;
    class.define_method("_accept", method!(RbListener::accept, 1))?;
    class.define_method("udp?", method!(RbListener::udp, 0))?;
    class.define_method("_receive", method!(RbListener::receive, 1))?;
    Ok(())
}

impl RbListener {
    fn index(&self) -> usize {
        self.inner.index()
    }

    fn fileno(&self) -> i32 {
        self.inner.fileno()
    }

    fn drain_fileno(&self) -> i32 {
        self.inner.drain_fileno()
    }

    fn draining(&self) -> bool {
        self.inner.draining()
    }

    fn drained(&self) -> bool {
        self.inner.drained()
    }

    fn ready(&self) {
        self.inner.ready()
    }

    fn udp(&self) -> bool {
        self.inner.is_udp()
    }

    /// The next datagram as `[data, host, port]` (data a binary String), or nil once drained or after
    /// `timeout` seconds. The GVL is released while waiting.
    fn receive(
        ruby: &Ruby,
        rb_self: &Self,
        timeout: Option<f64>,
    ) -> Result<Option<(magnus::RString, String, u16)>, Error> {
        let until = settings::timeout(ruby, timeout)?.and_then(|t| Instant::now().checked_add(t));
        let inner = &rb_self.inner;
        let mut buf = rb_self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.is_empty() {
            buf.resize(65_536, 0);
        }
        loop {
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            let got = nogvl(ruby, || inner.receive(&mut buf, left), || inner.wake())?;
            match got.map_err(|e| {
                crate::errors::to_ruby(ruby, port_sharding::Error::io("recvfrom", e))
            })? {
                Receive::Datagram { len, from, .. } => {
                    let data = ruby.str_from_slice(&buf[..len]);
                    return Ok(Some((data, from.ip().to_string(), from.port())));
                }
                Receive::Drained | Receive::TimedOut => return Ok(None),
                Receive::Interrupted => ruby.thread_check_ints()?,
            }
            if left.is_some_and(|l| l == Duration::ZERO) {
                return Ok(None);
            }
        }
    }

    /// The next connection's fd, or nil once drained or after `timeout` seconds. The GVL is released while
    /// waiting (other threads run); Ruby's interrupts (Thread#raise, Timeout, trapped signals) wake it.
    fn accept(ruby: &Ruby, rb_self: &Self, timeout: Option<f64>) -> Result<Option<i32>, Error> {
        let until = settings::timeout(ruby, timeout)?.and_then(|t| Instant::now().checked_add(t));
        let inner = &rb_self.inner;
        // Under load a connection is usually queued already: take it without releasing the GVL.
        if let Ok(Accept::Connection(fd)) = inner.accept(Some(Duration::ZERO)) {
            return Ok(Some(fd.into_raw_fd()));
        }
        loop {
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            let got = nogvl(ruby, || inner.accept(left), || inner.wake())?;
            match got
                .map_err(|e| crate::errors::to_ruby(ruby, port_sharding::Error::io("accept", e)))?
            {
                Accept::Connection(fd) => return Ok(Some(fd.into_raw_fd())),
                Accept::Drained | Accept::TimedOut => return Ok(None),
                Accept::Interrupted => ruby.thread_check_ints()?,
            }
            if left.is_some_and(|l| l == Duration::ZERO) {
                return Ok(None);
            }
        }
    }
}
