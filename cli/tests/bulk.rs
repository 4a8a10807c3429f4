//! The built-in worker's bulk path end to end: what it promises while connections stream — bounded memory
//! for a client that does not read (backpressure), every byte back after a half-close (RFC 862), and a
//! ping-pong connection served while a bulk one streams (fairness). Real sockets on 127.0.0.1; no timing
//! assertions: each wait is bounded by `PATIENCE` and fails only when something is broken.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The stream is this block repeated; its length is a prime, so no power-of-two chunk lines up with it
/// and a byte echoed at the wrong offset is caught.
const PERIOD: usize = 65_521;
/// Most bytes a test client writes or checks at once.
const CHUNK: usize = 64 * 1024;

/// `PERIOD` pseudo-random bytes followed by the first `CHUNK` of them again, so every window of up to
/// `CHUNK` bytes starting inside the period is one contiguous slice.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v: Vec<u8> = (0..PERIOD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    let wrap: Vec<u8> = (0..CHUNK).map(|i| v[i % PERIOD]).collect();
    v.extend(wrap);
    v
}

/// The `len` (≤ CHUNK) stream bytes starting at stream offset `at`.
fn window(p: &[u8], at: u64, len: usize) -> &[u8] {
    let start = (at % PERIOD as u64) as usize;
    &p[start..start + len]
}

/// Reads until EOF, checking every byte against the stream; returns how many arrived. `echoed` is kept
/// up to date for a thread that watches the progress.
fn read_and_check(s: &mut TcpStream, echoed: &AtomicU64, read_size: usize) -> u64 {
    let p = pattern();
    let mut buf = vec![0u8; read_size.min(CHUNK)];
    let mut got = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("read after {got} echoed bytes: {e}"),
        };
        assert!(
            buf[..n] == *window(&p, got, n),
            "echo differs within stream bytes {got}..{}",
            got + n as u64
        );
        got += n as u64;
        echoed.store(got, Ordering::Relaxed);
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[test]
fn a_client_that_never_reads_grows_the_worker_by_less_than_16_mib() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let worker = srv.worker_pids()[0];
    // One bulk echo first, so memory the worker touches once (its read buffer) counts as before.
    let warm = pattern();
    assert_eq!(round_trip(srv.port, &warm), warm);
    let before = vm_rss_kib(worker);

    // Write without ever reading. The worker echoes into the client's receive buffer until that and its
    // own send buffer are full, keeps the rest of its last read, and then reads no more: TCP pushes back
    // and our writes stop going through. Kernel buffers on loopback hold some tens of MiB, so 1 GiB
    // taken without blocking would mean the worker buffers without bound.
    const CAP: u64 = 1 << 30;
    let p = pattern();
    let mut s = connect(srv.port);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0u64;
    let blocked = loop {
        if sent >= CAP {
            break false;
        }
        match s.write(window(&p, sent, CHUNK)) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("write after {sent} bytes: {e}"),
        }
    };
    let after = vm_rss_kib(worker);
    assert!(
        blocked,
        "the worker took {sent} bytes from a client that reads none: no backpressure"
    );
    let grown = after.saturating_sub(before);
    eprintln!("client wrote {sent} bytes and blocked; worker VmRSS {before} → {after} KiB");
    assert!(
        grown < 16 * 1024,
        "worker grew by {grown} KiB (VmRSS {before} → {after} KiB) holding a client that never reads"
    );

    // Meanwhile the worker serves others, and nothing of the stuck stream is lost once it reads.
    assert_eq!(round_trip(srv.port, b"still here"), b"still here");
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_and_check(&mut s, &AtomicU64::new(0), CHUNK);
    assert_eq!(got, sent, "echo length after the client finally read");
}

#[test]
fn a_bulk_upload_then_half_close_gets_every_byte_back_to_a_slow_reader() {
    // RFC 862 with the bulk path's state in play: the client reads in small pieces, so the worker keeps
    // meeting a full send buffer and holding unsent bytes, and the client's FIN arrives while it does.
    // Everything owed must still go out, then the worker's FIN.
    const TOTAL: u64 = 32 << 20;
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let mut s = connect(srv.port);
    let mut writer = s.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let p = pattern();
        let mut sent = 0u64;
        while sent < TOTAL {
            let n = CHUNK.min((TOTAL - sent) as usize);
            writer.write_all(window(&p, sent, n)).unwrap();
            sent += n as u64;
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_and_check(&mut s, &AtomicU64::new(0), 1024);
    upload.join().unwrap();
    assert_eq!(got, TOTAL, "echo length before the worker's FIN");
}

#[test]
fn a_ping_pong_connection_is_served_while_a_bulk_one_streams() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();

    // The bulk connection: one thread writes the stream until told to stop (at most 16 GiB), another
    // reads and checks the echo.
    let bulk = connect(srv.port);
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut writer = bulk.try_clone().unwrap();
    let stop_writing = stop.clone();
    let upload = std::thread::spawn(move || {
        let p = pattern();
        let mut sent = 0u64;
        while !stop_writing.load(Ordering::Relaxed) && sent < 16 << 30 {
            writer.write_all(window(&p, sent, CHUNK)).unwrap();
            sent += CHUNK as u64;
        }
        writer.shutdown(Shutdown::Write).unwrap();
        sent
    });
    let mut reader = bulk;
    let progress = echoed.clone();
    let download = std::thread::spawn(move || read_and_check(&mut reader, &progress, CHUNK));
    wait_until("the bulk stream to flow", || {
        echoed.load(Ordering::Relaxed) >= 8 << 20
    });

    // Ping-pong on a second connection to the same worker, until it has done 100 round trips and the bulk
    // stream has moved on by 8 MiB meanwhile: both were served at once. Every read waits at most
    // PATIENCE, so a starved ping-pong fails here instead of hanging.
    let mut ping = connect(srv.port);
    let from = echoed.load(Ordering::Relaxed);
    let until = Instant::now() + PATIENCE;
    let mut rounds = 0u32;
    while rounds < 100 || echoed.load(Ordering::Relaxed) < from + (8 << 20) {
        assert!(
            Instant::now() < until,
            "after {rounds} round trips the bulk stream moved only {} bytes",
            echoed.load(Ordering::Relaxed) - from
        );
        let msg = format!("ping {rounds:>6} ................................................");
        ping.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        ping.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round trip {rounds} while the bulk one streams: {e}"));
        assert_eq!(back, msg.as_bytes());
        rounds += 1;
    }

    stop.store(true, Ordering::Relaxed);
    let sent = upload.join().unwrap();
    let got = download.join().unwrap();
    assert_eq!(got, sent, "the bulk stream's echo length");
}
