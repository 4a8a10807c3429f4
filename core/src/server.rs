//! The public face of a server, and the one lifecycle every host drives: a [`Server`] is bound, then
//! runs once — on the caller's thread ([`Server::run`]), on the engine's own thread ([`Server::start`]) or
//! on a thread the host makes ([`Server::start_on`]) — and is then done, with a [`Report`]. It is shared
//! between threads: any of them may wait for it or stop it, and each gets the same report. A [`Handle`]
//! stops it or reads it from anywhere, without the report.
//!
//! The CLI, Python and Ruby all go through these calls. A host whose interpreter lock must be released
//! while the engine waits (Python's GIL, Ruby's GVL) passes a `between` callback to the `*_with` calls: it
//! runs between slices of every wait ([`SLICE`]), takes the lock back for a moment and checks for
//! signals or interrupts; an error it returns ends the wait and is returned as is.

use std::io;
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

/// How long a wait lasts before the host's `between` callback runs again: how soon Ctrl-C is noticed.
pub const SLICE: Duration = Duration::from_millis(100);

/// How long a start that was not ready in time waits for the drain it begins, before it reports so.
const UNDO_START: Duration = Duration::from_secs(10);

/// A server, from `bind` until it is done: listeners are open (connections queue) from [`Server::bind`]
/// on; it runs once. Share it between threads by reference (it is `Sync`); dropping it while it runs on
/// another thread starts a drain and does not wait for it.
pub struct Server {
    handle: Handle,
    addr: SocketAddr,
    workers: usize,
    life: Arc<Life>,
    /// The engine's own thread, once [`Server::start`] made it: joined when the run is done.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Where a server is in its one run, with a condition variable for the threads waiting on it.
struct Life {
    state: Mutex<State>,
    changed: Condvar,
}

enum State {
    /// Bound; nothing runs yet.
    Bound(Box<Bound>),
    /// Running on some thread, or handed to a host's thread ([`Job`]) that will run it.
    Running,
    /// Done: how the run ended (a server stopped before it ran ended with [`Report::unstarted`]).
    Done(Result<Report>),
}

impl Life {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is one assignment: a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bound → Running: the bound server, for the one run.
    fn claim(&self, addr: SocketAddr) -> Result<Box<Bound>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Running) {
            State::Bound(bound) => Ok(bound),
            other => {
                let done = matches!(other, State::Done(_));
                *state = other;
                Err(Error::InvalidState(format!(
                    "the server on {addr} was already {}; bind a new one",
                    if done { "stopped" } else { "started" }
                )))
            }
        }
    }

    /// → Done: records how the run ended and wakes every waiter.
    fn finish(&self, result: Result<Report>) {
        *self.lock() = State::Done(result);
        self.changed.notify_all();
    }
}

/// A run claimed from a [`Server`] by [`Server::start_on`], for a thread the host makes: [`Job::run`]
/// there. Dropped without running, the server ends as if stopped before it ran.
pub struct Job {
    life: Arc<Life>,
    bound: Option<Box<Bound>>,
}

impl Job {
    /// Forks the workers and supervises them on this thread until drained (blocks), then records how it
    /// ended for every waiter and returns that. A panic in the engine becomes [`Error::Internal`].
    ///
    /// # Errors
    /// A failed `fork` or `epoll`; workers already started are stopped first.
    pub fn run(mut self) -> Result<Report> {
        let Some(bound) = self.bound.take() else {
            return Err(Error::Internal("a server job ran twice".into()));
        };
        let result = catch_unwind(AssertUnwindSafe(move || supervisor::run(*bound)))
            .unwrap_or_else(|panic| Err(Error::from_panic(panic.as_ref())));
        self.life.finish(result.clone());
        result
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(bound) = self.bound.take() {
            drop(bound); // closes the listeners before anyone learns the server is done
            self.life.finish(Ok(Report::unstarted()));
        }
    }
}

/// When a wait of `timeout` begun now ends (`None`: never).
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// The next slice of a wait that ends at `deadline`.
fn slice(deadline: Option<Instant>) -> Duration {
    deadline.map_or(SLICE, |d| {
        d.saturating_duration_since(Instant::now()).min(SLICE)
    })
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// The `between` of a host with no lock to take back (Rust programs, the CLI).
fn nothing() -> Result<()> {
    Ok(())
}

impl Server {
    /// Validates `config`, binds `workers` reuseport listeners (or adopts a running server's on `takeover`)
    /// and opens the control socket.
    ///
    /// # Errors
    /// Bad settings, an address that cannot be bound, a failed takeover (the old server keeps serving).
    pub fn bind(config: Config) -> Result<Server> {
        let bound = supervisor::bind(config)?;
        Ok(Server {
            handle: Handle {
                shared: bound.shared.clone(),
            },
            addr: bound.addr,
            workers: bound.workers(),
            life: Arc::new(Life {
                state: Mutex::new(State::Bound(Box::new(bound))),
                changed: Condvar::new(),
            }),
            thread: Mutex::new(None),
        })
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Number of workers the run starts (more than `Config::workers` when a takeover received more sockets).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Makes every worker run the host's function ([`FunctionHost`]) instead of a built-in loop or a
    /// command: forked through `host`, and supervised as any worker (ready at its first accept, drained
    /// through its pipe, killed at `drain_timeout`, restarted, reloaded one at a time).
    ///
    /// # Errors
    /// [`Config::command`] is set too, or the server already started.
    pub fn set_function(&mut self, host: Arc<dyn FunctionHost>) -> Result<()> {
        let mut state = self.life.lock();
        let State::Bound(bound) = &mut *state else {
            return Err(Error::InvalidState(format!(
                "the server on {} already started: give the worker function before",
                self.addr
            )));
        };
        bound.set_function(host)
    }

    /// A handle to stop the server or read its stats from another thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Where the server is in its life now (`stopped` too once it was stopped before it ran).
    pub fn phase(&self) -> Phase {
        match &*self.life.lock() {
            State::Done(_) => Phase::Stopped,
            _ => self.handle.phase(),
        }
    }

    /// Whether it left `bind` behind: run, started or stopped.
    pub fn is_started(&self) -> bool {
        !matches!(&*self.life.lock(), State::Bound(_))
    }

    /// Whether it runs now: started and not done.
    pub fn is_running(&self) -> bool {
        matches!(&*self.life.lock(), State::Running)
    }

    /// Forks the workers and supervises them on this thread until drained. Blocks. With
    /// [`Config::handle_signals`], on the main thread, SIGINT/SIGTERM/SIGQUIT drain it meanwhile.
    ///
    /// # Errors
    /// It already started or was stopped ([`Error::InvalidState`]); a failed `fork` or `epoll` (workers
    /// already started are stopped first).
    pub fn run(&self) -> Result<Report> {
        self.claim()?.run()
    }

    fn claim(&self) -> Result<Job> {
        Ok(Job {
            bound: Some(self.life.claim(self.addr)?),
            life: self.life.clone(),
        })
    }

    /// Runs the server on a thread of its own and returns once every worker serves, at most `timeout`
    /// (`None`: no limit). Signals are left to the host (a started server installs no handlers).
    ///
    /// # Errors
    /// As [`Server::start_with`].
    pub fn start(&self, timeout: Option<Duration>) -> Result<()> {
        self.start_with(timeout, nothing)
    }

    /// [`Server::start`], calling `between` between slices of the wait for the workers.
    ///
    /// # Errors
    /// It already started ([`Error::InvalidState`]); the thread could not be made; the run failed or
    /// stopped before it was ready (its error, or [`Error::Control`]); not ready within `timeout`
    /// ([`Error::Control`], after stopping it); `between` failed (its error, after starting the drain).
    pub fn start_with<E: From<Error>>(
        &self,
        timeout: Option<Duration>,
        between: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.start_on(|job| {
            let thread = std::thread::Builder::new()
                .name(format!("port-sharding {}", self.addr))
                .spawn(move || {
                    job.run().ok(); // recorded for the waiters
                })?;
            *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
            Ok(())
        })?;
        self.wait_started_with(timeout, between)
    }

    /// Claims the run and hands it to `spawn`, which must run the [`Job`] on a thread it makes (a host
    /// whose workers fork through its interpreter may need the supervisor on one of its own threads);
    /// returns at once. Signals are left to the host. Then wait with [`Server::wait_started_with`].
    ///
    /// # Errors
    /// It already started ([`Error::InvalidState`]); `spawn` failed (the server is then done).
    pub fn start_on(&self, spawn: impl FnOnce(Job) -> io::Result<()>) -> Result<()> {
        let mut job = self.claim()?;
        if let Some(bound) = job.bound.as_mut() {
            bound.config.handle_signals = false;
        }
        spawn(job).map_err(|e| {
            let e = Error::io("start the server's thread", e);
            self.life.finish(Err(e.clone()));
            e
        })
    }

    /// Waits until every worker of a started server serves, at most `timeout` (`None`: no limit), calling
    /// `between` between slices. A start that does not get there is undone, so that no server is left
    /// running that nobody waits for: not ready in time, it is stopped; `between` failed, it drains.
    ///
    /// # Errors
    /// As [`Server::start_with`].
    pub fn wait_started_with<E: From<Error>>(
        &self,
        timeout: Option<Duration>,
        mut between: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match self.wait_ready_with(timeout, &mut between) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.stop_with(Some(UNDO_START), &mut between)?;
                let within = timeout.map_or_else(String::new, |t| format!(" within {t:?}"));
                Err(
                    Error::Control(format!("the server on {} was not ready{within}", self.addr))
                        .into(),
                )
            }
            Err(e) => {
                self.handle.stop();
                Err(e)
            }
        }
    }

    /// Waits until every worker serves: `true`; `false` when `timeout` passed first (a server not
    /// started yet is not ready).
    fn wait_ready_with<E: From<Error>>(
        &self,
        timeout: Option<Duration>,
        mut between: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<bool, E> {
        let until = deadline(timeout);
        loop {
            if self.handle.wait_ready(Some(slice(until))) {
                return Ok(true);
            }
            if self.phase() != Phase::Starting {
                // It drains or stopped before it was ready: its error once it is done, if it failed.
                self.wait_with(None, &mut between)?;
                return Err(Error::Control(format!(
                    "the server on {} stopped before it was ready",
                    self.addr
                ))
                .into());
            }
            if passed(until) {
                return Ok(false);
            }
            between()?;
        }
    }

    /// Waits until the run is done, at most `timeout` (`None`: no limit): its [`Report`], or `None` when
    /// `timeout` passed first. Every waiter, on any thread, gets the same report, as often as it asks.
    ///
    /// # Errors
    /// As [`Server::wait_with`].
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<Report>> {
        self.wait_with(timeout, nothing)
    }

    /// [`Server::wait`], calling `between` between slices.
    ///
    /// # Errors
    /// What the run failed with (each time it is asked); [`Error::InvalidState`] when it was never
    /// started (nothing would end the wait); what `between` returned.
    pub fn wait_with<E: From<Error>>(
        &self,
        timeout: Option<Duration>,
        mut between: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Option<Report>, E> {
        let until = deadline(timeout);
        loop {
            let state = self.life.lock();
            let (state, _) = self
                .life
                .changed
                .wait_timeout_while(state, slice(until), |s| matches!(s, State::Running))
                .unwrap_or_else(|e| e.into_inner());
            match &*state {
                State::Bound(_) => {
                    return Err(Error::InvalidState(format!(
                        "the server on {} has not started: start it first",
                        self.addr
                    ))
                    .into())
                }
                State::Done(result) => {
                    let result = result.clone();
                    drop(state);
                    self.join_thread();
                    return Ok(Some(result?));
                }
                State::Running => {}
            }
            drop(state); // `between` may take the host's lock: never while holding ours
            if passed(until) {
                return Ok(None);
            }
            between()?;
        }
    }

    /// The engine's thread has recorded the outcome and is ending: reap it, so no thread outlives the run.
    fn join_thread(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            t.join().ok();
        }
    }

    /// Stops the server and waits until it is done, at most `timeout` (`None`: no limit): a running one
    /// drains (as SIGTERM would, reason [`StopReason::Stop`](crate::StopReason::Stop)); one that never ran closes its
    /// listeners ([`Report::unstarted`]); one already done reports again how it ended. `None` when
    /// `timeout` passed first (the drain goes on, bounded by `drain_timeout`).
    ///
    /// # Errors
    /// As [`Server::stop_with`].
    pub fn stop(&self, timeout: Option<Duration>) -> Result<Option<Report>> {
        self.stop_with(timeout, nothing)
    }

    /// [`Server::stop`], calling `between` between slices.
    ///
    /// # Errors
    /// What the run failed with; what `between` returned.
    pub fn stop_with<E: From<Error>>(
        &self,
        timeout: Option<Duration>,
        between: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Option<Report>, E> {
        if let Ok(job) = self.claim() {
            drop(job); // never ran: its listeners close, and it is done
        }
        self.handle.stop();
        self.wait_with(timeout, between)
    }
}

impl Drop for Server {
    /// A server running on another thread that nobody holds any more drains rather than serve forever.
    fn drop(&mut self) {
        if self.is_running() {
            self.handle.stop();
        }
    }
}

/// A cloneable remote control for a server running on another thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Starts a graceful drain, as SIGTERM would. Returns at once.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
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
