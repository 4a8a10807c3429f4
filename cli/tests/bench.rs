//! `port-sharding bench` as a user runs it: against the engine (JSON on stdout, per-worker deltas from
//! the control socket) and its exit codes. The load generator's own counting and verification is tested
//! in the bench crate (bench/tests/load.rs).

mod common;

use std::net::TcpListener;
use std::process::Command;

use port_sharding_bench::Report;

/// The CLI against the engine: JSON on stdout, per-worker deltas from the control socket, exit codes.
#[test]
fn cli_against_the_engine_reports_workers() {
    let srv = common::Spawn::new(&["--port", "0", "--workers", "2", "--mode", "echo"]).start();
    let out = Command::new(common::bin())
        .args([
            "bench",
            "--port",
            &srv.port.to_string(),
            "--workload",
            "conn",
            "-c",
            "8",
            "-n",
            "300",
            "--json",
        ])
        .env("PORT_SHARDING_CONTROL_DIR", &srv.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r.ops, r.errors.total), (300, 0), "{:?}", r.error_samples);
    let workers = r.workers.expect("the engine's control socket answers");
    assert_eq!(workers.len(), 2);
    assert_eq!(workers.iter().map(|w| w.accepted).sum::<u64>(), 300);
    assert!(workers.iter().all(|w| w.runtime == "rust"));

    // Text report with the bar chart.
    let out = Command::new(common::bin())
        .args([
            "bench",
            "--port",
            &srv.port.to_string(),
            "--workload",
            "pingpong",
            "-c",
            "4",
            "-n",
            "100",
        ])
        .env("PORT_SHARDING_CONTROL_DIR", &srv.dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("per-worker") && text.contains("errors      none"),
        "{text}"
    );
}

#[test]
fn cli_exit_codes() {
    let dir = common::control_dir(); // nothing here may look at the default control directory
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = Command::new(common::bin())
        .args([
            "bench",
            "--port",
            &port.to_string(),
            "-W",
            "conn",
            "-c",
            "1",
            "-n",
            "2",
            "--json",
            "--no-status",
        ])
        .env("PORT_SHARDING_CONTROL_DIR", &*dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "failed operations exit 1");
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.errors.refused, 2);
    let out = Command::new(common::bin())
        .args(["bench", "--port", "9", "--size", "0"])
        .env("PORT_SHARDING_CONTROL_DIR", &*dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad arguments exit 2");
    let help = Command::new(common::bin())
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--host",
        "--port",
        "--workload",
        "--concurrency",
        "--duration",
        "--size",
        "--threads",
        "--json",
        "--connections",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
