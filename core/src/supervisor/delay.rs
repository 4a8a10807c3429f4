//! Stop signals, and the drain delay ([`Config::drain_delay`](crate::Config::drain_delay)): after SIGTERM
//! (or SIGQUIT) the server keeps accepting for that long before it drains, because whoever sends it
//! traffic learns late that it is going away. In Kubernetes, removing a pod from a Service's endpoints
//! and sending it SIGTERM happen at the same time, and proxies lag by seconds (kubernetes#43576): a
//! server that stops accepting at SIGTERM refuses connections on every rollout. The delay does what a
//! `preStop: sleep` hook does, without a sleep binary in the image.
//!
//! During the delay the phase stays `serving` (the listeners accept, so `/readyz` says ready: a
//! terminating pod is taken out of rotation by its endpoint removal, not by failing readiness), and
//! `status` says when the drain begins. Then:
//! - a second INT, TERM or QUIT stops at once, as during a drain (workers killed, the run `forced`);
//! - a stop request (`stop`, `Server.stop()`) cuts the delay short and drains now;
//! - a reload or a takeover is refused, as while draining.
//!
//! SIGINT (Ctrl-C at a terminal) drains at once: a person is waiting, not a load balancer.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Supervisor;
use crate::lifecycle::StopReason;
use crate::log::log;

impl Supervisor {
    /// INT, TERM or QUIT: drain (after the drain delay, for TERM and QUIT), or stop at once when the
    /// server is draining or about to already.
    pub(super) fn on_stop_signal(&mut self, sig: Signal, reason: StopReason) {
        if self.stopping() {
            log!("{sig} again: stopping now");
            if let Some((_, first)) = self.drain_due.take() {
                self.begin_drain(first);
            }
            self.forced = true;
            self.kill_all();
            return;
        }
        let delay = self.server.config.drain_delay;
        if reason == StopReason::Terminate && !delay.is_zero() {
            log!(
                "{sig}: draining in {delay:?} (the drain delay: still accepting meanwhile, while load balancers \
                 stop sending here; a second signal stops at once)"
            );
            self.drain_due = Some((Instant::now() + delay, reason));
            return;
        }
        log!("{sig}: draining");
        self.begin_drain(reason);
    }

    /// Begins the drain once the drain delay is over.
    pub(super) fn drain_when_due(&mut self, now: Instant) {
        if let Some((at, reason)) = self.drain_due {
            if now >= at {
                self.drain_due = None;
                log!("drain delay over");
                self.begin_drain(reason);
            }
        }
    }

    /// The drain delay runs: what started it, and cuts it short (a stop request drains now).
    pub(super) fn cut_drain_delay(&mut self, by: StopReason) -> Option<StopReason> {
        let (at, first) = self.drain_due.take()?;
        let left = at.saturating_duration_since(Instant::now());
        log!(
            "{}: draining now, {left:.1?} before the drain delay was over",
            by.cause()
        );
        Some(first)
    }

    /// Whether the server drains, or will once the drain delay is over: no reload, no takeover, and a
    /// second stop signal stops at once.
    pub(super) fn stopping(&self) -> bool {
        self.draining.is_some() || self.drain_due.is_some()
    }

    /// How long until the drain begins, during the drain delay.
    pub(super) fn drain_in(&self) -> Option<Duration> {
        self.drain_due
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }
}
