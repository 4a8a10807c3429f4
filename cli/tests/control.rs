//! The control socket: per-worker status, and refusal of other users.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::*;

#[test]
fn status_lists_every_worker_with_counters() {
    let srv = Spawn::new(&["--port", "0", "--workers", "3"]).start();
    for _ in 0..30 {
        round_trip(srv.port, b"abc");
    }
    let status = srv.status();
    let s = &status[0];
    assert_eq!(s["runtime"], "rust");
    assert_eq!(s["state"], "serving");
    assert_eq!(s["mode"], "echo");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let pids: Vec<i64> = workers.iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    let logged: Vec<i64> = srv.worker_pids().into_iter().map(i64::from).collect();
    assert_eq!(pids, logged);
    let bytes_in: u64 = workers
        .iter()
        .map(|w| w["bytes_in"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes_in, 90);
    assert_eq!(accepted(&status).iter().sum::<u64>(), 30);
    // The table form names every column.
    let out = std::process::Command::new(bin())
        .args(["status", "--port", &srv.port.to_string()])
        .env("PORT_SHARDING_CONTROL_DIR", &srv.dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("accepted") && table.contains("queue") && table.contains("serving"),
        "{table}"
    );
}

#[test]
fn another_uid_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "another_uid_is_refused",
            "switching to another uid needs root",
        );
        return;
    }
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        skip(
            "another_uid_is_refused",
            "python3 is needed as the other user's client",
        );
        return;
    }
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    // Open the directory and socket to everyone, so only SO_PEERCRED stands in the way.
    std::fs::set_permissions(&srv.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    // The control socket (the directory also holds the workers' notify socket).
    let sock = std::fs::read_dir(&srv.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let client = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); s.sendall(b'{{\"cmd\":\"stop\"}}\\n'); print(s.makefile().readline())",
        sock.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &client])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("refused: uid 65534"),
        "answer: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log("control: refused a request from uid 65534");
    // Our own client refuses a directory others may enter: close it again before asking.
    std::fs::set_permissions(&srv.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        srv.status()[0]["state"],
        "serving",
        "the stop request was not obeyed"
    );
}
