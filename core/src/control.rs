//! The control socket: how `status`, `stop` and `takeover` reach a running server.
//!
//! Each server listens on a unix socket named `<ip>_<port>.<pid>.sock` in [`control_dir`] (0700, owned by
//! the user; sockets 0600). The protocol is one JSON line each way. A request from another uid is refused
//! (`SO_PEERCRED`) and logged. For `takeover` the answer carries the listening sockets as `SCM_RIGHTS`, and
//! the connection stays open until the new server says `ready` — if it closes first, the old server keeps
//! serving.

use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::log;
use crate::stats::WorkerStats;

/// How long a client waits for an answer (a takeover's `ready` has its own, longer wait).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One request line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub(crate) enum Request {
    Status,
    Stop,
    Takeover { addr: SocketAddr },
    Ready,
}

/// What `takeover` answers, beside the sockets.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub pid: u32,
    pub runtime: String,
    pub addr: SocketAddr,
    pub sockets: usize,
}

/// A running server as `status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The supervisor's process id.
    pub pid: u32,
    /// `rust`, `python` or `ruby`.
    pub runtime: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// `echo`, `once` or `hello`.
    pub mode: String,
    /// `serving`, `handing over` or `draining`.
    pub state: String,
    /// Seconds since the server started.
    pub uptime_secs: f64,
    /// Path of its control socket.
    pub control_socket: PathBuf,
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
}

/// Where control sockets live: `$PORT_SHARDING_CONTROL_DIR`, else `$XDG_RUNTIME_DIR/port-sharding`, else
/// `/tmp/port-sharding-<uid>`.
pub fn control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORT_SHARDING_CONTROL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir()) {
        return Path::new(&run).join("port-sharding");
    }
    PathBuf::from(format!("/tmp/port-sharding-{}", nix::unistd::geteuid()))
}

fn socket_name(addr: SocketAddr, pid: u32) -> String {
    format!("{}_{}.{pid}.sock", addr.ip(), addr.port())
}

/// Parses `<ip>_<port>.<pid>.sock`.
fn parse_name(name: &str) -> Option<(SocketAddr, u32)> {
    let stem = name.strip_suffix(".sock")?;
    let (rest, pid) = stem.rsplit_once('.')?;
    let (ip, port) = rest.rsplit_once('_')?;
    Some((
        SocketAddr::new(ip.parse().ok()?, port.parse().ok()?),
        pid.parse().ok()?,
    ))
}

fn ensure_dir(dir: &Path) -> Result<()> {
    let ctx = |e| Error::io(format!("control directory {}", dir.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ctx)?;
    let meta = std::fs::metadata(dir).map_err(ctx)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Control(format!(
            "{} belongs to uid {}, not to this user (uid {me}); set PORT_SHARDING_CONTROL_DIR",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(ctx)?;
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// A live server found in the control directory.
pub(crate) struct Found {
    pub path: PathBuf,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// Live servers on `port` (and `host`, when given), oldest pid first; stale socket files are removed.
pub(crate) fn find(host: Option<SocketAddr>, port: u16) -> Vec<Found> {
    let dir = control_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .flatten()
        .filter_map(|e| {
            let (addr, pid) = parse_name(e.file_name().to_str()?)?;
            let wanted = addr.port() == port && host.is_none_or(|h| h.ip() == addr.ip());
            wanted.then(|| Found {
                path: e.path(),
                addr,
                pid,
            })
        })
        .filter(|f| match UnixStream::connect(&f.path) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && !pid_alive(f.pid) => {
                log!(
                    "removing stale control socket {} (pid {} is gone)",
                    f.path.display(),
                    f.pid
                );
                let _ = std::fs::remove_file(&f.path);
                false
            }
            Err(_) => false,
        })
        .collect();
    found.sort_by_key(|f| f.pid);
    found
}

fn not_running(host: Option<SocketAddr>, port: u16) -> Error {
    let what = host.map_or_else(|| format!("port {port}"), |h| h.to_string());
    Error::NotRunning {
        what,
        dir: control_dir().display().to_string(),
    }
}

/// A request/answer connection to one server.
pub(crate) struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    pub(crate) fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connect {}", path.display()), e))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| Error::io("control socket", e))?;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    pub(crate) fn send(&mut self, request: &Request) -> Result<()> {
        let mut line = serde_json::to_vec(request).expect("requests serialize");
        line.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&line)
            .map_err(|e| Error::io("control socket write", e))
    }

    /// Reads one answer line; `{"error": …}` becomes `Error::Control`.
    pub(crate) fn answer<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let mut line = String::new();
        let n = self
            .stream
            .read_line(&mut line)
            .map_err(|e| Error::io("control socket read", e))?;
        if n == 0 {
            return Err(Error::Control(
                "the server closed the connection without answering".to_string(),
            ));
        }
        parse_answer(&line)
    }

    /// Reads the takeover offer and the listening sockets that come with it.
    pub(crate) fn offer(&mut self) -> Result<(Offer, Vec<OwnedFd>)> {
        let fd = self.stream.get_ref().as_raw_fd();
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; crate::config::MAX_WORKERS]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg =
            socket::recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
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
        let n = msg.bytes;
        if n == 0 {
            return Err(Error::Takeover(
                "the old server closed the connection".to_string(),
            ));
        }
        let mut line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !line.ends_with('\n') {
            self.stream
                .read_line(&mut line)
                .map_err(|e| Error::io("control socket read", e))?;
        }
        Ok((parse_answer(&line)?, fds))
    }

    pub(crate) fn set_timeout(&self, t: Duration) {
        let _ = self.stream.get_ref().set_read_timeout(Some(t));
    }
}

fn parse_answer<T: serde::de::DeserializeOwned>(line: &str) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Error::Control(format!("bad answer {line:?}: {e}")))?;
    if let Some(msg) = value.get("error").and_then(|m| m.as_str()) {
        return Err(Error::Control(msg.to_string()));
    }
    serde_json::from_value(value).map_err(|e| Error::Control(format!("bad answer {line:?}: {e}")))
}

/// Sends `request` to every live server on `port` (only those bound to `host`, when given) and reads each
/// answer; [`Error::NotRunning`] when none answers.
fn ask_all<T: serde::de::DeserializeOwned>(
    host: Option<&str>,
    port: u16,
    request: &Request,
) -> Result<Vec<(u32, T)>> {
    let host = host
        .map(|h| crate::listener::resolve(h, port))
        .transpose()?;
    let found = find(host, port);
    if found.is_empty() {
        return Err(not_running(host, port));
    }
    found
        .iter()
        .map(|f| {
            let mut c = Client::connect(&f.path)?;
            c.send(request)?;
            Ok((f.pid, c.answer::<T>()?))
        })
        .collect()
}

/// Per-worker status of every server on `port` (only those bound to `host`, when given).
///
/// # Errors
/// [`Error::NotRunning`] when no live server answers.
pub fn status(host: Option<&str>, port: u16) -> Result<Vec<ServerStatus>> {
    Ok(ask_all(host, port, &Request::Status)?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// Asks every server on `port` (only those bound to `host`, when given) to drain; returns their pids.
///
/// # Errors
/// [`Error::NotRunning`] when no live server answers.
pub fn stop(host: Option<&str>, port: u16) -> Result<Vec<u32>> {
    let answers = ask_all::<serde_json::Value>(host, port, &Request::Stop)?;
    Ok(answers.into_iter().map(|(pid, _)| pid).collect())
}

/// The server side: a listening unix socket, removed on drop.
pub(crate) struct ControlSocket {
    pub listener: mio::net::UnixListener,
    pub path: PathBuf,
}

impl ControlSocket {
    pub(crate) fn bind(addr: SocketAddr) -> Result<ControlSocket> {
        let dir = control_dir();
        ensure_dir(&dir)?;
        let path = dir.join(socket_name(addr, std::process::id()));
        let _ = std::fs::remove_file(&path); // a stale file of an earlier process that had our pid
        let listener = mio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
        Ok(ControlSocket { listener, path })
    }

    /// Accepts one client and reads its request.
    pub(crate) fn accept(&self) -> Accepted {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Nobody,
            Err(_) => return Accepted::Refused,
        };
        // SAFETY: mio hands over a connected socket we now own.
        let stream = unsafe { UnixStream::from_raw_fd(stream.into_raw_fd()) };
        // A client gets one second to send its line; the supervisor serves nothing else meanwhile.
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .is_err()
        {
            return Accepted::Refused;
        }
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return Accepted::Refused;
        }
        let Ok(cred) = socket::getsockopt(&stream, socket::sockopt::PeerCredentials) else {
            return Accepted::Refused;
        };
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me {
            log!(
                "control: refused a request from uid {} pid {} (this server runs as uid {me})",
                cred.uid(),
                cred.pid()
            );
            let _ = reply_error(
                &stream,
                &format!("refused: uid {} is not the server's uid {me}", cred.uid()),
            );
            return Accepted::Refused;
        }
        match serde_json::from_str(&line) {
            Ok(req) => Accepted::Request(stream, req),
            Err(e) => {
                let _ = reply_error(&stream, &format!("bad request {line:?}: {e}"));
                Accepted::Refused
            }
        }
    }
}

/// What [`ControlSocket::accept`] found.
pub(crate) enum Accepted {
    /// No client is waiting.
    Nobody,
    /// A client was turned away (other uid, bad request, I/O error).
    Refused,
    /// A request to answer on `stream`.
    Request(UnixStream, Request),
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes one JSON answer line.
pub(crate) fn reply<T: Serialize>(stream: &UnixStream, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    send_all(stream, &line)
}

/// `send` with `MSG_NOSIGNAL`: a client that hung up must not kill a host whose SIGPIPE is not ignored.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match socket::send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `{"error": msg}`.
pub(crate) fn reply_error(stream: &UnixStream, msg: &str) -> io::Result<()> {
    reply(stream, &serde_json::json!({ "error": msg }))
}

/// Sends the takeover offer with the listening sockets attached.
pub(crate) fn send_offer(stream: &UnixStream, offer: &Offer, fds: &[RawFd]) -> io::Result<()> {
    let mut line = serde_json::to_vec(offer).map_err(io::Error::other)?;
    line.push(b'\n');
    let iov = [IoSlice::new(&line)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = socket::sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    send_all(stream, &line[n..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_round_trip() {
        for addr in ["0.0.0.0:1234", "127.0.0.1:80", "[::1]:65535", "[::]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_name(&socket_name(addr, 42)), Some((addr, 42)));
        }
        assert!(parse_name("junk.sock").is_none());
    }
}
