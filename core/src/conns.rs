//! Connections a process has accepted but read nothing from yet — what a server that stops closes unanswered
//! (uvicorn closes, on shutdown, every connection without a request in progress; Puma 5 those waiting in its
//! reactor). The supervisor asks a replaced worker to stop only once it holds none (see `supervisor::seat`).
//!
//! Found with `sock_diag` (netlink, unprivileged, what `ss` uses): the port's `ESTABLISHED` (and `CLOSE_WAIT`:
//! half-closed by the client) TCP sockets with
//! their unread bytes (`idiag_rqueue`), the bytes they ever received (`tcp_info.tcpi_bytes_received`) and their
//! inode, matched against the inodes of the sockets the process holds (`/proc/PID/fd`). A connection whose
//! every received byte is still unread — none yet, or a request not read — has not been served at all;
//! one that was read from (an idle keep-alive connection) has, and an HTTP client retries a request on a
//! keep-alive connection the server closes.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::unistd::Pid;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_ESTABLISHED: u32 = 1;
/// The client sent its request and shut down its side (half-close) — unread all the same.
const TCP_CLOSE_WAIT: u32 = 8;
/// `struct nlmsghdr`; `struct inet_diag_req_v2`; `struct inet_diag_msg`.
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
/// The `INET_DIAG_INFO` attribute (a `struct tcp_info`), and where `tcpi_bytes_received` sits in it.
const INET_DIAG_INFO: u16 = 2;
const BYTES_RECEIVED: usize = 128;

/// The inodes of the sockets the processes `pids` hold (`/proc/PID/fd/N` → `socket:[INODE]`).
pub(crate) fn socket_inodes(pids: &[Pid]) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(n) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                inodes.insert(n);
            }
        }
    }
    inodes
}

/// How many established connections on `addr`'s port, among the sockets `inodes`, have had nothing read
/// from them yet (every byte received, if any, is still unread).
pub(crate) fn unread(addr: SocketAddr, inodes: &HashSet<u64>) -> io::Result<usize> {
    if inodes.is_empty() {
        return Ok(0);
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = request(addr);
    // SAFETY: send reads `request.len()` bytes from `request`; the kernel is the default destination.
    let sent = unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0;
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(count);
        }
        let (found, done) = count_unread(&buf[..n as usize], addr.port(), inodes)?;
        count += found;
        if done {
            return Ok(count);
        }
    }
}

/// A dump request (`nlmsghdr` + `inet_diag_req_v2`) for `ESTABLISHED` and `CLOSE_WAIT` TCP sockets on `addr`'s local port,
/// with their `tcp_info`.
fn request(addr: SocketAddr) -> Vec<u8> {
    let mut req = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    req.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // family, protocol, extensions wanted (bit INET_DIAG_INFO - 1), padding; then the states.
    let ext = 1u8 << (INET_DIAG_INFO - 1);
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, ext, 0]);
    req.extend_from_slice(&((1u32 << TCP_ESTABLISHED) | (1u32 << TCP_CLOSE_WAIT)).to_ne_bytes());
    // inet_diag_sockid: the source port; the rest is not used by a dump and stays zero.
    req.extend_from_slice(&addr.port().to_be_bytes());
    req.resize(NLMSG_HDR + REQ_LEN, 0);
    req
}

/// Counts, among the `inet_diag_msg` answers in `buf`, the sockets on local `port` whose inode is in
/// `inodes` and that have had nothing read yet; `true` once the dump is done.
fn count_unread(buf: &[u8], port: u16, inodes: &HashSet<u64>) -> io::Result<(usize, bool)> {
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut found = 0;
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDR || off + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short sock_diag answer",
            ));
        }
        let body = &buf[off + NLMSG_HDR..off + len];
        match kind {
            NLMSG_DONE => return Ok((found, true)),
            NLMSG_ERROR => {
                let errno = if body.len() >= 4 {
                    u32_at(body, 0) as i32
                } else {
                    0
                };
                return Err(io::Error::from_raw_os_error(-errno));
            }
            // inet_diag_msg: family, state, timer, retrans, sockid (sport at 4), expires (52),
            // rqueue (56), wqueue, uid, inode (68); then attributes.
            _ if body.len() >= MSG_LEN => {
                let sport = u16::from_be_bytes([body[4], body[5]]);
                let rqueue = u64::from(u32_at(body, 56));
                let inode = u64::from(u32_at(body, 68));
                if sport == port && inodes.contains(&inode) {
                    // Unread bytes (`rcv_nxt - copied_seq`) count a FIN not read yet as one more, so
                    // nothing was read iff they are at least all the data received. Without tcp_info,
                    // count it: better a later stop than a cut request.
                    let received = bytes_received(&body[MSG_LEN..]).unwrap_or(0);
                    if rqueue >= received {
                        found += 1;
                    }
                }
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok((found, false))
}

/// `tcpi_bytes_received` from the `INET_DIAG_INFO` attribute among `attrs` (`struct rtattr`s).
fn bytes_received(mut attrs: &[u8]) -> Option<u64> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            let info = &attrs[4..len];
            let b = info.get(BYTES_RECEIVED..BYTES_RECEIVED + 8)?;
            return Some(u64::from_ne_bytes(b.try_into().ok()?));
        }
        attrs = attrs.get((len + 3) & !3..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> HashSet<u64> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let link = link.to_string_lossy().into_owned();
        let n = link["socket:[".len()..link.len() - 1].parse().unwrap();
        HashSet::from([n])
    }

    #[test]
    fn a_connection_counts_until_something_is_read_from_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mine = inode_of(&conn);
        // Accepted, nothing received: not served yet.
        assert_eq!(unread(addr, &mine).unwrap(), 1);
        // Someone else's sockets do not count.
        assert_eq!(unread(addr, &inode_of(&client)).unwrap(), 0);
        // A request arrived but is unread: still not served.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn_rqueue(&conn) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(unread(addr, &mine).unwrap(), 1);
        // Read: served (an idle keep-alive connection from now on).
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(unread(addr, &mine).unwrap(), 0);
        // …even when the next request waits unread.
        client.write_all(b"GET /2 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(unread(addr, &mine).unwrap(), 0);
        assert_eq!(socket_inodes(&[Pid::this()]).intersection(&mine).count(), 1);

        // A request sent with a half-close (CLOSE_WAIT here): unread until read.
        let mut half = TcpStream::connect(addr).unwrap();
        let (mut conn2, _) = listener.accept().unwrap();
        let theirs = inode_of(&conn2);
        half.write_all(b"ping").unwrap();
        half.shutdown(std::net::Shutdown::Write).unwrap();
        while conn_rqueue(&conn2) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(unread(addr, &theirs).unwrap(), 1);
        let n = conn2.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(unread(addr, &theirs).unwrap(), 0);
    }

    fn conn_rqueue(conn: &TcpStream) -> libc::c_int {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through a valid pointer.
        unsafe { libc::ioctl(conn.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    }
}
