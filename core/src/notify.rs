//! `NOTIFY_SOCKET`: the sd_notify datagram protocol (`man sd_notify`), both sides. It is how every worker
//! tells its supervisor where it is: `READY=1` once it serves, `STOPPING=1` when it begins to drain by
//! itself. Command workers (gunicorn, programs using `sd_notify(3)` or a few lines of their own) find the
//! socket in `NOTIFY_SOCKET`; the engine's own workers (built-in, function) call [`notify`]. The sender is
//! identified by the kernel (`SO_PASSCRED` → `SCM_CREDENTIALS`), never by what it writes.
//!
//! The socket lives in the control directory (0700, this user's only), next to the server's control
//! socket, and is removed when the server stops.
//!
//! The same client ([`send`]) speaks to the service manager above the supervisor (systemd's
//! `NOTIFY_SOCKET`, an abstract `@` address as often as a path, with fds for `FDSTORE=1`): see
//! `supervisor::service`.

use std::ffi::OsStr;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::error::{Error, Result};
use crate::fds::Tracked;

/// The longest datagram read; sd_notify messages are a few short lines.
const MAX_DATAGRAM: usize = 4096;
/// Datagrams handled per wakeup, so a flood cannot hold the supervisor.
const PER_WAKE: usize = 64;

/// One message: who sent it and its `KEY=VALUE` lines.
pub(crate) struct Message {
    pub(crate) pid: u32,
    pub(crate) fields: Vec<(String, String)>,
}

impl Message {
    /// Whether it says `READY=1`.
    pub(crate) fn ready(&self) -> bool {
        self.fields.iter().any(|(k, v)| k == "READY" && v == "1")
    }

    /// Whether it says `STOPPING=1`.
    pub(crate) fn stopping(&self) -> bool {
        self.fields.iter().any(|(k, v)| k == "STOPPING" && v == "1")
    }

    /// Its `STATUS=` text, if any.
    pub(crate) fn status(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == "STATUS")
            .map(|(_, v)| v.as_str())
    }
}

/// The bound notify socket; its file is removed on drop (by the process that bound it).
pub(crate) struct NotifySocket {
    socket: Tracked<mio::net::UnixDatagram>,
    /// What workers find in `NOTIFY_SOCKET`.
    pub(crate) path: PathBuf,
    owner: u32,
}

impl NotifySocket {
    /// Binds a fresh socket for a server on `addr` and registers it under `token`.
    /// `dir` must exist and be this user's alone (the control directory: see `control::ensure_dir`).
    pub(crate) fn bind(
        dir: &Path,
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
    ) -> Result<NotifySocket> {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        // Short: a unix socket path has at most 107 bytes, and test directories are long already.
        let path = dir.join(format!("{}.{}.{n}.notify", addr.port(), std::process::id()));
        let ctx = |e| Error::io(format!("notify socket {}", path.display()), e);
        let _ = std::fs::remove_file(&path); // a stale file of an earlier process that had our pid
        let mut socket = Tracked::new(mio::net::UnixDatagram::bind(&path).map_err(ctx)?);
        socket::setsockopt(&*socket, socket::sockopt::PassCred, &true)
            .map_err(|e| ctx(e.into()))?;
        registry
            .register(&mut *socket, token, Interest::READABLE)
            .map_err(|e| Error::io("register notify socket", e))?;
        Ok(NotifySocket {
            socket,
            path,
            owner: std::process::id(),
        })
    }

    /// The messages waiting now (at most [`PER_WAKE`]); ones without credentials are dropped.
    pub(crate) fn receive(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for _ in 0..PER_WAKE {
            let mut cmsg = nix::cmsg_space!(libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match socket::recvmsg::<UnixAddr>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: nothing more; anything else: try at the next wakeup
            };
            let bytes = msg.bytes;
            let mut pid = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmCredentials(cred) = c {
                        pid = Some(cred.pid() as u32);
                    }
                }
            }
            let Some(pid) = pid else { continue };
            let text = String::from_utf8_lossy(&buf[..bytes]);
            let fields = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(Message { pid, fields });
        }
        out
    }
}

/// Sends `message` (`KEY=VALUE` lines, e.g. `READY=1`) to the notify socket at `path`, as `sd_notify(3)`
/// does. Waits at most a second when the socket's queue is full (the supervisor reads it continuously),
/// so a worker whose supervisor hangs is not held forever.
pub(crate) fn notify(path: &Path, message: &str) -> std::io::Result<()> {
    send(path.as_os_str(), message, &[])
}

/// Sends `message` to the notify socket `addr` as it appears in `NOTIFY_SOCKET` — a path, or `@name` for
/// an abstract socket (what systemd passes) — with `fds` attached (`SCM_RIGHTS`, for `FDSTORE=1`). Waits
/// at most a second for room in the socket's queue.
pub(crate) fn send(addr: &OsStr, message: &str, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = addr.as_bytes();
    let to = match bytes.split_first() {
        Some((b'@', name)) => UnixAddr::new_abstract(name),
        Some((b'/', _)) => UnixAddr::new(bytes),
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)",
            ))
        }
    }
    .map_err(std::io::Error::from)?;
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    let iov = [IoSlice::new(message.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match socket::sendmsg(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(&to),
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStringExt;

    /// A datagram socket as a service manager binds it: an abstract name, or a path.
    fn manager(name: &[u8]) -> (UnixDatagram, OsString) {
        let socket = UnixDatagram::unbound().unwrap();
        let addr = UnixAddr::new_abstract(name).unwrap();
        socket::bind(socket.as_raw_fd(), &addr).unwrap();
        let mut shown = b"@".to_vec();
        shown.extend_from_slice(name);
        (socket, OsString::from_vec(shown))
    }

    #[test]
    fn sends_to_an_abstract_socket_with_fds() {
        let name = format!("port-sharding-notify-test-{}", std::process::id());
        let (rx, addr) = manager(name.as_bytes());
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        send(&addr, "FDSTORE=1\nFDNAME=x", &[file.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 256];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<UnixAddr>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let fds: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds,
                _ => Vec::new(),
            })
            .collect();
        let n = msg.bytes;
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=x");
        assert_eq!(fds.len(), 1);
        // SAFETY: the kernel just installed it in this process.
        let got = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(ino(got.as_fd()), ino(file.as_fd()), "the same file, passed");
    }

    #[test]
    fn sends_to_a_path_and_refuses_anything_else() {
        let dir = std::env::temp_dir().join(format!("ps-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify(&path, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let e = send(OsStr::new("relative/path"), "READY=1", &[]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        std::fs::remove_dir_all(&dir).ok();
    }
}
