//! Upgrade in place (SIGUSR2, the `upgrade` request): the supervisor starts its successor — the same
//! program again, re-executed from disk with the same arguments — as its own child, and hands it the
//! listeners over the takeover path. Nothing else changes hands: same sockets, same queues.
//!
//! ```text
//!   old: spawn successor ──► successor: take over from the old (its pid, in PORT_SHARDING_UPGRADE_FROM)
//!                            successor: every worker ready ──► "ready" to the old
//!   old: MAINPID=<successor> to the service manager, ack ──► successor: READY=1 (it is the main process)
//!   old: drains, exits 0
//! ```
//!
//! Being the old supervisor's child keeps the successor in the service's cgroup, which is what lets
//! systemd accept it as the new main process (a successor started from a shell is not, gunicorn#2856).
//! It gets no `PR_SET_PDEATHSIG` (it outlives its parent by design) and is reaped, should it die before
//! it is ready, by the one reaper. A successor that fails before it is ready — it cannot be run, exits,
//! or is not ready within [`UPGRADE_TIMEOUT`] (then it is killed) — leaves the old one serving; the log,
//! `STATUS=` and the requester's answer say why.

use std::ffi::{CString, OsString};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::reaper::ExitWatch;
use super::{activation, command, process, service, Supervisor, EXITS, READY_TIMEOUT};
use crate::control::{self, ConnId, UpgradeReport};
use crate::error::{Error, Result};
use crate::log::log;

/// What tells a successor whom to take over from: `<pid>@<address>` of its parent.
const FROM: &str = "PORT_SHARDING_UPGRADE_FROM";
/// How long a successor may take from its start to `ready`: its interpreter's start, then what a
/// takeover allows.
pub(super) const UPGRADE_TIMEOUT: Duration = READY_TIMEOUT.saturating_add(Duration::from_secs(30));

/// How an upgrade starts this program again (see [`set_upgrade_command`]).
static COMMAND: Mutex<Option<Vec<OsString>>> = Mutex::new(None);

/// Tells the engine how an upgrade (SIGUSR2, `port-sharding upgrade`) starts this program again: the
/// executable and every argument, as `execv` takes them. A host that runs an interpreter says so (Python:
/// `sys.executable` and `sys.orig_argv`; Ruby: `RbConfig.ruby` and its command line); otherwise the first
/// server bound in a process remembers how the process was started (its `argv`, a relative program path
/// made absolute; a bare name is looked up in `PATH` at the upgrade, as a shell would).
pub fn set_upgrade_command(argv: Vec<OsString>) {
    *COMMAND.lock().unwrap_or_else(|e| e.into_inner()) = Some(argv).filter(|a| !a.is_empty());
}

/// At bind: remembers this process's own command line, unless the host gave one. Early, before a host
/// may rewrite its `argv` (a process title).
pub(super) fn remember() {
    let mut command = COMMAND.lock().unwrap_or_else(|e| e.into_inner());
    if command.is_none() {
        let mut argv: Vec<OsString> = std::env::args_os().collect();
        if let Some(program) = argv.first_mut() {
            let path = PathBuf::from(&*program);
            if path.is_relative() && path.components().count() > 1 {
                if let Ok(cwd) = std::env::current_dir() {
                    *program = cwd.join(path).into_os_string();
                }
            }
        }
        *command = Some(argv).filter(|a| !a.is_empty());
    }
}

fn upgrade_command() -> Option<Vec<OsString>> {
    COMMAND.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// In a successor: whom to take over from (its parent's pid and address), taken out of the environment.
///
/// # Errors
/// The variable is set but does not say `<pid>@<address>`.
pub(super) fn from_env() -> Result<Option<(u32, SocketAddr)>> {
    let Some(value) = std::env::var_os(FROM) else {
        return Ok(None);
    };
    std::env::remove_var(FROM);
    let text = value.to_string_lossy();
    let parsed = text
        .split_once('@')
        .and_then(|(pid, addr)| Some((pid.parse().ok()?, addr.parse().ok()?)));
    parsed
        .map(Some)
        .ok_or_else(|| Error::Takeover(format!("{FROM}={text:?} does not say <pid>@<address>")))
}

/// An upgrade in progress: the successor we started, until it is ready (or failed).
pub(super) struct Upgrade {
    /// `None` while workers a reload replaced still empty sockets of their own: a successor must adopt
    /// a group that holds only the sockets it is given (their closing would move its members about).
    pid: Option<Pid>,
    started: Instant,
    /// The `upgrade` request to answer (`None`: SIGUSR2).
    requester: Option<mio::net::UnixStream>,
    /// Why it failed, once it did (it was killed or asked to stop: we wait for its exit).
    failed: Option<String>,
    _exit: Option<ExitWatch>,
}

impl Supervisor {
    /// The `upgrade` request: refused at once, or answered when the successor is ready (or failed).
    pub(super) fn upgrade_request(&mut self, id: ConnId) {
        if let Err(why) = self.can_upgrade() {
            log!("upgrade refused: {why}");
            return self.respond(id, control::error_line(&why));
        }
        let Some(c) = self.server.control.as_mut() else {
            return;
        };
        let stream = c.take(self.server.poll.registry(), id);
        if let Err(why) = self.begin_upgrade(stream) {
            log!("upgrade refused: {why}");
        }
    }

    fn can_upgrade(&self) -> std::result::Result<(), String> {
        if self.draining.is_some() {
            return Err(control::DRAINING.to_string());
        }
        if self.upgrade.is_some() {
            return Err("an upgrade is in progress already".into());
        }
        if self.successor.is_some() {
            return Err("this server is handing over to a new server".into());
        }
        if self.reload.is_some() {
            return Err("a reload is in progress".into());
        }
        if !self.ready {
            return Err("this server is still starting (not every worker is ready yet)".into());
        }
        if self.server.control.is_none() {
            return Err(
                "its control socket is off, so no successor could take its sockets over".into(),
            );
        }
        if std::process::id() == 1 {
            return Err(
                "it is PID 1: its exit would end the container (restart the container instead)"
                    .into(),
            );
        }
        if upgrade_command().is_none() {
            return Err("this process's command line is unknown".into());
        }
        Ok(())
    }

    /// Begins an upgrade; `requester` gets the outcome. The successor starts at once, or as soon as no
    /// replaced worker empties a socket of its own.
    pub(super) fn begin_upgrade(
        &mut self,
        requester: Option<mio::net::UnixStream>,
    ) -> std::result::Result<(), String> {
        if let Err(why) = self.can_upgrade() {
            if let Some(s) = requester {
                let _ = control::send_line(&s, &control::error_line(&why));
            }
            return Err(why);
        }
        self.upgrade = Some(Upgrade {
            pid: None,
            started: Instant::now(),
            requester,
            failed: None,
            _exit: None,
        });
        if self.seats.iter().any(|s| s.has_retiring_socket()) {
            log!("upgrade: waiting until the workers the last reload replaced have emptied and closed their sockets");
        }
        self.start_successor();
        Ok(())
    }

    /// Starts the successor of an upgrade that waits for one, once it may.
    fn start_successor(&mut self) {
        let waiting = self
            .upgrade
            .as_ref()
            .is_some_and(|u| u.pid.is_none() && u.failed.is_none());
        if !waiting || self.seats.iter().any(|s| s.has_retiring_socket()) {
            return;
        }
        let Some(argv) = upgrade_command() else {
            return self.finish_upgrade(Err("this process's command line is unknown".into()));
        };
        let mut env = self.server.service.successor_env();
        env.push((
            FROM.to_string(),
            format!("{}@{}", std::process::id(), self.server.addr).into(),
        ));
        let pid = match spawn(&argv, &env) {
            Ok(pid) => pid,
            Err(e) => {
                return self.finish_upgrade(Err(format!("the successor could not be started: {e}")))
            }
        };
        let shown: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
        log!("upgrade: started successor pid {pid}: {shown:?}; it takes over once its workers are ready");
        self.server
            .service
            .say(&format!("upgrading: successor pid {pid} is starting"));
        let exit = ExitWatch::new(self.server.poll.registry(), EXITS, pid);
        if let Some(u) = self.upgrade.as_mut() {
            u.pid = Some(pid);
            u.started = Instant::now();
            u._exit = exit;
        }
    }

    /// The successor's pid, for the reaper.
    pub(super) fn upgrade_pid(&self) -> Option<Pid> {
        self.upgrade.as_ref().and_then(|u| u.pid)
    }

    /// The successor exited before it was ready: the upgrade failed, this server serves on.
    pub(super) fn upgrade_exited(&mut self, status: Option<WaitStatus>) {
        let Some(u) = self.upgrade.as_ref() else {
            return;
        };
        let how = status.map_or_else(|| "is gone".to_string(), process::describe);
        let why = match (&u.failed, u.pid) {
            (Some(why), _) => why.clone(),
            (None, Some(pid)) => format!("successor pid {pid} {how} before it was ready"),
            (None, None) => format!("the successor {how} before it was ready"),
        };
        self.finish_upgrade(Err(why));
    }

    /// Once per pass: starts a waiting successor when it may; kills one not ready in time (its exit ends
    /// the upgrade).
    pub(super) fn expire_upgrade(&mut self, now: Instant) {
        self.start_successor();
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        // Waiting: replaced workers are asked to stop within the drain timeout whatever their queue.
        let Some(pid) = u.pid else {
            return;
        };
        if u.failed.is_none() && now.saturating_duration_since(u.started) > UPGRADE_TIMEOUT {
            let why =
                format!("successor pid {pid} was not ready within {UPGRADE_TIMEOUT:?}; killed it");
            log!("upgrade: {why}");
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            u.failed = Some(why);
        }
    }

    /// A drain during an upgrade ends it: the successor is asked to drain too (SIGTERM), and reaped.
    pub(super) fn abort_upgrade(&mut self) {
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        let Some(pid) = u.pid else {
            return self.finish_upgrade(Err("this server began to drain".into()));
        };
        if u.failed.is_none() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            u.failed = Some(format!(
                "this server began to drain; successor pid {pid} was asked to stop (SIGTERM)"
            ));
        }
    }

    /// A takeover's new server said `ready`: when it is our successor (`peer`), it becomes the main
    /// process (`MAINPID=`) before it hears the acknowledgement, and the requester is answered.
    pub(super) fn upgrade_ready(&mut self, peer: Option<u32>) {
        let Some(pid) = self.upgrade_pid() else {
            return;
        };
        if peer != Some(pid.as_raw() as u32) {
            return; // another server took over; our successor will be refused and exit
        }
        let pid = pid.as_raw() as u32;
        self.server.service.hand_over(pid);
        self.finish_upgrade(Ok(pid));
    }

    fn finish_upgrade(&mut self, outcome: std::result::Result<u32, String>) {
        let Some(mut u) = self.upgrade.take() else {
            return;
        };
        let took = u.started.elapsed();
        let seconds = took.as_secs_f64();
        let (successor, failed) = match outcome {
            Ok(pid) => {
                log!("upgrade: successor pid {pid} is ready after {took:.2?} and is the main process now; draining");
                (Some(pid), None)
            }
            Err(why) => {
                log!("upgrade failed: {why}; still serving");
                self.server
                    .service
                    .say(&format!("upgrade failed: {why}; still serving"));
                (None, Some(why))
            }
        };
        let report = UpgradeReport {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            successor,
            failed,
            seconds,
        };
        if let Some(s) = u.requester.take() {
            let _ = control::send_line(&s, &control::encode(&report));
        }
    }
}

/// What the child needs to exec, built before `fork` (the host may be multi-threaded: the child only
/// makes system calls).
struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

fn cstring(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Control("the command line holds a NUL byte".into()))
}

fn prepare(argv: &[OsString], extra: &[(String, OsString)]) -> Result<Prepared> {
    let program = argv[0].to_string_lossy().into_owned();
    let path = cstring(command::resolve(&program)?.into_os_string().into_vec())?;
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a.as_bytes().to_vec()))
        .collect::<Result<_>>()?;
    let ours = |k: &OsString| {
        let k = k.as_bytes();
        k == FROM.as_bytes()
            || service::ENV
                .iter()
                .chain(activation::ENV)
                .any(|o| o.as_bytes() == k)
    };
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os().filter(|(k, _)| !ours(k)) {
        let mut entry = k.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        env.extend(CString::new(entry).ok());
    }
    for (k, v) in extra {
        let mut entry = k.clone().into_bytes();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        env.push(cstring(entry)?);
    }
    let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    Ok(Prepared {
        path,
        _argv: argv,
        argv_ptrs,
        _env: env,
        envp,
    })
}

/// Forks and execs the successor; its pid once `exec` succeeded.
fn spawn(argv: &[OsString], extra: &[(String, OsString)]) -> Result<Pid> {
    let p = prepare(argv, extra)?;
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("pipe", e.into()))?;
    // SAFETY: the child only makes async-signal-safe system calls on memory prepared above, then execs
    // or _exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Error::io("fork the successor", e.into())),
        Ok(nix::unistd::ForkResult::Child) => unsafe { exec_child(&p, tx.as_raw_fd()) },
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
            // It reported why exec failed and _exits: reaped here, nobody else knows it.
            let _ = waitpid(child, None);
            let e = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
            Err(Error::io(
                format!("cannot run {}", p.path.to_string_lossy()),
                e,
            ))
        }
    }
}

/// In the child: default signal dispositions and an empty mask (as a fresh program expects; the
/// supervisor's handlers are gone with exec anyway, ignored signals and the mask are not), every fd but
/// stdio closed, then exec. Same process group and session as the supervisor, no parent-death signal.
///
/// # Safety
/// Only in the child right after `fork`.
unsafe fn exec_child(p: &Prepared, err: RawFd) -> ! {
    // SAFETY: async-signal-safe system calls on this process's own state and on memory prepared before
    // fork.
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
        if err > 3 {
            command::close_range(3, err as u32 - 1);
        }
        command::close_range(err as u32 + 1, u32::MAX);
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp.as_ptr());
        command::fail(err)
    }
}
