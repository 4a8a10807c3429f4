//! Seats in `status`: each listener's worker processes — the serving one, and after a reload the retiring
//! one still finishing its connections — with their own counters and states.

mod common;

use std::io::{Read, Write};

use common::*;

/// A retiring worker that still holds a connection is listed under its listener, with that connection,
/// and the listener's counts include it; once it has finished, only the new worker is left.
#[test]
fn status_lists_a_retiring_worker_beside_the_new_one() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--drain-timeout", "20s"]).start();
    // A connection the old worker accepted and keeps open (echo: it answers, then waits for more).
    let mut held = connect(srv.port);
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    let old = srv.worker_pids()[0];
    let out = cli(&srv.dir, &["reload", "--port", &srv.port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    srv.wait_log(&format!("pid {old} stops"));
    let status = srv.status();
    let seat = &status[0]["workers"][0];
    let processes = seat["processes"].as_array().unwrap();
    let roles: Vec<(&str, &str, u64)> = processes
        .iter()
        .map(|p| {
            (
                p["role"].as_str().unwrap(),
                p["state"].as_str().unwrap(),
                p["active"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [("serving", "serving", 0), ("retiring", "draining", 1)],
        "{seat}"
    );
    assert_eq!(processes[1]["pid"], old, "{seat}");
    assert_eq!(
        seat["active"], 1,
        "the listener counts the retiring worker's connection"
    );
    assert_eq!(seat["accepted"], 1, "{seat}");
    let table = cli(&srv.dir, &["status", "--port", &srv.port.to_string()]);
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&old.to_string()))
        .unwrap_or_else(|| panic!("no line for the retiring worker: {table}"));
    assert!(
        line.contains("retiring") && line.contains("draining"),
        "{table}"
    );
    // The client hangs up: the old worker has nothing left and exits; its counts stay with the listener.
    drop(held);
    srv.wait_log(&format!("(pid {old}, generation 1) retired"));
    let status = srv.status();
    let seat = &status[0]["workers"][0];
    assert_eq!(seat["processes"].as_array().unwrap().len(), 1, "{seat}");
    assert_eq!(seat["accepted"], 1, "{seat}");
    assert_eq!(seat["active"], 0, "{seat}");
    assert_eq!(seat["bytes_in"], 1, "{seat}");
}

/// A worker killed with its connections open stops counting them: the listener's `active` falls back,
/// and its `accepted` keeps what the dead worker served.
#[test]
fn a_dead_workers_open_connections_stop_counting() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let mut held = connect(srv.port);
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    let old = srv.worker_pids()[0];
    assert_eq!(srv.status()[0]["workers"][0]["active"], 1);
    unsafe { libc::kill(old, libc::SIGKILL) };
    srv.wait_log(&format!("(pid {old}) was killed by SIGKILL"));
    wait_until("a new worker serves", || {
        let s = srv.status();
        s[0]["workers"][0]["state"] == "serving" && s[0]["workers"][0]["pid"] != old
    });
    let seat = &srv.status()[0]["workers"][0];
    assert_eq!(seat["active"], 0, "{seat}");
    assert_eq!(seat["accepted"], 1, "{seat}");
    assert_eq!(seat["restarts"], 1, "{seat}");
}

/// A reload of an event-loop command worker (asyncio, like uvicorn `--fd 3`) gives the new worker a socket
/// of its own in the port's group: the old worker keeps its fd 3 — another socket, still nonblocking, which
/// an exec'd successor sharing it would have made blocking under its event loop — until it has served
/// what was queued on it, and a continuous load loses nothing.
#[test]
fn a_reloaded_command_worker_gets_a_socket_of_its_own() {
    if !python3("a_reloaded_command_worker_gets_a_socket_of_its_own") {
        return;
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/loop_worker.py");
    let script = script.display().to_string();
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "--workers",
        "1",
        "--ready",
        "notify",
        "--",
        "python3",
        &script,
    ])
    .start();
    let port = srv.port;
    let old = srv.worker_pids()[0];
    assert!(nonblocking(old), "the event loop made its fd 3 nonblocking");
    let load = Load::start(port);
    load.wait_for(20);
    let out = cli(&srv.dir, &["reload", "--port", &port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    srv.wait_log(&format!("pid {old} stops"));
    let new = *srv.worker_pids().last().unwrap(); // every worker started, in order
    assert_ne!(new, old);
    // The old worker empties its own socket for EMPTY_GRACE at least before it is asked to stop.
    assert_ne!(
        socket_of(old),
        socket_of(new),
        "old and new workers share a socket"
    );
    assert!(
        nonblocking(old),
        "the new worker's exec changed the old one's fd 3"
    );
    srv.wait_log(&format!("(pid {old}): its socket has stayed empty"));
    srv.wait_log(&format!("(pid {old}, generation 1) retired"));
    let before = load.answered();
    load.wait_for(before + 20);
    let (answered, failed, by) = load.stop();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed",
        answered + failed
    );
    assert!(by.contains(&new) && by.contains(&old), "{by:?}");
    eprintln!("reload of an event-loop worker: {answered} answered, 0 failed");
}

/// The socket behind `pid`'s fd 3 (`socket:[inode]`).
fn socket_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .unwrap_or_else(|e| {
            panic!("pid {pid}'s fd 3: {e} (a worker stopped before it emptied its socket?)")
        })
        .to_string_lossy()
        .into_owned()
}

/// Whether `pid`'s fd 3 is nonblocking (`flags:` in `/proc/PID/fdinfo/3`, octal; `O_NONBLOCK` is 04000).
fn nonblocking(pid: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & libc::O_NONBLOCK as u32 != 0
}

/// A client loop (bounded: it stops when asked, or after two minutes): connect, send, read the answer
/// `<pid> <index> <what was sent>`; counts answers, failures and who answered.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<(u64, u64, Vec<i32>)>,
}

impl Load {
    fn start(port: u16) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let (mut failed, mut by) = (0, Vec::new());
            while !s.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                let reply = (|| -> std::io::Result<String> {
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    c.set_read_timeout(Some(PATIENCE))?;
                    c.write_all(b"ping")?;
                    let mut r = String::new();
                    c.read_to_string(&mut r)?;
                    Ok(r)
                })();
                match reply.ok().filter(|r| r.ends_with(" ping")) {
                    Some(r) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let pid = r
                            .split(' ')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(0);
                        if !by.contains(&pid) {
                            by.push(pid);
                        }
                    }
                    None => failed += 1,
                }
            }
            (a.load(Ordering::SeqCst), failed, by)
        });
        Load {
            stop,
            answered,
            thread,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wait_for(&self, n: u64) {
        wait_until("the load is answered", || self.answered() >= n);
    }

    fn stop(self) -> (u64, u64, Vec<i32>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
