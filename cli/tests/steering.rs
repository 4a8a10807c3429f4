//! Steering new connections away from a stalled worker, end to end: real `serve` processes, real clients on
//! 127.0.0.1, a worker stopped with SIGSTOP. Outcomes are counted (timed-out connections, queue lengths from
//! the kernel); nothing is timed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Clients of the load: each does connect, a 16-byte echo, close, with a 1 s timeout, in a loop.
const CLIENTS: usize = 4;
/// Clients of issue 22's done-when runs (command and function workers): at most one timeout each.
const CLIENTS_22: usize = 8;
/// How long the worker stays stopped.
const STALL: Duration = Duration::from_secs(4);

/// The tests run one at a time: on a 2-core machine a load test beside anything else starves its
/// supervisor and clients, and a client starved for a second times out wherever it is connected.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
}

/// One connect/echo/close with 1 s timeouts: `Ok(true)` echoed, `Ok(false)` timed out.
fn echo_once(port: u16) -> std::io::Result<bool> {
    let limit = Duration::from_secs(1);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, limit) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::TimedOut => return Ok(false),
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(b"0123456789abcdef")?;
    let mut buf = [0u8; 16];
    match s.read_exact(&mut buf) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `CLIENTS` threads of connect/echo/close until `stop` (bounded: at most 60 s and 1,000,000 each).
struct Load {
    stop: Arc<AtomicBool>,
    out: Arc<Outcomes>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        Load::with(port, CLIENTS)
    }

    fn with(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Outcomes::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, out) = (stop.clone(), out.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(60);
                    for _ in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > until {
                            break;
                        }
                        let counter = match echo_once(port) {
                            Ok(true) => &out.ok,
                            Ok(false) => &out.timed_out,
                            Err(_) => &out.failed,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { stop, out, threads }
    }

    /// Stops the clients; returns (echoed, timed out, failed otherwise).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let o = &self.out;
        (
            o.ok.load(Ordering::Relaxed),
            o.timed_out.load(Ordering::Relaxed),
            o.failed.load(Ordering::Relaxed),
        )
    }
}

/// The longest accept queue on the port, from the kernel (`ss`): the stopped worker's, since the running
/// ones empty theirs at once (a sum would count a connection they are just accepting).
fn queued(port: u16) -> u64 {
    kernel_queues(port).into_iter().max().unwrap_or(0)
}

/// Opens connections to `port` (left open, returned) until `srv` logs `needle` once more than before, or
/// 500 of them: a stopped worker is noticed only once something queues on it.
fn connect_until(srv: &ServerProc, port: u16, needle: &str) -> Vec<TcpStream> {
    let before = srv.count_log(needle);
    let mut clients = Vec::new();
    for _ in 0..500 {
        clients.push(connect(port));
        if srv.count_log(needle) > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    clients
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling a worker of the server this test started.
    unsafe { libc::kill(pid, sig) };
}

fn worker_field(status: &serde_json::Value, i: usize, field: &str) -> serde_json::Value {
    status[0]["workers"][i][field].clone()
}

/// Stops worker 1 of `workers` for [`STALL`] under load; returns the timed-out connections, and checks what
/// must hold either way (the load ran, the stopped worker is served again afterwards).
fn stall_one(workers: usize, steering: bool) -> u64 {
    let n = workers.to_string();
    let flag = format!("--steering={steering}");
    let mut srv = Spawn::new(&["--port", "0", "--workers", &n, &flag]).start();
    let stopped = srv.worker_pids()[1];
    let load = Load::start(srv.port);
    wait_until("the load to reach every worker", || {
        accepted(&srv.status()).iter().all(|&a| a > 0)
    });
    signal(stopped, libc::SIGSTOP);
    srv.wait_log("worker 1 (pid");
    let grew = if steering {
        srv.wait_log("steering started");
        // From here on nothing new may queue on the stopped worker's listener, bar SYNs already in flight.
        let at_start = queued(srv.port);
        std::thread::sleep(STALL);
        let at_end = queued(srv.port);
        let status = srv.status();
        assert_eq!(status[0]["steering"]["state"], "active", "{status}");
        assert_eq!(worker_field(&status, 1, "health"), "stalled");
        at_end.saturating_sub(at_start)
    } else {
        std::thread::sleep(STALL);
        assert_eq!(srv.status()[0]["steering"]["state"], "off");
        0
    };
    signal(stopped, libc::SIGCONT);
    if steering {
        srv.wait_log("steering ended");
        assert_eq!(srv.status()[0]["steering"]["state"], "idle");
    }
    let (ok, timed_out, failed) = load.finish();
    eprintln!(
        "{workers} workers, steering {steering}: {ok} echoed, {timed_out} timed out, {failed} failed; \
         stopped listener's queue grew by {grew} while steering"
    );
    assert!(ok > 0);
    assert!(
        grew <= CLIENTS as u64,
        "new connections kept queuing on the stopped worker: +{grew}"
    );
    // Even hashing again: the resumed worker gets new connections.
    let before = accepted(&srv.status())[1];
    for i in 0..200 {
        let msg = format!("after {i}");
        assert_eq!(round_trip(srv.port, msg.as_bytes()), msg.as_bytes());
    }
    let after = accepted(&srv.status())[1];
    assert!(after > before, "the resumed worker got no new connection");
    timed_out
}

fn compare(workers: usize) {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let on = stall_one(workers, true);
    let off = stall_one(workers, false);
    eprintln!(
        "{workers} workers, one stopped for {STALL:?}: timed out with steering {on}, without {off}"
    );
    // Only connections queued before the detection window closed should time out: one per client (each
    // waits a second on it); twice that leaves room for a client starved by a busy machine.
    assert!(on <= 2 * CLIENTS as u64, "steering on: {on} timed out");
    assert!(off > on, "steering made no difference: on {on}, off {off}");
}

#[test]
fn a_stopped_worker_of_two_stops_getting_connections() {
    compare(2);
}

#[test]
fn a_stopped_worker_of_four_stops_getting_connections() {
    compare(4);
}

#[test]
fn a_group_shared_with_another_process_is_left_to_the_kernel() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let ctl_a = control_dir();
    let ctl_b = control_dir();
    let mut a = Spawn::new(&["--port", "0", "--workers", "2"])
        .dir(&ctl_a)
        .start();
    let port = a.port.to_string();
    // Another process's listener in the same group: a second server with its own control directory.
    let mut b = Spawn::new(&["--port", &port, "--workers", "2"])
        .dir(&ctl_b)
        .start();
    let stopped = a.worker_pids()[1];
    signal(stopped, libc::SIGSTOP);
    let mut clients = connect_until(&a, a.port, "stalled");
    a.wait_log("worker 1 (pid");
    let why = a.wait_log("steering off:");
    assert!(why.contains("2 socket(s) of another process"), "{why}");
    let status = a.status();
    assert_eq!(status[0]["steering"]["state"], "off", "{status}");
    assert!(status[0]["steering"]["note"]
        .as_str()
        .unwrap()
        .contains("another process"));
    assert_eq!(a.count_log("steering started"), 0);
    // The other server was the second to bind: it cannot know the group's order, and says so if it must.
    let b_worker = b.worker_pids()[1];
    signal(b_worker, libc::SIGSTOP);
    clients.extend(connect_until(&b, a.port, "stalled"));
    let why = b.wait_log("steering off:");
    assert!(why.contains("besides this server's 2"), "{why}");
    signal(b_worker, libc::SIGCONT);
    signal(stopped, libc::SIGCONT);
    assert_eq!(a.count_log("steering off:"), 1, "said once");
    drop(clients);
}

#[test]
fn a_worker_stalled_too_long_is_replaced_and_its_queue_served() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "--workers",
        "2",
        "--stall-restart-after",
        "2s",
    ])
    .start();
    let stopped = srv.worker_pids()[1];
    signal(stopped, libc::SIGSTOP);
    // Clients that wait patiently: those hashed to the stopped worker queue there until its replacement.
    let mut clients: Vec<(TcpStream, String)> = Vec::new();
    let mut most = 0;
    for i in 0..40 {
        let mut s = connect(srv.port);
        let msg = format!("patient {i}");
        s.write_all(msg.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        clients.push((s, msg));
        most = most.max(queued(srv.port));
        if most >= 5 {
            break;
        }
    }
    assert!(most > 0, "nothing queued on the stopped worker");
    srv.wait_log("steering started");
    srv.wait_log("(stall_restart_after): replacing it");
    srv.wait_log("steering ended");
    for (s, msg) in &mut clients {
        assert_eq!(read_to_end(s), msg.as_bytes(), "served by the replacement");
    }
    let status = srv.status();
    assert_eq!(worker_field(&status, 1, "restarts"), 1);
    assert_ne!(worker_field(&status, 1, "pid"), stopped);
    assert!(!alive(stopped));
}

#[test]
fn a_worker_replaced_while_steering_keeps_the_program_right() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut srv = Spawn::new(&["--port", "0", "--workers", "4"]).start();
    let pids = srv.worker_pids();
    signal(pids[1], libc::SIGSTOP);
    let clients = connect_until(&srv, srv.port, "steering started");
    srv.wait_log("steering started: new connections go to worker(s) 0, 2, 3 only");
    drop(clients);
    // Replace a healthy worker: same listener, same index in the group, new process.
    signal(pids[3], libc::SIGKILL);
    srv.wait_log("restarting in");
    wait_until("worker 3's replacement", || srv.worker_pids().len() == 5);
    let stuck = queued(srv.port);
    let before = accepted(&srv.status());
    for i in 0..300 {
        let msg = format!("m{i}");
        assert_eq!(round_trip(srv.port, msg.as_bytes()), msg.as_bytes());
    }
    let after = accepted(&srv.status());
    assert_eq!(
        queued(srv.port),
        stuck,
        "nothing new for the stopped worker"
    );
    assert!(after[3] > before[3], "the replacement gets connections");
    assert_eq!(after[1], before[1]);
    assert_eq!(
        srv.status()[0]["steering"]["to"],
        serde_json::json!([0, 2, 3])
    );
    signal(pids[1], libc::SIGCONT);
    srv.wait_log("steering ended");
}

#[test]
fn a_takeover_rederives_the_program_for_the_new_servers_listeners() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let ctl = control_dir();
    let mut old = Spawn::new(&["--port", "0", "--workers", "2"])
        .dir(&ctl)
        .start();
    let old_pids = old.worker_pids();
    signal(old_pids[1], libc::SIGSTOP);
    let clients = connect_until(&old, old.port, "steering started");
    old.wait_log("steering started: new connections go to worker(s) 0 only");
    // The new server adopts both sockets (the old one's program still on their group) and binds a third.
    let port = old.port.to_string();
    let mut new = Spawn::new(&["--port", &port, "--workers", "3", "--takeover"])
        .dir(&ctl)
        .start();
    old.wait_log("draining");
    drop(clients);
    // Its workers all keep up, so it gave the group back to the kernel's hash: every one gets connections.
    for i in 0..300 {
        let msg = format!("even {i}");
        assert_eq!(round_trip(new.port, msg.as_bytes()), msg.as_bytes());
    }
    let status = new.status();
    let mine = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == new.pid())
        .unwrap()
        .clone();
    assert_eq!(mine["steering"]["state"], "idle", "{mine}");
    let counts: Vec<u64> = mine["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .collect();
    assert!(
        counts.iter().all(|&c| c > 0),
        "even hashing after takeover: {counts:?}"
    );
    // Its own program knows the order: the listener it bound itself is index 2.
    let new_pids = new.worker_pids();
    signal(new_pids[2], libc::SIGSTOP);
    let clients = connect_until(&new, new.port, "steering started");
    new.wait_log("steering started: new connections go to worker(s) 0, 1 only");
    drop(clients);
    let stuck = queued(new.port);
    for i in 0..200 {
        let msg = format!("steered {i}");
        assert_eq!(round_trip(new.port, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(
        queued(new.port),
        stuck,
        "nothing new queued on the stopped worker"
    );
    signal(new_pids[2], libc::SIGCONT);
    signal(old_pids[1], libc::SIGCONT);
    new.wait_log("steering ended");
    assert_eq!(old.wait_exit().code(), Some(0));
}

fn fd3_worker() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs/fd3_worker.py")
        .display()
        .to_string()
}

/// The pid that answered a round trip to `fd3_worker.py` (`<pid> <index> <message>`).
fn answered_by(port: u16, msg: &str) -> i32 {
    let reply = String::from_utf8(round_trip(port, msg.as_bytes())).unwrap();
    assert!(reply.ends_with(msg), "{reply:?}");
    reply.split(' ').next().unwrap().parse().unwrap()
}

/// Issue 22's done-when for a program that knows nothing of the engine (it only accepts on fd 3, counts
/// nothing, says `READY=1`): one of 2 workers stopped for 4 s under 8 clients with 1 s timeouts; at most
/// one connection per client times out (the one it had queued on the stopped worker before the
/// supervisor saw its queue not drain), where without steering each client loses about three.
#[test]
fn a_stopped_command_worker_of_two_stops_getting_connections() {
    if !python3("a_stopped_command_worker_of_two_stops_getting_connections") {
        return;
    }
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let script = fd3_worker();
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "--workers",
        "2",
        "--",
        "python3",
        &script,
        "--notify",
    ])
    .start();
    let stopped = srv.worker_pids()[1];
    // Both answer before the load (the kernel's hash: a few hundred round trips reach both).
    let mut seen = std::collections::HashSet::new();
    for i in 0..500 {
        seen.insert(answered_by(srv.port, &format!("warm {i}")));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both workers answer");
    let load = Load::with(srv.port, CLIENTS_22);
    std::thread::sleep(Duration::from_millis(300));
    signal(stopped, libc::SIGSTOP);
    srv.wait_log("worker 1 (pid");
    srv.wait_log("steering started: new connections go to worker(s) 0 only");
    let at_start = queued(srv.port);
    std::thread::sleep(STALL);
    let at_end = queued(srv.port);
    let status = srv.status();
    assert_eq!(status[0]["steering"]["state"], "active", "{status}");
    assert_eq!(worker_field(&status, 1, "health"), "stalled");
    signal(stopped, libc::SIGCONT);
    srv.wait_log("steering ended");
    let (ok, timed_out, failed) = load.finish();
    eprintln!(
        "command workers, one of 2 stopped for {STALL:?}: {ok} echoed, {timed_out} timed out, {failed} \
         failed; the stopped listener's queue grew by {} while steering",
        at_end.saturating_sub(at_start)
    );
    assert!(ok > 0);
    assert!(
        timed_out <= CLIENTS_22 as u64,
        "{timed_out} timed out (at most one per client); log: {:#?}",
        srv.log()
    );
    assert!(at_end <= at_start + CLIENTS_22 as u64);
    // Even hashing again: the resumed worker answers new connections.
    let resumed = (0..300).any(|i| answered_by(srv.port, &format!("after {i}")) == stopped);
    assert!(resumed, "the resumed worker got no new connection");
}

/// `stall_restart_after` for a command worker: its stop signal first (a program in a long request may
/// finish it and exit), SIGKILL when it has not exited a grace later; the new worker serves the queue.
#[test]
fn a_command_worker_stalled_too_long_gets_its_stop_signal_then_sigkill() {
    if !python3("a_command_worker_stalled_too_long_gets_its_stop_signal_then_sigkill") {
        return;
    }
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let script = fd3_worker();
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "--workers",
        "2",
        "--stall-restart-after",
        "1s",
        "--",
        "python3",
        &script,
        "--notify",
    ])
    .start();
    let stopped = srv.worker_pids()[1];
    signal(stopped, libc::SIGSTOP);
    wait_stopped(stopped);
    // Patient clients: those hashed to the stopped worker wait in its queue for the replacement.
    // (Steering soon sends new ones elsewhere, and the replacement empties the queue a second later.)
    let mut clients: Vec<(TcpStream, String)> = Vec::new();
    let mut most = 0;
    for i in 0..200 {
        let mut s = connect(srv.port);
        let msg = format!("patient {i}");
        s.write_all(msg.as_bytes()).unwrap();
        clients.push((s, msg));
        most = most.max(queued(srv.port));
        if most >= 2 {
            break;
        }
    }
    assert!(most > 0, "nothing queued on the stopped worker");
    srv.wait_log("steering started");
    let asked = srv.wait_log("(stall_restart_after): replacing it");
    assert!(asked.contains("SIGTERM now, SIGKILL in 1s"), "{asked}");
    // Stopped, it cannot act on SIGTERM: SIGKILL follows.
    srv.wait_log(&format!("worker 1 (pid {stopped}) still running"));
    srv.wait_log(&format!("(pid {stopped}) was killed by SIGKILL"));
    srv.wait_log("steering ended");
    for (s, msg) in &mut clients {
        let reply = String::from_utf8(read_to_end(s)).unwrap();
        assert!(reply.ends_with(msg.as_str()), "{reply:?}");
        let pid: i32 = reply.split(' ').next().unwrap().parse().unwrap();
        assert_ne!(pid, stopped);
    }
    let log = srv.log();
    let ask_at = log.iter().position(|l| l.contains("SIGTERM now")).unwrap();
    let kill_at = log
        .iter()
        .position(|l| l.contains("sending SIGKILL"))
        .unwrap();
    assert!(ask_at < kill_at, "the stop signal comes first: {log:#?}");
    assert_eq!(worker_field(&srv.status(), 1, "restarts"), 1);
    assert!(!alive(stopped));
}

/// An event-loop program on fd 3 (asyncio, like uvicorn `--fd 3`) accepts on the socket itself and counts
/// nothing; under 8 clients its queue is often not empty when sampled, but it drains, so it is never judged
/// stalled. (`--stall-after 500ms`: on a busy 2-core machine a worker starved of the CPU for 100 ms with
/// connections waiting would be a real stall, not a false one.)
#[test]
fn an_event_loop_command_worker_that_keeps_up_is_not_stalled() {
    if !python3("an_event_loop_command_worker_that_keeps_up_is_not_stalled") {
        return;
    }
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs/loop_worker.py")
        .display()
        .to_string();
    let srv = Spawn::new(&[
        "--port",
        "0",
        "--workers",
        "2",
        "--stall-after",
        "500ms",
        "--",
        "python3",
        &script,
    ])
    .start();
    let load = Load::with(srv.port, CLIENTS_22);
    std::thread::sleep(Duration::from_secs(3));
    let (ok, timed_out, failed) = load.finish();
    eprintln!("asyncio command workers: {ok} echoed, {timed_out} timed out, {failed} failed");
    assert!(ok > 1000, "{ok} echoed");
    assert_eq!(srv.count_log("stalled"), 0, "{:#?}", srv.log());
    assert_eq!(srv.count_log("steering started"), 0);
    assert_eq!(srv.status()[0]["steering"]["state"], "idle");
}
