//! What one load thread counts: completed operations, failures by kind, latencies. The engine fills it
//! in; the report sums it.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection was refused (nothing listening, or the queue refused it).
    Refused,
    /// The connection was reset (`ECONNRESET`, `ECONNABORTED`, `EPIPE`).
    Reset,
    /// A connect or an echo took longer than its timeout.
    Timeout,
    /// The echo differed from what was sent (a changed, missing, extra or foreign byte).
    WrongEcho,
    /// The server closed the connection before echoing everything.
    Closed,
    /// Anything else (e.g. `EADDRNOTAVAIL` when the client runs out of ports).
    Other,
    /// A datagram whose echo did not come back within `--timeout` (`udp`).
    Lost,
}

/// Failed operations by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// See [`ErrorKind::Refused`].
    pub refused: u64,
    /// See [`ErrorKind::Reset`].
    pub reset: u64,
    /// See [`ErrorKind::Timeout`].
    pub timeout: u64,
    /// See [`ErrorKind::WrongEcho`].
    pub wrong_echo: u64,
    /// See [`ErrorKind::Closed`].
    pub closed: u64,
    /// See [`ErrorKind::Other`].
    pub other: u64,
    /// See [`ErrorKind::Lost`].
    #[serde(default)]
    pub lost: u64,
    /// All of the above.
    pub total: u64,
}

impl ErrorCounts {
    /// Counts one failure.
    pub fn add(&mut self, kind: ErrorKind) {
        *match kind {
            ErrorKind::Refused => &mut self.refused,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::WrongEcho => &mut self.wrong_echo,
            ErrorKind::Closed => &mut self.closed,
            ErrorKind::Other => &mut self.other,
            ErrorKind::Lost => &mut self.lost,
        } += 1;
        self.total += 1;
    }

    pub(crate) fn merge(&mut self, o: &ErrorCounts) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.wrong_echo += o.wrong_echo;
        self.closed += o.closed;
        self.other += o.other;
        self.lost += o.lost;
        self.total += o.total;
    }

    pub(crate) fn pairs(&self) -> [(&'static str, u64); 7] {
        [
            ("refused", self.refused),
            ("reset", self.reset),
            ("timeout", self.timeout),
            ("wrong echo", self.wrong_echo),
            ("closed early", self.closed),
            ("other", self.other),
            ("lost", self.lost),
        ]
    }
}

/// What one thread measured.
pub(crate) struct ThreadResult {
    pub ops: u64,
    pub bytes: u64,
    pub errors: ErrorCounts,
    pub latency_ns: Histogram<u64>,
    pub samples: Vec<String>,
    pub finished: Instant,
}

impl ThreadResult {
    pub fn new() -> ThreadResult {
        ThreadResult {
            ops: 0,
            bytes: 0,
            errors: ErrorCounts::default(),
            latency_ns: new_histogram(),
            samples: Vec::new(),
            finished: Instant::now(),
        }
    }

    pub fn panicked() -> ThreadResult {
        let mut r = ThreadResult::new();
        r.errors.add(ErrorKind::Other);
        r.samples.push("a load thread panicked".into());
        r
    }
}

/// Latencies from 1 ns to 1 hour, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind() {
        let mut e = ErrorCounts::default();
        for k in [
            ErrorKind::Refused,
            ErrorKind::Reset,
            ErrorKind::Reset,
            ErrorKind::Timeout,
            ErrorKind::WrongEcho,
            ErrorKind::Closed,
            ErrorKind::Other,
        ] {
            e.add(k);
        }
        assert_eq!(
            (
                e.refused,
                e.reset,
                e.timeout,
                e.wrong_echo,
                e.closed,
                e.other,
                e.total
            ),
            (1, 2, 1, 1, 1, 1, 7)
        );
    }
}
