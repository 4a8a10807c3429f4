//! The lifecycle, in one vocabulary: a server's and a worker's [`Phase`], why a run ended ([`StopReason`]),
//! and how it ended ([`Report`]). Logs, the status JSON, the CLI, Python and Ruby all use these names.
//!
//! ```text
//! starting ─► serving ─► draining ─► stopped
//!               │  ▲         ▲
//!    takeover   ▼  │ abort    │ the new server reports ready
//!           handing over ─────┘
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a server (or one of its workers) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Bound (connections queue), workers not all serving yet.
    #[serde(rename = "starting")]
    Starting = 0,
    /// Every worker accepts and serves.
    #[serde(rename = "serving")]
    Serving = 1,
    /// A successor holds our sockets and owes us `ready`; we keep serving meanwhile (servers only).
    #[serde(rename = "handing over")]
    HandingOver = 2,
    /// Stopped accepting; accepting what is queued and finishing open connections.
    #[serde(rename = "draining")]
    Draining = 3,
    /// Every worker has exited (a worker: this one has exited).
    #[serde(rename = "stopped")]
    Stopped = 4,
}

impl Phase {
    /// The phase as logs, `status` and the bindings spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::HandingOver => "handing over",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }

    /// The phase stored as `n` in shared memory (see [`crate::WorkerStats`]); unknown values read as
    /// `Starting`.
    pub(crate) fn from_u64(n: u64) -> Phase {
        match n {
            1 => Phase::Serving,
            2 => Phase::HandingOver,
            3 => Phase::Draining,
            4 => Phase::Stopped,
            _ => Phase::Starting,
        }
    }

    /// Whether the server stopped accepting (draining or stopped).
    pub fn is_draining_or_stopped(self) -> bool {
        self >= Phase::Draining
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run ended (what started the drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// SIGINT (Ctrl-C). The CLI exits 130, Python raises `KeyboardInterrupt`, Ruby `Interrupt`.
    Interrupt,
    /// SIGTERM or SIGQUIT.
    Terminate,
    /// A stop request: `stop` on the control socket (`port-sharding stop`), [`Handle::stop`](crate::Handle::stop),
    /// or `stop()` of a Rust, Python or Ruby `Server`.
    Stop,
    /// A successor took over the sockets and reported ready.
    TakenOver,
}

impl StopReason {
    /// The reason as the bindings return it: `"taken_over"` in Python, `:taken_over` in Ruby.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Interrupt => "interrupt",
            StopReason::Terminate => "terminate",
            StopReason::Stop => "stop",
            StopReason::TakenOver => "taken_over",
        }
    }

    /// What caused it, for the log: `SIGINT`, `stop request`, …
    pub fn cause(self) -> &'static str {
        match self {
            StopReason::Interrupt => "SIGINT",
            StopReason::Terminate => "SIGTERM",
            StopReason::Stop => "stop request",
            StopReason::TakenOver => "taken over",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended: what `stop`/`wait`/`run` return in Rust, Python and Ruby alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// What started the drain.
    pub reason: StopReason,
    /// A second signal (or the drain timeout) ended it early: connections may have been cut.
    pub forced: bool,
    /// Connections the workers accepted over the whole run (every worker, restarts and reloads included);
    /// over UDP, the datagrams they read.
    pub served: u64,
    /// How long the drain took, from its start until the last worker exited.
    pub drain: Duration,
}

impl Report {
    /// The report of a server stopped before it ran: a stop that served nothing.
    pub fn unstarted() -> Report {
        Report {
            reason: StopReason::Stop,
            forced: false,
            served: 0,
            drain: Duration::ZERO,
        }
    }

    /// The exit status a command line reports for this run: 1 when the drain was cut short, 130 after
    /// Ctrl-C (as shells report a SIGINT death), otherwise 0.
    pub fn exit_code(&self) -> u8 {
        match (self.forced, self.reason) {
            (true, _) => 1,
            (false, StopReason::Interrupt) => 130,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json() {
        for p in [
            Phase::Starting,
            Phase::Serving,
            Phase::HandingOver,
            Phase::Draining,
            Phase::Stopped,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
            assert_eq!(Phase::from_u64(p as u64), p);
        }
        let json = serde_json::to_string(&StopReason::TakenOver).unwrap();
        assert_eq!(json, "\"taken_over\"");
    }

    #[test]
    fn exit_codes() {
        let r = |reason, forced| {
            Report {
                reason,
                forced,
                served: 0,
                drain: Duration::ZERO,
            }
            .exit_code()
        };
        assert_eq!(r(StopReason::Interrupt, false), 130);
        assert_eq!(r(StopReason::Terminate, false), 0);
        assert_eq!(r(StopReason::Terminate, true), 1);
    }
}
