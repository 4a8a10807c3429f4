//! Rolling upgrades by socket hand-over: the new server's side (`take_over`) and the old server's side
//! (`offer`, then waiting for `ready`).
//!
//! The new server receives the listening sockets themselves (`SCM_RIGHTS`): same sockets, same accept
//! queues, so nothing queued is reset. The old server stops accepting only once the new one says `ready`,
//! and keeps serving if the new one goes away before that.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::Instant;

use mio::Interest;

use super::{StopReason, Supervisor, READY_TIMEOUT, SUCCESSOR};
use crate::control::{self, Client, Offer, Request, ServerStatus};
use crate::error::{Error, Result};
use crate::log::log;

/// The old server during a takeover: we hold its sockets and owe it a `ready`.
pub(super) struct Predecessor {
    pub(super) client: Client,
    pub(super) pid: u32,
    pub(super) runtime: String,
}

pub(super) fn take_over(
    wanted: SocketAddr,
) -> Result<Option<(Predecessor, Vec<std::net::TcpListener>)>> {
    // Take over from the newest server that is still serving: one that is draining is on its way out.
    let serving = control::find(Some(wanted), wanted.port())
        .into_iter()
        .rev()
        .find(|f| {
            let state = Client::connect(&f.path).and_then(|mut c| {
                c.send(&Request::Status)?;
                c.answer::<ServerStatus>()
            });
            state.is_ok_and(|s| s.state == "serving")
        });
    let Some(found) = serving else {
        if let Some(other) = control::find(None, wanted.port()).first() {
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
    };
    let mut client = Client::connect(&found.path)?;
    client.send(&Request::Takeover { addr: wanted })?;
    let (offer, fds) = client.offer().map_err(|e| match e {
        Error::Control(msg) => Error::Takeover(format!("pid {} refused: {msg}", found.pid)),
        other => other,
    })?;
    if fds.len() != offer.sockets || fds.is_empty() {
        return Err(Error::Takeover(format!(
            "expected {} sockets from pid {}, got {}",
            offer.sockets,
            found.pid,
            fds.len()
        )));
    }
    let mut listeners = Vec::new();
    for fd in fds {
        let l = std::net::TcpListener::from(fd);
        let local = l
            .local_addr()
            .map_err(|e| Error::io("getsockname of a received socket", e))?;
        if local != offer.addr {
            return Err(Error::Takeover(format!(
                "received a socket bound to {local}, expected {}",
                offer.addr
            )));
        }
        l.set_nonblocking(true)
            .map_err(|e| Error::io("set received socket nonblocking", e))?;
        listeners.push(l);
    }
    log!(
        "takeover: received {} listening socket(s) for {} from {} server pid {}",
        listeners.len(),
        offer.addr,
        offer.runtime,
        offer.pid
    );
    Ok(Some((
        Predecessor {
            client,
            pid: offer.pid,
            runtime: offer.runtime,
        },
        listeners,
    )))
}

impl Supervisor {
    pub(super) fn offer(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        wanted: SocketAddr,
    ) -> io::Result<()> {
        let mine = self.server.addr;
        let refuse = |why: String| {
            log!("takeover refused: {why}");
            control::reply_error(&stream, &why)
        };
        if self.draining.is_some() {
            return refuse("this server is draining".to_string());
        }
        if self.successor.is_some() {
            return refuse("another takeover is in progress".to_string());
        }
        if wanted.ip() != mine.ip() || wanted.port() != mine.port() {
            return refuse(format!(
                "bind options differ: this server is bound to {mine}, the new one asked for {wanted}"
            ));
        }
        let fds: Vec<RawFd> = self
            .server
            .listeners
            .iter()
            .map(|l| l.as_raw_fd())
            .collect();
        let offer = Offer {
            pid: std::process::id(),
            runtime: self.server.config.runtime.clone(),
            addr: mine,
            sockets: fds.len(),
        };
        control::send_offer(&stream, &offer, &fds)?;
        stream.set_nonblocking(true)?;
        // SAFETY: we own this connected socket; ownership moves to mio.
        let mut s = unsafe { mio::net::UnixStream::from_raw_fd(stream.into_raw_fd()) };
        self.server
            .poll
            .registry()
            .register(&mut s, SUCCESSOR, Interest::READABLE)?;
        self.successor = Some((s, Instant::now()));
        log!(
            "takeover: handed {} listening socket(s) to a new server; waiting for it to be ready",
            fds.len()
        );
        Ok(())
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
                            String::from_utf8_lossy(&buf[..n])
                        ))
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e.to_string()),
            }
        };
        let (mut s, _) = self.successor.take().expect("checked above");
        let _ = self.server.poll.registry().deregister(&mut s);
        match outcome {
            Ok(()) => {
                // SAFETY: borrowing the fd for one write; `s` stays alive across it.
                let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(s.as_raw_fd()) };
                let _ = control::reply(&std, &serde_json::json!({ "ok": true }));
                let _ = std.into_raw_fd();
                log!("takeover: the new server is ready");
                self.begin_drain(StopReason::TakenOver);
            }
            Err(why) => {
                log!("takeover aborted before the new server was ready ({why}); still serving")
            }
        }
    }
}
