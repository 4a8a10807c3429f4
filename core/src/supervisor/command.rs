//! Command workers: fork, then exec the user's program with its listener as fd 3 and the systemd
//! socket-activation environment (`LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES`), plus `NOTIFY_SOCKET`,
//! `PORT_SHARDING_WORKER` and `PORT_SHARDING_PORT`.
//!
//! The host may be multi-threaded (Python, Ruby): between `fork` and `exec` the child may not allocate or
//! take a lock another thread might have held. So everything is prepared before `fork` ([`Prepared`]:
//! the program's path, `argv` and `envp` as C strings) and the child only makes system calls. `LISTEN_PID`
//! must be the pid of the process that reads it, known only after `fork`: its digits are written into a
//! buffer sized beforehand. An `exec` that fails reports its errno on a close-on-exec pipe, so the parent
//! can say "cannot run X" instead of watching a worker die again and again.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Variables a worker gets from us; inherited ones of these names are dropped.
/// The service manager's (`WATCHDOG_*`, `FDSTORE`) are the supervisor's alone: the supervisor takes them
/// out of its environment when it binds, and this keeps them out should another server in the process
/// have left them.
const OURS: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "FDSTORE",
    "PORT_SHARDING_WORKER",
    "PORT_SHARDING_PORT",
    "PORT_SHARDING_UPGRADE_FROM",
];
/// `LISTEN_PID=` and room for any pid (at most 20 digits) and the NUL.
const PID_PREFIX: &[u8] = b"LISTEN_PID=";
const PID_ENTRY: usize = PID_PREFIX.len() + 21;

/// What the child needs to exec, built before `fork`. The raw pointers point into the owned strings
/// and the pid buffer, whose heap addresses never move while this lives.
pub(super) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` and room for the digits, from `Box::into_raw` (freed on drop): the child writes
    /// into it while holding `&Prepared`, so no reference to it may exist.
    pid_entry: *mut [u8; PID_ENTRY],
    envp: Vec<*const libc::c_char>,
}

/// Finds `program` as `execvp` would (a name without `/` is looked up in `PATH`), before `fork`.
pub(super) fn resolve(program: &str) -> Result<PathBuf> {
    let not_found = |why: String| {
        Error::io(
            format!("command worker {program:?}"),
            io::Error::new(io::ErrorKind::NotFound, why),
        )
    };
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        if candidate.is_file()
            && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
        {
            return Ok(candidate);
        }
    }
    Err(not_found(format!(
        "not found in PATH ({})",
        path.to_string_lossy()
    )))
}

fn cstring(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::invalid("command", "an argument contains a NUL byte"))
}

impl Prepared {
    /// `command` for worker `index` of a server on `port`, told to notify `notify`.
    pub(super) fn new(
        command: &[String],
        index: usize,
        port: u16,
        notify: &Path,
    ) -> Result<Prepared> {
        let program = command
            .first()
            .ok_or_else(|| Error::invalid("command", "is empty"))?;
        let path = cstring(resolve(program)?.into_os_string().into_vec())?;
        let argv: Vec<CString> = command
            .iter()
            .map(|a| cstring(a.clone().into_bytes()))
            .collect::<Result<_>>()?;
        let mut env: Vec<CString> = Vec::new();
        for (k, v) in std::env::vars_os() {
            if OURS.iter().any(|o| k.as_bytes() == o.as_bytes()) {
                continue;
            }
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            if let Ok(c) = CString::new(entry) {
                env.push(c);
            }
        }
        let mut notify_entry = b"NOTIFY_SOCKET=".to_vec();
        notify_entry.extend_from_slice(notify.as_os_str().as_bytes());
        for entry in [
            b"LISTEN_FDS=1".to_vec(),
            b"LISTEN_FDNAMES=port-sharding".to_vec(),
            format!("PORT_SHARDING_WORKER={index}").into_bytes(),
            format!("PORT_SHARDING_PORT={port}").into_bytes(),
            notify_entry,
        ] {
            env.push(cstring(entry)?);
        }
        let mut entry = Box::new([0u8; PID_ENTRY]);
        entry[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        let pid_entry = Box::into_raw(entry);
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(pid_entry.cast_const().cast());
        envp.push(std::ptr::null());
        Ok(Prepared {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            pid_entry,
            envp,
        })
    }

    /// Forks and execs the program with `listener` as its fd 3; returns its pid once `exec` succeeded.
    /// `stop` is sent to the worker should this thread die before it (`PR_SET_PDEATHSIG`): an orphan
    /// stops instead of serving on without a supervisor.
    ///
    /// # Errors
    /// `fork` or `pipe` failed, or `exec` did (the program is missing or not executable: its errno).
    pub(super) fn spawn(&self, listener: RawFd, stop: Signal) -> Result<Pid> {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("pipe", e.into()))?;
        let parent = std::process::id() as libc::pid_t;
        let pid_buf: *mut u8 = self.pid_entry.cast();
        // SAFETY: the child only makes async-signal-safe system calls on memory prepared above, then
        // execs or _exits (see `exec_child`).
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(Error::io("fork command worker", e.into())),
            Ok(nix::unistd::ForkResult::Child) => unsafe {
                exec_child(self, pid_buf, listener, tx.as_raw_fd(), parent, stop as i32)
            },
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(tx);
                let mut errno = [0u8; 4];
                let mut got = 0;
                while got < 4 {
                    match nix::unistd::read(&rx, &mut errno[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                }
                if got == 0 {
                    return Ok(child); // EOF: the pipe closed on exec
                }
                // It reported why exec failed and _exits: it never was a worker.
                super::reaper::reap_stillborn(child);
                let e = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                Err(Error::io(
                    format!("cannot run {}", self.path.to_string_lossy()),
                    e,
                ))
            }
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: from Box::into_raw in `new`, freed only here.
        drop(unsafe { Box::from_raw(self.pid_entry) });
    }
}

/// Resets what a host may have changed (signal handlers, ignored signals, the signal mask), leaves the
/// supervisor's process group (Ctrl-C in a terminal reaches the supervisor, which stops workers with
/// `stop_signal`, not each worker with SIGINT), puts the listener at fd 3 (blocking, not close-on-exec, as
/// socket activation passes it), closes every other fd but stdio and the error pipe, writes `LISTEN_PID`,
/// and execs. System calls only: no allocation, no lock.
///
/// # Safety
/// Only in the child right after `fork`; `pid_buf` points to `p`'s `LISTEN_PID=` entry.
unsafe fn exec_child(
    p: &Prepared,
    pid_buf: *mut u8,
    listener: RawFd,
    err: RawFd,
    parent: libc::pid_t,
    deathsig: i32,
) -> ! {
    // SAFETY: async-signal-safe system calls on this process's own state and on memory prepared before
    // fork; every pointer passed is valid (see `Prepared`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, deathsig as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1); // the supervisor died before we could ask to follow it
        }
        // Keep the error pipe and the listener clear of fds 0–3 before moving the listener to 3.
        let mut err = err;
        if err <= 3 {
            err = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, 4);
            if err < 0 {
                libc::_exit(127);
            }
        }
        let mut listener = listener;
        if listener < 3 {
            listener = libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 4);
            if listener < 0 {
                fail(err);
            }
        }
        if listener == 3 {
            if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                fail(err);
            }
        } else if libc::dup2(listener, 3) != 3 {
            fail(err);
        }
        let flags = libc::fcntl(3, libc::F_GETFL);
        if flags < 0 || libc::fcntl(3, libc::F_SETFL, flags & !libc::O_NONBLOCK) != 0 {
            fail(err);
        }
        close_range(4, err as u32 - 1);
        close_range(err as u32 + 1, u32::MAX);
        // LISTEN_PID=<our pid>: digits written backwards into a stack buffer, then copied.
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let at = pid_buf.add(PID_PREFIX.len());
        for i in 0..n {
            *at.add(i) = digits[n - 1 - i];
        }
        *at.add(n) = 0;
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp.as_ptr());
        fail(err)
    }
}

/// Reports errno on the error pipe and exits as a shell does for a program it cannot run.
///
/// # Safety
/// Only in the forked child.
pub(super) unsafe fn fail(err: RawFd) -> ! {
    // SAFETY: reading errno and write/_exit are async-signal-safe.
    unsafe {
        let bytes = (*libc::__errno_location()).to_ne_bytes();
        libc::write(err, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

/// Closes fds `lo..=hi` (nothing when `lo > hi`); system calls only.
pub(super) fn close_range(lo: u32, hi: u32) {
    if lo > hi {
        return;
    }
    // SAFETY: closing descriptors only; the caller keeps the ones it needs out of the range.
    unsafe {
        if libc::syscall(libc::SYS_close_range, lo, hi, 0) != 0 {
            // Before Linux 5.9: one by one, up to a bound that covers any realistic fd table.
            let max = hi.min(65_535);
            let mut fd = lo;
            while fd <= max {
                libc::close(fd as i32);
                fd += 1;
            }
        }
    }
}
