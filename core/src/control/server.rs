//! The server's side of the control socket, driven by the supervisor's event loop: it never blocks on a
//! client.
//!
//! Every connection is non-blocking and has one deadline for its whole request ([`DEADLINE`] from accept)
//! and one for its reply; a request line may be at most [`MAX_REQUEST`] bytes; at most [`MAX_CONNS`]
//! connections are open at once (the newest beyond that gets a short error and is closed). Accept errors
//! such as `EMFILE` pause accepting for [`ACCEPT_BACKOFF`] instead of spinning. Each kind of trouble is
//! logged at most once a second, with a count.

use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

use super::protocol::{encode, error_line, parse_request, Offer, Request, MAX_REQUEST};
use super::registry::{control_dir, ensure_dir, socket_name};
use crate::error::{Error, Result};
use crate::fds::Tracked;
use crate::log::log;

/// Tokens from here on name control connections (slot `i` is `FIRST_CONN + i`).
pub(crate) const FIRST_CONN: usize = 1 << 20;
/// Open control connections at most; `status` needs one, so a handful of tools and scripts fit easily.
const MAX_CONNS: usize = 64;
/// From accept to a complete request line; and again from request to a reply written in full.
const DEADLINE: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not the client's (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accepts per wakeup; the rest wait for the next tick, so signals and reaping keep their turn.
const ACCEPTS_PER_WAKE: usize = 256;

/// A connection the supervisor must answer (see [`ControlSocket::respond`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnId(usize);

struct Conn {
    stream: Tracked<mio::net::UnixStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    deadline: Instant,
    /// `(uid, pid)` of a client that is not this server's user: its request is answered with a refusal.
    foreign: Option<(u32, i32)>,
    replying: bool,
}

/// Counts an event and says when it may be logged again (at most once a second).
#[derive(Default)]
struct Throttle {
    count: u64,
    last: Option<Instant>,
}

impl Throttle {
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// The listening unix socket and its open connections; the socket file is removed on drop.
pub(crate) struct ControlSocket {
    listener: Tracked<mio::net::UnixListener>,
    token: Token,
    /// Path of the socket file.
    pub path: PathBuf,
    /// The process that bound it: a forked child dropping its copy must not remove the file.
    owner: u32,
    conns: Vec<Option<Conn>>,
    open: usize,
    paused_until: Option<Instant>,
    /// The last accept pass stopped at `ACCEPTS_PER_WAKE` with clients possibly left queued.
    more: bool,
    accept_failed: Throttle,
    busy: Throttle,
    refused: Throttle,
    expired: Throttle,
}

enum Input {
    Pending,
    Closed,
    Line(Vec<u8>),
    TooLong,
}

enum Flush {
    Done,
    Pending,
    Failed,
}

/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)`: never blocks, and a client that hung up must not kill a host
/// whose SIGPIPE is not ignored.
fn send_nowait(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match socket::send(fd, bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Writes one short line without blocking (best effort: a full socket drops it).
pub(crate) fn send_line(stream: &impl AsRawFd, line: &[u8]) -> io::Result<()> {
    let n = send_nowait(stream.as_raw_fd(), line)?;
    if n < line.len() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(())
}

/// Sends the takeover offer with the listening sockets attached, without blocking.
pub(crate) fn send_offer(stream: &impl AsRawFd, offer: &Offer, fds: &[RawFd]) -> io::Result<()> {
    let line = encode(offer);
    let iov = [IoSlice::new(&line)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = socket::sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    send_line(stream, &line[n..])
}

impl ControlSocket {
    /// Binds a fresh socket for a server on `addr` and registers it under `token`.
    pub(crate) fn bind(
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
    ) -> Result<ControlSocket> {
        let dir = control_dir();
        ensure_dir(&dir)?;
        let path = dir.join(socket_name(addr));
        let ctx = |e| Error::io(format!("control socket {}", path.display()), e);
        let _ = std::fs::remove_file(&path); // a stale file of an earlier process that had our pid
        let mut listener = Tracked::new(mio::net::UnixListener::bind(&path).map_err(ctx)?);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(ctx)?;
        registry
            .register(&mut *listener, token, Interest::READABLE)
            .map_err(|e| Error::io("register control socket", e))?;
        Ok(ControlSocket {
            listener,
            token,
            path,
            owner: std::process::id(),
            conns: Vec::new(),
            open: 0,
            paused_until: None,
            more: false,
            accept_failed: Throttle::default(),
            busy: Throttle::default(),
            refused: Throttle::default(),
            expired: Throttle::default(),
        })
    }

    /// Whether `token` is this socket's or one of its connections'.
    pub(crate) fn owns(&self, token: Token) -> bool {
        token == self.token || token.0 >= FIRST_CONN
    }

    /// Nothing is due by the clock: no connection open (deadlines), no accept pause, and the last accept
    /// pass emptied the queue (an edge-triggered wake-up will come for the next client).
    pub(crate) fn at_rest(&self) -> bool {
        self.open == 0 && self.paused_until.is_none() && !self.more
    }

    /// Handles readiness on `token`; returns the requests that became complete.
    pub(crate) fn on_event(&mut self, registry: &Registry, token: Token) -> Vec<(ConnId, Request)> {
        let mut out = Vec::new();
        let now = Instant::now();
        if token == self.token {
            self.accept_some(registry, now, &mut out);
        } else if let Some(slot) = token.0.checked_sub(FIRST_CONN) {
            self.drive(registry, slot, now, &mut out);
        }
        out
    }

    /// Called every supervisor tick: closes connections past their deadline, resumes accepting after a
    /// pause, and accepts what an edge-triggered wakeup may have left queued (only then: the listener's
    /// event says when a client is there, so a tick that follows a drained queue makes no `accept`).
    pub(crate) fn tick(&mut self, registry: &Registry) -> Vec<(ConnId, Request)> {
        let now = Instant::now();
        let mut expired = 0;
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| now >= c.deadline) {
                self.close(registry, slot);
                expired += 1;
            }
        }
        for _ in 0..expired {
            if let Some(n) = self.expired.hit(now) {
                log!("control: closed {n} connection(s) that did not complete a request or read its reply within {DEADLINE:?}");
            }
        }
        let mut resumed = false;
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            if let Err(e) = registry.register(&mut *self.listener, self.token, Interest::READABLE) {
                log!("control: cannot watch the control socket again ({e}); retrying");
                self.paused_until = now.checked_add(ACCEPT_BACKOFF);
                return Vec::new();
            }
            resumed = true;
        }
        let mut out = Vec::new();
        if resumed || self.more {
            self.accept_some(registry, now, &mut out);
        }
        out
    }

    /// Queues `line` as the answer on `id` and sends what the socket takes now; the connection closes once
    /// it is sent, or at its deadline.
    pub(crate) fn respond(&mut self, registry: &Registry, id: ConnId, line: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id.0).and_then(Option::as_mut) else {
            return;
        };
        conn.output = line;
        conn.sent = 0;
        conn.replying = true;
        conn.deadline = Instant::now() + DEADLINE;
        if !matches!(flush(conn), Flush::Pending) {
            self.close(registry, id.0);
        }
    }

    /// Hands the connection over to the caller (a takeover keeps it open until the successor is ready).
    pub(crate) fn take(&mut self, registry: &Registry, id: ConnId) -> Option<mio::net::UnixStream> {
        let mut conn = self.conns.get_mut(id.0)?.take()?;
        self.open -= 1;
        let _ = registry.deregister(&mut *conn.stream);
        Some(conn.stream.into_inner())
    }

    fn accept_some(&mut self, registry: &Registry, now: Instant, out: &mut Vec<(ConnId, Request)>) {
        if self.paused_until.is_some() {
            return;
        }
        self.more = false;
        for _ in 0..ACCEPTS_PER_WAKE {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(registry, stream, now, out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the client waits in the queue; retrying now would spin.
                    let _ = registry.deregister(&mut *self.listener);
                    self.paused_until = now.checked_add(ACCEPT_BACKOFF);
                    if let Some(n) = self.accept_failed.hit(now) {
                        log!("control: accept failed ({e}); pausing accepts for {ACCEPT_BACKOFF:?} ({n} failure(s) since the last report)");
                    }
                    return;
                }
            }
        }
        self.more = true;
    }

    fn admit(
        &mut self,
        registry: &Registry,
        stream: mio::net::UnixStream,
        now: Instant,
        out: &mut Vec<(ConnId, Request)>,
    ) {
        if self.open >= MAX_CONNS {
            let _ = send_line(
                &stream,
                &error_line("busy: too many control connections; try again"),
            );
            if let Some(n) = self.busy.hit(now) {
                log!("control: {MAX_CONNS} connections are open; turned away {n} more");
            }
            return;
        }
        let me = nix::unistd::geteuid().as_raw();
        let foreign = match socket::getsockopt(&stream, socket::sockopt::PeerCredentials) {
            Ok(c) if c.uid() == me => None,
            Ok(c) => Some((c.uid(), c.pid())),
            Err(_) => return,
        };
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let mut stream = Tracked::new(stream);
        if registry
            .register(
                &mut *stream,
                Token(FIRST_CONN + slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        self.conns[slot] = Some(Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            deadline: now + DEADLINE,
            foreign,
            replying: false,
        });
        self.open += 1;
        self.drive(registry, slot, now, out);
    }

    fn drive(
        &mut self,
        registry: &Registry,
        slot: usize,
        now: Instant,
        out: &mut Vec<(ConnId, Request)>,
    ) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.replying {
            if !matches!(flush(conn), Flush::Pending) {
                self.close(registry, slot);
            }
            return;
        }
        let line = match read_request(conn) {
            Input::Pending => return,
            Input::Closed => return self.close(registry, slot),
            Input::TooLong => {
                let msg = format!("request longer than {MAX_REQUEST} bytes");
                return self.respond(registry, ConnId(slot), error_line(&msg));
            }
            Input::Line(line) => line,
        };
        if let Some((uid, pid)) = conn.foreign {
            let me = nix::unistd::geteuid().as_raw();
            if let Some(n) = self.refused.hit(now) {
                log!("control: refused a request from uid {uid} pid {pid} (this server runs as uid {me}; {n} refusal(s) since the last report)");
            }
            let msg = format!("refused: uid {uid} is not the server's uid {me}");
            return self.respond(registry, ConnId(slot), error_line(&msg));
        }
        match parse_request(&line) {
            Ok(request) => out.push((ConnId(slot), request)),
            Err(msg) => self.respond(registry, ConnId(slot), error_line(&msg)),
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut *conn.stream);
            self.open -= 1;
        }
    }
}

/// Reads what is there; a line is complete at `\n` (or at EOF after some bytes).
fn read_request(conn: &mut Conn) -> Input {
    let mut chunk = [0u8; 4096];
    loop {
        if conn.input.len() > MAX_REQUEST {
            return Input::TooLong;
        }
        match conn.stream.read(&mut chunk) {
            Ok(0) if conn.input.is_empty() => return Input::Closed,
            Ok(0) => return Input::Line(std::mem::take(&mut conn.input)),
            Ok(n) => {
                if let Some(end) = chunk[..n].iter().position(|&b| b == b'\n') {
                    conn.input.extend_from_slice(&chunk[..end]);
                    if conn.input.len() > MAX_REQUEST {
                        return Input::TooLong;
                    }
                    return Input::Line(std::mem::take(&mut conn.input));
                }
                conn.input.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Input::Closed,
        }
    }
}

fn flush(conn: &mut Conn) -> Flush {
    while conn.sent < conn.output.len() {
        match send_nowait(conn.stream.as_raw_fd(), &conn.output[conn.sent..]) {
            Ok(n) => conn.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Pending,
            Err(_) => return Flush::Failed,
        }
    }
    Flush::Done
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
