//! The drain pipe: how the supervisor asks a worker it forked (built-in or function) to stop, and how that
//! worker hears it. One sender (the supervisor's [`Sender`]), one receiver (the worker's [`Receiver`]).
//!
//! The supervisor writes one byte and closes its end:
//! - [`Ask::Drain`]: stop accepting new connections, but first accept what is queued on the listener —
//!   until its queue has stayed empty for [`DRAIN_GRACE`] — then close it and finish open connections.
//! - [`Ask::Handover`]: a successor serves this very listener (a reload, a takeover) and takes its queue
//!   with it: close the listener at once, then finish open connections.
//!
//! End of file without a byte means drain too: the supervisor died, and a worker never outlives it. A
//! byte rather than EOF alone, because a child the host forked may still hold a copy of the write end
//! (see [`crate::close_in_forked_child`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fds::Tracked;

/// How long a draining worker keeps its listener after the queue was last found empty, so connections
/// still in their handshake when the drain began are accepted too.
pub const DRAIN_GRACE: Duration = Duration::from_millis(100);

const DRAIN: u8 = b'd';
const HANDOVER: u8 = b'h';

/// What the supervisor asks of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Serve what is queued, then close the listener and finish.
    Drain,
    /// A successor serves this listener's queue: close it at once, then finish.
    Handover,
}

/// A new drain pipe: the supervisor's end and the one the worker inherits (both close-on-exec; the
/// worker's is nonblocking, for its event loop). A unix socket pair rather than a pipe, so that asking a
/// worker that has just exited is an error (`MSG_NOSIGNAL`), never a SIGPIPE in the supervisor's host.
pub(crate) fn pipe() -> Result<(Sender, Receiver)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let (tx, rx) = socketpair(AddressFamily::Unix, SockType::Stream, None, flags)
        .map_err(|e| Error::io("drain pipe (socketpair)", e.into()))?;
    Ok((Sender(Tracked::new(tx)), Receiver::new(rx)))
}

/// The supervisor's end of one worker's drain pipe.
pub(crate) struct Sender(Tracked<OwnedFd>);

impl Sender {
    /// Asks once: sends the byte, then closes the pipe (dropping `self`). A worker that already exited
    /// cannot hear it, and needs not: the error is ignored.
    pub(crate) fn ask(self, ask: Ask) {
        let byte = match ask {
            Ask::Drain => DRAIN,
            Ask::Handover => HANDOVER,
        };
        let flags =
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        nix::sys::socket::send(self.0.as_raw_fd(), &[byte], flags).ok();
    }
}

impl AsRawFd for Sender {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The worker's end: what the supervisor asked so far, heard without blocking.
pub(crate) struct Receiver {
    fd: OwnedFd,
    /// What was heard (0: nothing yet), sticky: the byte is read once.
    heard: AtomicU8,
}

impl Receiver {
    pub(crate) fn new(fd: OwnedFd) -> Receiver {
        Receiver {
            fd,
            heard: AtomicU8::new(0),
        }
    }

    /// What the supervisor has asked, if anything yet. Reads what the pipe holds; any byte or end of
    /// file is a drain, the handover byte a handover. Safe to call from several threads.
    pub(crate) fn hear(&self) -> Option<Ask> {
        if let Some(ask) = decode(self.heard.load(Ordering::Acquire)) {
            return Some(ask);
        }
        let mut buf = [0u8; 16];
        let mut heard = None;
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    heard = heard.or(Some(Ask::Drain));
                    break;
                }
                Ok(n) if buf[..n].contains(&HANDOVER) => heard = Some(Ask::Handover),
                Ok(_) => heard = heard.or(Some(Ask::Drain)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: nothing (more) yet
            }
        }
        let ask = heard?;
        let code = match ask {
            Ask::Drain => DRAIN,
            Ask::Handover => HANDOVER,
        };
        // The first answer stays: another thread may have read the byte first.
        match self
            .heard
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Some(ask),
            Err(earlier) => decode(earlier),
        }
    }
}

fn decode(code: u8) -> Option<Ask> {
    match code {
        DRAIN => Some(Ask::Drain),
        HANDOVER => Some(Ask::Handover),
        _ => None,
    }
}

impl AsRawFd for Receiver {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_is_heard_once_and_remembered() {
        let (tx, rx) = pipe().unwrap();
        assert_eq!(rx.hear(), None);
        tx.ask(Ask::Handover);
        assert_eq!(rx.hear(), Some(Ask::Handover));
        assert_eq!(rx.hear(), Some(Ask::Handover), "sticky after EOF");
        let (tx, rx) = pipe().unwrap();
        tx.ask(Ask::Drain);
        assert_eq!(rx.hear(), Some(Ask::Drain));
    }

    #[test]
    fn end_of_file_is_a_drain() {
        let (tx, rx) = pipe().unwrap();
        drop(tx); // the supervisor died
        assert_eq!(rx.hear(), Some(Ask::Drain));
    }
}
