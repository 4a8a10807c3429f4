//! Seats in `status`: each listener's worker processes — the serving one, and after a reload the retiring
//! one still finishing its connections — with their own counters and states.

mod common;

use std::io::{Read, Write};

use common::*;

/// A retiring worker that still holds a connection is listed under its listener, with that connection,
/// and the listener's counts include it; once it has finished, only the new worker is left.
#[test]
fn status_lists_a_retiring_worker_beside_the_new_one() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1", "--drain-timeout", "20s"]).start();
    // A connection the old worker accepted and keeps open (echo: it answers, then waits for more).
    let mut held = connect(srv.port);
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    let old = srv.worker_pids()[0];
    let out = cli(&srv.dir, &["reload", "--port", &srv.port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    srv.wait_log(&format!("pid {old} stops"));
    let status = srv.status();
    let seat = &status[0]["workers"][0];
    let processes = seat["processes"].as_array().unwrap();
    let roles: Vec<(&str, &str, u64)> = processes
        .iter()
        .map(|p| {
            (
                p["role"].as_str().unwrap(),
                p["state"].as_str().unwrap(),
                p["active"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [("serving", "serving", 0), ("retiring", "draining", 1)],
        "{seat}"
    );
    assert_eq!(processes[1]["pid"], old, "{seat}");
    assert_eq!(
        seat["active"], 1,
        "the listener counts the retiring worker's connection"
    );
    assert_eq!(seat["accepted"], 1, "{seat}");
    let table = cli(&srv.dir, &["status", "--port", &srv.port.to_string()]);
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&old.to_string()))
        .unwrap_or_else(|| panic!("no line for the retiring worker: {table}"));
    assert!(
        line.contains("retiring") && line.contains("draining"),
        "{table}"
    );
    // The client hangs up: the old worker has nothing left and exits; its counts stay with the listener.
    drop(held);
    srv.wait_log(&format!("(pid {old}, generation 1) retired"));
    let status = srv.status();
    let seat = &status[0]["workers"][0];
    assert_eq!(seat["processes"].as_array().unwrap().len(), 1, "{seat}");
    assert_eq!(seat["accepted"], 1, "{seat}");
    assert_eq!(seat["active"], 0, "{seat}");
    assert_eq!(seat["bytes_in"], 1, "{seat}");
}

/// A worker killed with its connections open stops counting them: the listener's `active` falls back,
/// and its `accepted` keeps what the dead worker served.
#[test]
fn a_dead_workers_open_connections_stop_counting() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    let mut held = connect(srv.port);
    held.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    let old = srv.worker_pids()[0];
    assert_eq!(srv.status()[0]["workers"][0]["active"], 1);
    unsafe { libc::kill(old, libc::SIGKILL) };
    srv.wait_log(&format!("(pid {old}) was killed by SIGKILL"));
    wait_until("a new worker serves", || {
        let s = srv.status();
        s[0]["workers"][0]["state"] == "serving" && s[0]["workers"][0]["pid"] != old
    });
    let seat = &srv.status()[0]["workers"][0];
    assert_eq!(seat["active"], 0, "{seat}");
    assert_eq!(seat["accepted"], 1, "{seat}");
    assert_eq!(seat["restarts"], 1, "{seat}");
}
