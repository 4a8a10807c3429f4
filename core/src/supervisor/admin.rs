//! The admin endpoint ([`Config::admin`](crate::Config::admin)): HTTP for orchestrators and scrapers,
//! served by the supervisor's own event loop, so it answers whatever the workers do — a reload under way,
//! a worker hung or starting — and never waits on one (envoy#16425: probes served from something a
//! reload can block fail for no reason).
//!
//! | path | answer |
//! |---|---|
//! | `GET /livez` | 200 while the supervisor's loop runs |
//! | `GET /readyz` | 200 exactly while the listeners accept (serving, handing over, the drain delay); 503 while starting and once draining |
//! | `GET /metrics` | the Prometheus text format (see [`super::metrics`]) |
//!
//! Minimal HTTP/1.1, one request per connection (`Connection: close`), `HEAD` too. Bounded like the
//! control socket: at most [`MAX_CONNS`] connections (more are closed at once), a request head of at most
//! [`MAX_REQUEST`] bytes, and [`DEADLINE`] from accept to the last byte of the answer. Every socket is
//! non-blocking; the supervisor answers in the same pass that read the request.
//!
//! A takeover: the old server holds the address until it hands over; the new one binds it as soon as
//! the old one lets go (it does when it begins to drain, taken over), trying again every tick meanwhile.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::metrics::{self, Page as Metrics};
use super::Supervisor;
use crate::config::split_host_port;
use crate::error::{Error, Result};
use crate::fds::Tracked;
use crate::lifecycle::Phase;
use crate::log::log;

/// The listening socket's token; connections are [`FIRST_CONN`] + slot (below the control socket's).
pub(super) const LISTENER: Token = Token(6);
const FIRST_CONN: usize = 1 << 19;
/// Open connections at most: probes and a scraper or two.
const MAX_CONNS: usize = 32;
/// The longest request head read (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the answer written in full.
const DEADLINE: Duration = Duration::from_secs(2);
/// How often a new server tries again for an address its predecessor still holds.
const RETRY: Duration = Duration::from_millis(200);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Livez,
    Readyz,
    Metrics,
    Index,
}

/// A complete request, or what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get { route: Route, head: bool },
    NotFound,
    BadMethod,
    Bad,
}

struct Conn {
    stream: Tracked<TcpStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    deadline: Instant,
    answered: bool,
}

/// The endpoint: its listener (once bound) and open connections.
pub(super) struct Admin {
    addr: SocketAddr,
    listener: Option<Tracked<TcpListener>>,
    /// While the predecessor of a takeover holds the address: when to try again.
    retry_at: Option<Instant>,
    conns: Vec<Option<Conn>>,
    /// The last accept failed other than for an empty queue (EMFILE and the like): the tick retries.
    retry_accept: bool,
}

/// A listening TCP socket on `addr` (`SO_REUSEADDR`, not in any reuseport group: one server serves it).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec().nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Admin {
    /// Binds the endpoint for `spec` (`HOST:PORT`). On `takeover`, an address in use (the old server's)
    /// is bound later instead.
    pub(super) fn bind(spec: &str, registry: &Registry, takeover: bool) -> Result<Admin> {
        let (host, port) = split_host_port(spec).map_err(|why| Error::invalid("admin", why))?;
        let addr = crate::listener::resolve(host, port)?;
        let mut admin = Admin {
            addr,
            listener: None,
            retry_at: None,
            conns: Vec::new(),
            retry_accept: false,
        };
        match listen(addr) {
            Ok(l) => admin.serve(registry, l)?,
            Err(e) if takeover && e.raw_os_error() == Some(libc::EADDRINUSE) => {
                admin.retry_at = Some(Instant::now());
            }
            Err(e) => return Err(Error::io(format!("admin endpoint: bind {addr}"), e)),
        }
        Ok(admin)
    }

    fn serve(&mut self, registry: &Registry, l: TcpListener) -> Result<()> {
        let mut l = Tracked::new(l);
        registry
            .register(&mut *l, LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("register the admin endpoint", e))?;
        self.addr = l.local_addr().unwrap_or(self.addr);
        self.listener = Some(l);
        Ok(())
    }

    /// For the log: where it serves, or that it waits for the address.
    pub(super) fn describe(&self) -> String {
        match self.listener {
            Some(_) => format!(
                "admin: http://{}/ serves /livez, /readyz and /metrics",
                self.addr
            ),
            None => format!(
                "admin: waiting for {}, held by the server being taken over",
                self.addr
            ),
        }
    }

    /// Whether `token` is the endpoint's.
    pub(super) fn owns(&self, token: Token) -> bool {
        token == LISTENER || (FIRST_CONN..FIRST_CONN + MAX_CONNS).contains(&token.0)
    }

    /// Nothing is due by the clock: bound (or given up), no connection open, no accept to retry.
    pub(super) fn at_rest(&self) -> bool {
        self.retry_at.is_none() && !self.retry_accept && self.conns.iter().all(Option::is_none)
    }

    /// Lets go of the address (a successor took over and binds it); open connections are answered.
    pub(super) fn release(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut *l);
            log!("admin: released {} for the new server", self.addr);
        }
        self.retry_at = None;
    }

    /// Readiness on `token` (`None`: the periodic tick): accepts, reads, writes; returns the requests
    /// that became complete, to answer with [`Admin::respond`].
    fn poll(&mut self, registry: &Registry, token: Option<Token>) -> Vec<(usize, Request)> {
        let now = Instant::now();
        let mut out = Vec::new();
        match token {
            Some(LISTENER) => self.accept(registry, now, &mut out),
            Some(t) => self.drive(registry, t.0 - FIRST_CONN, &mut out),
            None => {
                self.retry_bind(registry, now);
                for slot in 0..self.conns.len() {
                    if self.conns[slot].as_ref().is_some_and(|c| now >= c.deadline) {
                        self.close(registry, slot);
                    }
                }
                self.accept(registry, now, &mut out);
            }
        }
        out
    }

    fn retry_bind(&mut self, registry: &Registry, now: Instant) {
        if self.retry_at.is_none_or(|t| now < t) {
            return;
        }
        match listen(self.addr) {
            Ok(l) => {
                self.retry_at = None;
                match self.serve(registry, l) {
                    Ok(()) => log!("{}", self.describe()),
                    Err(e) => log!("admin: {e}"),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                self.retry_at = Some(now + RETRY);
            }
            Err(e) => {
                log!("admin: cannot bind {} ({e}); no admin endpoint", self.addr);
                self.retry_at = None;
            }
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant, out: &mut Vec<(usize, Request)>) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.retry_accept = false;
                    return;
                }
                // EMFILE and the like: the next tick tries again.
                Err(_) => {
                    self.retry_accept = true;
                    return;
                }
            };
            let Some(slot) = self.free_slot() else {
                continue; // full: closed at once (dropped); a probe counts that as a failure and retries
            };
            let mut stream = Tracked::new(stream);
            let token = Token(FIRST_CONN + slot);
            if registry
                .register(&mut *stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                deadline: now + DEADLINE,
                answered: false,
            });
            self.drive(registry, slot, out);
        }
    }

    fn free_slot(&mut self) -> Option<usize> {
        if let Some(i) = self.conns.iter().position(Option::is_none) {
            return Some(i);
        }
        (self.conns.len() < MAX_CONNS).then(|| {
            self.conns.push(None);
            self.conns.len() - 1
        })
    }

    fn drive(&mut self, registry: &Registry, slot: usize, out: &mut Vec<(usize, Request)>) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.answered {
            if !flush(conn) {
                self.close(registry, slot);
            }
            return;
        }
        let mut chunk = [0u8; 2048];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => return self.close(registry, slot),
                Ok(n) => {
                    conn.input.extend_from_slice(&chunk[..n]);
                    if let Some(request) = parse(&conn.input) {
                        out.push((slot, request));
                        return;
                    }
                    if conn.input.len() > MAX_REQUEST {
                        out.push((slot, Request::Bad));
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(registry, slot),
            }
        }
    }

    /// Queues the answer on `slot` and writes what the socket takes now.
    fn respond(&mut self, registry: &Registry, slot: usize, answer: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        conn.output = answer;
        conn.answered = true;
        if !flush(conn) {
            self.close(registry, slot);
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut *conn.stream);
        }
    }
}

/// Writes what it can; `false` once the answer is out (or the peer is gone): close then.
fn flush(conn: &mut Conn) -> bool {
    while conn.sent < conn.output.len() {
        match conn.stream.write(&conn.output[conn.sent..]) {
            Ok(0) => return false,
            Ok(n) => conn.sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    false
}

/// The request in `input`, once its head is complete (`None`: not yet).
fn parse(input: &[u8]) -> Option<Request> {
    let end = input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| input.windows(2).position(|w| w == b"\n\n"))?;
    let head = String::from_utf8_lossy(&input[..end]);
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Some(Request::Bad);
    };
    if !version.starts_with("HTTP/1.") || words.next().is_some() {
        return Some(Request::Bad);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Some(Request::BadMethod),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let route = match path {
        "/livez" => Route::Livez,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => return Some(Request::NotFound),
    };
    Some(Request::Get {
        route,
        head: head_only,
    })
}

/// An HTTP/1.1 answer that closes the connection.
fn answer(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Supervisor {
    /// Readiness on the endpoint (`None`: the periodic tick); answers every request that became complete.
    pub(super) fn on_admin(&mut self, token: Option<Token>) {
        let Some(admin) = self.server.admin.as_mut() else {
            return;
        };
        let requests = admin.poll(self.server.poll.registry(), token);
        for (slot, request) in requests {
            let bytes = self.admin_answer(request);
            if let Some(admin) = self.server.admin.as_mut() {
                admin.respond(self.server.poll.registry(), slot, bytes);
            }
        }
    }

    /// Whether the listeners accept: what `/readyz` and `port_sharding_ready` say.
    fn accepting(&self) -> bool {
        matches!(self.phase(), Phase::Serving | Phase::HandingOver)
    }

    fn admin_answer(&self, request: Request) -> Vec<u8> {
        let (route, head) = match request {
            Request::Get { route, head } => (route, head),
            Request::NotFound => {
                return answer(
                    "404 Not Found",
                    TEXT,
                    "not found: try /livez, /readyz, /metrics\n",
                    false,
                )
            }
            Request::BadMethod => {
                return answer("405 Method Not Allowed", TEXT, "only GET and HEAD\n", false)
            }
            Request::Bad => return answer("400 Bad Request", TEXT, "bad request\n", false),
        };
        let phase = self.phase();
        match route {
            Route::Livez => answer("200 OK", TEXT, "ok: the supervisor runs\n", head),
            Route::Readyz if self.accepting() => {
                let body = match self.drain_in() {
                    Some(d) => format!("ready: serving (drain delay: draining in {d:.1?})\n"),
                    None => format!("ready: {phase}\n"),
                };
                answer("200 OK", TEXT, &body, head)
            }
            Route::Readyz => answer(
                "503 Service Unavailable",
                TEXT,
                &format!("not ready: {phase}\n"),
                head,
            ),
            Route::Metrics => {
                self.sample_queues();
                let workers = self.server.stats.snapshot();
                let steering = self.server.steering.status(&self.server.group);
                let page = metrics::render(&Metrics {
                    runtime: &self.server.config.runtime,
                    addr: self.server.addr,
                    phase,
                    ready: self.accepting(),
                    workers: &workers,
                    counters: self.counters,
                    orphans: self.reaper.orphans,
                    steering_active: steering.state == crate::control::SteeringState::Active,
                    went_around: self.server.steering.went_around(),
                });
                answer(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &page,
                    head,
                )
            }
            Route::Index => answer(
                "200 OK",
                TEXT,
                "port-sharding admin endpoint: /livez /readyz /metrics\n",
                head,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_once_their_head_is_complete() {
        assert_eq!(parse(b"GET /readyz HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Get {
                route: Route::Readyz,
                head: false
            })
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Some(Request::Get {
                route: Route::Metrics,
                head: true
            })
        );
        assert_eq!(
            parse(b"POST /livez HTTP/1.1\r\n\r\n"),
            Some(Request::BadMethod)
        );
        assert_eq!(
            parse(b"GET /nope HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(parse(b"hello\r\n\r\n"), Some(Request::Bad));
    }

    #[test]
    fn answers_close_and_head_has_no_body() {
        let a = String::from_utf8(answer("200 OK", TEXT, "ok\n", true)).unwrap();
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(a.contains("Content-Length: 3\r\n") && a.contains("Connection: close\r\n"));
        assert!(a.ends_with("\r\n\r\n"));
    }
}
