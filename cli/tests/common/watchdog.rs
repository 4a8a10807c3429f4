//! A per-test time limit for the integration tests (issue #19): a test that hangs fails its test binary
//! with a message naming it, within [`LIMIT`] — not after the 20 minutes a hung suite once took.
//!
//! libtest runs every test on a thread named after the test (even with `--test-threads=1`). The common
//! helpers (`bin()`, `control_dir()`, `connect()`, `Spawn`) call [`arm`], which records the calling test's
//! thread and when it started; a thread-local guard forgets it when the thread ends. One watchdog thread
//! looks once a second: a test past its limit gets its name printed, the servers still registered (their
//! process groups) killed, and the binary exits with 101, as a failed test binary does.
//!
//! Why not a crate: `ntest::timeout` needs an attribute on every test (a new test without one has no
//! limit), and leaves the hung test's servers running when the binary exits; this covers every test that
//! uses the helpers, and kills what it started. libtest's own "has been running for over 60 seconds"
//! warning names a slow test but never ends it.

use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// The default limit: generous (the slowest tests take well under a minute here); reached only when
/// something hangs. `PORT_SHARDING_TEST_LIMIT_SECS` overrides it (e.g. under a debugger).
pub const LIMIT: Duration = Duration::from_secs(120);

struct Running {
    thread: ThreadId,
    name: String,
    since: Instant,
    limit: Duration,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());
/// Process groups of the servers alive now (`ServerProc` adds and removes them).
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static START: Once = Once::new();

struct Guard(ThreadId);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut running) = RUNNING.lock() {
            running.retain(|r| r.thread != self.0);
        }
    }
}

thread_local! {
    static GUARD: Option<Guard> = register();
}

/// Registers a test's thread: libtest names it after the test. Threads a test spawns itself are unnamed
/// and belong to their test, which is already timed.
fn register() -> Option<Guard> {
    let me = std::thread::current();
    let name = me.name().filter(|n| *n != "main")?.to_string();
    let limit = std::env::var("PORT_SHARDING_TEST_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(LIMIT, Duration::from_secs);
    RUNNING.lock().unwrap().push(Running {
        thread: me.id(),
        name,
        since: Instant::now(),
        limit,
    });
    Some(Guard(me.id()))
}

/// Starts timing the calling test (once per test; later calls are free) and the watchdog (once).
pub fn arm() {
    GUARD.with(|_| {});
    START.call_once(|| {
        std::thread::Builder::new()
            .name("test time limit".into())
            .spawn(watch)
            .expect("spawn the watchdog thread");
    });
}

/// Gives the calling test a longer limit than [`LIMIT`], for one that legitimately needs it.
pub fn allow(limit: Duration) {
    arm();
    let me = std::thread::current().id();
    for r in RUNNING
        .lock()
        .unwrap()
        .iter_mut()
        .filter(|r| r.thread == me)
    {
        r.limit = r.limit.max(limit);
    }
}

pub(crate) fn track_group(pgid: i32) {
    GROUPS.lock().unwrap().push(pgid);
}

pub(crate) fn untrack_group(pgid: i32) {
    GROUPS.lock().unwrap().retain(|&g| g != pgid);
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let over: Vec<String> = RUNNING
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.since.elapsed() > r.limit)
            .map(|r| format!("`{}` (limit {:?})", r.name, r.limit))
            .collect();
        if over.is_empty() {
            continue;
        }
        // Straight to fd 2: `eprintln!` from this thread would be captured with the test that spawned it.
        let said = format!(
            "\nTEST TIME LIMIT: {} still running past its limit (cli/tests/common/watchdog.rs); \
             killing the servers the tests started and failing this test binary\n",
            over.join(", ")
        );
        std::io::Write::write_all(&mut std::io::stderr(), said.as_bytes()).ok();
        for &group in GROUPS.lock().unwrap().iter() {
            // SAFETY: a process group our tests created for a server they started.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
        std::process::exit(101);
    }
}
