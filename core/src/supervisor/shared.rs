//! What the supervisor shares with [`crate::Handle`]s on other threads: the stop flag and its waker,
//! the counters, and the phase with a condition variable, so waiting for `serving` or `stopped` never
//! sleep-polls.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::lifecycle::Phase;
use crate::stats::StatsArea;

pub(crate) struct Shared {
    pub(crate) waker: Waker,
    /// Set by [`crate::Handle::stop`]: drain.
    pub(crate) stop: AtomicBool,
    pub(crate) stats: Arc<StatsArea>,
    pub(crate) addr: SocketAddr,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Shared {
    pub(crate) fn new(waker: Waker, stats: Arc<StatsArea>, addr: SocketAddr) -> Shared {
        Shared {
            waker,
            stop: AtomicBool::new(false),
            stats,
            addr,
            phase: Mutex::new(Phase::Starting),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        // Nothing is left half-done under this lock: a poisoned one is still right.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.lock()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        *self.lock() = phase;
        self.changed.notify_all();
    }

    /// Waits until `done(phase)` holds, at most `timeout` (`None`: no limit); returns the phase then.
    pub(crate) fn wait_until(
        &self,
        timeout: Option<Duration>,
        done: impl Fn(Phase) -> bool,
    ) -> Phase {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut phase = self.lock();
        while !done(*phase) {
            phase = match deadline {
                None => self.changed.wait(phase).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.changed
                        .wait_timeout(phase, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        *phase
    }
}
