//! Counters in one shared memory mapping, read without asking anyone; every field has one writer.
//!
//! Two kinds of record live in the mapping (`MAP_SHARED | MAP_ANONYMOUS`, made before forking):
//! - a [`Slot`] per worker *process*: its connection counters, written by that process alone with relaxed
//!   atomics (a bump costs what a local add does). The supervisor hands one out before it starts a worker
//!   ([`StatsArea::claim`]) and takes it back once the worker has exited ([`StatsArea::release`]), folding
//!   its counts into its seat's — so a dead worker's open connections stop counting, and nothing resets a
//!   counter another process is still writing.
//! - a seat record per listener, written by the supervisor alone: which worker serves it and in which
//!   phase, its kind, generation and restarts, the queue length it sampled, the health it judged, and the
//!   counts of the seat's workers that have exited.
//!
//! What `status` and [`crate::Handle::stats`] show per worker slot is the seat's record plus the slots of
//! its live workers (during a reload: the one serving, the incoming one and the retiring ones).

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

impl std::fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerKind::Builtin => "builtin",
            WorkerKind::Command => "command",
            WorkerKind::Function => "function",
        })
    }
}

impl WorkerKind {
    fn from_u64(n: u64) -> WorkerKind {
        match n {
            1 => WorkerKind::Command,
            2 => WorkerKind::Function,
            _ => WorkerKind::Builtin,
        }
    }
}

/// What a worker process is to its listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// On duty: the listener's worker.
    #[default]
    Serving,
    /// A reload's new worker, starting beside the serving one.
    Incoming,
    /// Replaced (a reload) or stopped, finishing its connections.
    Retiring,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Serving => "serving",
            Role::Incoming => "incoming",
            Role::Retiring => "retiring",
        })
    }
}

impl Role {
    fn from_u64(n: u64) -> Role {
        match n {
            1 => Role::Incoming,
            2 => Role::Retiring,
            _ => Role::Serving,
        }
    }
}

/// One live worker process of a listener, as the supervisor last published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerProcess {
    /// Its process id.
    pub pid: u32,
    /// Which worker of its listener it is (the first is 1).
    pub generation: u64,
    /// Serving, incoming (a reload's) or retiring.
    pub role: Role,
    /// Starting, serving or draining.
    pub state: Phase,
    /// Seconds since it was started.
    pub uptime_secs: f64,
    /// Connections it accepted.
    pub accepted: u64,
    /// Connections it has open now.
    pub active: u64,
    /// Bytes it read from clients.
    pub bytes_in: u64,
    /// Bytes it wrote to clients.
    pub bytes_out: u64,
    /// Its connections that ended in an error.
    pub errors: u64,
    /// Datagrams it read (UDP).
    #[serde(default)]
    pub datagrams_in: u64,
    /// Datagrams it sent (UDP).
    #[serde(default)]
    pub datagrams_out: u64,
}

/// A snapshot of one worker slot (one listener): the seat's record plus its live workers' counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Worker index: the listener it serves.
    pub index: usize,
    /// Process id of the worker serving this listener (or the last one, while it is restarted; 0 before
    /// the first start).
    pub pid: u32,
    /// Where that worker is in its life: starting, serving, draining, or stopped (gone, being restarted).
    pub state: Phase,
    /// Connections accepted on this listener, across restarts and reloads.
    pub accepted: u64,
    /// Connections open now (in every live worker of this listener, a retiring one included).
    pub active: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connections that ended in an error (reset, accept failure, idle timeout, drain timeout).
    pub errors: u64,
    /// Datagrams read on this listener (UDP), across restarts and reloads. Over UDP `active` counts
    /// the live flows: peers heard from within the last 3 seconds.
    #[serde(default)]
    pub datagrams_in: u64,
    /// Datagrams sent from this listener (UDP).
    #[serde(default)]
    pub datagrams_out: u64,
    /// How many times this listener's worker was replaced after dying.
    pub restarts: u64,
    /// Connections waiting in this listener's accept queue (`TCP_INFO.tcpi_unacked`), as last sampled.
    pub queue_len: u64,
    /// Built-in loop, function or command.
    #[serde(default)]
    pub kind: WorkerKind,
    /// How many workers this listener has started (the first is 1); a restart or a reload makes a new one.
    #[serde(default)]
    pub generation: u64,
    /// Whether it keeps up with its listener, as the supervisor last judged it.
    #[serde(default)]
    pub health: Health,
    /// How long it has been stalled (milliseconds), while it is.
    #[serde(default)]
    pub stalled_ms: Option<u64>,
    /// The live worker processes of this listener: the serving one, during a reload an incoming one, and
    /// retiring ones still finishing their connections.
    #[serde(default)]
    pub processes: Vec<WorkerProcess>,
}

/// One worker process's counters, written by that process alone.
#[repr(C)]
#[derive(Default)]
pub struct Slot {
    accepted: AtomicU64,
    active: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
}

impl Slot {
    /// `n` datagrams of `bytes` in all read (UDP).
    pub fn datagrams_in(&self, n: usize, bytes: usize) {
        self.datagrams_in.fetch_add(n as u64, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }
    /// `n` datagrams of `bytes` in all sent (UDP).
    pub fn datagrams_out(&self, n: usize, bytes: usize) {
        self.datagrams_out.fetch_add(n as u64, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
    /// The live flows a UDP worker published last.
    pub fn flows(&self) -> u64 {
        self.active.load(Relaxed)
    }
    /// The live flows (UDP peers heard from lately): what `active` counts for a UDP worker.
    pub fn set_flows(&self, n: u64) {
        self.active.store(n, Relaxed);
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
    fn counts(&self) -> Counts {
        Counts {
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_out: self.datagrams_out.load(Relaxed),
        }
    }
    fn clear(&self) {
        for c in [
            &self.accepted,
            &self.active,
            &self.bytes_in,
            &self.bytes_out,
            &self.errors,
            &self.datagrams_in,
            &self.datagrams_out,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// A worker process's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connections that ended in an error.
    pub errors: u64,
    /// Datagrams read (UDP).
    #[serde(default)]
    pub datagrams_in: u64,
    /// Datagrams sent (UDP).
    #[serde(default)]
    pub datagrams_out: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.accepted += o.accepted;
        self.active += o.active;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.errors += o.errors;
    }
}

/// A worker slot in the mapping: which seat it counts for (index + 1; 0 while free), what the supervisor
/// says of its process (pid, generation, role, phase, start time), and the counters the process writes.
#[repr(C)]
#[derive(Default)]
struct Entry {
    seat: AtomicU64,
    pid: AtomicU64,
    generation: AtomicU64,
    role: AtomicU64,
    state: AtomicU64,
    started_ms: AtomicU64,
    counters: Slot,
}

/// What the supervisor publishes about one seat (one listener). Written by the supervisor only.
#[repr(C)]
#[derive(Default)]
pub(crate) struct SeatRecord {
    pid: AtomicU64,
    state: AtomicU64,
    kind: AtomicU64,
    generation: AtomicU64,
    restarts: AtomicU64,
    queue_len: AtomicU64,
    health: AtomicU64,
    /// When it stalled, in [`unix_ms`]; 0 while it is not stalled.
    stalled_at: AtomicU64,
    /// The counts of this seat's workers that have exited (active is always 0 there).
    done_accepted: AtomicU64,
    done_bytes_in: AtomicU64,
    done_bytes_out: AtomicU64,
    done_errors: AtomicU64,
    done_datagrams_in: AtomicU64,
    done_datagrams_out: AtomicU64,
}

impl SeatRecord {
    /// The worker now on this seat and its phase.
    pub(crate) fn set_worker(&self, pid: u32, state: Phase) {
        self.pid.store(pid.into(), Relaxed);
        self.state.store(state as u64, Relaxed);
    }
    /// The phase of the worker on this seat.
    pub(crate) fn state(&self) -> Phase {
        Phase::from_u64(self.state.load(Relaxed))
    }
    /// What kind of worker the seat runs and the generation it just started.
    pub(crate) fn set_generation(&self, kind: WorkerKind, generation: u64) {
        self.kind.store(kind as u64, Relaxed);
        self.generation.store(generation, Relaxed);
    }
    /// The seat's worker died and is being replaced.
    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }
    /// The accept-queue length last sampled.
    pub(crate) fn queue_len(&self) -> u64 {
        self.queue_len.load(Relaxed)
    }
    /// Samples the accept-queue length.
    pub(crate) fn set_queue_len(&self, n: u64) {
        self.queue_len.store(n, Relaxed);
    }
    /// Records the supervisor's judgement; becoming stalled stamps the time, anything else clears it.
    pub(crate) fn set_health(&self, health: Health) {
        if health == Health::Stalled {
            if self.stalled_at.load(Relaxed) == 0 {
                self.stalled_at.store(unix_ms().max(1), Relaxed);
            }
        } else {
            self.stalled_at.store(0, Relaxed);
        }
        self.health.store(health as u64, Relaxed);
    }
    fn add_done(&self, c: Counts) {
        self.done_accepted.fetch_add(c.accepted, Relaxed);
        self.done_bytes_in.fetch_add(c.bytes_in, Relaxed);
        self.done_bytes_out.fetch_add(c.bytes_out, Relaxed);
        self.done_errors.fetch_add(c.errors, Relaxed);
        self.done_datagrams_in.fetch_add(c.datagrams_in, Relaxed);
        self.done_datagrams_out.fetch_add(c.datagrams_out, Relaxed);
    }
    fn done(&self) -> Counts {
        Counts {
            accepted: self.done_accepted.load(Relaxed),
            active: 0,
            bytes_in: self.done_bytes_in.load(Relaxed),
            bytes_out: self.done_bytes_out.load(Relaxed),
            errors: self.done_errors.load(Relaxed),
            datagrams_in: self.done_datagrams_in.load(Relaxed),
            datagrams_out: self.done_datagrams_out.load(Relaxed),
        }
    }
}

/// Worker slots per seat: the one serving, an incoming one (reload) and retiring ones still finishing
/// their connections. A reload that finds none free fails to start its worker and says why.
const SLOTS_PER_SEAT: usize = 8;

/// `n` seat records and their worker slots, in memory shared with every forked worker.
pub struct StatsArea {
    seats: NonNull<SeatRecord>,
    entries: NonNull<Entry>,
    n: usize,
    m: usize,
    bytes: usize,
}

// SAFETY: the records are atomics only; the mapping lives until drop.
unsafe impl Send for StatsArea {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for StatsArea {}

impl StatsArea {
    /// Maps the records of `n` seats (and their worker slots), zeroed, shared with future children.
    pub fn new(n: usize) -> Result<StatsArea> {
        let n = n.max(1);
        let m = n * SLOTS_PER_SEAT;
        let seats_bytes = std::mem::size_of::<SeatRecord>() * n;
        let bytes = seats_bytes + std::mem::size_of::<Entry>() * m;
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
        // Anonymous mappings are zero-filled, which is a valid record (all atomics 0). Both record types
        // are u64 atomics only, so the entries that follow the seats stay 8-byte aligned.
        let base = ptr.cast::<u8>();
        Ok(StatsArea {
            seats: NonNull::new(base.cast()).expect("mmap returned null"),
            // SAFETY: in bounds of the mapping made above.
            entries: NonNull::new(unsafe { base.add(seats_bytes) }.cast())
                .expect("mmap returned null"),
            n,
            m,
            bytes,
        })
    }

    /// Seat `i`'s record (the supervisor's to write).
    pub(crate) fn seat(&self, i: usize) -> &SeatRecord {
        assert!(i < self.n, "seat {i} out of range");
        // SAFETY: in bounds; the mapping outlives &self.
        unsafe { &*self.seats.as_ptr().add(i) }
    }

    fn entry(&self, k: usize) -> &Entry {
        assert!(k < self.m, "worker slot {k} out of range");
        // SAFETY: in bounds; the mapping outlives &self.
        unsafe { &*self.entries.as_ptr().add(k) }
    }

    /// A free worker slot for a new worker of seat `i`, zeroed; `None` when every one is taken.
    pub(crate) fn claim(&self, i: usize) -> Option<usize> {
        let k = (0..self.m).find(|&k| self.entry(k).seat.load(Relaxed) == 0)?;
        let e = self.entry(k);
        e.counters.clear();
        e.pid.store(0, Relaxed);
        e.started_ms.store(unix_ms(), Relaxed);
        e.seat.store(i as u64 + 1, Relaxed);
        Some(k)
    }

    /// What the supervisor says of the process in worker slot `k`.
    pub(crate) fn set_process(
        &self,
        k: usize,
        pid: u32,
        generation: u64,
        role: Role,
        state: Phase,
    ) {
        let e = self.entry(k);
        e.pid.store(pid.into(), Relaxed);
        e.generation.store(generation, Relaxed);
        e.role.store(role as u64, Relaxed);
        e.state.store(state as u64, Relaxed);
    }

    /// Worker slot `k`'s counters (the worker's to write).
    pub fn counters(&self, k: usize) -> &Slot {
        &self.entry(k).counters
    }

    /// Takes back worker slot `k` once its worker has exited: its counts move to its seat.
    pub(crate) fn release(&self, k: usize) {
        let e = self.entry(k);
        let seat = e.seat.load(Relaxed);
        if seat == 0 {
            return;
        }
        self.seat(seat as usize - 1).add_done(e.counters.counts());
        e.seat.store(0, Relaxed);
    }

    /// The worker slots of seat `i`'s live workers.
    fn live(&self, i: usize) -> impl Iterator<Item = &Entry> {
        (0..self.m)
            .map(|k| self.entry(k))
            .filter(move |e| e.seat.load(Relaxed) == i as u64 + 1)
    }

    /// Seat `i`'s counts: its exited workers' and its live ones'.
    fn seat_counts(&self, i: usize) -> Counts {
        let mut c = self.seat(i).done();
        for e in self.live(i) {
            c += e.counters.counts();
        }
        c
    }

    /// Seat `i`'s live worker processes, the serving one first.
    fn processes(&self, i: usize) -> Vec<WorkerProcess> {
        let now = unix_ms();
        let mut out: Vec<WorkerProcess> = self
            .live(i)
            .filter(|e| e.pid.load(Relaxed) != 0)
            .map(|e| {
                let c = e.counters.counts();
                WorkerProcess {
                    pid: e.pid.load(Relaxed) as u32,
                    generation: e.generation.load(Relaxed),
                    role: Role::from_u64(e.role.load(Relaxed)),
                    state: Phase::from_u64(e.state.load(Relaxed)),
                    uptime_secs: now.saturating_sub(e.started_ms.load(Relaxed)) as f64 / 1000.0,
                    accepted: c.accepted,
                    active: c.active,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    errors: c.errors,
                    datagrams_in: c.datagrams_in,
                    datagrams_out: c.datagrams_out,
                }
            })
            .collect();
        out.sort_by_key(|p| (p.role as u8, p.generation));
        out
    }

    /// Connections accepted on seat `i` so far (its workers', living and exited).
    pub(crate) fn accepted(&self, i: usize) -> u64 {
        self.seat_counts(i).accepted
    }

    /// Snapshots every seat.
    pub fn snapshot(&self) -> Vec<WorkerStats> {
        (0..self.n)
            .map(|i| {
                let s = self.seat(i);
                let c = self.seat_counts(i);
                let stalled_at = s.stalled_at.load(Relaxed);
                WorkerStats {
                    index: i,
                    pid: s.pid.load(Relaxed) as u32,
                    state: s.state(),
                    accepted: c.accepted,
                    active: c.active,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    errors: c.errors,
                    datagrams_in: c.datagrams_in,
                    datagrams_out: c.datagrams_out,
                    restarts: s.restarts.load(Relaxed),
                    queue_len: s.queue_len(),
                    kind: WorkerKind::from_u64(s.kind.load(Relaxed)),
                    generation: s.generation.load(Relaxed),
                    health: Health::from_u64(s.health.load(Relaxed)),
                    stalled_ms: (stalled_at != 0).then(|| unix_ms().saturating_sub(stalled_at)),
                    processes: self.processes(i),
                }
            })
            .collect()
    }
}

impl Drop for StatsArea {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.seats.as_ptr().cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seat_counts_its_live_workers_and_keeps_what_the_exited_ones_counted() {
        let area = StatsArea::new(2).unwrap();
        let old = area.claim(0).unwrap();
        let new = area.claim(0).unwrap();
        let other = area.claim(1).unwrap();
        area.set_process(old, 10, 1, Role::Retiring, Phase::Draining);
        area.set_process(new, 11, 2, Role::Serving, Phase::Serving);
        assert!(old != new && new != other);
        area.counters(old).accepted();
        area.counters(old).bytes_in(10);
        area.counters(new).accepted();
        area.counters(new).accepted();
        area.counters(other).accepted();
        let s = area.snapshot();
        assert_eq!((s[0].accepted, s[0].active, s[0].bytes_in), (3, 3, 10));
        assert_eq!((s[1].accepted, s[1].active), (1, 1));
        let pids: Vec<(u32, Role, u64)> = s[0]
            .processes
            .iter()
            .map(|p| (p.pid, p.role, p.accepted))
            .collect();
        assert_eq!(pids, [(11, Role::Serving, 2), (10, Role::Retiring, 1)]);
        // The old worker dies with its connection open: it no longer counts as open, but as accepted.
        area.release(old);
        let s = area.snapshot();
        assert_eq!((s[0].accepted, s[0].active, s[0].bytes_in), (3, 2, 10));
        // Its slot is handed out again, zeroed.
        let again = area.claim(1).unwrap();
        assert_eq!(area.counters(again).counts(), Counts::default());
        assert_eq!(area.snapshot()[1].accepted, 1);
    }

    #[test]
    fn claims_run_out_and_come_back() {
        let area = StatsArea::new(1).unwrap();
        let all: Vec<usize> = (0..SLOTS_PER_SEAT)
            .map(|_| area.claim(0).unwrap())
            .collect();
        assert_eq!(area.claim(0), None);
        area.release(all[3]);
        assert_eq!(area.claim(0), Some(all[3]));
    }
}
