//! The HTTP workloads, for application servers run as command workers (gunicorn, Puma, …):
//! - `http`: one `GET` per connection with `Connection: close` (connect, request, whole response, close).
//! - `http-keepalive`: `GET`s back to back on persistent connections (a connection the server closes is
//!   reopened; a request that finds a kept-alive connection already closed is retried once, as browsers do).
//!
//! Every response is verified: status 200 and a complete body (`Content-Length` bytes, a chunked body to its
//! last chunk, or everything up to the server's close). Latency is from the request's first byte (`http`:
//! from connect) to the body's last byte.
//!
//! Clients block, one OS thread per connection (at most [`MAX_HTTP_CONCURRENCY`]): the servers measured here
//! are far slower than a thread switch, and blocking code keeps the parser short.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::args::Workload;
use crate::engine::{Shared, ThreadConfig};
use crate::record::{ErrorKind, ThreadResult};

/// The most connections an HTTP run opens at once (one thread each).
pub const MAX_HTTP_CONCURRENCY: usize = 1024;
/// The longest header section read.
const MAX_HEAD: usize = 64 * 1024;
/// How many failures are kept as samples per client.
const SAMPLES: usize = 3;

/// One load thread's share: `cfg.connections` clients, each on a thread of its own.
pub(crate) fn run_thread(cfg: ThreadConfig, shared: &Shared) -> ThreadResult {
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..cfg.connections)
            .map(|_| s.spawn(|| client(&cfg, shared)))
            .collect();
        clients
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| ThreadResult::panicked()))
            .collect()
    });
    let mut total = ThreadResult::new();
    for r in results {
        total.ops += r.ops;
        total.bytes += r.bytes;
        total.errors.merge(&r.errors);
        total.latency_ns.add(&r.latency_ns).ok();
        total.samples.extend(
            r.samples
                .into_iter()
                .take(SAMPLES.saturating_sub(total.samples.len())),
        );
    }
    total.finished = Instant::now();
    total
}

/// Whether one more request may start (the deadline, `--connections`, an early stop).
fn ticket(cfg: &ThreadConfig, shared: &Shared) -> bool {
    if Instant::now() >= cfg.deadline || shared.stop.load(Ordering::Relaxed) {
        return false;
    }
    match cfg.limit {
        None => true,
        Some(limit) => shared.started.fetch_add(1, Ordering::Relaxed) < limit,
    }
}

/// A failed request: its kind and what happened.
type Failure = (ErrorKind, String);

fn io_failure(e: &io::Error, what: &str) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
        io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
        _ => ErrorKind::Other,
    };
    (kind, format!("{what}: {e}"))
}

fn client(cfg: &ThreadConfig, shared: &Shared) -> ThreadResult {
    let keepalive = cfg.workload == Workload::HttpKeepalive;
    let mut r = ThreadResult::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let host = cfg.addr.to_string();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: port-sharding-bench\r\nConnection: {}\r\n\r\n",
        if keepalive { "keep-alive" } else { "close" }
    );
    while ticket(cfg, shared) {
        let start = Instant::now();
        let mut outcome = exchange(cfg, &mut conn, request.as_bytes());
        if let Err((_, Retry::Yes)) = outcome {
            // The server closed a kept-alive connection before our request reached it: not a failure.
            conn = None;
            outcome = exchange(cfg, &mut conn, request.as_bytes());
        }
        match outcome {
            Ok((bytes, reusable)) => {
                let ns = start.elapsed().as_nanos().max(1) as u64;
                r.latency_ns.saturating_record(ns);
                r.ops += 1;
                r.bytes += bytes;
                shared.ops.fetch_add(1, Ordering::Relaxed);
                if !(keepalive && reusable) {
                    conn = None;
                }
            }
            Err(((kind, msg), _)) => {
                conn = None;
                r.errors.add(kind);
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if r.samples.len() < SAMPLES {
                    r.samples.push(msg);
                }
            }
        }
    }
    r.finished = Instant::now();
    r
}

/// Whether a failed request may be retried on a fresh connection.
enum Retry {
    Yes,
    No,
}

/// One request and its verified response on `conn` (opened when `None`): bytes of response and whether
/// the connection may carry another request.
fn exchange(
    cfg: &ThreadConfig,
    conn: &mut Option<BufReader<TcpStream>>,
    request: &[u8],
) -> Result<(u64, bool), (Failure, Retry)> {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&cfg.addr, cfg.connect_timeout)
            .map_err(|e| (io_failure(&e, "connect"), Retry::No))?;
        s.set_read_timeout(Some(cfg.timeout))
            .and_then(|_| s.set_write_timeout(Some(cfg.timeout)))
            .and_then(|_| s.set_nodelay(true))
            .map_err(|e| (io_failure(&e, "socket options"), Retry::No))?;
        *conn = Some(BufReader::new(s));
    }
    let Some(reader) = conn.as_mut() else {
        return Err(((ErrorKind::Other, "no connection".into()), Retry::No));
    };
    // A kept-alive connection the server already closed fails here or with EOF before the status line.
    let stale = |f: Failure| (f, if reused { Retry::Yes } else { Retry::No });
    reader
        .get_mut()
        .write_all(request)
        .map_err(|e| stale(io_failure(&e, "write")))?;
    let head = read_head(reader).map_err(
        |(f, nothing)| {
            if nothing {
                stale(f)
            } else {
                (f, Retry::No)
            }
        },
    )?;
    response(reader, &head).map_err(|f| (f, Retry::No))
}

/// The header section up to the blank line; `true` with the error when not a byte of it came.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<String, (Failure, bool)> {
    let mut head = String::new();
    loop {
        let before = head.len();
        match reader.read_line(&mut head) {
            Ok(0) => {
                let f = (
                    ErrorKind::Closed,
                    "closed before the response ended its headers".into(),
                );
                return Err((f, head.is_empty()));
            }
            Ok(_) => {}
            Err(e) => return Err((io_failure(&e, "read headers"), head.is_empty())),
        }
        if head.len() > MAX_HEAD {
            return Err((
                (ErrorKind::WrongEcho, "headers longer than 64 KiB".into()),
                false,
            ));
        }
        if head[before..] == *"\r\n" || head[before..] == *"\n" {
            return Ok(head);
        }
    }
}

/// Checks the status and reads the body; returns the response's size and whether the connection stays open.
fn response(reader: &mut BufReader<TcpStream>, head: &str) -> Result<(u64, bool), Failure> {
    let bad = |msg: String| (ErrorKind::WrongEcho, msg);
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("");
    let mut parts = status.split_whitespace();
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "200" {
        return Err(bad(format!("status line {status:?}, expected 200")));
    }
    let (mut length, mut chunked, mut close) = (None, false, version == "HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad(format!("Content-Length {value:?}")))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(n) = length {
        let mut sink = io::sink();
        let got = io::copy(&mut reader.by_ref().take(n), &mut sink)
            .map_err(|e| io_failure(&e, "read body"))?;
        if got != n {
            return Err((
                ErrorKind::Closed,
                format!("body of {got} of {n} bytes (Content-Length)"),
            ));
        }
        n
    } else {
        // No length: the body ends when the server closes.
        close = true;
        io::copy(reader, &mut io::sink()).map_err(|e| io_failure(&e, "read body"))?
    };
    Ok((head.len() as u64 + body, !close))
}

/// A chunked body, to its last (empty) chunk and the trailer's blank line.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<u64, Failure> {
    let mut total = 0;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| io_failure(&e, "read chunk size"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let n = u64::from_str_radix(hex, 16)
            .map_err(|_| (ErrorKind::WrongEcho, format!("chunk size {line:?}")))?;
        if n == 0 {
            // Trailer lines, then the blank line.
            loop {
                let mut t = String::new();
                match reader.read_line(&mut t) {
                    Ok(0) => return Ok(total),
                    Ok(_) if t.trim().is_empty() => return Ok(total),
                    Ok(_) => {}
                    Err(e) => return Err(io_failure(&e, "read trailer")),
                }
            }
        }
        let got = io::copy(&mut reader.by_ref().take(n + 2), &mut io::sink())
            .map_err(|e| io_failure(&e, "read chunk"))?;
        if got != n + 2 {
            return Err((ErrorKind::Closed, "closed inside a chunk".into()));
        }
        total += n;
    }
}
