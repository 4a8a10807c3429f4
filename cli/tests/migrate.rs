//! `--migrate` without the sysctl: the select-or-migrate eBPF program on the server's group moves a closing
//! listener's queue to the group's other listeners. Runs in a throwaway network namespace, where
//! `net.ipv4.tcp_migrate_req` starts at 0; needs root (a namespace, `bpf()`), and says so when it cannot.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

use common::*;

/// Two servers share a port; the first one's workers are stopped with connections queued on their
/// listeners, then the whole first server is killed. Returns how many of the queued clients were reset
/// (the others were served by the second server), and the first server's log. With `migrate`, the first
/// server steers around a stopped worker first: its steering program replaces the migrate program while
/// it lasts, and the migrate program must be back afterwards.
fn killed_with_a_queue(migrate: bool) -> (usize, Vec<String>) {
    let extra = if migrate {
        "--migrate"
    } else {
        "--migrate=false"
    };
    let mut old = Spawn::new(&["--port", "0", "--workers", "2", extra]).start();
    if migrate {
        let w = old.worker_pids()[1];
        // SAFETY: stopping and resuming a worker our server forked.
        unsafe { libc::kill(w, libc::SIGSTOP) };
        let mut waiting = Vec::new();
        for _ in 0..500 {
            waiting.push(connect(old.port));
            if old.count_log("steering started") > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        old.wait_log("steering started");
        // SAFETY: as above.
        unsafe { libc::kill(w, libc::SIGCONT) };
        old.wait_log("steering ended");
        drop(waiting);
    }
    let port = old.port.to_string();
    let new = Spawn::new(&["--port", &port, "--workers", "2"]).start();
    for pid in old.worker_pids() {
        // SAFETY: stopping the workers our server forked.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    let mut clients: Vec<(TcpStream, String)> = (0..60)
        .map(|i| {
            let mut s = connect(old.port);
            let msg = format!("queued {i}");
            s.write_all(msg.as_bytes()).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            (s, msg)
        })
        .collect();
    let queued: u64 = kernel_queues(old.port).iter().sum();
    assert!(queued > 0, "nothing queued on the stopped server");
    // SAFETY: the process group of the server we started (its pid is the group id).
    unsafe { libc::killpg(old.pid(), libc::SIGKILL) };
    let mut reset = 0;
    for (s, msg) in &mut clients {
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => assert_eq!(got, msg.as_bytes()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => reset += 1,
            Err(e) => panic!("{msg}: {e}"),
        }
    }
    eprintln!("--migrate {migrate}: {queued} queued on the killed server, {reset} reset");
    let log = old.log();
    drop((old, new));
    (reset, log)
}

#[test]
fn a_killed_server_loses_nothing_queued_with_migrate_and_no_sysctl() {
    const TEST: &str = "a_killed_server_loses_nothing_queued_with_migrate_and_no_sysctl";
    // SAFETY: unshare affects this thread (and what it spawns) only; this test binary has no other test.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return skip(
            TEST,
            &format!("cannot make a network namespace ({e}); needs root"),
        );
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip (iproute2) is installed by make setup");
    assert!(up.success());
    let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap();
    assert_eq!(sysctl.trim(), "0", "a new namespace starts at 0");

    let (without, _) = killed_with_a_queue(false);
    assert!(
        without > 0,
        "without migration the queued connections are reset"
    );
    let (with, log) = killed_with_a_queue(true);
    if let Some(line) = log.iter().find(|l| l.contains("migrate: no eBPF program")) {
        return skip(TEST, &format!("bpf() not permitted here: {line}"));
    }
    assert!(
        log.iter()
            .any(|l| l.contains("attached a reuseport eBPF program")),
        "{log:#?}"
    );
    assert_eq!(
        with, 0,
        "every queued connection migrated to the other server"
    );
    let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap();
    assert_eq!(sysctl.trim(), "0", "the sysctl was left alone");
}
