//! Log lines on stderr, one per event, written with a single `write(2)` each.
//!
//! Why not `eprintln!`: it takes std's stderr lock, and a worker forked while another thread held that lock
//! would deadlock on its first log line. One `write` per line also keeps lines from several processes whole.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences (or restores) the engine's log lines in this process and the workers it forks from now on.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Writes `port-sharding[pid]: message` and a newline to stderr.
pub fn emit(args: fmt::Arguments<'_>) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let line = format!("port-sharding[{}]: {}\n", std::process::id(), args);
    let mut bytes = line.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writing an initialised buffer to fd 2.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return; // stderr is gone; logging must never take the server down
        }
        bytes = &bytes[n as usize..];
    }
}

/// `log!("worker {i} ready")`: one line on stderr via [`emit`].
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::emit(format_args!($($arg)*)) };
}
pub(crate) use log;
