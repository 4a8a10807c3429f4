//! Test helpers: a `port-sharding serve` process in its own process group, and small clients.
#![allow(dead_code)] // each test file uses a different subset

pub mod watchdog;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits on; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    watchdog::arm(); // every test that runs the CLI gets the per-test time limit
    env!("CARGO_BIN_EXE_port-sharding")
}

/// Gives `cmd` the default SIGINT and SIGQUIT dispositions. A process inherits ignored signals across
/// exec: under `nohup make test &` (or any job started with SIGINT ignored) the server would otherwise
/// ignore the Ctrl-C a test sends it, so the tests would depend on how they were started.
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: sigaction is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for sig in [libc::SIGINT, libc::SIGQUIT] {
                if libc::sigaction(sig, &dfl, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

/// Reports a test that cannot run here and returns nothing: the reason goes to stderr and to
/// `$PORT_SHARDING_SKIP_LOG`, which `make test`'s summary counts (and CI fails on).
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("PORT_SHARDING_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        file.and_then(|mut f| f.write_all(line.as_bytes())).ok();
    }
}

/// Whether `python3` runs here (it runs the tests' command workers); else the test is skipped, saying why.
pub fn python3(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            "python3 is not installed (it runs the test's command worker)",
        );
    }
    ok
}

/// A private control directory, so tests never see each other's (or a developer's) servers; removed on
/// drop.
pub struct ControlDir(PathBuf);

impl std::ops::Deref for ControlDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for ControlDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for ControlDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

pub fn control_dir() -> ControlDir {
    watchdog::arm();
    let dir = std::env::temp_dir().join(format!("ps-test-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    // Servers and clients refuse a control directory other users may enter.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    ControlDir(dir)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running `port-sharding serve` (killed with its process group when dropped, if still alive).
pub struct ServerProc {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// The control directory made for this server alone (when none was passed in), removed on drop.
    own_dir: Option<ControlDir>,
    log: Arc<Mutex<Vec<String>>>,
}

pub struct Spawn {
    pub args: Vec<String>,
    pub dir: Option<PathBuf>,
    pub nofile: Option<u64>,
    pub host: String,
    /// An fd number the supervisor inherits without CLOEXEC (a dup of stderr), to see workers close it.
    pub inherit_fd: Option<i32>,
}

impl Spawn {
    pub fn new(args: &[&str]) -> Spawn {
        Spawn {
            args: args.iter().map(|s| s.to_string()).collect(),
            dir: None,
            nofile: None,
            host: "127.0.0.1".to_string(),
            inherit_fd: None,
        }
    }
    pub fn host(mut self, host: &str) -> Spawn {
        self.host = host.to_string();
        self
    }
    pub fn inherit_fd(mut self, fd: i32) -> Spawn {
        self.inherit_fd = Some(fd);
        self
    }
    pub fn dir(mut self, dir: &std::path::Path) -> Spawn {
        self.dir = Some(dir.to_path_buf());
        self
    }
    pub fn nofile(mut self, n: u64) -> Spawn {
        self.nofile = Some(n);
        self
    }
    /// Starts the server and waits for its `ready` line.
    pub fn start(self) -> ServerProc {
        let mut proc = self.spawn();
        proc.wait_log("ready:");
        proc
    }
    /// Starts the process without waiting.
    pub fn spawn(self) -> ServerProc {
        let own_dir = self.dir.is_none().then(control_dir);
        let dir = self
            .dir
            .unwrap_or_else(|| own_dir.as_ref().unwrap().to_path_buf());
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--host", &self.host])
            .args(&self.args)
            .env("PORT_SHARDING_CONTROL_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        default_signals(&mut cmd);
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(fd) = self.inherit_fd {
            // SAFETY: dup2 is async-signal-safe; the new fd has no CLOEXEC, so `serve` inherits it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(2, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn port-sharding");
        watchdog::track_group(child.id() as i32);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut proc = ServerProc {
            child,
            port: 0,
            dir,
            own_dir,
            log,
        };
        if let Some(line) = proc.try_wait_log("server starting on") {
            // "… server starting on 127.0.0.1:41234: 2 worker(s), …" or "… on [::1]:41234: …"
            let addr = line.split("starting on ").nth(1).unwrap();
            let addr = addr.split(": ").next().unwrap();
            proc.port = addr.rsplit(':').next().unwrap().parse().unwrap();
            // Tests use ephemeral ports: the default one belongs to a developer's `make serve`.
            assert_ne!(
                proc.port, 1234,
                "a test server on the default port 1234: pass --port 0"
            );
        }
        proc
    }
}

impl ServerProc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` (or the process to exit).
    pub fn try_wait_log(&mut self, needle: &str) -> Option<String> {
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if self.child.try_wait().ok().flatten().is_some() {
                std::thread::sleep(Duration::from_millis(100)); // let the reader catch the last lines
                return self.log().into_iter().find(|l| l.contains(needle));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn wait_log(&mut self, needle: &str) -> String {
        self.try_wait_log(needle)
            .unwrap_or_else(|| panic!("no log line with {needle:?}; log: {:#?}", self.log()))
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Pids of workers started so far, from the `worker i started: pid N` lines.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.log()
            .iter()
            .filter_map(|l| l.split("started: pid ").nth(1))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling the process we started.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not exit; log: {:#?}", self.log());
    }

    /// `port-sharding status --json` for this server's port.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(bin())
            .args(["status", "--json", "--port", &self.port.to_string()])
            .env("PORT_SHARDING_CONTROL_DIR", &self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for ServerProc {
    /// Kills the whole process group even when the supervisor has exited: workers it left behind (the
    /// orphans the tests look for) must not outlive the test. The group was created for the process we
    /// started (pgid == its pid), so this kills only what we started.
    fn drop(&mut self) {
        // SAFETY: plain syscalls on our own group; ESRCH (nothing left) is fine.
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        self.child.wait().ok();
        watchdog::untrack_group(self.pid());
    }
}

/// The accept-queue lengths of the listeners on `port` (127.0.0.1), from the kernel (`ss`), independent of
/// what the server reports: a listener's Recv-Q is its queue.
pub fn kernel_queues(port: u16) -> Vec<u64> {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed by make setup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Waits until `cond()` holds; panics with `what` after PATIENCE.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists (and is not a zombie we could not reap).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .starts_with('Z')
}

/// Waits until none of `pids` exists.
pub fn assert_all_gone(pids: &[i32]) {
    let until = Instant::now() + PATIENCE;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < until,
            "orphans left: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn connect(port: u16) -> TcpStream {
    watchdog::arm();
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Sends `data`, half-closes, and reads until the server closes.
pub fn round_trip(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_end(&mut s)
}

pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read reply");
    out
}

/// Per-worker `accepted` counts of the first server in a status answer.
pub fn accepted(status: &serde_json::Value) -> Vec<u64> {
    status[0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .collect()
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based) → indices 11 and 12 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The control socket files in `dir`.
pub fn control_sockets(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `port-sharding <args>` with `dir` as the control directory.
pub fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("PORT_SHARDING_CONTROL_DIR", dir)
        .output()
        .unwrap()
}

/// Waits until `count_log(needle)` reaches `n`; `false` after [`PATIENCE`].
pub fn wait_count(srv: &ServerProc, needle: &str, n: usize) -> bool {
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        if srv.count_log(needle) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The inodes of the listening TCP sockets on `port` (IPv4 and IPv6), from `/proc/net/tcp*`.
pub fn listener_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; the inode is the 10th field.
            let local_port = f.get(1).and_then(|a| a.rsplit(':').next());
            if f.get(3) == Some(&"0A")
                && local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
            {
                inodes.extend(f.get(9).map(|i| i.to_string()));
            }
        }
    }
    inodes
}

/// Whether process `pid` holds a descriptor of a listening socket on `port`.
pub fn holds_listener(pid: i32, port: u16) -> bool {
    let inodes = listener_inodes(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

/// Waits until `pid` is stopped (SIGSTOP took effect: state `T` in `/proc/<pid>/stat`).
pub fn wait_stopped(pid: i32) {
    wait_until(&format!("pid {pid} to be stopped"), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('T')
        })
    });
}
