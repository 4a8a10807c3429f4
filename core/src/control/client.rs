//! The client's side: `status`, `stop`, and the connection a new server uses for `takeover`.
//!
//! A client trusts a server only after checking the directory (see [`super::registry`]) and the
//! server's uid (`SO_PEERCRED`): the same user, or root when `PORT_SHARDING_TRUST_ROOT=1`. It reads at
//! most [`MAX_ANSWER`] bytes per answer and gives each answer a whole deadline, so a peer that drips or
//! floods cannot hold it.

use std::io::{self, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixAddr};

use super::protocol::{
    encode, parse_answer, Offer, ReloadReport, Request, ServerStatus, UpgradeReport, MAX_ANSWER,
};
use super::registry::{find, not_running};
use crate::error::{Error, Result};

/// How long a client waits for a whole answer (a takeover's `ready` has its own, longer wait).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `PORT_SHARDING_TRUST_ROOT=1`: a control socket served by root is then trusted too.
fn trust_root() -> bool {
    std::env::var_os("PORT_SHARDING_TRUST_ROOT").is_some_and(|v| v == "1")
}

/// Refuses a server that runs as another user; returns its pid as the kernel gives it to this process
/// (in our pid namespace; 0 when the server's is not visible from ours).
fn check_peer(stream: &UnixStream, path: &Path) -> Result<u32> {
    let cred = socket::getsockopt(stream, socket::sockopt::PeerCredentials)
        .map_err(|e| Error::io(format!("SO_PEERCRED of {}", path.display()), e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || (cred.uid() == 0 && trust_root()) {
        return Ok(u32::try_from(cred.pid()).unwrap_or(0));
    }
    let hint = if cred.uid() == 0 {
        " (set PORT_SHARDING_TRUST_ROOT=1 to trust root)"
    } else {
        ""
    };
    Err(Error::Control(format!(
        "{} is served by uid {} (pid {}), not by this user (uid {me}); refusing to talk to it{hint}",
        path.display(),
        cred.uid(),
        cred.pid()
    )))
}

/// A request/answer connection to one server.
pub(crate) struct Client {
    stream: UnixStream,
    /// Bytes read past the last answer line.
    buf: Vec<u8>,
    timeout: Duration,
    /// The server's pid as seen from here (`SO_PEERCRED`), 0 when not visible.
    pub(crate) peer_pid: u32,
}

impl Client {
    /// Connects to the socket at `path` and checks who serves it.
    pub(crate) fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connect {}", path.display()), e))?;
        let peer_pid = check_peer(&stream, path)?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| Error::io("control socket", e))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            timeout: REPLY_TIMEOUT,
            peer_pid,
        })
    }

    pub(crate) fn send(&mut self, request: &Request) -> Result<()> {
        self.stream
            .write_all(&encode(request))
            .map_err(|e| Error::io("control socket write", e))
    }

    /// Reads one answer line within the timeout; `{"error": …}` becomes `Error::Control`.
    pub(crate) fn answer<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let deadline = Instant::now()
            .checked_add(self.timeout)
            .unwrap_or_else(Instant::now);
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return parse_answer(&line);
            }
            if self.buf.len() > MAX_ANSWER {
                return Err(Error::Control(format!(
                    "the server's answer is longer than {MAX_ANSWER} bytes"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Control(format!(
                    "no complete answer within {:?}",
                    self.timeout
                )));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("control socket", e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => {
                    return Err(Error::Control(
                        "the server closed the connection without answering".to_string(),
                    ))
                }
                Ok(0) => {
                    return Err(Error::Control(
                        "the server closed the connection mid-answer".to_string(),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Error::Control(format!(
                        "no complete answer within {:?}",
                        self.timeout
                    )))
                }
                Err(e) => return Err(Error::io("control socket read", e)),
            }
        }
    }

    /// Reads the takeover offer and the sockets that come with it (checked by the caller).
    pub(crate) fn offer(&mut self) -> Result<(Offer, Vec<OwnedFd>)> {
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| Error::io("control socket", e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; crate::config::MAX_WORKERS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<UnixAddr>(
            self.stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::io("receive listening sockets", e.into()))?;
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| Error::io("receive listening sockets", e.into()))?
        {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in this process; we are their only owner.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(Error::Takeover(format!(
                "the old server sent more than {} sockets",
                crate::config::MAX_WORKERS
            )));
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(Error::Takeover(
                "the old server closed the connection".to_string(),
            ));
        }
        self.buf.extend_from_slice(&buf[..n]);
        Ok((self.answer()?, fds))
    }

    pub(crate) fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }
}

/// Sends `request` to every live server on `port` (only those bound to `host`, when given) and reads each
/// answer, with the server's pid from its socket's name (its own namespace's) and as the kernel shows it
/// to us (`SO_PEERCRED`: ours; 0 when not visible); [`Error::NotRunning`] when none answers.
fn ask_all<T: serde::de::DeserializeOwned>(
    host: Option<&str>,
    port: u16,
    request: &Request,
) -> Result<Vec<(u32, u32, T)>> {
    let host: Option<SocketAddr> = host
        .map(|h| crate::listener::resolve(h, port))
        .transpose()?;
    let found = find(host, port)?;
    if found.is_empty() {
        return Err(not_running(host, port));
    }
    found
        .iter()
        .map(|f| {
            let mut c = Client::connect(&f.path)?;
            c.send(request)?;
            Ok((f.pid, c.peer_pid, c.answer::<T>()?))
        })
        .collect()
}

/// Per-worker status of every server on `port` (only those bound to `host`, when given).
///
/// # Errors
/// [`Error::NotRunning`] when no live server answers; [`Error::Control`] when the control directory or a
/// server cannot be trusted (wrong owner or mode, a symlink, another uid).
pub fn status(host: Option<&str>, port: u16) -> Result<Vec<ServerStatus>> {
    Ok(ask_all(host, port, &Request::Status)?
        .into_iter()
        .map(|(_, seen, mut s): (u32, u32, ServerStatus)| {
            super::pidns::translate(&mut s, seen);
            s
        })
        .collect())
}

/// Asks every server on `port` (only those bound to `host`, when given) to drain; returns their pids, as
/// this process sees them (a server in another pid namespace has another pid there).
///
/// # Errors
/// As [`status`].
pub fn stop(host: Option<&str>, port: u16) -> Result<Vec<u32>> {
    let answers = ask_all::<serde_json::Value>(host, port, &Request::Stop)?;
    Ok(answers
        .into_iter()
        .map(|(named, seen, _)| if seen > 0 { seen } else { named })
        .collect())
}

/// How long a client waits for a reload's answer: each new worker has `ready_timeout` to be ready, and
/// the server answers when the last one is, or when one failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Replaces the workers of every server on `port` (only those bound to `host`, or the one whose supervisor
/// is `pid`, when given) in place, `batch` at a time, one server after the other: per listener a new
/// worker starts, and the old one is asked to stop once the new one is ready. Stops at the first server
/// whose reload failed (its report says which worker and why); the servers after it are not reloaded.
///
/// # Errors
/// As [`status`]; [`Error::NotRunning`] also when no server on the port has supervisor `pid`;
/// [`Error::Control`] when a server refuses (draining, still starting, reloading already).
pub fn reload(
    host: Option<&str>,
    port: u16,
    pid: Option<u32>,
    batch: Option<usize>,
) -> Result<Vec<ReloadReport>> {
    let addr: Option<SocketAddr> = host
        .map(|h| crate::listener::resolve(h, port))
        .transpose()?;
    let mut found = find(addr, port)?;
    if let Some(pid) = pid {
        found.retain(|f| f.pid == pid);
        if found.is_empty() {
            return Err(Error::NotRunning {
                what: format!("port {port} with supervisor pid {pid}"),
                dir: super::registry::control_dir().display().to_string(),
            });
        }
    }
    if found.is_empty() {
        return Err(not_running(addr, port));
    }
    let mut reports = Vec::new();
    for f in &found {
        let mut c = Client::connect(&f.path)?;
        c.send(&Request::Reload { batch })?;
        c.set_timeout(RELOAD_TIMEOUT);
        let report: ReloadReport = c.answer()?;
        let failed = report.failed.is_some();
        reports.push(report);
        if failed {
            break;
        }
    }
    Ok(reports)
}

/// How long a client waits for an upgrade's answer: the successor has a bounded time to be ready
/// (after which the server kills it and answers).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);

/// Upgrades every server on `port` in place (only those bound to `host`, or the one whose supervisor is
/// `pid`, when given), one after the other: each starts its successor — the same program again, from disk
/// — and hands it its sockets; once the successor is ready, the old one drains and exits. Stops at the
/// first server whose upgrade failed (its report says why; it keeps serving).
///
/// # Errors
/// As [`reload`]; [`Error::Control`] when a server refuses (draining, still starting, reloading,
/// upgrading already).
pub fn upgrade(host: Option<&str>, port: u16, pid: Option<u32>) -> Result<Vec<UpgradeReport>> {
    let addr: Option<SocketAddr> = host
        .map(|h| crate::listener::resolve(h, port))
        .transpose()?;
    let mut found = find(addr, port)?;
    if let Some(pid) = pid {
        found.retain(|f| f.pid == pid);
        if found.is_empty() {
            return Err(Error::NotRunning {
                what: format!("port {port} with supervisor pid {pid}"),
                dir: super::registry::control_dir().display().to_string(),
            });
        }
    }
    if found.is_empty() {
        return Err(not_running(addr, port));
    }
    let mut reports = Vec::new();
    for f in &found {
        let mut c = Client::connect(&f.path)?;
        c.send(&Request::Upgrade)?;
        c.set_timeout(UPGRADE_TIMEOUT);
        let report: UpgradeReport = c.answer()?;
        let failed = report.failed.is_some();
        reports.push(report);
        if failed {
            break;
        }
    }
    Ok(reports)
}
