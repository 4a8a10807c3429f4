//! The `udp` workload: `--concurrency` flows, each a UDP socket of its own (its own source port), each
//! sending numbered datagrams — one every `--interval` (2 ms by default), or with `--interval 0` as fast
//! as `--window` datagrams in flight per flow allow — and checking every echo byte for byte.
//!
//! A datagram whose echo has not come back within `--timeout` is **lost**; an echo that differs from what
//! was sent, comes twice, or was never sent is a wrong echo. When the run ends, sending stops and the
//! echoes still due are awaited (up to `--timeout`) before the rest count as lost, so the run is bounded
//! by `--duration` + `--timeout`.
//!
//! Datagram layout (at least [`HEADER`] bytes): flow (u32), thread (u32), sequence number (u64), then a
//! pattern that depends on all three, so a reply for another flow or another datagram never passes.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::UdpSocket as MioUdp;
use mio::{Events, Interest, Poll, Token};

use crate::engine::{Shared, ThreadConfig};
use crate::record::{ErrorKind, ThreadResult};

/// Flow, thread and sequence number.
pub const HEADER: usize = 16;
/// The per-flow send interval when `--interval` is not given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(2);
/// How many failures are kept as samples per thread.
const SAMPLES: usize = 5;

struct Flow {
    socket: MioUdp,
    next_seq: u64,
    next_send: Instant,
    /// Sent, echo not yet back: sequence number → when sent.
    due: HashMap<u64, Instant>,
}

/// Byte `j` of datagram `seq` of `flow` on `thread`.
fn pattern(flow: u32, thread: u32, seq: u64, j: usize) -> u8 {
    (seq.wrapping_mul(31) as usize ^ (j * 7) ^ flow as usize ^ ((thread as usize) << 3)) as u8
}

/// Fills `buf` with datagram `seq` of `flow`.
fn fill(buf: &mut [u8], flow: u32, thread: u32, seq: u64) {
    buf[0..4].copy_from_slice(&flow.to_be_bytes());
    buf[4..8].copy_from_slice(&thread.to_be_bytes());
    buf[8..16].copy_from_slice(&seq.to_be_bytes());
    for (j, b) in buf.iter_mut().enumerate().skip(HEADER) {
        *b = pattern(flow, thread, seq, j);
    }
}

/// The sequence number of an echo that is exactly datagram `seq` of `flow` as sent, `size` bytes.
fn check(got: &[u8], size: usize, flow: u32, thread: u32) -> Option<u64> {
    if got.len() != size || got.len() < HEADER {
        return None;
    }
    let f = u32::from_be_bytes(got[0..4].try_into().ok()?);
    let t = u32::from_be_bytes(got[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(got[8..16].try_into().ok()?);
    let body_ok = got
        .iter()
        .enumerate()
        .skip(HEADER)
        .all(|(j, &b)| b == pattern(flow, thread, seq, j));
    (f == flow && t == thread && body_ok).then_some(seq)
}

fn open(addr: SocketAddr) -> io::Result<MioUdp> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(local)?;
    s.connect(addr)?;
    s.set_nonblocking(true)?;
    Ok(MioUdp::from_std(s))
}

/// One load thread's share of the flows.
pub(crate) fn run_thread(cfg: ThreadConfig, shared: &Shared) -> ThreadResult {
    let mut r = ThreadResult::new();
    let sample = |r: &mut ThreadResult, kind: ErrorKind, msg: String| {
        r.errors.add(kind);
        shared.errors.fetch_add(1, Ordering::Relaxed);
        if r.samples.len() < SAMPLES && !r.samples.contains(&msg) {
            r.samples.push(msg);
        }
    };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            sample(&mut r, ErrorKind::Other, format!("epoll: {e}"));
            return r;
        }
    };
    let thread = cfg.id as u32;
    let start = Instant::now();
    let mut flows = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        match open(cfg.addr).and_then(|mut s| {
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)?;
            Ok(s)
        }) {
            Ok(socket) => flows.push(Flow {
                socket,
                next_seq: 0,
                // Spread the flows' first sends over one interval.
                next_send: start
                    + cfg
                        .interval
                        .mul_f64(i as f64 / cfg.connections.max(1) as f64),
                due: HashMap::new(),
            }),
            Err(e) => sample(&mut r, ErrorKind::Other, format!("udp socket: {e}")),
        }
    }
    let mut out = vec![0u8; cfg.size];
    let mut buf = vec![0u8; cfg.size.max(HEADER) + 1];
    let mut events = Events::with_capacity(256);
    let mut next_expiry = start;
    loop {
        let now = Instant::now();
        let sending = now < cfg.deadline && !shared.stop.load(Ordering::Relaxed);
        if sending {
            for (i, f) in flows.iter_mut().enumerate() {
                let want = if cfg.interval.is_zero() {
                    f.due.len() < cfg.window
                } else {
                    now >= f.next_send
                };
                if !want || !ticket(&cfg, shared) {
                    continue;
                }
                fill(&mut out, i as u32, thread, f.next_seq);
                match f.socket.send(&out) {
                    Ok(_) => {
                        f.due.insert(f.next_seq, Instant::now());
                    }
                    // Not sent is not lost: the send buffer was full (or the server's port refused,
                    // ICMP): count it as an error of its own kind.
                    Err(e) => sample(&mut r, ErrorKind::Other, format!("send: {e}")),
                }
                f.next_seq += 1;
                // Keep the pace without bursts after a stall.
                f.next_send = (f.next_send + cfg.interval).max(now);
            }
        } else if flows.iter().all(|f| f.due.is_empty()) || now >= cfg.deadline + cfg.timeout {
            break;
        }
        let wait = if cfg.interval.is_zero() {
            Duration::from_millis(1)
        } else {
            flows
                .iter()
                .map(|f| f.next_send.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_millis(1))
                .min(Duration::from_millis(5))
        };
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                sample(&mut r, ErrorKind::Other, format!("epoll_wait: {e}"));
                break;
            }
        }
        for event in events.iter() {
            let i = event.token().0;
            let Some(f) = flows.get_mut(i) else { continue };
            loop {
                match f.socket.recv(&mut buf) {
                    Ok(n) => match check(&buf[..n], cfg.size, i as u32, thread)
                        .and_then(|seq| f.due.remove(&seq))
                    {
                        Some(sent) => {
                            r.ops += 1;
                            r.bytes += n as u64;
                            shared.ops.fetch_add(1, Ordering::Relaxed);
                            let _ = r.latency_ns.record(sent.elapsed().as_nanos() as u64);
                        }
                        None => sample(
                            &mut r,
                            ErrorKind::WrongEcho,
                            format!("flow {i}: an echo of {n} byte(s) that was not due"),
                        ),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        sample(&mut r, ErrorKind::Other, format!("recv: {e}"));
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= next_expiry {
            next_expiry = now + Duration::from_millis(10);
            for (i, f) in flows.iter_mut().enumerate() {
                let before = f.due.len();
                f.due
                    .retain(|_, sent| now.duration_since(*sent) < cfg.timeout);
                for _ in f.due.len()..before {
                    sample(
                        &mut r,
                        ErrorKind::Lost,
                        format!("flow {i}: no echo within {:?}", cfg.timeout),
                    );
                }
            }
        }
    }
    for (i, f) in flows.iter().enumerate() {
        for _ in 0..f.due.len() {
            sample(
                &mut r,
                ErrorKind::Lost,
                format!("flow {i}: no echo by the end of the run"),
            );
        }
    }
    r.finished = Instant::now();
    r
}

/// Whether one more datagram may be sent (`--connections` bounds the datagrams of a UDP run).
fn ticket(cfg: &ThreadConfig, shared: &Shared) -> bool {
    match cfg.limit {
        None => true,
        Some(limit) => shared.started.fetch_add(1, Ordering::Relaxed) < limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_passes_only_as_sent() {
        let mut d = vec![0u8; 64];
        fill(&mut d, 3, 1, 77);
        assert_eq!(check(&d, 64, 3, 1), Some(77));
        assert_eq!(check(&d, 64, 4, 1), None, "another flow's");
        assert_eq!(check(&d[..63], 64, 3, 1), None, "cut short");
        d[40] ^= 1;
        assert_eq!(check(&d, 64, 3, 1), None, "one bit changed");
    }
}
