//! Rolling upgrades with `serve --takeover`, under continuous load from bounded clients.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Clients that connect, send a unique message, half-close and check the echo, until stopped
/// (bounded: at most `MAX_OPS` connections each and `PATIENCE * 3` of time).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    wrong: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const MAX_OPS: u64 = 50_000;

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, wrong) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = (0..clients)
            .map(|t| {
                let (stop, ok, failed, wrong) =
                    (stop.clone(), ok.clone(), failed.clone(), wrong.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + PATIENCE * 3;
                    for i in 0..MAX_OPS {
                        if stop.load(Ordering::Relaxed) || Instant::now() > until {
                            break;
                        }
                        let msg = format!("client {t} message {i}");
                        match one(port, msg.as_bytes()) {
                            Ok(reply) if reply == msg.as_bytes() => {
                                ok.fetch_add(1, Ordering::Relaxed)
                            }
                            Ok(_) => wrong.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("client {t}: {e}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            wrong,
            threads,
        }
    }

    /// Waits until `n` more connections have succeeded, so each step really runs under load (and the
    /// server that took over answers them); fails the test when they do not come.
    fn wait_for(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let until = Instant::now() + PATIENCE;
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < until,
                "only {} of {target} connections answered (failed {})",
                self.ok.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
        )
    }
}

fn one(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out)?;
    Ok(out)
}

#[test]
fn five_takeovers_under_load_lose_nothing() {
    let dir = control_dir();
    let mut current = Spawn::new(&["--port", "0", "--workers", "2"])
        .dir(&dir)
        .start();
    let port = current.port;
    let load = Load::start(port, 2);
    load.wait_for(200);
    let mut all_workers = current.worker_pids();
    for generation in 1..=5 {
        // Alternate worker counts: more sockets than received, then fewer.
        let workers = if generation % 2 == 0 { "2" } else { "3" };
        let next = Spawn::new(&[
            "--port",
            &port.to_string(),
            "--workers",
            workers,
            "--takeover",
        ])
        .dir(&dir)
        .start();
        assert_eq!(next.port, port);
        let code = current.wait_exit().code();
        assert_eq!(
            code,
            Some(0),
            "generation {} exits cleanly; log: {:#?}",
            generation - 1,
            current.log()
        );
        assert!(
            current.count_log("stopped (taken over)") == 1,
            "{:#?}",
            current.log()
        );
        all_workers.extend(next.worker_pids());
        current = next;
        load.wait_for(200);
    }
    let (ok, failed, wrong) = load.finish();
    eprintln!("takeovers: {ok} connections answered, {failed} failed, {wrong} wrong echoes");
    assert_eq!((failed, wrong), (0, 0), "{ok} ok");
    assert!(ok >= 1200);
    current.signal(libc::SIGTERM);
    assert_eq!(current.wait_exit().code(), Some(0));
    assert_all_gone(&all_workers);
}

#[test]
fn takeover_with_nothing_running_starts_normally() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--takeover"]).start();
    assert!(srv.count_log("no server is serving") == 1);
    assert_eq!(round_trip(srv.port, b"hi"), b"hi");
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit().code(), Some(0));
}

#[test]
fn a_new_server_that_dies_before_ready_leaves_the_old_one_serving() {
    let dir = control_dir();
    let mut old = Spawn::new(&["--port", "0", "--workers", "1"])
        .dir(&dir)
        .start();
    let port = old.port.to_string();
    let load = Load::start(old.port, 1);
    load.wait_for(100);
    // Five descriptors: stdio, the control connection and the one socket it receives. Binding the extra
    // listener it asks for then fails (EMFILE): the new server dies after receiving the sockets, before ready.
    let mut new = Spawn::new(&["--port", &port, "--workers", "2", "--takeover"])
        .dir(&dir)
        .nofile(5)
        .spawn();
    assert_eq!(new.wait_exit().code(), Some(1), "{:#?}", new.log());
    assert!(
        new.log().join("\n").contains("Too many open files"),
        "{:#?}",
        new.log()
    );
    old.wait_log("takeover aborted");
    load.wait_for(100);
    let (ok, failed, wrong) = load.finish();
    assert_eq!((failed, wrong), (0, 0), "{ok} ok");
    assert_eq!(round_trip(old.port, b"still here"), b"still here");
    assert_eq!(old.status()[0]["state"], "serving");
}

#[test]
fn takeover_refuses_a_server_bound_to_another_address() {
    let dir = control_dir();
    let old = Spawn::new(&["--port", "0", "--workers", "1"])
        .dir(&dir)
        .start();
    let port = old.port.to_string();
    // The old server is bound to 127.0.0.1; a takeover on 0.0.0.0 would form a separate group.
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            &port,
            "--takeover",
            "--workers",
            "1",
        ])
        .env("PORT_SHARDING_CONTROL_DIR", &*dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("takeover failed") && err.contains("127.0.0.1"),
        "{err}"
    );
    assert_eq!(round_trip(old.port, b"unchanged"), b"unchanged");
    assert_eq!(old.status()[0]["state"], "serving");
}
