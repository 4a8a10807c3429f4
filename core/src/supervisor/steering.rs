//! Stall detection and steering: the supervisor judges every worker from what the kernel says of its
//! listener (the accept-queue length, `TCP_INFO` on the supervisor's own copy of the socket: the number
//! `sock_diag` reports too, without a dump) and, where a kind counts them, the worker's `accepted` counter
//! in shared memory. While some workers are stalled or overloaded and others keep up, the group's program
//! ([`super::group`]) hashes new connections onto the healthy listeners only. When they recover the group
//! goes back to the kernel's even hash — unless a reload's sockets must be kept out of it, which the
//! program does too.
//!
//! A worker is *stalled* when its queue is not empty and has not drained for `stall_after`: draining is
//! the queue getting shorter or empty between two samples, or the `accepted` counter moving (built-in
//! workers, and function workers that accept through the engine). Nothing is asked of the worker, so this
//! holds for every kind: a program that only accepts on fd 3, an event loop that accepts on the socket
//! itself. A worker that keeps up empties its queue many times a second; one that is stopped, hung or in a
//! long pause never does (a queued connection leaves the queue only by `accept`, even when its client gave
//! up). So that a busy worker whose queue is rarely empty is not taken for a stalled one, a queue that did
//! not drain since the last sample is sampled again every `stall_after / 10` (at least 2 ms) until it
//! drains or the worker is stalled: a stall is `stall_after` of such samples, none of them showing
//! progress. It is *overloaded* while its queue holds more than half the backlog (until it is down to a
//! quarter). Judging costs a few loads and compares per worker per sample.
//!
//! *Backed up* is the moment-to-moment form of the same judgement: a queue seen not empty and not draining
//! in two samples `QUEUE_SAMPLE` (2 ms) apart or more. A worker in a long request (a sync server's slow
//! page, one request at a time) backs up long before it would stall; while it is backed up and others are
//! not, the program sends new connections around it — what one shared accept queue does for a master's
//! workers, where the idle worker takes the next connection. Reacting within milliseconds matters: clients
//! that reconnect every few milliseconds pile up behind a busy worker in the time a slower judgement takes
//! (10 ms, `stall_after / 10`, left gunicorn's sync workers where they were). While any queue is seen not
//! draining, or a worker was backed up within `QUEUE_LINGER`, queues are sampled every `QUEUE_SAMPLE`
//! (with two workers or more: one worker has no one to go around to, and its queue is sampled for stalls
//! only); workers that keep their queues empty cost the tick's samples only. When every worker is backed
//! up there is no better choice than the kernel's hash. Going around a backed-up worker is not logged (it
//! happens many times a second under a mixed load); `/metrics` counts it. Connections already queued
//! behind a backed-up worker wait for it: this narrows the gap to a shared queue, it does not close it.
//!
//! Other processes' sockets in the group (a second server on the port, a plain `listen()` user) would be
//! starved by a program that knows only ours: while the group holds any, steering stays off and says why
//! once.
//!
//! `stall_restart_after` replaces a worker stalled that long: built-in and function workers get SIGKILL
//! (their drain pipe would not be read); command workers get their stop signal first — a program in a long
//! request may finish it and exit — and SIGKILL if they have not exited `min(stall_restart_after,
//! drain_timeout)` later. Its seat starts a new one on the same listener, which serves the queue.

use std::time::{Duration, Instant};

use super::group::{Group, SockId};
use super::Supervisor;
use crate::config::Config;
use crate::control::{SteeringState, SteeringStatus};
use crate::log::log;
use crate::reuseport;
use crate::stats::Health;

/// While steering, how often the group is recounted for other processes' sockets (a `sock_diag` dump of
/// the port's listeners: tens of microseconds).
const RECOUNT: Duration = Duration::from_secs(1);

/// How often queues are sampled while one is seen not draining, and for `QUEUE_LINGER` after a worker was
/// backed up (a `TCP_INFO` per listener each time); also how long a queue must be seen not draining to be
/// backed up. A backed-up worker that drains gets connections again within this.
const QUEUE_SAMPLE: Duration = Duration::from_millis(2);
const QUEUE_LINGER: Duration = Duration::from_millis(250);

/// What the supervisor knows about one worker slot.
struct Watch {
    /// The worker judged (0: none running); a new one starts with a clean record.
    pid: u32,
    accepted: u64,
    queue: u64,
    /// The last sample that showed progress or an empty queue.
    progress_at: Instant,
    /// The last sample.
    sampled_at: Instant,
    stalled_since: Option<Instant>,
    overloaded: bool,
    /// Its queue did not drain since the previous sample (sampled more often until it does).
    suspect: bool,
    /// The first sample, since it last drained, that found its queue not draining.
    waiting_since: Option<Instant>,
    /// `stall_restart_after` asked it to stop (its stop signal), when.
    asked: Option<Instant>,
    /// `stall_restart_after` has sent it SIGKILL.
    killed: bool,
}

impl Watch {
    fn new(pid: u32, accepted: u64, queue: u64, now: Instant) -> Watch {
        Watch {
            pid,
            accepted,
            queue,
            progress_at: now,
            sampled_at: now,
            stalled_since: None,
            overloaded: false,
            suspect: false,
            waiting_since: None,
            asked: None,
            killed: false,
        }
    }

    fn health(&self) -> Health {
        if self.stalled_since.is_some() {
            Health::Stalled
        } else if self.overloaded {
            Health::Overloaded
        } else {
            Health::KeepingUp
        }
    }
}

/// What the supervisor sees of a worker at one tick.
#[derive(Clone, Copy)]
struct Sample {
    /// Its slot's `accepted` counter.
    accepted: u64,
    /// Its listener's accept-queue length.
    queue: u64,
    /// It has not said `serving` yet.
    starting: bool,
}

/// What `stall_restart_after` does now to a worker stalled that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Its stop signal (command workers), SIGKILL later if it has not exited.
    Ask,
    Kill,
}

/// The supervisor's steering state.
pub(super) struct Steering {
    enabled: bool,
    stall_after: Duration,
    /// How often a queue that did not drain is sampled again.
    recheck: Duration,
    restart_after: Option<Duration>,
    /// The last sample that showed traffic (a queue not empty, a counter that moved).
    moved_at: Option<Instant>,
    /// Queue lengths at which a worker becomes, and stops being, overloaded.
    overload_at: u64,
    calm_at: u64,
    watch: Vec<Watch>,
    /// The workers new connections are steered to, away from the others (empty: not steering), by
    /// health (stalled, overloaded): logged, and what `status` says.
    to: Vec<usize>,
    /// Those of `to` (of all workers when `to` is empty) that are not backed up, when some are: what the
    /// group's program selects (empty: the kernel's hash over all of `to`).
    picked: Vec<usize>,
    /// The last sample that found a worker backed up (queues are sampled every `QUEUE_SAMPLE` till
    /// `QUEUE_LINGER` after).
    backed_up_at: Option<Instant>,
    /// How many times new connections began to go around a backed-up worker.
    around: u64,
    active_since: Option<Instant>,
    /// Other processes' sockets in the group at the last count, and when that was.
    others: usize,
    counted_at: Option<Instant>,
    /// Why steering cannot work, once it could not (logged once).
    blocked: Option<String>,
}

impl Steering {
    pub(super) fn new(config: &Config, workers: usize) -> Steering {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(4096);
        let backlog = u64::from(config.backlog).min(somaxconn).max(2);
        let now = Instant::now();
        Steering {
            enabled: config.steering,
            stall_after: config.stall_after,
            recheck: (config.stall_after / 10).clamp(Duration::from_millis(2), super::TICK),
            restart_after: config.stall_restart_after,
            moved_at: None,
            overload_at: backlog / 2,
            calm_at: backlog / 4,
            watch: (0..workers).map(|_| Watch::new(0, 0, 0, now)).collect(),
            to: Vec::new(),
            picked: Vec::new(),
            backed_up_at: None,
            around: 0,
            active_since: None,
            others: 0,
            counted_at: None,
            blocked: None,
        }
    }

    /// What `status` says of steering in `group`.
    pub(super) fn status(&self, group: &Group) -> SteeringStatus {
        let off = |note: String| SteeringStatus {
            state: SteeringState::Off,
            to: Vec::new(),
            note: Some(note),
        };
        if !self.enabled {
            return off(self
                .blocked
                .clone()
                .unwrap_or_else(|| "turned off (steering = false)".into()));
        }
        if let Err(why) = group.known() {
            return off(why.to_string());
        }
        if self.others > 0 {
            return off(others_note(self.others));
        }
        SteeringStatus {
            state: if self.to.is_empty() {
                SteeringState::Idle
            } else {
                SteeringState::Active
            },
            to: self.to.clone(),
            note: None,
        }
    }

    /// Judges worker `i` from one sample; logs when its health changes.
    fn judge(&mut self, i: usize, pid: u32, sample: Sample, now: Instant) -> Health {
        let Sample {
            accepted,
            queue,
            starting,
        } = sample;
        let stall_after = self.stall_after;
        let (overload_at, calm_at) = (self.overload_at, self.calm_at);
        let w = &mut self.watch[i];
        if w.pid != pid {
            *w = Watch::new(pid, accepted, queue, now);
        }
        if queue > 0 || accepted != w.accepted {
            self.moved_at = Some(now);
        }
        // A worker still starting is given `stall_after` from when it serves; a slot with no worker at
        // all (waiting out a crash back-off) is judged like a stopped one.
        let drained = queue == 0 || accepted != w.accepted || queue < w.queue;
        // After a gap in the samples (the supervisor rested, or was not scheduled) nothing is known of
        // the queue meanwhile: its stall clock starts now.
        let gap = now.saturating_duration_since(w.sampled_at) > 2 * super::TICK;
        if drained || starting || gap {
            w.progress_at = now;
        }
        w.sampled_at = now;
        w.suspect = !drained;
        if drained || starting || gap {
            w.waiting_since = None;
        } else if w.waiting_since.is_none() {
            w.waiting_since = Some(now);
        }
        (w.accepted, w.queue) = (accepted, queue);
        let stuck = now.saturating_duration_since(w.progress_at);
        match (w.stalled_since, queue > 0 && stuck >= stall_after) {
            (None, true) => {
                w.stalled_since = Some(w.progress_at);
                log!("worker {i} (pid {pid}) stalled: {queue} connection(s) queued, none accepted for {stuck:.0?}");
            }
            (Some(since), false) => {
                w.stalled_since = None;
                log!(
                    "worker {i} (pid {pid}) is serving again after {:.2?} stalled",
                    now.saturating_duration_since(since)
                );
            }
            _ => {}
        }
        if !w.overloaded && queue > overload_at {
            w.overloaded = true;
            log!("worker {i} (pid {pid}) overloaded: {queue} connection(s) queued (more than half the backlog)");
        } else if w.overloaded && queue <= calm_at {
            w.overloaded = false;
            log!("worker {i} (pid {pid}) no longer overloaded: {queue} queued");
        }
        w.health()
    }

    /// When no worker keeps up: those that made progress last (within `stall_after` of the latest). A
    /// worker stopped for seconds is a worse bet than one whose queue has not drained for a moment — on a
    /// busy machine a healthy worker starved of the CPU for `stall_after` looks stalled too, and going back
    /// to the kernel's hash then would send new connections to the stopped one again.
    fn least_stuck(&self, n: usize) -> Vec<usize> {
        let watch = &self.watch[..n.min(self.watch.len())];
        let Some(latest) = watch.iter().map(|w| w.progress_at).max() else {
            return Vec::new();
        };
        (0..watch.len())
            .filter(|&i| latest.saturating_duration_since(watch[i].progress_at) < self.stall_after)
            .collect()
    }

    /// Whether worker `i` is backed up: not stalled, its queue seen not draining for `QUEUE_SAMPLE`.
    fn backed_up(&self, i: usize, now: Instant) -> bool {
        let w = &self.watch[i];
        w.stalled_since.is_none()
            && w.waiting_since
                .is_some_and(|t| now.saturating_duration_since(t) >= QUEUE_SAMPLE)
    }

    /// The workers new connections go to: of those steered to by health (`healthy`; empty: all `n`),
    /// the ones not backed up, when some are and some are not; else none (`healthy` alone decides).
    fn pick(&mut self, healthy: &[usize], n: usize, now: Instant) -> Vec<usize> {
        let from: Vec<usize> = if healthy.is_empty() {
            (0..n).collect()
        } else {
            healthy.to_vec()
        };
        if from.len() < 2 {
            // One worker (or one healthy one) has no one to go around to.
            return Vec::new();
        }
        let free: Vec<usize> = from
            .iter()
            .copied()
            .filter(|&i| !self.backed_up(i, now))
            .collect();
        if free.len() == from.len() {
            return Vec::new();
        }
        self.backed_up_at = Some(now);
        if free.is_empty() {
            return Vec::new();
        }
        if free != self.picked {
            self.around += 1;
        }
        free
    }

    /// The workers the group's program sends new connections to (empty: every worker).
    fn selected(&self) -> &[usize] {
        if self.picked.is_empty() {
            &self.to
        } else {
            &self.picked
        }
    }

    /// How many times new connections began to go around a backed-up worker.
    pub(super) fn went_around(&self) -> u64 {
        self.around
    }

    /// How long until the next sample: every `QUEUE_SAMPLE` while a worker is, or lately was, backed
    /// up (with two workers or more: one has no one to go around to); soon while a queue has not drained
    /// since the last one; else the supervisor's tick.
    pub(super) fn next_sample(&self, now: Instant) -> Duration {
        let waiting = |w: &Watch| w.waiting_since.is_some() && w.stalled_since.is_none();
        if self
            .backed_up_at
            .is_some_and(|t| now.saturating_duration_since(t) < QUEUE_LINGER)
            || (self.enabled && self.watch.len() > 1 && self.watch.iter().any(waiting))
        {
            QUEUE_SAMPLE
        } else if self
            .watch
            .iter()
            .any(|w| w.suspect && w.stalled_since.is_none())
        {
            self.recheck
        } else {
            super::TICK
        }
    }

    /// Nothing to watch until a connection arrives: every queue was empty and no counter moved for
    /// `linger`, no worker is stalled or overloaded, and no connection is steered.
    pub(super) fn quiet(&self, now: Instant, linger: Duration) -> bool {
        self.to.is_empty()
            && self.picked.is_empty()
            && self
                .moved_at
                .is_none_or(|t| now.saturating_duration_since(t) >= linger)
            && self.watch.iter().all(|w| {
                w.queue == 0 && w.stalled_since.is_none() && !w.overloaded && w.asked.is_none()
            })
    }

    /// Traffic seen other than by sampling (a connection woke the supervisor at rest).
    pub(super) fn moved(&mut self, now: Instant) {
        self.moved_at = Some(now);
    }

    /// What to do to worker `i`, if it has been stalled for `stall_restart_after` (each one once): ask
    /// it to stop when it has a stop signal (`can_ask`), SIGKILL at once when not, or `grace` after it was
    /// asked. Returns how long it has been stalled (or asked) too.
    fn due_for_restart(
        &mut self,
        i: usize,
        now: Instant,
        can_ask: bool,
        grace: Duration,
    ) -> Option<(Replace, Duration)> {
        let limit = self.restart_after?;
        let w = &mut self.watch[i];
        if w.pid == 0 || w.killed {
            return None;
        }
        // Once asked, it goes: recovered or not, it got its stop signal.
        if let Some(asked) = w.asked {
            let waited = now.saturating_duration_since(asked);
            if waited < grace.min(limit) {
                return None;
            }
            w.killed = true;
            return Some((Replace::Kill, waited));
        }
        let stalled = now.saturating_duration_since(w.stalled_since?);
        if stalled < limit {
            return None;
        }
        if can_ask {
            w.asked = Some(now);
            Some((Replace::Ask, stalled))
        } else {
            w.killed = true;
            Some((Replace::Kill, stalled))
        }
    }

    /// Logs once why steering cannot do what it would, and remembers it for `status`.
    fn block(&mut self, why: String) {
        if self.blocked.is_none() {
            log!("steering off: {why}; the kernel's hash keeps sending new connections to every worker");
        }
        self.blocked = Some(why);
    }
}

fn others_note(n: usize) -> String {
    format!(
        "the port's group also holds {n} socket(s) of another process, which a program that knows only \
         this server's listeners would starve"
    )
}

fn list(workers: &[usize]) -> String {
    workers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Supervisor {
    /// Samples every listener's queue, judges every worker from it, replaces one stalled past
    /// `stall_restart_after`, and has the group's program send new connections to the serving sockets of
    /// the healthy workers — and never to a reload's sockets that must not get any.
    pub(super) fn steer(&mut self) {
        if self.draining.is_some() {
            return;
        }
        self.sample_queues();
        let now = Instant::now();
        let n = self.seats.len().min(self.server.steering.watch.len());
        let (to, picked) = match self.server.kind.unsteerable() {
            Some(why) => {
                self.server.steering.block(why.to_string());
                (Vec::new(), Vec::new())
            }
            None => {
                let to = self.judge_all(n, now);
                let s = &mut self.server.steering;
                let picked = if s.enabled {
                    s.pick(&to, n, now)
                } else {
                    Vec::new()
                };
                (to, picked)
            }
        };
        if self.successor.is_some() {
            // The new server decides the group's program once it runs; ours is stale from now.
            self.server.group.forget_program();
            return;
        }
        let blocked = self.check_group(&to, &picked, now);
        self.server.steering.picked = if blocked { Vec::new() } else { picked };
        self.announce(if blocked { &[] } else { &to }, now);
        self.apply_program();
    }

    /// Points the group's program at the listeners of the workers steered to (all seats' listeners when
    /// not steering); detaches it (the kernel's hash) when those are every member of the group — not so
    /// while a reload's sockets are in it.
    pub(super) fn apply_program(&mut self) {
        if self.successor.is_some() {
            return;
        }
        let to = self.server.steering.selected();
        let want: Vec<SockId> = self
            .seats
            .iter()
            .filter(|s| to.is_empty() || to.contains(&s.index))
            .filter_map(|s| s.listener().map(|l| l.id))
            .collect();
        let Some(any) = self.seats.iter().find_map(|s| s.listener()) else {
            return;
        };
        let group = &mut self.server.group;
        let want = if group.members() == Some(want.len()) || group.known().is_err() {
            Vec::new()
        } else {
            want
        };
        if let Err(e) = group.select(any, &want) {
            let why = format!("the reuseport program could not be changed ({e})");
            self.server.steering.block(why.clone());
            self.server.steering.enabled = false;
            self.server.group.forget_order(why);
        }
    }

    /// Judges each worker; returns the healthy ones when some are not (else none: nothing to steer).
    fn judge_all(&mut self, n: usize, now: Instant) -> Vec<usize> {
        let mut healthy = Vec::with_capacity(n);
        for i in 0..n {
            let record = self.server.stats.seat(i);
            let serving = self.seats[i].serving();
            let pid = serving.map_or(0, |w| w.pid.as_raw() as u32);
            let sample = Sample {
                accepted: self.server.stats.accepted(i),
                queue: record.queue_len(),
                starting: serving.is_some_and(|w| !w.is_ready()),
            };
            let health = self.server.steering.judge(i, pid, sample, now);
            record.set_health(health);
            if health == Health::KeepingUp {
                healthy.push(i);
            }
            self.replace_stalled(i, now);
        }
        if healthy.is_empty() {
            healthy = self.server.steering.least_stuck(n);
        }
        if healthy.len() == n || !self.server.steering.enabled {
            healthy.clear();
        }
        healthy
    }

    /// `stall_restart_after`: asks worker `i` to stop, or kills it, when it is due.
    fn replace_stalled(&mut self, i: usize, now: Instant) {
        let Some(w) = self.seats[i].serving() else {
            return;
        };
        let sig = w.stop_signal();
        let grace = self.server.kind.kill_after();
        let Some((what, after)) =
            self.server
                .steering
                .due_for_restart(i, now, sig.is_some(), grace)
        else {
            return;
        };
        let pid = w.pid;
        match (what, sig) {
            (Replace::Ask, Some(sig)) => {
                let limit = self.server.steering.restart_after.unwrap_or_default();
                log!(
                    "worker {i} (pid {pid}) stalled for {after:.2?} (stall_restart_after): replacing it: \
                     {sig:?} now, SIGKILL in {:?} if it has not exited",
                    grace.min(limit)
                );
                w.signal_stop();
            }
            (Replace::Kill, Some(sig)) => {
                log!("worker {i} (pid {pid}) still running {after:.2?} after {sig:?} (stall_restart_after): sending SIGKILL");
                w.kill();
            }
            _ => {
                log!("worker {i} (pid {pid}) stalled for {after:.2?} (stall_restart_after): replacing it");
                w.kill();
            }
        }
    }

    /// Steering needs the group's order, and a group of ours alone: recounted when steering by health
    /// begins and once a `RECOUNT` while any steering lasts. Returns whether steering cannot work (`to`,
    /// `picked`: what it would do).
    fn check_group(&mut self, to: &[usize], picked: &[usize], now: Instant) -> bool {
        if to.is_empty() && picked.is_empty() {
            return false;
        }
        if let Err(why) = self.server.group.known() {
            let why = why.to_string();
            self.server.steering.block(why);
            return true;
        }
        let s = &mut self.server.steering;
        // Steering by health begins: count now. Going around a backed-up worker begins and ends many
        // times a second under a mixed load; a count each time (a `sock_diag` dump) would cost more than
        // the samples, so it relies on the count of the last `RECOUNT`, as steering that goes on does.
        let stale = (s.to.is_empty() && !to.is_empty())
            || s.counted_at
                .is_none_or(|t| now.duration_since(t) >= RECOUNT);
        if stale {
            s.counted_at = Some(now);
            let ours = self.server.group.members().unwrap_or(0);
            match reuseport::listening_on(self.server.addr) {
                Ok(members) => s.others = members.saturating_sub(ours),
                Err(e) => {
                    s.block(format!("the port's group cannot be counted ({e})"));
                    s.enabled = false;
                }
            }
            if s.others > 0 {
                let note = others_note(s.others);
                s.block(note);
            }
        }
        s.others > 0 || !s.enabled
    }

    /// Logs when steering starts, changes or ends.
    fn announce(&mut self, to: &[usize], now: Instant) {
        let s = &mut self.server.steering;
        if s.to == to {
            return;
        }
        let before = std::mem::replace(&mut s.to, to.to_vec());
        match (before.is_empty(), to.is_empty()) {
            (true, false) => {
                s.active_since = Some(now);
                let away: Vec<usize> = (0..s.watch.len()).filter(|i| !to.contains(i)).collect();
                log!(
                    "steering started: new connections go to worker(s) {} only, away from worker(s) {}",
                    list(to),
                    list(&away)
                );
            }
            (false, false) => log!("steering: new connections now go to worker(s) {}", list(to)),
            (false, true) => {
                let lasted = s
                    .active_since
                    .take()
                    .map(|t| now.saturating_duration_since(t));
                log!(
                    "steering ended after {:.2?}: the kernel's hash spreads new connections over every worker again",
                    lasted.unwrap_or_default()
                );
            }
            (true, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(accepted: u64, queue: u64) -> Sample {
        Sample {
            accepted,
            queue,
            starting: false,
        }
    }

    fn steering(stall_after_ms: u64) -> Steering {
        let config = Config {
            workers: 2,
            backlog: 100,
            stall_after: Duration::from_millis(stall_after_ms),
            ..Config::default()
        };
        Steering::new(&config, 2)
    }

    #[test]
    fn a_worker_stalls_only_with_a_queue_and_no_progress_for_stall_after() {
        let mut s = steering(100);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(s.judge(0, 7, at(10, 0), ms(0)), Health::KeepingUp);
        // Queued, nothing accepted, but not for long enough yet.
        assert_eq!(s.judge(0, 7, at(10, 3), ms(50)), Health::KeepingUp);
        assert_eq!(s.judge(0, 7, at(10, 3), ms(100)), Health::Stalled);
        assert_eq!(s.judge(0, 7, at(10, 5), ms(150)), Health::Stalled);
        // The counter moved: serving again.
        assert_eq!(s.judge(0, 7, at(11, 5), ms(200)), Health::KeepingUp);
        // A queue that shrinks is progress too (a worker whose accepts are not counted).
        assert_eq!(s.judge(0, 7, at(11, 4), ms(400)), Health::KeepingUp);
        assert_eq!(s.judge(0, 7, at(11, 4), ms(450)), Health::KeepingUp);
        assert_eq!(s.judge(0, 7, at(11, 4), ms(500)), Health::Stalled);
        // A new process on the slot starts with a clean record.
        assert_eq!(s.judge(0, 8, at(11, 4), ms(510)), Health::KeepingUp);
        // Idle (nothing queued) is never stalled.
        assert_eq!(s.judge(1, 9, at(0, 0), ms(5000)), Health::KeepingUp);
        // A worker still starting is not stalled; its time counts from when it serves.
        let starting = Sample {
            starting: true,
            ..at(0, 6)
        };
        assert_eq!(s.judge(1, 9, starting, ms(5500)), Health::KeepingUp);
        assert_eq!(s.judge(1, 9, at(0, 6), ms(5550)), Health::KeepingUp);
        assert_eq!(s.judge(1, 9, at(0, 6), ms(5600)), Health::Stalled);
        // No worker at all on the slot (a crash back-off): judged like a stopped one.
        assert_eq!(s.judge(1, 0, at(0, 6), ms(5610)), Health::KeepingUp);
        assert_eq!(s.judge(1, 0, at(0, 7), ms(5710)), Health::Stalled);
    }

    #[test]
    fn a_queue_first_seen_after_a_rest_is_given_stall_after_from_then() {
        let mut s = steering(100);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(s.judge(0, 7, at(0, 0), t), Health::KeepingUp);
        // Woken by a connection 5 s later: its queue is not empty, but for how long is unknown.
        assert_eq!(s.judge(0, 7, at(0, 1), ms(5000)), Health::KeepingUp);
        assert_eq!(s.judge(0, 7, at(0, 1), ms(5050)), Health::KeepingUp);
        assert_eq!(s.judge(0, 7, at(0, 1), ms(5100)), Health::Stalled);
    }

    #[test]
    fn when_every_worker_is_stuck_the_one_stuck_longest_is_left_out() {
        let mut s = steering(100);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        for k in 0..=40 {
            // Worker 0 stopped from the start; worker 1 drains until 3.9 s, then not for a moment.
            let q1 = if k < 39 { k % 2 } else { 3 };
            s.judge(0, 7, at(0, 5), ms(100 * k));
            s.judge(1, 8, at(0, q1), ms(100 * k));
        }
        assert_eq!(s.judge(1, 8, at(0, 3), ms(4000)), Health::Stalled);
        assert_eq!(s.least_stuck(2), vec![1]);
        // Both made progress within stall_after of each other: no choice (the kernel's hash).
        let mut s = steering(100);
        s.judge(0, 7, at(0, 5), t);
        s.judge(1, 8, at(0, 5), ms(50));
        assert_eq!(s.least_stuck(2), vec![0, 1]);
    }

    #[test]
    fn overload_has_hysteresis() {
        let mut s = steering(1000);
        let t = Instant::now();
        let mut accepted = 0;
        let mut at = |q| {
            accepted += 1;
            s.judge(0, 7, at(accepted, q), t)
        };
        assert_eq!(at(50), Health::KeepingUp);
        assert_eq!(at(51), Health::Overloaded);
        assert_eq!(at(30), Health::Overloaded);
        assert_eq!(at(25), Health::KeepingUp);
    }

    #[test]
    fn a_restart_is_due_once_per_stall() {
        let mut s = steering(100);
        s.restart_after = Some(Duration::from_secs(1));
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let grace = Duration::from_secs(30);
        s.judge(0, 7, at(0, 0), t);
        s.judge(0, 7, at(0, 2), ms(50));
        assert_eq!(s.judge(0, 7, at(0, 2), ms(100)), Health::Stalled);
        assert_eq!(s.due_for_restart(0, ms(900), false, grace), None);
        let kill = s.due_for_restart(0, ms(1300), false, grace);
        assert_eq!(kill.map(|(what, _)| what), Some(Replace::Kill));
        assert_eq!(s.due_for_restart(0, ms(1400), false, grace), None);
    }

    #[test]
    fn a_worker_with_a_stop_signal_is_asked_first_then_killed() {
        let mut s = steering(100);
        s.restart_after = Some(Duration::from_secs(1));
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        // Its kill_after (drain_timeout) is longer than stall_restart_after: it gets the latter again.
        let grace = Duration::from_secs(30);
        s.judge(0, 7, at(0, 0), t);
        s.judge(0, 7, at(0, 2), ms(50));
        assert_eq!(s.judge(0, 7, at(0, 2), ms(100)), Health::Stalled);
        let ask = s.due_for_restart(0, ms(1300), true, grace);
        assert_eq!(ask.map(|(what, _)| what), Some(Replace::Ask));
        assert_eq!(s.due_for_restart(0, ms(1400), true, grace), None);
        // Recovered or not, once asked it is killed if still there a grace later.
        s.judge(0, 7, at(0, 0), ms(1500));
        assert_eq!(s.due_for_restart(0, ms(2200), true, grace), None);
        let kill = s.due_for_restart(0, ms(2300), true, grace);
        assert_eq!(kill.map(|(what, _)| what), Some(Replace::Kill));
        assert_eq!(s.due_for_restart(0, ms(2400), true, grace), None);
    }

    #[test]
    fn a_busy_queue_that_drains_between_samples_is_not_a_stall() {
        // A worker that accepts on the socket itself (no counter): its queue is rarely empty when sampled,
        // but it gets shorter now and then.
        let mut s = steering(100);
        let t = Instant::now();
        for (k, q) in [3, 4, 4, 2, 5, 5, 5, 1, 3, 3, 6, 2, 2]
            .into_iter()
            .enumerate()
        {
            let now = t + Duration::from_millis(10 * k as u64);
            assert_eq!(
                s.judge(0, 7, at(0, q), now),
                Health::KeepingUp,
                "sample {k}"
            );
        }
        // Once it did not drain, it is looked at again soon (and new connections may go around it);
        // once it does, at the tick.
        let end = t + Duration::from_millis(140);
        assert_eq!(s.next_sample(end), QUEUE_SAMPLE);
        s.judge(0, 7, at(0, 0), end);
        assert_eq!(s.next_sample(end), super::super::TICK);
    }

    #[test]
    fn quiet_once_nothing_moved_for_the_linger() {
        let mut s = steering(100);
        let t = Instant::now();
        let linger = Duration::from_secs(1);
        assert!(s.quiet(t, linger), "nothing seen yet");
        s.judge(0, 7, at(5, 0), t);
        s.judge(0, 7, at(6, 0), t + Duration::from_millis(50));
        assert!(!s.quiet(t + Duration::from_millis(500), linger));
        assert!(s.quiet(t + Duration::from_millis(1050), linger));
        s.judge(1, 8, at(0, 1), t + Duration::from_millis(1100));
        assert!(
            !s.quiet(t + Duration::from_secs(5), linger),
            "a queue is not empty"
        );
    }

    #[test]
    fn a_queue_first_seen_not_empty_is_looked_at_again_soon_once() {
        let mut s = steering(100);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        s.judge(0, 7, at(0, 0), t);
        s.judge(1, 8, at(0, 0), t);
        assert_eq!(s.next_sample(t), super::super::TICK);
        // A connection waits on worker 0 at the next tick: not backed up yet (it may be accepted any
        // moment), but looked at again after `QUEUE_SAMPLE`, not a tick.
        s.judge(0, 7, at(0, 1), ms(50));
        s.judge(1, 8, at(0, 0), ms(50));
        assert!(s.pick(&[], 2, ms(50)).is_empty());
        assert_eq!(s.next_sample(ms(50)), QUEUE_SAMPLE);
        // Accepted by then: nothing was steered, and the tick again.
        s.judge(0, 7, at(0, 0), ms(52));
        s.judge(1, 8, at(0, 0), ms(52));
        assert!(s.pick(&[], 2, ms(52)).is_empty());
        assert_eq!(s.next_sample(ms(52)), super::super::TICK);
    }

    #[test]
    fn new_connections_go_around_a_backed_up_queue_not_one_merely_not_empty() {
        let mut s = steering(100);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let sample = |s: &mut Steering, q0, q1, now| {
            s.judge(0, 7, at(0, q0), now);
            s.judge(1, 8, at(0, q1), now);
            s.pick(&[], 2, now)
        };
        assert!(sample(&mut s, 0, 0, t).is_empty());
        // Worker 0 in a long request: its queue stays at 1, then 2; worker 1's fills and drains.
        assert!(sample(&mut s, 1, 0, ms(50)).is_empty(), "seen once");
        assert_eq!(sample(&mut s, 1, 1, ms(60)), vec![1], "backed up");
        assert_eq!(s.around, 1);
        assert_eq!(s.next_sample(ms(60)), QUEUE_SAMPLE);
        s.picked = vec![1];
        assert_eq!(sample(&mut s, 2, 0, ms(62)), vec![1]);
        assert_eq!(s.around, 1, "still around the same worker");
        // Both backed up: no better choice than the kernel's hash.
        assert_eq!(
            sample(&mut s, 2, 3, ms(64)),
            vec![1],
            "worker 1 only seen so"
        );
        assert!(sample(&mut s, 2, 3, ms(74)).is_empty());
        // Worker 0 drains: it gets connections again, and the samples stay quick for a while.
        s.picked = Vec::new();
        assert_eq!(sample(&mut s, 0, 3, ms(76)), vec![0]);
        assert!(sample(&mut s, 0, 0, ms(78)).is_empty());
        assert_eq!(s.next_sample(ms(78)), QUEUE_SAMPLE);
        assert_eq!(s.next_sample(ms(78) + QUEUE_LINGER), super::super::TICK);
        // A stalled worker is health's business, not the queue rule's: steered by `to`, logged.
        let stalled = sample(&mut s, 3, 0, ms(200));
        assert!(stalled.is_empty());
        assert_eq!(s.judge(0, 7, at(0, 3), ms(300)), Health::Stalled);
        assert!(!s.backed_up(0, ms(300)));
    }

    #[test]
    fn one_worker_has_no_one_to_go_around_to_and_is_not_sampled_for_it() {
        let config = Config {
            workers: 1,
            ..Config::default()
        };
        let mut s = Steering::new(&config, 1);
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        s.judge(0, 7, at(0, 1), ms(0));
        s.judge(0, 7, at(0, 1), ms(50));
        assert!(s.backed_up(0, ms(50)));
        assert!(s.pick(&[], 1, ms(50)).is_empty());
        assert_eq!(s.around, 0);
        // A queue not draining is looked at again for a stall (`recheck`), not every `QUEUE_SAMPLE`.
        assert_eq!(s.next_sample(ms(50)), s.recheck);
        assert!(s.recheck > QUEUE_SAMPLE);
    }
}
