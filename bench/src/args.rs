//! What a run is asked to do: the `bench` arguments with their bounds, and the workloads.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use port_sharding::parse_duration;

/// The largest `--size` accepted (1 GiB): the load generator holds no per-message buffers (a message is a
/// stretch of a pattern it writes and checks in 64 KiB pieces), so one message can be a whole bulk upload,
/// e.g. `-W stream -c 4 --size 256MiB --window 1 -n 4`: four connections, 256 MiB echoed on each.
pub const MAX_SIZE: usize = 1 << 30;
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
    /// One HTTP/1.1 `GET /` per connection, `Connection: close`; status 200 and a whole body (see `http.rs`).
    Http,
    /// HTTP/1.1 `GET /` back to back on persistent connections (`Connection: keep-alive`).
    #[serde(rename = "http-keepalive")]
    HttpKeepalive,
    /// UDP flows (one source port each), a numbered datagram every `--interval` per flow, each echo
    /// checked; datagrams whose echo never comes are lost (see `udp.rs`).
    Udp,
}

impl Workload {
    /// Whether it speaks HTTP (run by `http.rs`, not the echo engine).
    pub fn is_http(self) -> bool {
        matches!(self, Workload::Http | Workload::HttpKeepalive)
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Conn => "conn",
            Workload::Pingpong => "pingpong",
            Workload::Stream => "stream",
            Workload::Http => "http",
            Workload::HttpKeepalive => "http-keepalive",
            Workload::Udp => "udp",
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
    /// flight each; stream = bulk echo throughput; http = one GET per connection (Connection: close);
    /// http-keepalive = GETs on persistent connections (both check status 200 and a whole body); udp = UDP
    /// flows, one numbered datagram every --interval each, echoes checked, missing ones counted as lost.
    #[arg(long, short = 'W', value_enum, default_value_t = Workload::Pingpong)]
    pub workload: Workload,
    /// Client connections open at once (split over the threads).
    #[arg(long, short, default_value_t = 32)]
    pub concurrency: usize,
    /// How long to run (e.g. 10s, 500ms, 1m); the run never lasts longer.
    #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes per message (one operation echoes one message): a number, or with KiB, MiB or GiB.
    #[arg(long, short, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Load threads, each with its own event loop.
    #[arg(long, short, default_value_t = 1)]
    pub threads: usize,
    /// Stop after this many operations (attempts, successful or not); by default only --duration bounds
    /// the run.
    #[arg(long, short = 'n')]
    pub connections: Option<u64>,
    /// Messages in flight per connection for `stream` (pingpong and conn always have one), and per flow for
    /// `udp` with `--interval 0`.
    #[arg(long, default_value_t = 2)]
    pub window: usize,
    /// `udp`: each flow sends one datagram this often (default 2ms); 0: as fast as `--window` datagrams
    /// in flight allow.
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
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
            interval: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            sources: 1,
            json: false,
            quiet: false,
            no_status: false,
        }
    }
}

/// Parses a byte count: `65536`, `64KiB`, `256MiB`, `1GiB` (binary multiples; `B` allowed).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 65536, 64KiB, 256MiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use KiB, MiB or GiB, or a plain number of bytes)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
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
        if self.workload.is_http() && self.concurrency > crate::http::MAX_HTTP_CONCURRENCY {
            return bad(format!(
                "--concurrency must be at most {} for HTTP workloads (one thread per connection)",
                crate::http::MAX_HTTP_CONCURRENCY
            ));
        }
        if self.interval.is_some() && self.workload != Workload::Udp {
            return bad("--interval is for --workload udp".into());
        }
        if self.workload == Workload::Udp && !(crate::udp::HEADER..=65_507).contains(&self.size) {
            return bad(format!(
                "--size must be {}..=65507 for udp (a datagram carries its flow and number)",
                crate::udp::HEADER
            ));
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
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("12B"), Ok(12));
        assert!(parse_size("64k").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
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
