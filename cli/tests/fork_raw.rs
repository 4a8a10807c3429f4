//! A child forked by a host that does NOT let go of the engine's descriptors (a C extension calling
//! `fork` directly, bypassing Python's and Ruby's at-fork hooks) still cannot delay a drain: the supervisor
//! tells its workers to drain with a byte on their pipes, not only by closing them (which such a child
//! would prevent, holding copies of the write ends). Its own test binary, like fork_safety.rs.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_child_holding_the_drain_pipes_does_not_delay_the_drain() {
    use port_sharding::{Config, Server};
    let server = Server::bind(Config {
        host: "127.0.0.1".into(),
        port: 0,
        workers: 2,
        control: false,
        drain_timeout: Duration::from_secs(10),
        ..Config::default()
    })
    .unwrap();
    let handle = server.handle();
    let run = std::thread::spawn(move || server.run());
    assert!(handle.wait_ready(Some(PATIENCE)));
    // SAFETY: the child calls only async-signal-safe functions and leaves with _exit; it keeps every
    // descriptor it inherited, the drain pipes' write ends included.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    handle.stop();
    let report = run.join().unwrap().unwrap();
    let child_alive = alive(child);
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    assert!(child_alive, "the child outlived the drain");
    assert!(
        !report.forced,
        "the workers waited for the pipes to close, until the drain timeout"
    );
}
