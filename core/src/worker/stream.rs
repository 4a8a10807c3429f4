//! The bulk path's socket options: echo without Nagle's delay, and keep little of it unsent in the kernel.

use std::net::TcpListener;

/// The most echo a connection leaves unsent in its kernel send queue (`TCP_NOTSENT_LOWAT`): past it a
/// write is short, the connection stops being read (the worker's backpressure), and it is woken to write
/// again once the peer has taken about half. 1 MiB is four of the worker's reads, so a stream still has
/// whole reads queued while the worker serves the others; bytes sent and not yet acknowledged are not
/// counted, so this does not cap what is in flight on a long path. The worker is woken with about 512 KiB
/// still queued, so the link stays busy if it writes again within the time that takes to send (0.4 ms
/// at 10 Gbit/s).
///
/// Why bound it: a send queue holding more than the peer's window lets in is transmitted later, by the
/// kernel, when the peer's acknowledgements open the window — on loopback in the *peer's* context, so
/// an echo server that stuffs its queue makes its client pay for sending the echo. With no bound (the
/// kernel's default, up to `net.ipv4.tcp_wmem`'s 4 MiB) a bulk-4 client did 0.57 CPU-s per GB against
/// uvloop's 0.51 and, being the busier side, reached 0.97× uvloop's MB/s; with 1 MiB its cost is
/// uvloop's and the engine 1.11× uvloop's MB/s at 0.87× its server CPU per byte (bench/NOTES.md, issue
/// 25). It also bounds the kernel memory a connection's unsent echo holds.
pub(super) const NOTSENT_LOWAT: u32 = 1 << 20;

/// Sets the bulk path's options on the worker's listener; every connection it accepts inherits them, so
/// this costs two system calls per worker, not per connection. Listeners made by
/// [`crate::listener::bind`] have `TCP_NODELAY` already; one passed by a service manager (socket
/// activation) may not.
///
/// `TCP_NODELAY`: an echo server writes back whatever one read returned, which is rarely a whole number
/// of segments: with Nagle's algorithm the short last segment of such a write waits until everything
/// sent before it is acknowledged, so a client that keeps a few messages in flight stalls on it
/// (BENCHMARKS.md's stream-4 p99 was 2.5 ms with Nagle, against uvloop's 136 µs). nginx (`tcp_nodelay
/// on`), uvloop and Go set it for the same reason. Replies of `once` and `hello` are one write followed by
/// a close, which sends them at once either way.
///
/// `TCP_NOTSENT_LOWAT`: see [`NOTSENT_LOWAT`]. Replies smaller than it are not affected.
///
/// # Notes
///
/// A listener handed over to another worker (reload, takeover) keeps both options, and so do the
/// connections that worker accepts.
pub(super) fn tune(listener: &TcpListener) {
    // A failure leaves the kernel's defaults: slower streams, nothing lost; not worth failing the worker for.
    let socket = socket2::SockRef::from(listener);
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn accepted_connections_inherit_the_bulk_options() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tune(&listener);
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().unwrap());
        assert_eq!(accepted.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
        // The client's own socket is not ours to tune.
        let client = socket2::SockRef::from(&client);
        assert!(!client.tcp_nodelay().unwrap());
        assert_eq!(client.tcp_notsent_lowat().unwrap(), 0);
    }
}
