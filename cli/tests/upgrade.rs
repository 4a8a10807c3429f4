//! `port-sharding upgrade` and SIGUSR2 without a service manager: the supervisor starts its successor (this
//! binary again, same arguments) as its child; the successor takes the sockets over and the old one drains
//! and exits 0. (Under a service manager: tests/e2e/test_systemd.py.)

mod common;

use common::*;

fn successor_of(srv: &mut ServerProc) -> i32 {
    // Waited for: the log reader may lag behind the `upgrade` command's answer on a busy machine.
    let line = srv.wait_log("upgrade: started successor pid");
    line.split("successor pid ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_upgrade_command_hands_the_sockets_to_a_fresh_supervisor() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "2"]).start();
    assert_eq!(round_trip(srv.port, b"before"), b"before");
    let port = srv.port.to_string();
    let out = cli(&srv.dir, &["upgrade", "--port", &port]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let successor = successor_of(&mut srv);
    assert!(
        stdout.contains(&format!(
            "rust server pid {}: upgraded to pid {successor} in",
            srv.pid()
        )),
        "{stdout}"
    );
    assert!(srv.wait_exit().success(), "{:#?}", srv.log());
    assert!(
        srv.count_log("stopped (taken over)") == 1,
        "{:#?}",
        srv.log()
    );
    // The successor is this binary again with the same arguments, serving the same sockets.
    let argv = std::fs::read(format!("/proc/{successor}/cmdline")).unwrap();
    let argv: Vec<&[u8]> = argv.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    assert!(
        argv.contains(&&b"serve"[..]) && argv.contains(&&b"--workers"[..]),
        "{argv:?}"
    );
    assert_eq!(round_trip(srv.port, b"after"), b"after");
    let status = srv.status();
    assert_eq!(
        status[0]["pid"].as_i64(),
        Some(successor as i64),
        "{status}"
    );
    // SAFETY: the successor we saw start; it drains on SIGTERM.
    unsafe { libc::kill(successor, libc::SIGTERM) };
    wait_until("the successor to exit", || !alive(successor));
}

#[test]
fn sigusr2_upgrades() {
    let mut srv = Spawn::new(&["--port", "0", "--workers", "1"]).start();
    srv.signal(libc::SIGUSR2);
    srv.wait_log("upgrade: successor pid");
    assert!(srv.wait_exit().success(), "{:#?}", srv.log());
    assert_eq!(
        srv.count_log("upgrade: started successor"),
        1,
        "{:#?}",
        srv.log()
    );
    let successor = successor_of(&mut srv);
    assert_eq!(round_trip(srv.port, b"hi"), b"hi");
    // SAFETY: the successor we saw start.
    unsafe { libc::kill(successor, libc::SIGTERM) };
    wait_until("the successor to exit", || !alive(successor));
}

#[test]
fn upgrade_with_nothing_running_exits_3() {
    let dir = control_dir();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    let out = cli(&dir, &["upgrade", "--port", &port]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port-sharding server is running"));
    let help = cli(&dir, &["upgrade", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("successor"));
}
