//! The bulk path's one socket option: echo without Nagle's delay.

use std::net::TcpListener;

/// Sets `TCP_NODELAY` on the worker's listener; every connection it accepts inherits it, so this costs one
/// system call per worker, not one per connection. Listeners made by [`crate::listener::bind`] have it
/// already; one passed by a service manager (socket activation) may not.
///
/// An echo server writes back whatever one read returned, which is rarely a whole number of segments: with
/// Nagle's algorithm the short last segment of such a write waits until everything sent before it is
/// acknowledged, so a client that keeps a few messages in flight stalls on it (BENCHMARKS.md's stream-4
/// p99 was 2.5 ms with Nagle, against uvloop's 136 µs). nginx (`tcp_nodelay on`), uvloop and Go set it
/// for the same reason. Replies of `once` and `hello` are one write followed by a close, which sends them
/// at once either way.
pub(super) fn no_delay(listener: &TcpListener) {
    // A failure leaves Nagle on: slower streams, nothing lost; not worth failing the worker for.
    let _ = socket2::SockRef::from(listener).set_tcp_nodelay(true);
}
