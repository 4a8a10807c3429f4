//! Per-worker counters in one shared memory mapping, so the supervisor reads them without asking anyone.
//!
//! The mapping is `MAP_SHARED | MAP_ANONYMOUS`, made before forking: every worker writes its own slot with
//! relaxed atomics (a counter bump costs what a local add does), the supervisor reads all slots for `status`.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lifecycle::Phase;

/// Whether a worker keeps up with its listener, as the supervisor last judged it (see `Config::stall_after`).
/// Not a phase: a worker *serving* (its phase) may be *stalled* (its health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Accepting what its listener queues (or nothing is queued).
    #[default]
    #[serde(rename = "keeping up")]
    KeepingUp,
    /// Connections are queued and it accepted none for `stall_after` (stopped, busy in user code, hung).
    Stalled,
    /// Its queue holds more than half the backlog.
    Overloaded,
}

impl Health {
    fn from_u64(n: u64) -> Health {
        match n {
            1 => Health::Stalled,
            2 => Health::Overloaded,
            _ => Health::KeepingUp,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::KeepingUp => "keeping up",
            Health::Stalled => "stalled",
            Health::Overloaded => "overloaded",
        })
    }
}

/// Milliseconds since the Unix epoch, for "stalled since" in shared memory (an `Instant` is per process).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What runs on a worker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// The engine's own loop (echo, once, hello), forked.
    #[default]
    Builtin,
    /// A program exec'd with the listener as fd 3 ([`crate::Config::command`]).
    Command,
    /// The host's own function (a Python function, a Ruby block), forked from the host interpreter
    /// ([`crate::FunctionHost`]).
    Function,
}

/// A snapshot of one worker's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Worker index: the listener it serves.
    pub index: usize,
    /// Process id of the worker now on this slot (0 before the first fork).
    pub pid: u32,
    /// Where the worker is in its life: starting, serving, draining or stopped.
    pub state: Phase,
    /// Connections accepted on this slot, across restarts.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connections that ended in an error (reset, accept failure, idle timeout, drain timeout).
    pub errors: u64,
    /// How many times this slot's worker was replaced after dying.
    pub restarts: u64,
    /// Connections waiting in this listener's accept queue (`TCP_INFO.tcpi_unacked`), as last sampled.
    pub queue_len: u64,
    /// Built-in loop or command.
    #[serde(default)]
    pub kind: WorkerKind,
    /// How many workers this slot has started (the first is 1); a restart or a reload makes a new one.
    #[serde(default)]
    pub generation: u64,
    /// Whether it keeps up with its listener, as the supervisor last judged it.
    #[serde(default)]
    pub health: Health,
    /// How long it has been stalled (milliseconds), while it is.
    #[serde(default)]
    pub stalled_ms: Option<u64>,
}

/// One worker's slot; all fields are counters or gauges updated with relaxed atomics.
#[repr(C)]
#[derive(Default)]
pub struct Slot {
    pid: AtomicU64,
    state: AtomicU64,
    accepted: AtomicU64,
    active: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
    queue_len: AtomicU64,
    kind: AtomicU64,
    generation: AtomicU64,
    health: AtomicU64,
    /// When it stalled, in [`unix_ms`]; 0 while it is not stalled.
    stalled_at: AtomicU64,
}

impl Slot {
    /// Records a process taking this slot.
    pub fn begin(&self, pid: u32) {
        self.pid.store(pid.into(), Relaxed);
        self.active.store(0, Relaxed);
        self.set_health(Health::KeepingUp);
        self.set_state(Phase::Starting);
    }
    /// Records a process taking this slot beside the one it replaces (a reload): the connections the old
    /// one still finishes keep counting as active.
    pub fn join(&self, pid: u32) {
        self.pid.store(pid.into(), Relaxed);
        self.set_state(Phase::Starting);
    }
    /// Records what kind of worker the slot runs and the generation the supervisor just started.
    pub fn set_generation(&self, kind: WorkerKind, generation: u64) {
        self.kind.store(kind as u64, Relaxed);
        self.generation.store(generation, Relaxed);
    }
    /// Process id of the worker on this slot.
    pub fn pid(&self) -> u32 {
        self.pid.load(Relaxed) as u32
    }
    /// Records a state change.
    pub fn set_state(&self, state: Phase) {
        self.state.store(state as u64, Relaxed);
    }
    /// The last recorded state.
    pub fn state(&self) -> Phase {
        Phase::from_u64(self.state.load(Relaxed))
    }
    /// One connection accepted (and now open).
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
    }
    /// One connection handed to host code (a function worker), which closes it without telling us: it
    /// counts as accepted, never as open.
    pub fn handed_out(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }
    /// One connection closed; `error` when it ended badly.
    pub fn closed(&self, error: bool) {
        self.active.fetch_sub(1, Relaxed);
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
    }
    /// An error not tied to a counted connection (a failed accept).
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
    /// Bytes read from a client.
    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }
    /// Bytes written to a client.
    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }
    /// The slot's worker died and is being replaced.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }
    /// Connections accepted on this slot so far (the supervisor watches it move).
    pub fn accepted_so_far(&self) -> u64 {
        self.accepted.load(Relaxed)
    }
    /// The accept-queue length last sampled.
    pub fn queue_len(&self) -> u64 {
        self.queue_len.load(Relaxed)
    }
    /// Samples the accept-queue length.
    pub fn set_queue_len(&self, n: u64) {
        self.queue_len.store(n, Relaxed);
    }
    /// Records the supervisor's judgement; becoming stalled stamps the time, anything else clears it.
    pub fn set_health(&self, health: Health) {
        if health == Health::Stalled {
            if self.stalled_at.load(Relaxed) == 0 {
                self.stalled_at.store(unix_ms().max(1), Relaxed);
            }
        } else {
            self.stalled_at.store(0, Relaxed);
        }
        self.health.store(health as u64, Relaxed);
    }
    fn snapshot(&self, index: usize) -> WorkerStats {
        let stalled_at = self.stalled_at.load(Relaxed);
        WorkerStats {
            index,
            pid: self.pid.load(Relaxed) as u32,
            state: self.state(),
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            queue_len: self.queue_len.load(Relaxed),
            kind: match self.kind.load(Relaxed) {
                1 => WorkerKind::Command,
                2 => WorkerKind::Function,
                _ => WorkerKind::Builtin,
            },
            generation: self.generation.load(Relaxed),
            health: Health::from_u64(self.health.load(Relaxed)),
            stalled_ms: (stalled_at != 0).then(|| unix_ms().saturating_sub(stalled_at)),
        }
    }
}

/// `n` slots in memory shared with every forked worker.
pub struct StatsArea {
    ptr: NonNull<Slot>,
    len: usize,
}

// SAFETY: the slots are atomics only; the mapping lives until drop.
unsafe impl Send for StatsArea {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for StatsArea {}

impl StatsArea {
    /// Maps `n` zeroed slots shared with future children.
    pub fn new(n: usize) -> Result<StatsArea> {
        let bytes = std::mem::size_of::<Slot>() * n.max(1);
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                "mmap stats area",
                std::io::Error::last_os_error(),
            ));
        }
        // Anonymous mappings are zero-filled, which is a valid Slot (all atomics 0).
        Ok(StatsArea {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len: n,
        })
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.len, "stats slot {i} out of range");
        // SAFETY: in bounds; the mapping outlives &self.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }

    /// Snapshots every slot.
    pub fn snapshot(&self) -> Vec<WorkerStats> {
        (0..self.len).map(|i| self.slot(i).snapshot(i)).collect()
    }
}

impl Drop for StatsArea {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                std::mem::size_of::<Slot>() * self.len.max(1),
            )
        };
    }
}
