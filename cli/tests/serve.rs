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
fn second_signal_stops_at_once_and_cuts_open_connections() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--drain-timeout", "60s"]).start();
    let workers = srv.worker_pids();
    let mut held = connect(srv.port); // keeps the drain from finishing
    held.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).unwrap(); // accepted and served
    srv.signal(libc::SIGINT);
    srv.wait_log("draining");
    srv.signal(libc::SIGINT);
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(1), "forced stop exits 1");
    assert_all_gone(&workers);
    // Cut, not finished: the connection ends (EOF or reset) although the client never closed it.
    match held.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} more bytes from a cut connection"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn ctrl_c_drains_and_the_cli_exits_130() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let mut open = connect(srv.port);
    open.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).unwrap();
    srv.signal(libc::SIGINT);
    srv.wait_log("draining");
    // Still served during the drain, then finished when the client closes.
    open.write_all(b"b").unwrap();
    open.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    drop(open);
    assert_eq!(
        srv.wait_exit().code(),
        Some(130),
        "as shells report a SIGINT death"
    );
}

#[test]
fn a_dead_supervisors_workers_drain_and_exit() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    let workers = srv.worker_pids();
    let mut open = connect(srv.port);
    open.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    srv.signal(libc::SIGKILL);
    srv.wait_exit();
    // The worker serving `open` drains: it finishes this connection, then exits; the other exits at once.
    open.write_all(b"after").unwrap();
    open.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut open), b"after");
    for &w in &workers {
        wait_until("workers of a dead supervisor to exit", || !alive(w));
    }
}

#[test]
fn drain_serves_what_is_already_queued() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let worker = srv.worker_pids()[0];
    // SAFETY: stopping and resuming the worker our server forked.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let mut queued: Vec<_> = (0..10)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("q{i}").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    assert_eq!(kernel_queues(srv.port), vec![10], "queued, not accepted");
    srv.signal(libc::SIGTERM);
    srv.wait_log("draining");
    unsafe { libc::kill(worker, libc::SIGCONT) };
    for (i, s) in queued.iter_mut().enumerate() {
        assert_eq!(read_to_end(s), format!("q{i}").as_bytes(), "queued {i}");
    }
    assert_eq!(srv.wait_exit().code(), Some(0));
}

/// The drain is asked for first, and the connections queue after it: a draining worker must still accept
/// what is queued on its listener before it closes it (closing a listener resets its queue). The worker is
/// stopped meanwhile, so when it resumes it finds the drain request first and the queue second (epoll
/// reports them in the order they became ready): a worker that closes its listener on the drain request,
/// before looking at the queue, resets all 10. (`drain_serves_what_is_already_queued` queues before the
/// drain, so there the worker sees the queue first and cannot tell the two apart.)
#[test]
fn a_drain_serves_what_queues_after_it_began() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let worker = srv.worker_pids()[0];
    // SAFETY: stopping and resuming the worker our server forked.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    wait_stopped(worker);
    srv.signal(libc::SIGTERM);
    srv.wait_log("draining (SIGTERM)");
    // The supervisor writes the drain byte to every worker, then lets go of its copy of the listener:
    // once it holds none, the byte is in the stopped worker's pipe.
    wait_until("the supervisor to let go of the listener", || {
        !holds_listener(srv.pid(), srv.port)
    });
    let mut queued: Vec<_> = (0..10)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("late {i}").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    assert_eq!(
        kernel_queues(srv.port),
        vec![10],
        "queued on the stopped worker's listener"
    );
    unsafe { libc::kill(worker, libc::SIGCONT) };
    let answered: Vec<bool> = queued
        .iter_mut()
        .enumerate()
        .map(|(i, s)| {
            let mut got = Vec::new();
            s.read_to_end(&mut got).is_ok() && got == format!("late {i}").as_bytes()
        })
        .collect();
    let n = answered.iter().filter(|&&ok| ok).count();
    assert_eq!(
        n,
        10,
        "{n} of 10 connections queued after the drain began were answered; log: {:#?}",
        srv.log()
    );
    assert_eq!(srv.wait_exit().code(), Some(0));
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
fn killed_worker_is_replaced_on_the_same_listener_and_its_queue_is_served() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let first = srv.worker_pids()[0];
    // Stop the supervisor first: while it is stopped nothing can accept or fork a replacement, so the
    // connections below can only wait in the listener's queue — which must survive the worker's death.
    srv.signal(libc::SIGSTOP);
    // SAFETY: killing the worker our server forked.
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_until("the killed worker to die", || !alive(first));
    let mut queued: Vec<_> = (0..50)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("queued {i}").as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    assert_eq!(
        kernel_queues(srv.port),
        vec![50],
        "all 50 wait in the one listener's queue"
    );
    srv.signal(libc::SIGCONT);
    srv.wait_log("restarting in");
    for (i, s) in queued.iter_mut().enumerate() {
        assert_eq!(read_to_end(s), format!("queued {i}").as_bytes());
    }
    // The log reader may not have seen the replacement's line yet: wait for it (it served already).
    wait_until("the replacement's log line", || {
        srv.worker_pids().len() == 2
    });
    assert_ne!(srv.worker_pids()[1], first);
    assert_eq!(srv.status()[0]["workers"][0]["restarts"], 1);
}

/// Lowers a running process's open-files limit (as `prlimit --pid` does).
fn set_nofile(pid: i32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit on a process we started; no old limit is read back.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn max_connections_is_clipped_to_the_open_files_limit() {
    // Hard limit 64: 16 descriptors are kept for the worker itself, so it serves at most 48 at once.
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"])
        .nofile(64)
        .start();
    srv.wait_log("each worker serves at most 48 at once");
    let _held: Vec<_> = (0..60).map(|_| connect(srv.port)).collect();
    wait_until("48 accepted and 12 queued", || {
        let w = &srv.status()[0]["workers"][0];
        w["active"] == 48 && w["queue_len"] == 12
    });
    assert_eq!(srv.count_log("accept failed"), 0, "it paused instead");
}

#[test]
fn fd_exhaustion_backs_off_and_recovers() {
    // The worker runs out of descriptors at run time (its limit lowered after it started): accepts fail
    // with EMFILE, it backs off, and serves again once descriptors are free.
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    set_nofile(srv.worker_pids()[0], 24);
    let mut held: Vec<_> = (0..40)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("c{i:02}").as_bytes()).unwrap();
            s
        })
        .collect();
    let failing_since = std::time::Instant::now();
    srv.wait_log("accept failed");
    // One listener's queue is first in, first out: the first `open` were accepted, the rest still wait.
    let open = srv.status()[0]["workers"][0]["active"].as_u64().unwrap() as usize;
    assert!(open > 0 && open < 40, "{open} accepted");
    // It keeps failing every 100 ms while descriptors are short, but says so at most once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = srv.count_log("worker 0: accept failed") as u64;
    assert!(
        lines <= failing_since.elapsed().as_secs() + 1,
        "{lines} lines in {:?}",
        failing_since.elapsed()
    );
    let mut buf = [0u8; 3];
    held[0].read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"c00", "the ones accepted still work");
    // Free the descriptors: every queued connection, and a new one, is served (each closed once answered,
    // so the worker, still short of descriptors, can take the next).
    let queued = held.split_off(open);
    drop(held);
    for (i, mut s) in queued.into_iter().enumerate() {
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("queued {} of {open}..40: {e}; {}", open + i, srv.status()));
        assert_eq!(buf, format!("c{:02}", open + i).as_bytes());
    }
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
fn idle_timeout_closes_quiet_connections_but_not_busy_ones() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--idle-timeout", "2s"]).start();
    let started = std::time::Instant::now();
    let mut quiet = connect(srv.port);
    let mut busy = connect(srv.port);
    // The busy one talks every 200 ms for 3 s, longer than the idle timeout: it must stay open.
    for i in 0..15 {
        let msg = format!("{i:02}");
        busy.write_all(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 2];
        busy.read_exact(&mut buf).unwrap();
        assert_eq!(
            buf,
            msg.as_bytes(),
            "busy connection cut after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(read_to_end(&mut quiet), b"", "closed by the server");
    // Never before the timeout (a lower bound only: a slow machine can only make it later).
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(srv.status()[0]["workers"][0]["errors"], 1);
}

#[test]
fn crash_loops_back_off() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    for delay in ["100ms", "200ms", "400ms"] {
        let pid = *srv.worker_pids().last().unwrap();
        // SAFETY: killing the worker our server forked, right after it started: a crash.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        srv.wait_log(&format!("restarting in {delay}"));
        let n = srv.worker_pids().len();
        wait_until("the replacement", || srv.worker_pids().len() > n);
    }
    assert_eq!(srv.status()[0]["workers"][0]["restarts"], 3);
}

/// The inodes of every TCP socket in this network namespace (`/proc/net/tcp` and `tcp6`, column 10).
fn tcp_inodes() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn workers_close_descriptors_they_do_not_serve() {
    let srv = Spawn::new(&["--port", "0", "--workers", "2"])
        .inherit_fd(77)
        .start();
    let fds = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        fds(srv.pid()).contains(&"77".to_string()),
        "the supervisor inherited fd 77"
    );
    let workers = srv.worker_pids();
    let listeners: Vec<String> = workers
        .iter()
        .map(|&w| {
            let mine = fds(w);
            assert!(
                !mine.contains(&"77".to_string()),
                "worker {w} kept fd 77: {mine:?}"
            );
            // Exactly one TCP socket, its listener: its own, not its sibling's (its other sockets are
            // unix ones: the drain pipe).
            let tcp = tcp_inodes();
            let sockets: Vec<_> = mine
                .iter()
                .filter_map(|fd| std::fs::read_link(format!("/proc/{w}/fd/{fd}")).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| tcp.iter().any(|i| *l == format!("socket:[{i}]")))
                .collect();
            assert_eq!(sockets.len(), 1, "worker {w}: {sockets:?}");
            sockets[0].clone()
        })
        .collect();
    assert_ne!(
        listeners[0], listeners[1],
        "each worker has its own listener"
    );
}

#[test]
fn status_shows_the_queue_of_a_stalled_worker() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let worker = srv.worker_pids()[0];
    // SAFETY: stopping and resuming the worker our server forked.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let mut queued: Vec<_> = (0..5).map(|_| connect(srv.port)).collect();
    wait_until("status to report 5 queued", || {
        srv.status()[0]["workers"][0]["queue_len"] == 5
    });
    unsafe { libc::kill(worker, libc::SIGCONT) };
    for s in &mut queued {
        s.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
    }
}

#[test]
fn serves_ipv6_loopback_and_localhost() {
    for host in ["::1", "localhost"] {
        if host == "::1" && std::net::TcpListener::bind("[::1]:0").is_err() {
            skip(
                "serves_ipv6_loopback_and_localhost",
                "no IPv6 loopback on this machine",
            );
            continue;
        }
        let srv = Spawn::new(&["--port", "0", "--workers", "1"])
            .host(host)
            .start();
        let target = if host == "::1" { "[::1]" } else { "localhost" };
        let mut s = std::net::TcpStream::connect(format!("{target}:{}", srv.port)).unwrap();
        s.write_all(b"v6?").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"v6?", "{host}");
    }
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
        let dir = control_dir();
        let out = std::process::Command::new(bin())
            .arg("serve")
            .args(&args)
            .env("PORT_SHARDING_CONTROL_DIR", &*dir)
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
    wait_until("the fresh worker's log line", || {
        srv.worker_pids().len() == 2
    });
}

#[test]
fn hello_discards_what_the_client_sends_after_the_greeting() {
    // `hello` speaks first; a client that sends something after the greeting must meet a half-closed
    // connection that reads and discards it until the client's FIN — not a closed socket, whose kernel
    // would answer those bytes with a reset.
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "hello"]).start();
    let mut s = connect(srv.port);
    // The greeting and the worker's FIN: by now it has either closed or half-closed the connection.
    let greeting = read_to_end(&mut s);
    assert!(
        greeting.starts_with(b"Hello from rust process "),
        "{greeting:?}"
    );
    s.write_all(b"late words").unwrap();
    // The worker still reads this connection: it counts the 10 bytes it discards.
    wait_until("the worker to read the late bytes", || {
        srv.status()[0]["workers"][0]["bytes_in"] == 10
    });
    s.shutdown(Shutdown::Write).unwrap();
}
