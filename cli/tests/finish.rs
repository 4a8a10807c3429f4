//! How `once` and `hello` finish a connection: the reply always arrives whole and ends in a clean EOF,
//! whether the client left bytes unread (the server then half-closes and waits for the client's FIN) or
//! not (the server closes at once). A reset instead of the EOF would fail `read_to_end`.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{connect, read_to_end, Spawn};

#[test]
fn once_replies_then_closes_when_nothing_is_left_unread() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "once"]).start();
    for _ in 0..50 {
        let mut s = connect(srv.port);
        s.write_all(b"ping").unwrap();
        // No shutdown from our side: the server closes by itself after the echo.
        assert_eq!(read_to_end(&mut s), b"ping");
    }
}

#[test]
fn once_with_bytes_left_unread_still_delivers_the_reply() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "once"]).start();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..10 {
        let mut s = connect(srv.port);
        // Far more than the one read of at most 1024 bytes: most of it stays unread at the server.
        s.write_all(&data).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Bounded by the read timeout `connect` sets and by the server's EOF.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reply cut by {e} after {} byte(s)", got.len()),
            }
        }
        assert!(!got.is_empty() && got.len() <= 1024, "{} bytes", got.len());
        assert_eq!(
            got,
            data[..got.len()],
            "the reply is the first read, echoed"
        );
        s.shutdown(Shutdown::Write).unwrap();
    }
}

#[test]
fn hello_greets_whether_or_not_the_client_speaks_first() {
    let srv = Spawn::new(&["--port", "0", "--workers", "1", "--mode", "hello"]).start();
    let pid = srv.worker_pids()[0];
    let greeting = format!("Hello from rust process {pid}\n").into_bytes();
    // Silent client: nothing unread, the server closes right after the greeting.
    let mut s = connect(srv.port);
    assert_eq!(read_to_end(&mut s), greeting);
    // A client that talks first: its bytes are discarded, the greeting still arrives whole.
    let mut s = connect(srv.port);
    s.write_all(&[7u8; 10_000]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(read_to_end(&mut s), greeting);
}
