//! A command worker's process group (issue 23): the stop signal and SIGKILL reach what the worker started,
//! and the supervisor does not exit while a process of a worker's group still holds a listener of the port.
//! The worker is `sh`, whose background child ignores SIGTERM and keeps fd 3 (the listener).

mod common;

use common::*;

/// The live processes whose process group is `pgid`.
fn group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            found.push(pid);
        }
    }
    found
}

/// A worker that exits at SIGTERM and leaves a child that ignores it (bounded: 30 s at most).
const STUBBORN: &str = "(trap '' TERM; exec sleep 30) & exec sleep 30";

#[test]
fn stop_waits_for_a_child_that_ignores_sigterm_and_kills_the_workers_group() {
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "-w",
        "1",
        "--ready-delay",
        "200ms",
        "--drain-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        STUBBORN,
    ])
    .start();
    let worker = srv.worker_pids()[0];
    wait_until("the worker's child", || group(worker).len() == 2);
    let child = *group(worker).iter().find(|&&p| p != worker).unwrap();
    assert!(
        holds_listener(child, srv.port),
        "the child holds the listener"
    );
    srv.signal(libc::SIGTERM);
    srv.wait_log("its process group lives on");
    srv.wait_log("its process group is still running past the drain timeout; sending it SIGKILL");
    assert_eq!(
        srv.wait_exit().code(),
        Some(1),
        "a drain cut short exits 1: {:#?}",
        srv.log()
    );
    // The supervisor exited only after the child: nothing it started is left.
    assert!(!alive(child), "{:#?}", srv.log());
    assert!(group(worker).is_empty());
}

#[test]
fn the_stop_signal_reaches_every_process_of_the_group() {
    // Both processes exit at SIGTERM; only the worker would get it were it sent to the worker's pid alone.
    // (The child may outlive the worker by a moment: the supervisor then waits for it.)
    let mut srv = Spawn::new(&[
        "--port",
        "0",
        "-w",
        "1",
        "--ready-delay",
        "200ms",
        "--",
        "sh",
        "-c",
        "sleep 30 & exec sleep 30",
    ])
    .start();
    let worker = srv.worker_pids()[0];
    wait_until("the worker's child", || group(worker).len() == 2);
    let child = *group(worker).iter().find(|&&p| p != worker).unwrap();
    srv.signal(libc::SIGTERM);
    assert!(srv.wait_exit().success(), "{:#?}", srv.log());
    assert!(!alive(child));
    assert!(
        !srv.log()
            .iter()
            .any(|l| l.contains("sending it SIGKILL") || l.contains("sending SIGKILL")),
        "{:#?}",
        srv.log()
    );
}
