//! The public face of a server: [`Server`] (bound, then run in the foreground or started in the
//! background), [`Handle`] (stop it or read it from any thread) and [`Running`] (a server started on a
//! thread of its own, which every host — the CLI, Python, Ruby — waits on the same way).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::function::FunctionHost;
use crate::lifecycle::{Phase, Report};
use crate::stats::WorkerStats;
use crate::supervisor::{self, Bound, Shared};

/// A bound server: listeners are open (connections queue from now on); [`Server::run`] or
/// [`Server::start`] starts the workers.
pub struct Server {
    bound: Bound,
}

impl Server {
    /// Validates `config`, binds `workers` reuseport listeners (or adopts a running server's on `takeover`)
    /// and opens the control socket.
    ///
    /// # Errors
    /// Bad settings, an address that cannot be bound, a failed takeover (the old server keeps serving).
    pub fn bind(config: Config) -> Result<Server> {
        supervisor::bind(config).map(|bound| Server { bound })
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.bound.addr.port()
    }

    /// Number of workers `run` will start (more than `Config::workers` when a takeover received more sockets).
    pub fn workers(&self) -> usize {
        self.bound.workers()
    }

    /// Makes every worker run the host's function ([`FunctionHost`]) instead of a built-in loop or a
    /// command: forked through `host`, and supervised as any worker (ready at its first accept, drained
    /// through its pipe, killed at `drain_timeout`, restarted, reloaded one at a time).
    ///
    /// # Errors
    /// [`Config::command`] is set too.
    pub fn set_function(&mut self, host: Arc<dyn FunctionHost>) -> Result<()> {
        self.bound.set_function(host)
    }

    /// A handle to stop the server or read its stats from another thread.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.bound.shared.clone(),
        }
    }

    /// Forks the workers and supervises them on this thread until drained. Blocks.
    ///
    /// # Errors
    /// A failed `fork` or `epoll`; workers already started are stopped first.
    pub fn run(self) -> Result<Report> {
        supervisor::run(self.bound)
    }

    /// Runs the server on a thread of its own and returns at once; wait on the [`Running`] it gives.
    /// Signals are left to the host (a background server installs no handlers).
    ///
    /// # Errors
    /// The thread could not be spawned (the listeners are closed then).
    pub fn start(mut self) -> Result<Running> {
        self.bound.config.handle_signals = false;
        let handle = self.handle();
        let outcome = Arc::new(Outcome::default());
        let done = outcome.clone();
        let thread = std::thread::Builder::new()
            .name(format!("port-sharding {}", self.bound.addr))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(move || self.run()))
                    .unwrap_or_else(|panic| Err(Error::from_panic(panic.as_ref())));
                done.set(result);
            })
            .map_err(|e| Error::io("spawn the server thread", e))?;
        Ok(Running {
            handle,
            outcome,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// A cloneable remote control for a server running on another thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Starts a graceful drain, as SIGTERM would. Returns at once.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // The waker fails only if the supervisor's epoll is gone, i.e. the run already returned.
        self.shared.waker.wake().ok();
    }

    /// Per-worker counters, read from shared memory.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.shared.stats.snapshot()
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Where the server is in its life now.
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Waits until every worker serves; `false` when `timeout` passed first (`None`: no limit) or the
    /// server began to drain or stopped before it was ready.
    pub fn wait_ready(&self, timeout: Option<Duration>) -> bool {
        let phase = self.shared.wait_until(timeout, |p| p != Phase::Starting);
        matches!(phase, Phase::Serving | Phase::HandingOver)
    }

    /// Waits until the phase is at least `phase` (e.g. [`Phase::Stopped`]); returns whether it got there
    /// within `timeout` (`None`: no limit).
    pub fn wait_phase(&self, phase: Phase, timeout: Option<Duration>) -> bool {
        self.shared.wait_until(timeout, |p| p >= phase) >= phase
    }
}

/// How a background run ended, once it has.
#[derive(Default)]
struct Outcome {
    result: Mutex<Option<Result<Report>>>,
    done: Condvar,
}

impl Outcome {
    fn lock(&self) -> MutexGuard<'_, Option<Result<Report>>> {
        self.result.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, result: Result<Report>) {
        *self.lock() = Some(result);
        self.done.notify_all();
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<Result<Report>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut result = self.lock();
        while result.is_none() {
            result = match deadline {
                None => self.done.wait(result).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.done
                        .wait_timeout(result, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        result.clone()
    }
}

/// A server running on a thread of its own ([`Server::start`]). Dropping it starts a drain and does not
/// wait for it.
pub struct Running {
    handle: Handle,
    outcome: Arc<Outcome>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    /// The server's handle (phase, stats, address, shutdown).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Waits until every worker serves, at most `timeout` (`None`: no limit). `Ok(true)` when serving,
    /// `Ok(false)` on timeout; the run's error when it ended before it was ready.
    ///
    /// # Errors
    /// What the run failed with (e.g. a failed fork), or [`Error::Control`] when it stopped before it
    /// was ready without an error (a `stop` request came first).
    pub fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool> {
        if self.handle.wait_ready(timeout) {
            return Ok(true);
        }
        if self.handle.phase() == Phase::Starting {
            return Ok(false);
        }
        match self.wait(None) {
            Some(Err(e)) => Err(e),
            _ => Err(Error::Control(format!(
                "the server on {} stopped before it was ready",
                self.handle.local_addr()
            ))),
        }
    }

    /// Waits until the run has returned, at most `timeout` (`None`: no limit); `None` when it has not.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Result<Report>> {
        let result = self.outcome.wait(timeout)?;
        // The thread has set its outcome and is about to end: reap it so no thread outlives the server.
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            t.join().ok();
        }
        Some(result)
    }

    /// Starts a drain and waits until it is over, at most `timeout` (`None`: no limit); `None` when it
    /// is still draining then (it goes on, bounded by `drain_timeout`).
    pub fn stop(&self, timeout: Option<Duration>) -> Option<Result<Report>> {
        self.handle.shutdown();
        self.wait(timeout)
    }

    /// Whether the run has returned.
    pub fn is_finished(&self) -> bool {
        self.outcome.lock().is_some()
    }
}

impl Drop for Running {
    /// A running server nobody holds any more drains rather than serve forever.
    fn drop(&mut self) {
        if !self.is_finished() {
            self.handle.shutdown();
        }
    }
}
