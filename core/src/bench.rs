//! Load generator behind `port-sharding bench`: measures any TCP echo server.
//!
//! Each load thread runs its own mio event loop over many non-blocking client connections. Every byte a
//! client sends comes from a fixed pseudo-random pattern at a per-connection offset, so every echoed byte is
//! checked against what was sent (byte for byte, with `memcmp` speed) and a server that mixes up
//! connections, drops, duplicates or flips bytes is caught.
//!
//! Workloads:
//! - `conn`: connect, send one message, read the full echo, close; repeat (the talk's loop: one
//!   connection per request). Latency is from `connect` to the last echoed byte.
//! - `pingpong`: persistent connections, one message in flight on each. Latency is one round trip.
//! - `stream`: persistent connections writing messages back to back (up to `--window` in flight) while
//!   reading the echo: bulk throughput. Latency is from a message's first byte written to its last byte
//!   echoed.
//!
//! Everything is bounded: the run stops at `--duration` (and at `--connections` operations when given),
//! a connect waits at most `--connect-timeout`, an echo at most `--timeout` without progress.

mod engine;
mod report;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::parse_duration;

pub use report::{ErrorCounts, ErrorKind, Latency, Report, WorkerShare};

/// The largest `--size` accepted (16 MiB): the load generator holds no per-message buffers, but a single
/// message this large already measures bulk throughput.
pub const MAX_SIZE: usize = 16 << 20;
/// The most connections one run may open at once.
pub const MAX_CONCURRENCY: usize = 100_000;
/// The most load threads.
pub const MAX_THREADS: usize = 1024;
/// The longest run (1 hour).
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// What each client connection does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Connect, send one message, read its full echo, close; repeat.
    Conn,
    /// Persistent connections, one message in flight each.
    Pingpong,
    /// Persistent connections, messages back to back: bulk echo throughput.
    Stream,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Conn => "conn",
            Workload::Pingpong => "pingpong",
            Workload::Stream => "stream",
        })
    }
}

/// Arguments of `port-sharding bench`.
///
/// Exit status: 0 when every operation succeeded, 1 when any failed (the report says how), 2 when the
/// arguments are wrong or the target cannot be resolved.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Load-test an echo server and report throughput, latency and errors",
    after_help = "Every echoed byte is verified. Exit status: 0 when every operation succeeded, 1 when any \
                  failed, 2 on bad arguments.\nExample: port-sharding bench -p 1234 --workload conn -c 32 -d 10s"
)]
pub struct BenchArgs {
    /// Address of the server (IPv4/IPv6 literal or a name).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the server to load.
    #[arg(long, short, default_value_t = 1234)]
    pub port: u16,
    /// conn = connect/send/echo/close per operation; pingpong = persistent connections, one message in
    /// flight each; stream = bulk echo throughput.
    #[arg(long, short = 'W', value_enum, default_value_t = Workload::Pingpong)]
    pub workload: Workload,
    /// Client connections open at once (split over the threads).
    #[arg(long, short, default_value_t = 32)]
    pub concurrency: usize,
    /// How long to run (e.g. 10s, 500ms, 1m); the run never lasts longer.
    #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes per message (one operation echoes one message).
    #[arg(long, short, default_value_t = 64)]
    pub size: usize,
    /// Load threads, each with its own event loop.
    #[arg(long, short, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many operations (attempts, successful or not); by default only --duration bounds
    /// the run.
    #[arg(long, short = 'n')]
    pub connections: Option<u64>,
    /// Messages in flight per connection for `stream` (pingpong and conn always have one).
    #[arg(long, default_value_t = 2)]
    pub window: usize,
    /// Longest wait for a connection to be established.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Longest wait for echo bytes while some are due (reset by every byte received).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Client source addresses 127.0.0.1, 127.0.0.2, … (loopback targets only): every connection to one
    /// server port from one source address competes for the same ephemeral ports, which caps `conn` rates.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Print the report as JSON on stdout (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Do not ask the server's control socket for per-worker counters.
    #[arg(long)]
    pub no_status: bool,
}

impl Default for BenchArgs {
    /// The same defaults as the command line.
    fn default() -> Self {
        BenchArgs {
            host: "127.0.0.1".into(),
            port: 1234,
            workload: Workload::Pingpong,
            concurrency: 32,
            duration: Duration::from_secs(10),
            size: 64,
            threads: 1,
            connections: None,
            window: 2,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            sources: 1,
            json: false,
            quiet: false,
            no_status: false,
        }
    }
}

/// Why a run could not start.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

impl BenchArgs {
    /// Checks the bounds and resolves the target address.
    pub fn validate(&self) -> Result<SocketAddr, SetupError> {
        let bad = |m: String| Err(SetupError(m));
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return bad(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad(format!("--threads must be 1..={MAX_THREADS}"));
        }
        if self.size == 0 || self.size > MAX_SIZE {
            return bad(format!("--size must be 1..={MAX_SIZE}"));
        }
        if self.window == 0 || self.window > 64 {
            return bad("--window must be 1..=64".into());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "--duration must be more than 0 and at most {}s",
                MAX_DURATION.as_secs()
            ));
        }
        if self.connect_timeout.is_zero() || self.timeout.is_zero() {
            return bad("timeouts must be more than 0".into());
        }
        if self.port == 0 {
            return bad("--port must not be 0".into());
        }
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| SetupError(format!("cannot resolve {}:{}: {e}", self.host, self.port)))?;
        let addr = addrs
            .next()
            .ok_or_else(|| SetupError(format!("{} resolves to no address", self.host)))?;
        if self.sources == 0 || (self.sources > 1 && !(addr.is_ipv4() && addr.ip().is_loopback())) {
            return bad(
                "--sources must be at least 1, and more than 1 only for an IPv4 loopback target"
                    .into(),
            );
        }
        Ok(addr)
    }
}

/// Shared between the load threads and the thread drawing progress.
pub(crate) struct Shared {
    /// Operations started (tickets handed out), checked against `--connections`.
    pub started: AtomicU64,
    /// Operations completed, for the progress bar.
    pub ops: AtomicU64,
    /// Operations failed, for the progress bar.
    pub errors: AtomicU64,
    /// Set to stop every thread early.
    pub stop: AtomicBool,
}

/// Snapshot of `accepted` per worker of every server on the port, when a control socket answers.
fn worker_snapshot(host: &str, port: u16) -> Option<Vec<(String, u32, usize, u64)>> {
    let servers = crate::status(Some(host), port).ok()?;
    let mut out = Vec::new();
    for s in servers {
        for w in s.workers {
            out.push((s.runtime.clone(), s.pid, w.index, w.accepted));
        }
    }
    (!out.is_empty()).then_some(out)
}

fn worker_shares(
    before: Option<Vec<(String, u32, usize, u64)>>,
    after: Option<Vec<(String, u32, usize, u64)>>,
) -> Option<Vec<WorkerShare>> {
    let (before, after) = (before?, after?);
    let shares = after
        .into_iter()
        .map(|(runtime, server_pid, index, accepted)| {
            let was = before
                .iter()
                .find(|b| b.0 == runtime && b.1 == server_pid && b.2 == index)
                .map_or(0, |b| b.3);
            WorkerShare {
                runtime,
                server_pid,
                index,
                accepted: accepted.saturating_sub(was),
            }
        })
        .collect();
    Some(shares)
}

/// Runs a load test and returns its report; draws a progress bar on stderr when `show_progress`.
///
/// # Errors
/// [`SetupError`] when the arguments are out of bounds, the host does not resolve or a thread cannot
/// start. Failed operations are not errors: they are counted in the report.
pub fn run_with_progress(args: &BenchArgs, show_progress: bool) -> Result<Report, SetupError> {
    let addr = args.validate()?;
    let before = if args.no_status {
        None
    } else {
        worker_snapshot(&args.host, args.port)
    };
    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let start = Instant::now();
    let deadline = start + args.duration;
    let per_thread = |t: usize| {
        args.concurrency / args.threads + usize::from(t < args.concurrency % args.threads)
    };
    let mut handles = Vec::new();
    for t in 0..args.threads.min(args.concurrency) {
        let cfg = engine::ThreadConfig {
            id: t,
            addr,
            workload: args.workload,
            connections: per_thread(t),
            size: args.size,
            window: if args.workload == Workload::Stream {
                args.window
            } else {
                1
            },
            limit: args.connections,
            deadline,
            connect_timeout: args.connect_timeout,
            timeout: args.timeout,
            sources: (1..=args.sources)
                .map(|k| std::net::Ipv4Addr::new(127, 0, 0, k))
                .collect(),
        };
        let shared = Arc::clone(&shared);
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || engine::run_thread(cfg, &shared))
            .map_err(|e| SetupError(format!("cannot start a load thread: {e}")))?;
        handles.push(h);
    }

    let bar = if show_progress {
        let ms = args.duration.as_millis() as u64;
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(ms),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    // Bounded: every thread returns by the deadline (plus one poll tick); the join below waits for them.
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(bar) = &bar {
            let el = start.elapsed();
            let ops = shared.ops.load(Ordering::Relaxed);
            let errs = shared.errors.load(Ordering::Relaxed);
            bar.set_position((el.as_millis() as u64).min(args.duration.as_millis() as u64));
            bar.set_message(format!(
                "{:.1}s/{:.1}s  {:.0} ops/s, {ops} ops, {errs} errors",
                el.as_secs_f64().min(args.duration.as_secs_f64()),
                args.duration.as_secs_f64(),
                ops as f64 / el.as_secs_f64().max(1e-3)
            ));
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            // Never expected: threads check the deadline on every tick. Ask them once more, then wait.
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    let results: Vec<engine::ThreadResult> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| engine::ThreadResult::panicked())
        })
        .collect();
    let elapsed = results
        .iter()
        .map(|r| r.finished)
        .max()
        .map_or(start.elapsed(), |f| f.duration_since(start));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let after = if args.no_status {
        None
    } else {
        worker_snapshot(&args.host, args.port)
    };
    Ok(Report::build(
        args,
        addr,
        elapsed,
        results,
        worker_shares(before, after),
    ))
}

/// [`run_with_progress`] without a progress bar.
///
/// # Errors
/// See [`run_with_progress`].
pub fn run(args: &BenchArgs) -> Result<Report, SetupError> {
    run_with_progress(args, false)
}

/// Runs `port-sharding bench`.
pub fn main(args: BenchArgs) -> ExitCode {
    let show = !args.json && !args.quiet && std::io::stderr().is_terminal();
    match run_with_progress(&args, show) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.render());
            }
            if report.errors.total == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("port-sharding bench: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn default_matches_command_line_defaults() {
        let cli = Cli::parse_from(["bench"]).bench;
        let d = BenchArgs::default();
        assert_eq!(format!("{cli:?}"), format!("{d:?}"));
    }

    #[test]
    fn parses_flags() {
        let a = Cli::parse_from([
            "bench",
            "--workload",
            "stream",
            "-c",
            "4",
            "-d",
            "500ms",
            "--size",
            "65536",
            "-n",
            "10",
            "--json",
        ])
        .bench;
        assert_eq!(a.workload, Workload::Stream);
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.size, 65536);
        assert_eq!(a.connections, Some(10));
        assert!(a.json);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3x").is_err());
    }

    #[test]
    fn validation_bounds() {
        let ok = BenchArgs {
            port: 9,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            BenchArgs {
                concurrency: 0,
                ..ok.clone()
            },
            BenchArgs {
                threads: 0,
                ..ok.clone()
            },
            BenchArgs {
                size: 0,
                ..ok.clone()
            },
            BenchArgs {
                size: MAX_SIZE + 1,
                ..ok.clone()
            },
            BenchArgs {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            BenchArgs {
                port: 0,
                ..ok.clone()
            },
            BenchArgs {
                window: 0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
