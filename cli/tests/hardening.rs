//! Hostile and careless local users against a running server: control clients that stall, flood or
//! crowd the supervisor, fd exhaustion, control directories and servers that must not be trusted,
//! signals, and settings out of bounds. Each test here failed before the control plane was hardened.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Threads that keep control connections open until `stop` (each bounded by `PATIENCE`).
struct Crowd {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    connects: Arc<AtomicU64>,
}

impl Crowd {
    fn new() -> Crowd {
        Crowd {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            connects: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A client that connects and sends nothing; when the server closes it, it connects again.
    fn silent(&mut self, path: &Path) {
        let (stop, path, connects) = (self.stop.clone(), path.to_path_buf(), self.connects.clone());
        self.threads.push(std::thread::spawn(move || {
            let until = Instant::now() + PATIENCE;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok(mut s) = UnixStream::connect(&path) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                connects.fetch_add(1, Ordering::Relaxed);
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 256];
                // Wait until the server closes us (or we are told to stop).
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
            }
        }));
    }

    /// A client that sends one byte every half second, never a whole line.
    fn dripping(&mut self, path: &Path) {
        let (stop, path) = (self.stop.clone(), path.to_path_buf());
        self.threads.push(std::thread::spawn(move || {
            let until = Instant::now() + PATIENCE;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok(mut s) = UnixStream::connect(&path) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    if s.write_all(b"{").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }));
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.connects.load(Ordering::Relaxed)
    }
}

fn only_socket(dir: &Path) -> PathBuf {
    let socks = control_sockets(dir);
    assert_eq!(socks.len(), 1, "{socks:?}");
    socks[0].clone()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn silent_dripping_and_flooding_control_clients_do_not_stall_the_supervisor() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    let path = only_socket(&srv.dir);
    // Let the workers pass the 1 s crash-backoff window, so a replacement is not delayed on purpose.
    std::thread::sleep(Duration::from_millis(1100));
    let mut crowd = Crowd::new();
    for _ in 0..50 {
        crowd.silent(&path);
    }
    crowd.dripping(&path);
    // One client sends a 1 MiB line and never reads: the server must cut it off, not read it all or
    // block writing an answer that quotes it.
    let flood_path = path.clone();
    let flood = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&flood_path).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        s.write_all(&vec![b'x'; 1 << 20])
    });
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let status = srv.status();
    let status_latency = t.elapsed();
    assert_eq!(status[0]["state"], "serving");

    let victim = srv.worker_pids()[0];
    let before = srv.count_log("worker 0 started");
    let t = Instant::now();
    // SAFETY: signalling a worker of the server we started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(
        wait_count(&srv, "worker 0 started", before + 1),
        "the killed worker was not replaced; log: {:#?}",
        srv.log()
    );
    let replace_latency = t.elapsed();
    assert_eq!(round_trip(srv.port, b"still here"), b"still here");

    let written = flood.join().unwrap();
    let err = written.expect_err("the server read a 1 MiB request line to the end");
    assert!(
        !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the flooding client was never cut off: {err}"
    );
    // Silent and dripping clients are cut off at their deadline (and connect again).
    let closed = srv.try_wait_log("that did not complete a request");
    let connects = crowd.finish();
    assert!(
        closed.is_some(),
        "silent clients were never closed; log: {:#?}",
        srv.log()
    );
    eprintln!(
        "measured with 50 silent clients ({connects} connections), one dripping, one flooding: \
         status answered in {status_latency:?} (CLI process included), killed worker replaced after \
         {replace_latency:?}"
    );
}

#[test]
fn more_control_connections_than_the_cap_get_a_busy_error() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let path = only_socket(&srv.dir);
    let held: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let mut busy = 0;
    let until = Instant::now() + PATIENCE;
    for mut s in held.iter().skip(64) {
        let left = until.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        busy += usize::from(answer.contains("busy"));
    }
    assert!(busy >= 1, "no connection over the cap was turned away");
    drop(held);
    assert_eq!(srv.status()[0]["state"], "serving");
}

/// The lowest fd number `pid` does not use: the next fd it opens gets this one.
fn lowest_free_fd(pid: i32) -> u64 {
    let used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Sets the soft fd limit of `pid` (the hard one stays); returns the previous limits.
fn set_nofile(pid: i32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the current limits into `old`.
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setting limits of a process we started (same uid).
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) },
        0
    );
    old
}

#[test]
fn emfile_on_the_supervisor_backs_off_instead_of_spinning() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let path = only_socket(&srv.dir);
    // From now on every fd the supervisor opens fails with EMFILE; its workers keep their own limits.
    let old = set_nofile(srv.pid(), lowest_free_fd(srv.pid()));
    let waiting: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, t0) = (cpu_time(srv.pid()), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (cpu, wall) = (cpu_time(srv.pid()) - cpu0, t0.elapsed());
    eprintln!("supervisor at EMFILE: {cpu:?} of CPU in {wall:?}");
    // A bound on a broken loop (a spinning one uses all of it), not a measure of speed.
    assert!(
        cpu < wall / 2,
        "the supervisor spins at EMFILE: {cpu:?} of CPU in {wall:?}"
    );
    srv.wait_log("control: accept failed");
    let reports = srv.count_log("control: accept failed");
    assert!(
        reports <= 2 + t0.elapsed().as_secs() as usize,
        "accept failures are logged at most once a second: {reports} lines"
    );
    // Still serving the port, and still handling signals.
    assert_eq!(round_trip(srv.port, b"served"), b"served");
    // SIGHUP reloads: with no descriptor to spare the new worker cannot start, so the old one keeps serving.
    srv.signal(libc::SIGHUP);
    srv.wait_log("reload stopped after 0 replaced worker(s): worker 0 could not start");
    // Descriptors back: the waiting clients are dealt with, and control requests answered again.
    set_nofile(srv.pid(), old.rlim_cur);
    drop(waiting);
    let until = Instant::now() + PATIENCE;
    loop {
        let out = cli(
            &srv.dir,
            &["status", "--json", "--port", &srv.port.to_string()],
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < until,
            "status never answered again: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ps-hard-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn symlinked_or_open_control_directories_are_refused_by_server_and_client() {
    let tmp = TempDir::new("dirs");
    let real = tmp.0.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    // The server refuses a symlink, and never chmods a directory it did not create.
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"])
        .dir(&link)
        .spawn();
    assert!(!srv.wait_exit().success());
    assert!(
        srv.count_log("it is a symbolic link") == 1,
        "{:#?}",
        srv.log()
    );
    let open = tmp.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"])
        .dir(&open)
        .spawn();
    assert!(!srv.wait_exit().success());
    assert!(srv.count_log("mode 0755") == 1, "{:#?}", srv.log());
    let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o755,
        "the server changed a directory it did not create"
    );

    // Clients refuse the same, before connecting to anything in it.
    let srv = Spawn::new(&["--port", "0", "--workers", "1"])
        .dir(&real)
        .start();
    let port = srv.port.to_string();
    for args in [
        &["status", "--port", &port][..],
        &["stop", "--port", &port][..],
    ] {
        let out = cli(&link, args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    }
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli(&real, &["stop", "--port", &port]);
    assert!(stderr(&out).contains("mode 0755"), "{}", stderr(&out));
    let mut next = Spawn::new(&["--port", &port, "--workers", "1", "--takeover"])
        .dir(&real)
        .spawn();
    assert!(!next.wait_exit().success());
    assert!(next.count_log("mode 0755") == 1, "{:#?}", next.log());
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        srv.status()[0]["state"],
        "serving",
        "a refused client changed nothing"
    );
}

/// A fake control server in Python: answers every `takeover` with a UDP socket bound to the same
/// address, as a hostile or broken peer could. Prints the socket's file name once listening.
const FAKE_SERVER: &str = r#"
import json, os, socket, sys, time
d, port = sys.argv[1], int(sys.argv[2])
name = f"127.0.0.1_{port}.{os.getpid()}.0.sock"
srv = socket.socket(socket.AF_UNIX)
srv.bind(os.path.join(d, name))
srv.listen(16)
print(name, flush=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
udp.bind(("127.0.0.1", port))
srv.settimeout(1)
until = time.time() + 20
while time.time() < until:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    c.settimeout(1)
    try:
        line = c.makefile().readline()
    except Exception:
        continue
    if "takeover" in line:
        offer = json.dumps({"pid": os.getpid(), "runtime": "rust", "addr": f"127.0.0.1:{port}", "sockets": 1})
        socket.send_fds(c, [offer.encode() + b"\n"], [udp.fileno()])
        time.sleep(0.5)
    c.close()
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_python() -> bool {
    std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the fake server in `dir` (as `uid`, when given) and returns it with its socket's file name.
fn fake_server(dir: &Path, port: u16, uid: Option<u32>) -> (std::process::Child, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        FAKE_SERVER,
        &dir.display().to_string(),
        &port.to_string(),
    ])
    .stdout(std::process::Stdio::piped())
    .process_group(0);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().unwrap();
    let mut name = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut name).unwrap();
    (child, name.trim().to_string())
}

fn takeover_must_fail(dir: &Path, port: u16, why: &str) {
    let mut next = Spawn::new(&["--port", &port.to_string(), "--workers", "1", "--takeover"])
        .dir(dir)
        .spawn();
    assert!(!next.wait_exit().success(), "the takeover went ahead");
    assert!(
        next.count_log(why) == 1,
        "expected {why:?}; log: {:#?}",
        next.log()
    );
    assert_eq!(next.count_log("received"), 0, "something was adopted");
    // Nothing listens on the port: nothing was adopted, nothing was bound.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_fake_server_handing_over_a_udp_socket_is_never_trusted() {
    if !have_python() {
        eprintln!("skipped: python3 is needed to play the fake control server");
        return;
    }
    let tmp = TempDir::new("fake");
    let port = free_port();
    let (mut fake, _) = fake_server(&tmp.0, port, None);
    takeover_must_fail(&tmp.0, port, "is not a stream socket");
    // SAFETY: killing the process group of the fake server we started.
    unsafe { libc::killpg(fake.id() as i32, libc::SIGKILL) };
    let _ = fake.wait();
}

#[test]
fn a_fake_server_of_another_uid_is_never_trusted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the fake server as uid 65534 needs root");
        return;
    }
    if !have_python() {
        eprintln!("skipped: python3 is needed to play the fake control server");
        return;
    }
    let tmp = TempDir::new("foreign");
    // The fake binds where uid 65534 may write; we move its socket into our private directory, as
    // only a privileged user could — the client must still check who answers.
    let theirs = tmp.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ours = tmp.0.join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let (mut fake, name) = fake_server(&theirs, port, Some(65534));
    std::fs::rename(theirs.join(&name), ours.join(&name)).unwrap();
    takeover_must_fail(&ours, port, "served by uid 65534");
    let out = cli(&ours, &["status", "--port", &port.to_string()]);
    assert!(
        stderr(&out).contains("served by uid 65534"),
        "{}",
        stderr(&out)
    );
    // SAFETY: killing the process group of the fake server we started.
    unsafe { libc::killpg(fake.id() as i32, libc::SIGKILL) };
    let _ = fake.wait();
}

#[test]
fn takeover_from_a_server_that_is_handing_over_is_refused_clearly() {
    let first = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let port = first.port;
    // Play a new server that received the sockets and has not said ready yet (a plain read drops the
    // fds that come with the offer).
    let mut pending = UnixStream::connect(only_socket(&first.dir)).unwrap();
    pending.set_read_timeout(Some(PATIENCE)).unwrap();
    writeln!(pending, r#"{{"cmd":"takeover","addr":"127.0.0.1:{port}"}}"#).unwrap();
    let mut offer = [0u8; 512];
    let n = pending.read(&mut offer).unwrap();
    assert!(String::from_utf8_lossy(&offer[..n]).contains("sockets"));
    assert_eq!(first.status()[0]["state"], "handing over");

    let mut third = Spawn::new(&["--port", &port.to_string(), "--workers", "1", "--takeover"])
        .dir(&first.dir)
        .spawn();
    assert!(!third.wait_exit().success(), "a second takeover went ahead");
    assert_eq!(
        third.count_log("handing over to another new server already"),
        1,
        "{:#?}",
        third.log()
    );

    // The pending successor goes away: the first server keeps serving.
    drop(pending);
    let mut first = first;
    first.wait_log("takeover aborted before the new server was ready");
    assert_eq!(first.status()[0]["state"], "serving");
    assert_eq!(round_trip(port, b"still first"), b"still first");
}

#[test]
fn sighup_reloads_the_server_and_sigquit_drains() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    srv.signal(libc::SIGHUP);
    srv.wait_log("reload: done, 2 worker(s) replaced");
    let workers = srv.worker_pids();
    assert_eq!(workers.len(), 4, "two new workers beside the two old ones");
    assert_eq!(round_trip(srv.port, b"after hup"), b"after hup");
    assert!(srv.child.try_wait().unwrap().is_none(), "SIGHUP killed it");
    assert_eq!(srv.status()[0]["state"], "serving");
    assert!(!control_sockets(&srv.dir).is_empty());

    srv.signal(libc::SIGQUIT);
    srv.wait_log("SIGQUIT: draining");
    assert!(srv.wait_exit().success(), "a SIGQUIT drain is a clean exit");
    assert_all_gone(&workers);
    assert!(
        control_sockets(&srv.dir).is_empty(),
        "the control socket is removed"
    );
}

#[test]
fn huge_durations_are_a_clear_error() {
    for (flag, value, name) in [
        ("--drain-timeout", "1000000h", "drain_timeout"),
        ("--idle-timeout", "9000h", "idle_timeout"),
    ] {
        // Spawned, not `output()`: a server that accepted the value would run until killed.
        let mut srv = Spawn::new(&["--port", "0", flag, value]).spawn();
        assert_eq!(srv.wait_exit().code(), Some(2), "{name}: {:#?}", srv.log());
        let wanted = format!("invalid {flag}: must be at most one year");
        assert_eq!(srv.count_log(&wanted), 1, "{name}: {:#?}", srv.log());
    }
}
