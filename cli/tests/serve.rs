//! `port-sharding serve` end to end: real processes, real sockets on 127.0.0.1, real signals.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use common::*;

#[test]
fn workers_share_the_port_and_each_gets_connections() {
    let srv = Spawn::new(&["--port", "0", "--workers", "4"]).start();
    for i in 0..400 {
        let msg = format!("hello {i}");
        assert_eq!(round_trip(srv.port, msg.as_bytes()), msg.as_bytes());
    }
    let counts = accepted(&srv.status());
    assert_eq!(counts.len(), 4);
    assert_eq!(counts.iter().sum::<u64>(), 400);
    assert!(
        counts.iter().all(|&c| c > 0),
        "a worker got no connection: {counts:?}"
    );
}

#[test]
fn two_serve_processes_share_one_port() {
    let a = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let port = a.port.to_string();
    let b = Spawn::new(&["--port", &port, "--workers", "1"])
        .dir(&a.dir.clone())
        .start();
    for i in 0..200 {
        let msg = format!("m{i}");
        assert_eq!(round_trip(a.port, msg.as_bytes()), msg.as_bytes());
    }
    let status = a.status();
    let servers = status.as_array().unwrap();
    assert_eq!(servers.len(), 2, "status lists both servers: {status}");
    for s in servers {
        let got = s["workers"][0]["accepted"].as_u64().unwrap();
        assert!(got > 0, "server {} got no connection", s["pid"]);
    }
    drop(b);
}

#[test]
fn echo_once_and_hello_are_byte_exact() {
    let echo = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    assert_eq!(round_trip(echo.port, &data), data);

    // once: one read of at most 1024 bytes, echoed, then close — the talk's loop.
    let once = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "once"]).start();
    let mut s = connect(once.port);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_to_end(&mut s), b"ping");

    let hello = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "hello"]).start();
    let pid = hello.worker_pids()[0];
    let mut s = connect(hello.port);
    assert_eq!(
        String::from_utf8(read_to_end(&mut s)).unwrap(),
        format!("Hello from rust process {pid}\n")
    );
}

#[test]
fn one_mebibyte_round_trip_with_backpressure() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut s = connect(srv.port);
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    // Write from another thread: the server stops reading while its echo cannot be sent.
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end(&mut s);
    t.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs");
}

#[test]
fn half_close_gets_the_whole_echo() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let mut s = connect(srv.port);
    s.write_all(b"first ").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"first ");
    s.write_all(b"second").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"second");
}

#[test]
fn sigterm_drains_slow_connections_and_leaves_no_orphans() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    let workers = srv.worker_pids();
    let mut conns: Vec<_> = (0..100)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("start {i};").as_bytes()).unwrap();
            s
        })
        .collect();
    // Every connection has been accepted (its first bytes came back) before the signal.
    for (i, s) in conns.iter_mut().enumerate() {
        let want = format!("start {i};");
        let mut buf = vec![0; want.len()];
        s.read_exact(&mut buf).unwrap();
    }
    srv.signal(libc::SIGTERM);
    srv.wait_log("draining");
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("end {i}").as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_to_end(s),
            format!("end {i}").as_bytes(),
            "connection {i} was cut"
        );
    }
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(0), "log: {:#?}", srv.log());
    assert_all_gone(&workers);
}

#[test]
fn second_signal_stops_at_once() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--drain-timeout", "60s"]).start();
    let workers = srv.worker_pids();
    let _held = connect(srv.port); // keeps the drain from finishing
    std::thread::sleep(Duration::from_millis(200)); // let the worker accept it
    srv.signal(libc::SIGINT);
    srv.wait_log("draining");
    srv.signal(libc::SIGINT);
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(1), "forced stop exits 1");
    assert_all_gone(&workers);
}

#[test]
fn drain_timeout_closes_what_is_left_and_says_how_many() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--drain-timeout", "1s"]).start();
    let mut held = connect(srv.port);
    held.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).unwrap();
    srv.signal(libc::SIGTERM);
    srv.wait_log("closed 1 connection(s) still open");
    assert_eq!(srv.wait_exit().code(), Some(0));
    assert_eq!(
        read_to_end(&mut held),
        b"",
        "the server closed the held connection"
    );
}

#[test]
fn stop_command_drains_through_the_control_socket() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    let workers = srv.worker_pids();
    let out = std::process::Command::new(bin())
        .args(["stop", "--port", &srv.port.to_string(), "--wait", "20s"])
        .env("PORT_SHARDING_CONTROL_DIR", &srv.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.wait_exit().code(), Some(0));
    assert_all_gone(&workers);
    // Nothing left to stop: a clear error.
    let out = std::process::Command::new(bin())
        .args(["stop", "--port", &srv.port.to_string()])
        .env("PORT_SHARDING_CONTROL_DIR", &srv.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port-sharding server is running"));
}

#[test]
fn killed_worker_is_replaced_and_its_queue_is_served() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let first = srv.worker_pids()[0];
    // SAFETY: killing the worker our server forked.
    unsafe { libc::kill(first, libc::SIGKILL) };
    // These connect while no worker runs: they wait in the listener's queue, which the supervisor keeps.
    let mut queued: Vec<_> = (0..50)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("queued {i}").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    srv.wait_log("restarting in");
    for (i, s) in queued.iter_mut().enumerate() {
        assert_eq!(read_to_end(s), format!("queued {i}").as_bytes());
    }
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 2, "a replacement was forked: {pids:?}");
    assert_ne!(pids[1], first);
    assert_eq!(srv.status()[0]["workers"][0]["restarts"], 1);
}

#[test]
fn fd_exhaustion_backs_off_and_recovers() {
    // A low fd limit: the worker runs out of descriptors after a few connections.
    let srv = Spawn::new(&["--port", "0", "--workers", "1"])
        .nofile(24)
        .start();
    let mut held: Vec<_> = (0..40).map(|_| connect(srv.port)).collect();
    let mut srv = srv;
    srv.wait_log("accept failed");
    // The ones accepted still work.
    held[0].write_all(b"alive").unwrap();
    let mut buf = [0u8; 5];
    held[0].read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"alive");
    // Free the descriptors: the queued connections and new ones are served.
    held.truncate(1);
    held.clear();
    assert_eq!(round_trip(srv.port, b"later"), b"later");
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "the server survived"
    );
}

#[test]
fn max_connections_pauses_accepting_until_one_closes() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--max-connections", "2"]).start();
    let mut a = connect(srv.port);
    let mut b = connect(srv.port);
    for s in [&mut a, &mut b] {
        s.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).unwrap();
    }
    let mut c = connect(srv.port);
    c.write_all(b"third").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        accepted(&srv.status()),
        vec![2],
        "the third waits in the queue"
    );
    drop(a);
    assert_eq!(read_to_end(&mut c), b"third");
}

#[test]
fn idle_timeout_closes_quiet_connections() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--idle-timeout", "1s"]).start();
    let mut s = connect(srv.port);
    assert_eq!(read_to_end(&mut s), b"", "closed by the server");
    assert_eq!(srv.status()[0]["workers"][0]["errors"], 1);
}

#[test]
fn a_port_held_without_reuseport_is_a_clear_error() {
    let plain = TcpListener::bind("127.0.0.1:0").unwrap(); // std sets no SO_REUSEPORT
    let port = plain.local_addr().unwrap().port().to_string();
    let mut srv = Spawn::new(&["--port", &port, "--workers", "1"]).spawn();
    assert_eq!(srv.wait_exit().code(), Some(1));
    let log = srv.log().join("\n");
    assert!(
        log.contains("already in use") && log.contains("SO_REUSEPORT"),
        "{log}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, needle) in [
        (
            vec!["--port", "0", "--host", "not-an-ip"],
            "invalid address",
        ),
        (
            vec!["--port", "0", "--host", "127.0.0.1", "--workers", "0"],
            "invalid --workers: must be at least 1",
        ),
        (
            vec!["--host", "127.0.0.1", "--port", "-1"],
            "invalid --port: must be ≥ 0",
        ),
        (
            vec!["--port", "0", "--drain-timeout", "1000000h"],
            "invalid --drain-timeout: must be at most one year",
        ),
        (
            vec!["--port", "0", "--host", "127.0.0.1", "--mode", "loud"],
            "invalid value 'loud'",
        ),
        (vec!["--host", "127.0.0.1", "--port", "70000"], "70000"),
    ] {
        let out = std::process::Command::new(bin())
            .arg("serve")
            .args(&args)
            .env("PORT_SHARDING_CONTROL_DIR", control_dir())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn sigterm_to_one_worker_drains_it_and_a_fresh_one_takes_its_place() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let first = srv.worker_pids()[0];
    let mut open = connect(srv.port);
    open.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    // SAFETY: signalling the worker our server forked.
    unsafe { libc::kill(first, libc::SIGTERM) };
    srv.wait_log("worker 0: SIGTERM");
    // The open connection is finished, not cut.
    open.write_all(b"after").unwrap();
    open.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut open), b"after");
    srv.wait_log("restarting in 0ns");
    assert_eq!(round_trip(srv.port, b"new worker"), b"new worker");
    assert_eq!(srv.worker_pids().len(), 2);
}
