//! A child forked by the host (what Python's `multiprocessing` and Ruby's `fork` do) must neither delay
//! a server's drain nor keep its listeners in the port's group. Its own test binary: a `fork` in a
//! process whose other tests spawn commands would leak their pipes into the child.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_host_child_forked_during_stop_neither_delays_it_nor_keeps_the_port() {
    use port_sharding::{close_in_forked_child, Config, Server};
    let server = Server::bind(Config {
        host: "127.0.0.1".into(),
        port: 0,
        workers: 2,
        control: false,
        drain_timeout: Duration::from_secs(10),
        ..Config::default()
    })
    .unwrap();
    let port = server.port();
    let handle = server.handle();
    let run = std::thread::spawn(move || server.run());
    assert!(handle.wait_ready(Some(PATIENCE)));
    // What `multiprocessing` does: fork the host; the child lives on for a while.
    // SAFETY: the child calls only async-signal-safe functions and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            close_in_forked_child();
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    let t = Instant::now();
    handle.stop();
    let report = run.join().unwrap().unwrap();
    let took = t.elapsed();
    let child_alive = alive(child);
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    eprintln!("stop with a forked host child alive took {took:?}");
    assert!(
        child_alive,
        "the forked child should still be alive when stop returns"
    );
    assert!(
        !report.forced,
        "the drain waited for the forked child until the timeout ({took:?})"
    );
    assert!(
        refused,
        "the forked child still holds a listener in the group"
    );
}
