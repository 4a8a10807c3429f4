//! The load generator itself: it counts, verifies and classifies errors correctly, against small
//! std::net servers that echo correctly or deliberately wrong. (The `port-sharding bench` command
//! against the engine is tested in cli/tests/bench.rs.) No timing assertions: only counts, which a
//! bounded run (`connections`) makes exact.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use port_sharding_bench::{run, BenchArgs, Report, Workload};

/// The per-test time limit of the CLI's integration tests: a test that hangs fails this binary, named.
#[path = "../../cli/tests/common/watchdog.rs"]
#[allow(dead_code)]
mod watchdog;

/// Longest any test server lives; reached only when a test is broken.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

/// What a test server does with each connection.
#[derive(Clone, Copy)]
enum Behavior {
    /// Echo everything.
    Echo,
    /// Echo one byte per write (the client must reassemble).
    Dribble,
    /// Echo, with byte 10 of each connection's stream flipped.
    FlipByte,
    /// Echo, with one extra byte after the first reply.
    ExtraByte,
    /// Read a little, then reset the connection (SO_LINGER 0).
    Reset,
    /// Read the message, then close without answering.
    CloseEarly,
    /// Echo the first read, then close (the talk's loop, and the engine's `once` mode).
    EchoOnceThenClose,
    /// Read, never answer, keep the connection open until the client leaves.
    Silent,
}

/// A thread-per-connection test server on 127.0.0.1, stopped on drop.
struct TestServer {
    port: u16,
    /// The source address of every connection accepted.
    peers: Arc<std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(behavior: Behavior) -> TestServer {
        watchdog::arm();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let peers = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let seen = peers.clone();
        let accept = std::thread::spawn(move || {
            let until = Instant::now() + SERVER_LIFETIME;
            // Bounded by the stop flag and SERVER_LIFETIME.
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((s, peer)) => {
                        seen.lock().unwrap().insert(peer.ip());
                        let flag = flag.clone();
                        std::thread::spawn(move || handle(s, behavior, &flag, until));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        TestServer {
            port,
            peers,
            stop,
            accept: Some(accept),
        }
    }

    fn args(&self, workload: Workload) -> BenchArgs {
        BenchArgs {
            port: self.port,
            workload,
            concurrency: 4,
            duration: Duration::from_secs(30),
            no_status: true,
            ..Default::default()
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn handle(mut s: TcpStream, behavior: Behavior, stop: &AtomicBool, until: Instant) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let mut extra_sent = false;
    // Bounded by the client closing, the stop flag and `until`.
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let chunk = &mut buf[..n];
        let ok = match behavior {
            Behavior::Echo => s.write_all(chunk).is_ok(),
            Behavior::Dribble => chunk.iter().all(|b| s.write_all(&[*b]).is_ok()),
            Behavior::FlipByte => {
                if (total..total + n).contains(&10) {
                    chunk[10 - total] ^= 0xff;
                }
                s.write_all(chunk).is_ok()
            }
            Behavior::ExtraByte => {
                let ok = s.write_all(chunk).is_ok();
                if !extra_sent {
                    extra_sent = true;
                    // Something that differs from whatever byte comes next.
                    let _ = s.write_all(&[chunk[0].wrapping_add(1)]);
                }
                ok
            }
            Behavior::Reset => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return; // dropped with linger 0: RST
            }
            Behavior::CloseEarly => return,
            Behavior::EchoOnceThenClose => {
                let _ = s.write_all(chunk);
                return;
            }
            Behavior::Silent => true,
        };
        total += n;
        if !ok {
            return;
        }
    }
}

/// Every ticket of a bounded run ends as a success or a counted failure.
fn assert_accounted(r: &Report, n: u64) {
    assert_eq!(
        r.ops + r.errors.total,
        n,
        "ops {} + errors {:?} != {n}",
        r.ops,
        r.errors
    );
    let e = &r.errors;
    assert_eq!(
        e.refused + e.reset + e.timeout + e.wrong_echo + e.closed + e.other,
        e.total
    );
}

#[test]
fn correct_server_conn_counts_every_operation() {
    let srv = TestServer::start(Behavior::Echo);
    let r = run(&BenchArgs {
        connections: Some(200),
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!(r.ops, 200);
    assert_eq!(r.errors.total, 0, "{:?}", r.error_samples);
    assert_eq!(r.bytes, 200 * 64);
    assert_eq!(r.latency_us.count, 200);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.max);
    assert!(r.workers.is_none());
}

#[test]
fn several_source_addresses_still_count_every_operation() {
    let srv = TestServer::start(Behavior::Echo);
    let r = run(&BenchArgs {
        connections: Some(200),
        sources: 4,
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!((r.ops, r.errors.total), (200, 0), "{:?}", r.error_samples);
    let mut peers: Vec<_> = srv.peers.lock().unwrap().iter().copied().collect();
    peers.sort();
    let want: Vec<std::net::IpAddr> = (1..=4).map(|i| [127, 0, 0, i].into()).collect();
    assert_eq!(peers, want, "connections came from 127.0.0.1 to 127.0.0.4");
    // More than one source address only makes sense on IPv4 loopback.
    assert!(run(&BenchArgs {
        host: "::1".into(),
        sources: 2,
        ..srv.args(Workload::Conn)
    })
    .is_err());
}

#[test]
fn correct_server_pingpong_and_threads() {
    let srv = TestServer::start(Behavior::Echo);
    let args = BenchArgs {
        connections: Some(1000),
        threads: 3,
        concurrency: 7,
        size: 33,
        ..srv.args(Workload::Pingpong)
    };
    let r = run(&args).unwrap();
    assert_eq!((r.ops, r.errors.total), (1000, 0), "{:?}", r.error_samples);
    assert_eq!(r.bytes, 1000 * 33);
    assert_eq!(r.threads, 3);
}

#[test]
fn correct_server_stream_with_odd_sizes() {
    let srv = TestServer::start(Behavior::Echo);
    // 100,000 bytes: not a multiple of the 64 KiB chunk nor of the pattern period.
    let args = BenchArgs {
        connections: Some(40),
        size: 100_000,
        window: 3,
        ..srv.args(Workload::Stream)
    };
    let r = run(&args).unwrap();
    assert_eq!((r.ops, r.errors.total), (40, 0), "{:?}", r.error_samples);
    assert_eq!(r.bytes, 40 * 100_000);
    assert_eq!(r.window, 3);
}

#[test]
fn one_byte_replies_are_reassembled() {
    let srv = TestServer::start(Behavior::Dribble);
    for w in [Workload::Conn, Workload::Pingpong] {
        let r = run(&BenchArgs {
            connections: Some(50),
            size: 200,
            ..srv.args(w)
        })
        .unwrap();
        assert_eq!(
            (r.ops, r.errors.total),
            (50, 0),
            "{w}: {:?}",
            r.error_samples
        );
    }
}

#[test]
fn flipped_byte_is_a_wrong_echo() {
    let srv = TestServer::start(Behavior::FlipByte);
    let r = run(&BenchArgs {
        connections: Some(30),
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.wrong_echo, 30, "{:?}", r.errors);
    assert_accounted(&r, 30);
    assert!(
        r.error_samples.iter().any(|s| s.contains("stream byte 10")),
        "{:?}",
        r.error_samples
    );
    assert!(r.render().contains("wrong echo 30"));
}

#[test]
fn flipped_byte_is_caught_in_a_long_stream() {
    let srv = TestServer::start(Behavior::FlipByte);
    let r = run(&BenchArgs {
        connections: Some(8),
        size: 65536,
        ..srv.args(Workload::Stream)
    })
    .unwrap();
    assert!(r.errors.wrong_echo > 0, "{:?}", r.errors);
    assert_eq!(r.errors.total, r.errors.wrong_echo);
    assert_accounted(&r, 8);
}

#[test]
fn extra_byte_is_a_wrong_echo() {
    let srv = TestServer::start(Behavior::ExtraByte);
    let r = run(&BenchArgs {
        connections: Some(40),
        ..srv.args(Workload::Pingpong)
    })
    .unwrap();
    assert!(r.errors.wrong_echo > 0, "{:?}", r.errors);
    assert_eq!(r.errors.total, r.errors.wrong_echo, "{:?}", r.error_samples);
    assert_accounted(&r, 40);
}

#[test]
fn reset_is_counted_as_reset() {
    let srv = TestServer::start(Behavior::Reset);
    let r = run(&BenchArgs {
        connections: Some(20),
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.reset, 20, "{:?} {:?}", r.errors, r.error_samples);
    assert_accounted(&r, 20);
}

#[test]
fn early_close_is_counted_as_closed() {
    let srv = TestServer::start(Behavior::CloseEarly);
    let r = run(&BenchArgs {
        connections: Some(20),
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.closed, 20, "{:?} {:?}", r.errors, r.error_samples);
    assert_accounted(&r, 20);
}

#[test]
fn a_server_closing_after_one_echo_serves_conn_but_not_pingpong() {
    let srv = TestServer::start(Behavior::EchoOnceThenClose);
    let r = run(&BenchArgs {
        connections: Some(50),
        ..srv.args(Workload::Conn)
    })
    .unwrap();
    assert_eq!((r.ops, r.errors.total), (50, 0), "{:?}", r.error_samples);
    // Persistent connections: the first message of each is echoed, the next finds the server gone.
    let r = run(&BenchArgs {
        connections: Some(20),
        concurrency: 2,
        ..srv.args(Workload::Pingpong)
    })
    .unwrap();
    assert_accounted(&r, 20);
    assert!(r.ops > 0 && r.errors.total > 0, "{r:?}");
    assert_eq!(
        r.errors.closed + r.errors.reset,
        r.errors.total,
        "{:?} {:?}",
        r.errors,
        r.error_samples
    );
}

#[test]
fn silence_is_a_timeout() {
    let srv = TestServer::start(Behavior::Silent);
    let args = BenchArgs {
        connections: Some(6),
        concurrency: 3,
        timeout: Duration::from_millis(200),
        ..srv.args(Workload::Pingpong)
    };
    let r = run(&args).unwrap();
    assert_eq!(r.ops, 0);
    assert_eq!(r.errors.timeout, 6, "{:?}", r.errors);
    assert_accounted(&r, 6);
}

#[test]
fn nothing_listening_is_refused() {
    watchdog::arm();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let args = BenchArgs {
        port,
        workload: Workload::Conn,
        concurrency: 2,
        connections: Some(10),
        no_status: true,
        ..Default::default()
    };
    let r = run(&args).unwrap();
    assert_eq!(
        (r.ops, r.errors.refused, r.errors.total),
        (0, 10, 10),
        "{:?}",
        r.error_samples
    );
}

#[test]
fn duration_alone_bounds_the_run() {
    let srv = TestServer::start(Behavior::Echo);
    let args = BenchArgs {
        duration: Duration::from_millis(300),
        ..srv.args(Workload::Pingpong)
    };
    let r = run(&args).unwrap();
    assert!(r.ops > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.error_samples);
}

#[test]
fn bad_arguments_are_refused_before_running() {
    assert!(run(&BenchArgs {
        port: 0,
        ..Default::default()
    })
    .is_err());
    assert!(run(&BenchArgs {
        host: "no such host.invalid".into(),
        port: 9,
        ..Default::default()
    })
    .is_err());
}
