//! One function that makes a reuseport listener, with its options in a fixed, documented order.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};

/// Parses `host` into an address to bind: an IPv4 or IPv6 literal (brackets allowed), `localhost`, or
/// empty (all IPv4 addresses, like the talk's `bind('')`).
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match trimmed {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        other => other.parse().map_err(|_| Error::InvalidAddress {
            host: host.to_string(),
            reason: "not an IPv4 or IPv6 address (names other than localhost are not resolved)"
                .to_string(),
        })?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Creates a TCP listener on `addr` that joins the port's `SO_REUSEPORT` group.
///
/// Options are applied in this order, before `bind`, because the kernel decides group membership at bind
/// time and every member must agree:
/// 1. `socket(2)` with `SOCK_CLOEXEC` (and `SOCK_NONBLOCK` when `nonblocking`): no fd leaks into `exec`ed
///    children, where it would keep the socket in the group.
/// 2. `SO_REUSEADDR`: rebinding right after a restart while old connections sit in `TIME_WAIT`.
/// 3. `SO_REUSEPORT`: join (or found) the group; the kernel spreads new connections over its members.
/// 4. `IPV6_V6ONLY=1` for IPv6: set explicitly, because a dual-stack and a v6-only socket form different groups.
/// 5. `TCP_NODELAY`: every connection accepted from the listener inherits it, so no worker pays a system
///    call per connection for it. A server that writes a response in two writes (headers, then body) would
///    otherwise hold the second until the client's delayed ACK, 40 ms later, on a kept-alive connection;
///    gunicorn, Go and nginx (`tcp_nodelay on`) set it themselves, but a program handed fd 3 may not
///    (uvicorn `--fd 3` takes it for a Unix socket and leaves Nagle on: 184 requests/s with 8 kept-alive
///    clients, 44 ms each). A program that wants Nagle's algorithm turns it back on per connection.
/// 6. `bind`, then `listen(backlog)`.
///
/// # Errors
/// `EADDRINUSE` becomes [`Error::AddrInUse`], `EACCES` [`Error::PermissionDenied`]; anything else is
/// [`Error::Io`].
///
/// # Notes
/// Linux only: on macOS and the BSDs `SO_REUSEPORT` exists but does not balance (the last socket bound
/// receives every connection), so the crate refuses to build there (`compile_error!` in lib.rs).
pub fn bind(addr: SocketAddr, backlog: u32, nonblocking: bool) -> Result<TcpListener> {
    let ctx = |what: &'static str| move |e: io::Error| Error::io(format!("{what} for {addr}"), e);
    let mut ty = Type::STREAM.cloexec();
    if nonblocking {
        ty = ty.nonblocking();
    }
    let socket =
        Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP)).map_err(ctx("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(ctx("SO_REUSEADDR"))?;
    socket.set_reuse_port(true).map_err(ctx("SO_REUSEPORT"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(ctx("IPV6_V6ONLY"))?;
    }
    socket.set_tcp_nodelay(true).map_err(ctx("TCP_NODELAY"))?;
    socket
        .bind(&addr.into())
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EADDRINUSE) => Error::AddrInUse { addr, source },
            Some(libc::EACCES) => Error::PermissionDenied { addr, source },
            _ => Error::io(format!("bind {addr}"), source),
        })?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(ctx("listen"))?;
    Ok(socket.into())
}

/// Length of a listener's accept queue right now (`TCP_INFO.tcpi_unacked` on a listening socket); for a
/// UDP socket, the bytes in its receive queue ([`crate::datagram::queued_bytes`]): 0 means empty for both.
pub fn queue_len(listener: &impl std::os::fd::AsRawFd) -> Option<u32> {
    tcp_queue_len(listener).or_else(|| crate::datagram::queued_bytes(listener))
}

fn tcp_queue_len(listener: &impl std::os::fd::AsRawFd) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_unacked)
    }
}

/// A blocking reuseport listener on `host:port`, for code that runs its own accept loop — the talk's
/// Python and Ruby loops — beside engine workers on the same port.
///
/// Run as a command worker (`port-sharding serve -- python3 loop.py`), it adopts the listener the
/// supervisor passed instead: fd 3, when `LISTEN_FDS=1` and `LISTEN_PID` is this process (the systemd
/// socket-activation convention). The inherited socket must be a listening TCP socket bound to the port
/// asked for (and the address, unless `host` is a wildcard); otherwise `listen` refuses rather than serve a
/// port nobody asked for. Only the first call adopts it.
///
/// ```no_run
/// let listener = port_sharding::listen("127.0.0.1", 1234, 1024)?;
/// for stream in listener.incoming().flatten() {
///     drop(stream); // echo, close …
/// }
/// # Ok::<(), port_sharding::Error>(())
/// ```
pub fn listen(host: &str, port: u16, backlog: u32) -> Result<TcpListener> {
    if backlog == 0 {
        return Err(Error::invalid("backlog", "must be at least 1"));
    }
    let wanted = resolve(host, port)?;
    if let Some(inherited) = inherited(wanted)? {
        return Ok(inherited);
    }
    bind(wanted, backlog, false)
}

/// The fd socket activation passes first.
const LISTEN_FDS_START: i32 = 3;

/// fd 3 as a blocking, close-on-exec listener, when this process was given it (`LISTEN_FDS`, `LISTEN_PID`)
/// and has not adopted it yet.
fn inherited(wanted: SocketAddr) -> Result<Option<TcpListener>> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok());
    if !ours || fds.unwrap_or(0) < 1 || ADOPTED.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let refuse = |why: String| {
        Error::InvalidAddress {
        host: wanted.to_string(),
        reason: format!(
            "this process was given a socket to serve (fd 3, LISTEN_FDS/LISTEN_PID), but it {why}; \
             ask for that socket's port, or start the program without LISTEN_FDS to bind a new socket"
        ),
    }
    };
    // SAFETY: fd 3 is only borrowed for the checks; it is owned below once they pass.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FDS_START) };
    let sock = socket2::SockRef::from(&fd);
    match sock.r#type() {
        Ok(Type::STREAM) => {}
        Ok(_) => return Err(refuse("is not a stream socket".into())),
        Err(e) => return Err(refuse(format!("is not a socket ({e})"))),
    }
    if !sock.is_listener().unwrap_or(false) {
        return Err(refuse("is not listening".into()));
    }
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    let Some(local) = local else {
        return Err(refuse("is not a TCP/IP socket".into()));
    };
    let port_ok = wanted.port() == 0 || wanted.port() == local.port();
    let ip_ok = wanted.ip().is_unspecified() || wanted.ip() == local.ip();
    if !port_ok || !ip_ok {
        return Err(refuse(format!("is bound to {local}, not {wanted}")));
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let ctx = |what: &'static str| move |e: io::Error| Error::io(format!("{what} of fd 3"), e);
    sock.set_nonblocking(false).map_err(ctx("O_NONBLOCK"))?;
    sock.set_cloexec(true).map_err(ctx("FD_CLOEXEC"))?;
    // SAFETY: the checks passed and ADOPTED makes this the one owner of fd 3 in this process.
    Ok(Some(unsafe { TcpListener::from_raw_fd(LISTEN_FDS_START) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_inherit_tcp_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "the accepted side inherits the listener's option"
        );
        assert!(
            !client.nodelay().unwrap(),
            "a socket of its own, left as it was"
        );
    }
}
