//! Sockets the service manager passes the supervisor (`man sd_listen_fds`): fd 3 onwards, counted by
//! `LISTEN_FDS` for the process named by `LISTEN_PID`, named by `LISTEN_FDNAMES`. Two kinds come this way:
//!
//! - **The manager's own sockets** (a `.socket` unit, `systemd-socket-activate`): the supervisor serves
//!   them and binds none of its own. N sockets on one address with `SO_REUSEPORT` (N identical
//!   `ListenStream=` lines with `ReusePort=yes`) are N workers, one per socket; one socket without it
//!   (systemd's default) is one worker. The manager keeps a copy of each: closing ours never takes one out
//!   of the port's group, and `shutdown()` on ours would stop the manager's too, so the supervisor never
//!   shuts one down nor binds a socket beside them (`Bound::managed`).
//! - **Our own listeners coming back from the fd store** (named [`PREFIX`]…): after a crash, the manager
//!   starts the supervisor again with the listeners it pushed (`FDSTORE=1`), so connections that queued
//!   meanwhile are served, not reset.
//!
//! `LISTEN_*` are taken out of the environment whether or not they were meant for this process (as
//! `sd_listen_fds(1)` does): no worker inherits them.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::log;

/// What the supervisor takes out of its environment.
pub(crate) const ENV: &[&str] = &["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
/// The first fd socket activation passes.
const FIRST: RawFd = 3;
/// How our listeners are named in the fd store: `port-sharding.<port>.<socket inode>`, one name per
/// socket (the same in every process that holds it), so one can be taken out again by name.
const PREFIX: &str = "port-sharding.";

/// The name `listener` carries in the fd store.
pub(super) fn fd_name(listener: &impl AsRawFd) -> String {
    let fd = listener.as_raw_fd();
    // SAFETY: fstat writes into a zeroed stat buffer.
    let inode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        st.st_ino
    };
    let port = local_addr(fd).map_or(0, |a| a.port());
    format!("{PREFIX}{port}.{inode}")
}

/// Listening sockets passed to this process.
pub(super) struct Passed {
    pub(super) listeners: Vec<TcpListener>,
    /// The manager's own sockets (it keeps a copy of each), not ours back from the fd store.
    pub(super) managed: bool,
    /// Every socket has `SO_REUSEPORT` (one without is alone on its port: no group to steer).
    pub(super) reuseport: bool,
}

/// What came in: sockets to serve, and fd store names to take out of the store (our listeners for an
/// address this server no longer serves, or beside a socket unit's).
pub(super) struct Activation {
    pub(super) passed: Option<Passed>,
    pub(super) unstore: Vec<String>,
}

fn int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    (rc == 0).then_some(v)
}

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: only borrowed for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd.as_fd())
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
}

/// One passed fd.
struct Fd {
    fd: OwnedFd,
    name: String,
    addr: SocketAddr,
    reuseport: bool,
}

/// The listening TCP socket at `fd`, or why it is not one.
fn inspect(fd: RawFd) -> std::result::Result<(SocketAddr, bool), String> {
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return Err("is not a stream socket".into());
    }
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) != Some(libc::IPPROTO_TCP) {
        return Err("is not a TCP socket".into());
    }
    if int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Some(1) {
        return Err("is not listening".into());
    }
    let addr = local_addr(fd).ok_or("has no IP address")?;
    let reuseport = int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) == Some(1);
    Ok((addr, reuseport))
}

/// Takes `LISTEN_*` out of the environment and, when they name this process, the sockets they pass.
/// The manager's sockets decide `config`'s host, port and workers (one the caller named must agree).
///
/// # Errors
/// A passed fd that is not a listening TCP socket, sockets on different addresses, a named setting that
/// disagrees with the sockets.
pub(super) fn take(config: &mut Config, blocking: bool) -> Result<Activation> {
    let var = |k| std::env::var(k).ok();
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for k in ENV {
        std::env::remove_var(k);
    }
    let none = Activation {
        passed: None,
        unstore: Vec::new(),
    };
    if pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(none);
    }
    let n: i32 = fds.and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    if n <= 0 {
        return Ok(none);
    }
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut passed = Vec::new();
    for i in 0..n {
        let raw = FIRST + i;
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        // SAFETY: F_GETFD only asks whether the fd is open.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(activation_error(format!(
                "LISTEN_FDS={n}, but fd {raw} ({name}) is not open"
            )));
        }
        // SAFETY: socket activation hands fds 3..3+n to this process; we are their one owner now.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: on an fd we own; as sd_listen_fds does, so no exec'd child inherits it.
        unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
        let (addr, reuseport) = inspect(raw).map_err(|why| {
            activation_error(format!(
                "fd {raw} ({name}) {why}: port-sharding serves listening TCP sockets only"
            ))
        })?;
        passed.push(Fd {
            fd,
            name,
            addr,
            reuseport,
        });
    }
    let (stored, theirs): (Vec<Fd>, Vec<Fd>) =
        passed.into_iter().partition(|f| f.name.starts_with(PREFIX));
    if theirs.is_empty() {
        return Ok(from_store(config, stored, blocking));
    }
    // The manager's sockets win; ours beside them (from a run before the unit got a socket) go.
    let unstore: Vec<String> = stored.into_iter().map(|f| f.name).collect();
    for name in &unstore {
        log!("socket activation: {name} from the fd store is not needed beside the socket unit's sockets; dropping it");
    }
    let passed = managed(config, theirs, blocking)?;
    Ok(Activation {
        passed: Some(passed),
        unstore,
    })
}

fn activation_error(why: String) -> Error {
    Error::InvalidAddress {
        host: "LISTEN_FDS".into(),
        reason: why,
    }
}

/// The manager's sockets, checked against what the caller named.
fn managed(config: &mut Config, fds: Vec<Fd>, blocking: bool) -> Result<Passed> {
    let addr = fds[0].addr;
    if let Some(other) = fds.iter().find(|f| f.addr != addr) {
        return Err(activation_error(format!(
            "the service manager passed sockets on {addr} ({}) and {} ({}): one server serves one address \
             (give each address a service of its own)",
            fds[0].name, other.addr, other.name
        )));
    }
    let n = fds.len();
    let named = |s| config.given.contains(&s);
    if named("port") && config.port != 0 && config.port != addr.port() {
        return Err(Error::invalid(
            "port",
            format!(
                "is {}, but the service manager passed sockets on {addr}: leave the port to the socket unit",
                config.port
            ),
        ));
    }
    if named("host") {
        let wanted = crate::listener::resolve(&config.host, addr.port())?;
        if !wanted.ip().is_unspecified() && wanted.ip() != addr.ip() {
            return Err(Error::invalid(
                "host",
                format!(
                    "is {}, but the service manager passed sockets on {addr}: leave the address to the socket unit",
                    config.host
                ),
            ));
        }
    }
    let reuseport = fds.iter().all(|f| f.reuseport);
    if !reuseport && named("workers") && config.workers > 1 {
        return Err(Error::invalid(
            "workers",
            format!(
                "is {}, but the service manager passed one socket without SO_REUSEPORT ({}, on {addr}), which \
                 one worker serves: for {} workers give the .socket unit ReusePort=yes and {} identical \
                 ListenStream= lines (systemd ≥ 249)",
                config.workers, fds[0].name, config.workers, config.workers
            ),
        ));
    }
    if reuseport && named("workers") && config.workers != n {
        return Err(Error::invalid(
            "workers",
            format!(
                "is {}, but the service manager passed {n} socket(s) on {addr}, one per worker: drop \
                 --workers, or give the .socket unit {} identical ListenStream= lines",
                config.workers, config.workers
            ),
        ));
    }
    config.workers = n;
    config.host = addr.ip().to_string();
    config.port = addr.port();
    let listeners = fds
        .into_iter()
        .map(|f| listener(f.fd, blocking))
        .collect::<Result<Vec<_>>>()?;
    log!(
        "socket activation: serving {n} socket(s) the service manager passed on {addr}{}",
        if reuseport {
            ""
        } else {
            " (no SO_REUSEPORT: one worker)"
        }
    );
    Ok(Passed {
        listeners,
        managed: true,
        reuseport,
    })
}

/// Our own listeners back from the fd store: the ones for the address this server is configured for.
fn from_store(config: &mut Config, fds: Vec<Fd>, blocking: bool) -> Activation {
    let mut unstore = Vec::new();
    let mut listeners = Vec::new();
    let wanted = crate::listener::resolve(&config.host, config.port).ok();
    let mut addr: Option<SocketAddr> = None;
    for f in fds {
        let fits = wanted
            .is_some_and(|w| w.ip() == f.addr.ip() && (w.port() == 0 || w.port() == f.addr.port()))
            && addr.is_none_or(|a| a == f.addr)
            && f.reuseport;
        if !fits {
            log!(
                "fd store: dropping {} (a listener on {}): this server serves {}:{}",
                f.name,
                f.addr,
                config.host,
                config.port
            );
            unstore.push(f.name);
            continue;
        }
        match listener(f.fd, blocking) {
            Ok(l) => {
                addr = Some(f.addr);
                listeners.push(l);
            }
            Err(e) => {
                log!("fd store: dropping {}: {e}", f.name);
                unstore.push(f.name);
            }
        }
    }
    let Some(addr) = addr else {
        return Activation {
            passed: None,
            unstore,
        };
    };
    config.port = addr.port();
    log!(
        "fd store: adopting {} listener(s) on {addr} kept by the service manager (connections queued meanwhile are served)",
        listeners.len()
    );
    Activation {
        passed: Some(Passed {
            listeners,
            managed: false,
            reuseport: true,
        }),
        unstore,
    }
}

fn listener(fd: OwnedFd, blocking: bool) -> Result<TcpListener> {
    let l = TcpListener::from(fd);
    l.set_nonblocking(!blocking)
        .map_err(|e| Error::io("set a passed socket's O_NONBLOCK", e))?;
    Ok(l)
}
