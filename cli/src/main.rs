//! `port-sharding serve --port 1234`: the command line over the [`port_sharding`] engine.
//!
//! `serve` runs a server in the foreground, `status` and `stop` talk to running ones through their control
//! sockets, `bench` measures any echo server.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use port_sharding::{parse_duration, Config, Mode, Server, StopReason};

#[derive(Parser)]
#[command(
    name = "port-sharding",
    version,
    about = "Serve one TCP port from many processes with SO_REUSEPORT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a port with N worker processes; SIGINT/SIGTERM drain, a second one stops at once.
    Serve(ServeArgs),
    /// Show per-worker counters of the servers running on a port.
    Status(TargetArgs),
    /// Ask the servers running on a port to drain and exit.
    Stop(StopArgs),
    /// Load-test an echo server and report throughput, latency and errors.
    Bench(port_sharding_bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to bind (IPv4 or IPv6 literal, or localhost).
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to bind; 0 picks a free one (printed at start).
    #[arg(long, short, default_value_t = 1234)]
    port: u16,
    /// Worker processes [default: number of CPUs].
    #[arg(long, short)]
    workers: Option<usize>,
    /// What workers do with a connection.
    #[arg(long, short, default_value = "echo", value_parser = ["echo", "once", "hello"])]
    mode: String,
    /// listen(2) backlog per worker.
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
    /// Longest a drain may take before open connections are closed (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Open connections per worker; at the limit it stops accepting until one closes.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Close connections idle this long (e.g. 60s); off by default.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Rolling upgrade: adopt the listening sockets of the server running on host:port; it drains once we
    /// are ready. With none running, start normally.
    #[arg(long)]
    takeover: bool,
    /// Set net.ipv4.tcp_migrate_req=1 so closing a listener moves its queue instead of resetting it (root).
    #[arg(long)]
    migrate: bool,
    /// Print no log lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct TargetArgs {
    /// Port of the servers.
    #[arg(long, short, default_value_t = 1234)]
    port: u16,
    /// Only servers bound to this address.
    #[arg(long)]
    host: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StopArgs {
    /// Port of the servers.
    #[arg(long, short, default_value_t = 1234)]
    port: u16,
    /// Only servers bound to this address.
    #[arg(long)]
    host: Option<String>,
    /// Wait until they have exited, at most this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(a) => serve(a),
        Command::Status(a) => status(a),
        Command::Stop(a) => stop(a),
        Command::Bench(a) => return port_sharding_bench::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("port-sharding: error: {e}");
            ExitCode::from(match e {
                port_sharding::Error::InvalidArgument { .. }
                | port_sharding::Error::InvalidAddress { .. } => 2,
                port_sharding::Error::NotRunning { .. } => 3,
                _ => 1,
            })
        }
    }
}

fn serve(a: ServeArgs) -> port_sharding::Result<ExitCode> {
    port_sharding::set_quiet(a.quiet);
    let config = Config {
        host: a.host,
        port: a.port,
        workers: a.workers.unwrap_or_else(port_sharding::default_workers),
        mode: a.mode.parse::<Mode>()?,
        backlog: a.backlog,
        drain_timeout: a.drain_timeout,
        max_connections: a.max_connections,
        idle_timeout: a.idle_timeout,
        takeover: a.takeover,
        migrate: a.migrate,
        ..Config::default()
    };
    let server = Server::bind(config)?;
    let report = server.run()?;
    // 130 = killed by SIGINT, as shells report it; a drained SIGTERM is a clean exit.
    Ok(match (report.forced, report.reason) {
        (true, _) => ExitCode::from(1),
        (false, StopReason::Interrupt) => ExitCode::from(130),
        _ => ExitCode::SUCCESS,
    })
}

fn status(a: TargetArgs) -> port_sharding::Result<ExitCode> {
    let servers = port_sharding::status(a.host.as_deref(), a.port)?;
    let out = if a.json {
        serde_json::to_string_pretty(&servers).expect("status serializes") + "\n"
    } else {
        status_table(&servers)
    };
    // A closed stdout (`status | head`) is not worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn status_table(servers: &[port_sharding::ServerStatus]) -> String {
    let mut out = String::new();
    let row = |out: &mut String, cells: [&dyn std::fmt::Display; 10]| {
        let _ = writeln!(
            out,
            "  {:>6} {:>8} {:>9} {:>10} {:>8} {:>12} {:>12} {:>7} {:>8} {:>6}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9]
        );
    };
    for s in servers {
        let _ = writeln!(
            out,
            "{} server pid {} on {} — {}, mode {}, up {:.0}s",
            s.runtime, s.pid, s.addr, s.state, s.mode, s.uptime_secs
        );
        row(
            &mut out,
            [
                &"worker",
                &"pid",
                &"state",
                &"accepted",
                &"active",
                &"bytes in",
                &"bytes out",
                &"errors",
                &"restarts",
                &"queue",
            ],
        );
        for w in &s.workers {
            let state = format!("{:?}", w.state).to_lowercase();
            row(
                &mut out,
                [
                    &w.index,
                    &w.pid,
                    &state,
                    &w.accepted,
                    &w.active,
                    &w.bytes_in,
                    &w.bytes_out,
                    &w.errors,
                    &w.restarts,
                    &w.queue_len,
                ],
            );
        }
    }
    out
}

fn stop(a: StopArgs) -> port_sharding::Result<ExitCode> {
    let pids = port_sharding::stop(a.host.as_deref(), a.port)?;
    for pid in &pids {
        println!("asked server pid {pid} to drain");
    }
    let Some(wait) = a.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        let alive = pids.iter().filter(|&&p| running(p)).count();
        if alive == 0 {
            println!("stopped");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("port-sharding: still running after {wait:?}");
    Ok(ExitCode::from(1))
}

/// Whether `pid` exists and has not exited (a zombie waiting for its parent counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
