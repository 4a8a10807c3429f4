//! Rolling upgrades by socket hand-over, both sides: the new server's (`take_over`) and the old server's
//! (`offer`, then waiting for `ready`).
//!
//! The new server receives the listening sockets themselves (`SCM_RIGHTS`): same sockets, same accept
//! queues, so nothing queued is reset. The old server offers them only while it is serving (ready, not
//! draining, no other successor pending), and stops accepting only once the new one says `ready`; it
//! keeps serving if the new one goes away before that. The new server trusts nothing it receives: each
//! fd must be a listening TCP socket of this user, with `SO_REUSEPORT`, bound to exactly the address
//! asked for — otherwise it refuses before anything changes.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mio::Interest;

use super::{group, StopReason, Supervisor, READY_TIMEOUT, SUCCESSOR};
use crate::control::{self, Client, ConnId, Offer, Request};
use crate::error::{Error, Result};
use crate::log::log;

/// The old server during a takeover: we hold its sockets and owe it a `ready`.
pub(super) struct Predecessor {
    pub(super) client: Client,
    pub(super) pid: u32,
    pub(super) runtime: String,
    /// The group index of each adopted socket, as the old server knew it.
    pub(super) order: Option<Vec<u32>>,
    /// The sockets are the service manager's (socket activation): see `activation`.
    pub(super) managed: bool,
    /// UDP with eBPF: its flow-sticky program and maps, with the slots of the sockets.
    pub(super) flows: Option<group::Inherited>,
}

fn as_takeover(e: Error) -> Error {
    match e {
        Error::Control(msg) => Error::Takeover(msg),
        other => other,
    }
}

/// Adopts the listening sockets of the newest server on `wanted` that offers them; `None` when no server
/// (or only draining ones) runs there.
pub(super) fn take_over(wanted: SocketAddr, command: bool, udp: bool) -> Result<Option<Adopted>> {
    let found = control::find(Some(wanted), wanted.port()).map_err(as_takeover)?;
    if found.is_empty() {
        if let Some(other) = control::find(None, wanted.port())
            .map_err(as_takeover)?
            .first()
        {
            return Err(Error::Takeover(format!(
                "the server on port {} (pid {}) is bound to {}, not {wanted}: bind options must match to share \
                 its sockets (use --host {})",
                wanted.port(),
                other.pid,
                other.addr,
                other.addr.ip()
            )));
        }
        log!("takeover: no server is serving {wanted}; starting normally");
        return Ok(None);
    }
    // Newest first: an older one is usually draining, or handing over to a newer one.
    let mut refusals = Vec::new();
    for f in found.iter().rev() {
        match ask(f, wanted, command, udp)? {
            Ok(got) => return Ok(Some(got)),
            Err(msg) if msg == control::DRAINING || msg == control::OTHER_PROTOCOL => continue,
            Err(msg) => refusals.push(format!("pid {} refused: {msg}", f.pid)),
        }
    }
    if refusals.is_empty() {
        log!("takeover: every server on {wanted} is draining; starting normally");
        return Ok(None);
    }
    Err(Error::Takeover(refusals.join("; ")))
}

/// Adopted sockets, and the server they came from.
type Adopted = (Predecessor, Vec<socket2::Socket>);

/// Asks the server `f` for its sockets: what it handed over, or why it refused (`Err` inside).
fn ask(
    f: &control::Found,
    wanted: SocketAddr,
    command: bool,
    udp: bool,
) -> Result<std::result::Result<Adopted, String>> {
    let mut client = Client::connect(&f.path).map_err(as_takeover)?;
    client.send(&Request::Takeover {
        addr: wanted,
        command,
        udp,
    })?;
    let (offer, fds) = match client.offer() {
        Ok(got) => got,
        Err(Error::Control(msg)) => return Ok(Err(msg)),
        Err(e) => return Err(as_takeover(e)),
    };
    let (listeners, flows) = adopt(&offer, fds, wanted, f.pid, udp)?;
    log!(
        "takeover: received {} listening socket(s) for {} from {} server pid {}",
        listeners.len(),
        offer.addr,
        offer.runtime,
        offer.pid
    );
    let p = Predecessor {
        client,
        pid: offer.pid,
        runtime: offer.runtime,
        order: offer.order,
        managed: offer.managed,
        flows,
    };
    Ok(Ok((p, listeners)))
}

/// An upgrade's successor: adopts the sockets of the supervisor `pid` on `addr` (its parent), which
/// started it for this; anything else is an error (it must not start a server of its own beside it).
pub(super) fn take_over_from(
    pid: u32,
    addr: SocketAddr,
    command: bool,
    udp: bool,
) -> Result<Adopted> {
    let found = control::find(Some(addr), addr.port()).map_err(as_takeover)?;
    let Some(f) = found.iter().find(|f| f.pid == pid) else {
        return Err(Error::Takeover(format!(
            "upgrade: the server pid {pid} on {addr} that started this one is not running"
        )));
    };
    ask(f, addr, command, udp)?
        .map_err(|msg| Error::Takeover(format!("upgrade: pid {pid} refused: {msg}")))
}

/// Checks every received fd and only then turns them into listeners; any doubt refuses them all.
fn adopt(
    offer: &Offer,
    fds: Vec<OwnedFd>,
    wanted: SocketAddr,
    pid: u32,
    udp: bool,
) -> Result<(Vec<socket2::Socket>, Option<group::Inherited>)> {
    let bad = |why: String| {
        Err(Error::Takeover(format!(
            "pid {pid} sent {why}; nothing adopted"
        )))
    };
    let mut fds = fds;
    // UDP with eBPF: the program and its maps follow the sockets.
    let extra = if offer.flow_slots.is_some() { 4 } else { 0 };
    let maps = if extra > 0 && fds.len() == offer.sockets + extra {
        fds.split_off(offer.sockets)
    } else {
        Vec::new()
    };
    if fds.is_empty() || fds.len() != offer.sockets || fds.len() > crate::config::MAX_WORKERS {
        return bad(format!(
            "{} socket(s) but announced {}",
            fds.len(),
            offer.sockets
        ));
    }
    if offer.addr != wanted {
        return bad(format!("an offer for {}, not {wanted}", offer.addr));
    }
    for (i, fd) in fds.iter().enumerate() {
        if let Err(why) = check_listener(fd, wanted, !offer.managed, udp) {
            return bad(format!("socket {} of {}, which {why}", i + 1, fds.len()));
        }
    }
    let flows = match (<[OwnedFd; 4]>::try_from(maps), &offer.flow_slots) {
        (Ok(maps), Some(slots)) if udp && slots.len() == offer.sockets => {
            match crate::sticky::Sticky::adopt(maps) {
                Ok(sticky) => Some(group::Inherited {
                    sticky,
                    slots: slots.clone(),
                }),
                Err(e) => {
                    log!("takeover: pid {pid}'s flow-sticky program cannot be used ({e}); loading a new one");
                    None
                }
            }
        }
        _ => None,
    };
    let sockets = fds
        .into_iter()
        .map(|fd| {
            let l = socket2::Socket::from(fd);
            l.set_nonblocking(true)
                .map_err(|e| Error::io("set received socket nonblocking", e))?;
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((sockets, flows))
}

fn int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> std::result::Result<i32, String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("is not a socket ({})", io::Error::last_os_error()));
    }
    Ok(v)
}

/// Why `fd` cannot join `wanted`'s reuseport group as one of our listeners, if it cannot.
/// `reuseport`: it must have `SO_REUSEPORT` (all but a service manager's socket, which may be alone on its
/// port).
fn check_listener(
    fd: &OwnedFd,
    wanted: SocketAddr,
    reuseport: bool,
    udp: bool,
) -> std::result::Result<(), String> {
    let raw = fd.as_raw_fd();
    let ty = int_opt(raw, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let (want_ty, want_proto) = if udp {
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
    } else {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP)
    };
    if ty != want_ty {
        let what = if udp { "datagram" } else { "stream" };
        return Err(format!("is not a {what} socket (SO_TYPE {ty})"));
    }
    let domain = int_opt(raw, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let want = if wanted.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    if domain != want {
        return Err(format!(
            "is of address family {domain}, not {want} like {wanted}"
        ));
    }
    let proto = int_opt(raw, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    if proto != want_proto {
        return Err(format!(
            "is not of the protocol asked for (protocol {proto})"
        ));
    }
    if !udp && int_opt(raw, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1 {
        return Err("is not listening".to_string());
    }
    if reuseport && int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 1 {
        return Err("does not have SO_REUSEPORT set".to_string());
    }
    if wanted.is_ipv6() && int_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 1 {
        return Err("is a dual-stack socket (IPV6_V6ONLY is 0)".to_string());
    }
    let local = socket2::SockRef::from(&fd.as_fd())
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket());
    if local != Some(wanted) {
        return Err(format!("is bound to {local:?}, not {wanted}"));
    }
    let owner = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("cannot be inspected ({e})"))?
        .st_uid;
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        return Err(format!(
            "belongs to uid {owner}, not to this user (uid {me}): our own sockets could not join its group"
        ));
    }
    Ok(())
}

impl Supervisor {
    fn refuse_takeover(&mut self, id: ConnId, why: &str) {
        log!("takeover refused: {why}");
        self.respond(id, control::error_line(why));
    }

    /// The old server's side: hands the listening sockets to a new server, if this one is serving.
    pub(super) fn offer(&mut self, id: ConnId, wanted: SocketAddr, command: bool, udp: bool) {
        let mine = self.server.addr;
        if udp != (self.server.config.protocol == crate::config::Protocol::Udp) {
            // Not ours to refuse: the new server looks for a server of its own protocol on the port.
            return self.respond(id, control::error_line(control::OTHER_PROTOCOL));
        }
        if self.stopping() {
            return self.refuse_takeover(id, control::DRAINING);
        }
        if self.successor.is_some() {
            return self.refuse_takeover(
                id,
                "this server is handing over to another new server already",
            );
        }
        if !self.ready {
            return self.refuse_takeover(
                id,
                "this server is still starting (not every worker is serving yet); take over once it is serving",
            );
        }
        if self.seats.iter().any(|s| s.has_retiring_socket()) {
            // The new server must adopt a group that holds only the sockets it is given: one of these
            // closing later would move its members about under its program.
            return self.refuse_takeover(
                id,
                "workers the last reload replaced still hold sockets of their own; take over once they have exited",
            );
        }
        let mine_command = self.server.kind.blocking();
        if command != mine_command {
            let (this, new) = if mine_command {
                ("command workers", "built-in workers")
            } else {
                ("built-in workers", "command workers")
            };
            return self.refuse_takeover(
                id,
                &format!(
                    "this server runs {this} and the new one {new}: command workers use the listening sockets \
                     in blocking mode, built-in workers nonblocking, and the mode belongs to the socket, so they \
                     cannot share them; start the new server beside this one on the port, then stop this one"
                ),
            );
        }
        if wanted != mine {
            return self.refuse_takeover(
                id,
                &format!(
                    "bind options differ: this server is bound to {mine}, the new one asked for {wanted}"
                ),
            );
        }
        let Some(control) = self.server.control.as_mut() else {
            return;
        };
        let Some(mut stream) = control.take(self.server.poll.registry(), id) else {
            return;
        };
        let listeners: Vec<&group::Listener> =
            self.seats.iter().filter_map(|s| s.listener()).collect();
        let mut fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        // The flow-sticky program and maps go along (one SCM_RIGHTS message holds MAX_WORKERS fds).
        let sockets = fds.len();
        let flow_slots = self
            .server
            .group
            .flow_handover(&listeners)
            .filter(|_| sockets + 4 <= crate::config::MAX_WORKERS)
            .map(|(maps, slots)| {
                fds.extend(maps);
                slots
            });
        let offer = Offer {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            addr: mine,
            sockets,
            order: self.server.group.numbers(&listeners),
            managed: self.server.managed,
            flow_slots,
        };
        if let Err(e) = control::send_offer(&stream, &offer, &fds) {
            log!("takeover aborted: could not send the listening sockets ({e}); still serving");
            return;
        }
        if let Err(e) =
            self.server
                .poll
                .registry()
                .register(&mut stream, SUCCESSOR, Interest::READABLE)
        {
            log!("takeover aborted: cannot watch the new server's connection ({e}); still serving");
            return;
        }
        self.successor = Some((stream, Instant::now()));
        let with = if offer.flow_slots.is_some() {
            " and the flow-sticky eBPF program with its maps"
        } else {
            ""
        };
        log!(
            "takeover: handed {sockets} listening socket(s){with} to a new server; waiting for it to be ready"
        );
    }

    /// A successor that never reports ready must not leave us in `handing over` forever.
    pub(super) fn expire_successor(&mut self) {
        if self
            .successor
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > READY_TIMEOUT)
        {
            if let Some((mut s, _)) = self.successor.take() {
                let _ = self.server.poll.registry().deregister(&mut s);
            }
            log!("takeover aborted: the new server did not report ready within {READY_TIMEOUT:?}; still serving");
        }
    }

    pub(super) fn on_successor(&mut self) {
        let Some((s, _)) = self.successor.as_mut() else {
            return;
        };
        let mut buf = [0u8; 512];
        let outcome = loop {
            match s.read(&mut buf) {
                Ok(0) => break Err("it closed the connection".to_string()),
                Ok(n) => match serde_json::from_slice::<Request>(buf[..n].trim_ascii()) {
                    Ok(Request::Ready) => break Ok(()),
                    _ => {
                        break Err(format!(
                            "unexpected message {:?}",
                            String::from_utf8_lossy(&buf[..n.min(64)])
                        ))
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e.to_string()),
            }
        };
        let Some((mut s, _)) = self.successor.take() else {
            return;
        };
        let _ = self.server.poll.registry().deregister(&mut s);
        match outcome {
            Ok(()) => {
                // Our upgrade's successor becomes the main process before it hears the ack.
                let peer =
                    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
                        .ok()
                        .map(|c| c.pid() as u32);
                self.upgrade_ready(peer);
                let _ =
                    control::send_line(&s, &control::encode(&serde_json::json!({ "ok": true })));
                log!("takeover: the new server is ready");
                self.begin_drain(StopReason::TakenOver);
            }
            Err(why) => {
                log!("takeover aborted before the new server was ready ({why}); still serving")
            }
        }
    }
}
