//! The report of a run: numbers, errors by kind, the per-worker distribution, as text or JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::args::{BenchArgs, Workload};
use crate::record::{new_histogram, ErrorCounts, ThreadResult};

/// Latency of successful operations, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// Connections one worker accepted during the run (from the server's control socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerShare {
    /// `rust`, `python` or `ruby`: the runtime hosting the server.
    pub runtime: String,
    /// The server's supervisor pid.
    pub server_pid: u32,
    /// Worker slot.
    pub index: usize,
    /// Connections it accepted during the run.
    pub accepted: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The address loaded.
    pub target: String,
    /// What each connection did.
    pub workload: Workload,
    /// Connections open at once.
    pub concurrency: usize,
    /// Load threads.
    pub threads: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub window: usize,
    /// The requested duration, seconds.
    pub duration_s: f64,
    /// How long the run took, seconds.
    pub elapsed_s: f64,
    /// Operations that completed with a verified echo.
    pub ops: u64,
    /// `ops / elapsed_s`.
    pub ops_per_sec: f64,
    /// Echoed bytes verified (one direction; as many were sent).
    pub bytes: u64,
    /// `bytes / elapsed_s / 1e6`.
    pub mb_per_sec: f64,
    /// Latency of the completed operations.
    pub latency_us: Latency,
    /// Failed operations by kind.
    pub errors: ErrorCounts,
    /// A few distinct error messages, as examples.
    pub error_samples: Vec<String>,
    /// Per-worker accepted connections during the run, when the target's control socket answered.
    pub workers: Option<Vec<WorkerShare>>,
}

impl Report {
    pub(crate) fn build(
        args: &BenchArgs,
        addr: SocketAddr,
        elapsed: Duration,
        results: Vec<ThreadResult>,
        workers: Option<Vec<WorkerShare>>,
    ) -> Report {
        let mut hist = new_histogram();
        let mut errors = ErrorCounts::default();
        let (mut ops, mut bytes) = (0, 0);
        let mut samples: Vec<String> = Vec::new();
        for r in results {
            let _ = hist.add(&r.latency_ns);
            errors.merge(&r.errors);
            ops += r.ops;
            bytes += r.bytes;
            for s in r.samples {
                if samples.len() < 5 && !samples.contains(&s) {
                    samples.push(s);
                }
            }
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        let latency = if hist.is_empty() {
            Latency::default()
        } else {
            Latency {
                count: hist.len(),
                mean: hist.mean() / 1000.0,
                p50: us(hist.value_at_quantile(0.50)),
                p90: us(hist.value_at_quantile(0.90)),
                p99: us(hist.value_at_quantile(0.99)),
                p999: us(hist.value_at_quantile(0.999)),
                max: us(hist.max()),
            }
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        Report {
            target: addr.to_string(),
            workload: args.workload,
            concurrency: args.concurrency,
            threads: args.threads.min(args.concurrency),
            size: args.size,
            window: if matches!(args.workload, Workload::Stream | Workload::Udp) {
                args.window
            } else {
                1
            },
            duration_s: args.duration.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            ops,
            ops_per_sec: ops as f64 / secs,
            bytes,
            mb_per_sec: bytes as f64 / secs / 1e6,
            latency_us: latency,
            errors,
            error_samples: samples,
            workers,
        }
    }

    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} {}: {} connection(s), {} thread(s), {} B messages{}, {:.2}s",
            self.workload,
            self.target,
            self.concurrency,
            self.threads,
            self.size,
            if self.window > 1 {
                format!(", window {}", self.window)
            } else {
                String::new()
            },
            self.elapsed_s
        );
        let _ = writeln!(
            o,
            "  throughput  {:>12} ops/s  {:>10.2} MB/s  ({} ops, {} bytes echoed and verified)",
            group(self.ops_per_sec.round() as u64),
            self.mb_per_sec,
            group(self.ops),
            group(self.bytes)
        );
        let l = &self.latency_us;
        let _ = writeln!(
            o,
            "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max),
            fmt_us(l.mean)
        );
        if self.errors.total == 0 {
            let _ = writeln!(o, "  errors      none");
        } else {
            let kinds: Vec<String> = self
                .errors
                .pairs()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {}", group(*n)))
                .collect();
            let _ = writeln!(
                o,
                "  errors      {} ({})",
                group(self.errors.total),
                kinds.join(", ")
            );
            for s in &self.error_samples {
                let _ = writeln!(o, "              e.g. {s}");
            }
        }
        match &self.workers {
            Some(w) => o.push_str(&bar_chart(w, 40)),
            None => o.push_str("  per-worker  (no control socket answered for this port)\n"),
        }
        o
    }
}

/// The per-worker distribution as a terminal bar chart, `width` cells for the largest share.
pub fn bar_chart(workers: &[WorkerShare], width: usize) -> String {
    let total: u64 = workers.iter().map(|w| w.accepted).sum();
    let max = workers.iter().map(|w| w.accepted).max().unwrap_or(0).max(1);
    let mut o = format!(
        "  per-worker  accepted during the run ({} connection(s), or datagrams over UDP):\n",
        group(total)
    );
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    for w in workers {
        let eighths = (w.accepted as u128 * width as u128 * 8 / max as u128) as usize;
        let bar = format!("{}{}", "█".repeat(eighths / 8), EIGHTHS[eighths % 8]);
        let pct = if total == 0 {
            0.0
        } else {
            w.accepted as f64 * 100.0 / total as f64
        };
        let _ = writeln!(
            o,
            "    {:<6} pid {:<8} w{:<3} {:<width$} {:>10} {:>5.1}%",
            w.runtime,
            w.server_pid,
            w.index,
            bar,
            group(w.accepted),
            pct
        );
    }
    o
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}µs")
    }
}

/// `1234567` → `1,234,567`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn chart_scales_to_the_largest() {
        let w = |index, accepted| WorkerShare {
            runtime: "rust".into(),
            server_pid: 7,
            index,
            accepted,
        };
        let chart = bar_chart(&[w(0, 300), w(1, 100), w(2, 0)], 8);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("400 connection(s)"));
        assert!(lines[1].contains(&"█".repeat(8)) && lines[1].contains("75.0%"));
        assert!(lines[2].contains("██▋") && lines[2].contains("25.0%"));
        assert!(!lines[3].contains('█') && lines[3].contains("0.0%"));
    }

    #[test]
    fn microseconds_read_well() {
        assert_eq!(fmt_us(12.4), "12µs");
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
    }
}
