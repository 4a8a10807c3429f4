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
//! - `http`, `http-keepalive`: HTTP/1.1 `GET /` with `Connection: close` or on persistent connections,
//!   verifying status 200 and a whole body (see `http.rs`), for application servers.
//!
//! Everything is bounded: the run stops at `--duration` (and at `--connections` operations when given),
//! a connect waits at most `--connect-timeout`, an echo at most `--timeout` without progress.

//!
//! Layers, each importing only those above it in this list: `args` (what to do), `record` (what a load
//! thread counts), `engine` (the load threads) and `report` (summing and printing), then this file, which
//! starts the threads and draws progress.

mod args;
mod engine;
mod http;
mod record;
mod report;
mod udp;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use args::{
    BenchArgs, SetupError, Workload, MAX_CONCURRENCY, MAX_DURATION, MAX_SIZE, MAX_THREADS,
};
pub use record::{ErrorCounts, ErrorKind};
pub use report::{Latency, Report, WorkerShare};

use engine::Shared;

/// Snapshot of `accepted` per worker of every server on the port, when a control socket answers.
fn worker_snapshot(host: &str, port: u16) -> Option<Vec<(String, u32, usize, u64)>> {
    let servers = port_sharding::status(Some(host), port).ok()?;
    let mut out = Vec::new();
    for s in servers {
        for w in s.workers {
            // Connections accepted, or over UDP datagrams read (a worker counts only one of the two).
            out.push((
                s.runtime.clone(),
                s.pid,
                w.index,
                w.accepted + w.datagrams_in,
            ));
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

/// Set by SIGINT/SIGTERM while an [`Interrupt`] guard is installed: the run stops early.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// While alive, SIGINT and SIGTERM end the run early (sending stops, echoes due are awaited, the report
/// covers what ran) instead of killing the process; the previous handlers come back on drop. For the
/// command line, which a test or a script stops when the steps it measures are done.
pub struct Interrupt {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Interrupt {
    /// Installs the handlers.
    pub fn install() -> Interrupt {
        INTERRUPTED.store(false, Ordering::Relaxed);
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction with a handler that only stores an atomic; the old one is kept.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_interrupt as *const () as usize;
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) == 0 {
                    previous.push((sig, old));
                }
            }
        }
        Interrupt { previous }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores what `install` replaced.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
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
            window: if matches!(args.workload, Workload::Stream | Workload::Udp) {
                args.window
            } else {
                1
            },
            limit: args.connections,
            deadline,
            connect_timeout: args.connect_timeout,
            timeout: args.timeout,
            interval: args.interval.unwrap_or(udp::DEFAULT_INTERVAL),
            sources: (1..=args.sources)
                .map(|k| std::net::Ipv4Addr::new(127, 0, 0, k))
                .collect(),
        };
        let shared = Arc::clone(&shared);
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                if cfg.workload == Workload::Udp {
                    udp::run_thread(cfg, &shared)
                } else if cfg.workload.is_http() {
                    http::run_thread(cfg, &shared)
                } else {
                    engine::run_thread(cfg, &shared)
                }
            })
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
        if INTERRUPTED.load(Ordering::Relaxed) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            // Never expected: threads check the deadline on every tick. Ask them once more, then wait.
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    let results: Vec<record::ThreadResult> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| record::ThreadResult::panicked())
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
