//! `serve --protocol udp` under continuous load from `port-sharding bench --workload udp`: 64 flows, one
//! source port each, a numbered datagram every 2 ms per flow, every echo checked byte for byte. Reloads
//! and a takeover lose no datagram; a plain restart (a new server beside, SIGTERM to the old) is measured
//! for comparison. Loss is the assertion, never time.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use port_sharding_bench::Report;

/// The load, running until it is interrupted (bounded by its `--duration` of 120 s all the same).
struct Load(Option<Child>);

impl Load {
    fn start(srv: &ServerProc) -> Load {
        let child = Command::new(bin())
            .args([
                "bench",
                "--workload",
                "udp",
                "--port",
                &srv.port.to_string(),
                "-c",
                "64",
                "--interval",
                "2ms",
                "--duration",
                "120s",
                "--timeout",
                "2s",
                "--json",
                "--no-status",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap();
        Load(Some(child))
    }

    /// SIGINT: sending stops, echoes still due are awaited (at most `--timeout`), the report comes.
    fn finish(mut self) -> Report {
        let child = self.0.take().unwrap();
        // SAFETY: signalling the process we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bench report: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // SAFETY: our own child's group; ESRCH is fine.
            unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
            child.wait().ok();
        }
    }
}

/// Lets the load run `d` (a few hundred datagrams per flow) so each step happens under it.
fn under_load(d: Duration) {
    std::thread::sleep(d);
}

fn datagrams_in(status: &serde_json::Value) -> u64 {
    status[0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["datagrams_in"].as_u64().unwrap())
        .sum()
}

/// Waits until `n` lines of the log contain `needle`.
fn wait_lines(srv: &ServerProc, needle: &str, n: usize) {
    assert!(
        wait_count(srv, needle, n),
        "fewer than {n} {needle:?} lines; log: {:#?}",
        srv.log()
    );
}

#[test]
fn three_reloads_and_a_takeover_lose_no_datagram() {
    watchdog::allow(Duration::from_secs(150));
    let dir = control_dir();
    // Under continuous load no flow goes idle: with eBPF a replaced worker keeps its flows until the drain
    // timeout, then lets them go to the new generation.
    let mut old = Spawn::new(&[
        "--protocol",
        "udp",
        "-w",
        "2",
        "--port",
        "0",
        "--drain-timeout",
        "2s",
    ])
    .dir(&dir)
    .start();
    let load = Load::start(&old);
    under_load(Duration::from_millis(500));
    let before = datagrams_in(&old.status());
    assert!(before > 0, "the load reaches the server");
    for round in 1..=3 {
        old.signal(libc::SIGHUP);
        wait_lines(&old, "reload: done", round);
        // Each old worker leaves only once its socket has been read empty.
        wait_lines(&old, "retired:", 2 * round);
        under_load(Duration::from_millis(300));
    }
    let status = old.status();
    let workers = status[0]["workers"].as_array().unwrap();
    assert!(workers.iter().all(|w| w["generation"] == 4), "{status:#}");
    assert!(datagrams_in(&status) > before);
    assert!(old
        .log()
        .iter()
        .any(|l| l.contains("read its socket empty")));

    let mut new = Spawn::new(&[
        "--protocol",
        "udp",
        "-w",
        "2",
        "--port",
        &old.port.to_string(),
        "--takeover",
    ])
    .dir(&dir)
    .start();
    assert!(old.wait_exit().success(), "{:#?}", old.log());
    under_load(Duration::from_millis(500));
    assert!(datagrams_in(&new.status()) > 0, "the new server serves");
    let report = load.finish();
    eprintln!(
        "reloads + takeover: {} datagrams echoed, {} lost, p99 {} µs",
        report.ops, report.errors.lost, report.latency_us.p99
    );
    assert!(report.ops > 0);
    assert_eq!(
        report.errors.total, 0,
        "lost {} (of {} errors): {:?}",
        report.errors.lost, report.errors.total, report.error_samples
    );
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit().success());
}

/// The baseline: a new server started beside the old one, then SIGTERM to the old one. What it loses
/// (datagrams the kernel still hashed to the old sockets after their workers' last read) is reported,
/// not asserted: it depends on timing.
#[test]
fn a_plain_restart_is_measured_for_comparison() {
    watchdog::allow(Duration::from_secs(150));
    let dir = control_dir();
    let mut old = Spawn::new(&["--protocol", "udp", "-w", "2", "--port", "0"])
        .dir(&dir)
        .start();
    let load = Load::start(&old);
    under_load(Duration::from_millis(500));
    let mut new = Spawn::new(&[
        "--protocol",
        "udp",
        "-w",
        "2",
        "--port",
        &old.port.to_string(),
    ])
    .dir(&dir)
    .start();
    under_load(Duration::from_millis(300));
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit().success(), "{:#?}", old.log());
    under_load(Duration::from_millis(500));
    let report = load.finish();
    eprintln!(
        "plain restart: {} datagrams echoed, {} lost",
        report.ops, report.errors.lost
    );
    assert!(report.ops > 0);
    assert_eq!(
        report.errors.total - report.errors.lost,
        0,
        "only losses, never a wrong echo: {:?}",
        report.error_samples
    );
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit().success());
}

#[test]
fn status_counts_datagrams_and_flows_and_bad_settings_are_refused() {
    let srv = Spawn::new(&[
        "--protocol",
        "udp",
        "-w",
        "1",
        "--port",
        "0",
        "--mode",
        "hello",
    ])
    .start();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.send_to(b"hi", ("127.0.0.1", srv.port)).unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from.port(), srv.port);
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(reply.starts_with("Hello from rust process "), "{reply}");
    let until = Instant::now() + PATIENCE;
    loop {
        let st = srv.status();
        let w = &st[0]["workers"][0];
        if w["active"] == 1 {
            assert_eq!(
                (w["datagrams_in"].as_u64(), w["datagrams_out"].as_u64()),
                (Some(1), Some(1))
            );
            assert_eq!(st[0]["mode"], "udp hello");
            break;
        }
        assert!(Instant::now() < until, "no live flow in {st:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (args, says) in [
        (&["--protocol", "sctp"][..], "--protocol"),
        (&["--protocol", "udp", "--mode", "once"][..], "--mode"),
        (&["--protocol", "udp", "--migrate"][..], "--migrate"),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// With eBPF: after a reload a flow keeps reaching the worker that served it, a new flow reaches the new
/// worker, and once the old flow is idle for `udp_flow_idle` the old worker lets go and retires.
#[test]
fn flows_stay_with_the_worker_that_served_them_until_idle() {
    let srv = Spawn::new(&[
        "--protocol",
        "udp",
        "-w",
        "1",
        "--port",
        "0",
        "--udp-flow-idle",
        "500ms",
    ])
    .start();
    if srv.count_log("steered by an eBPF program") == 0 {
        return skip(
            "flows_stay_with_the_worker_that_served_them_until_idle",
            "bpf() is not permitted here (the classic program steers, statelessly)",
        );
    }
    let port = srv.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let old_flow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (mut sent, mut back) = (0u64, 0u64);
            let until = Instant::now() + PATIENCE;
            let mut buf = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                s.send(&sent.to_be_bytes()).unwrap();
                sent += 1;
                if s.recv(&mut buf)
                    .is_ok_and(|n| buf[..n] == (sent - 1).to_be_bytes())
                {
                    back += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, back)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    srv.signal(libc::SIGHUP);
    wait_lines(&srv, "reload: done", 1);
    let retiring_in = |srv: &ServerProc| -> Option<u64> {
        let st = srv.status();
        st[0]["workers"][0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "retiring")
            .map(|p| p["datagrams_in"].as_u64().unwrap())
    };
    let first = retiring_in(&srv).expect("the old worker still serves its flow");
    let new = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    new.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    for i in 0..20u8 {
        new.send_to(&[i], ("127.0.0.1", port)).unwrap();
        assert_eq!(new.recv_from(&mut buf).unwrap().0, 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    let later = retiring_in(&srv).expect("the old worker still serves its flow");
    assert!(
        later > first,
        "the old flow still reaches the old worker ({first} → {later})"
    );
    let st = srv.status();
    let serving = st[0]["workers"][0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "serving")
        .unwrap()
        .clone();
    assert_eq!(serving["generation"], 2);
    assert_eq!(serving["datagrams_in"], 20, "the new flow, only: {st:#}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, back) = old_flow.join().unwrap();
    assert_eq!(sent, back, "every datagram of the old flow was echoed");
    wait_lines(&srv, "its flows are idle", 1);
    wait_lines(&srv, "retired:", 1);
}

/// With eBPF: a flow answered by worker k before a takeover is answered by worker k of the new server after
/// it (both programs spread flows by the same hash over the same sockets in the same order), and a flow that
/// began before a reload keeps its seat too.
#[test]
fn a_flow_keeps_its_seat_across_a_reload_and_a_takeover() {
    let dir = control_dir();
    let args = |port: &str| -> Vec<String> {
        [
            "--protocol",
            "udp",
            "-w",
            "2",
            "--mode",
            "hello",
            "--port",
            port,
            "--udp-flow-idle",
            "300ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("0");
    let mut old = Spawn::new(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .dir(&dir)
        .start();
    if old.count_log("steered by an eBPF program") == 0 {
        return skip(
            "a_flow_keeps_its_seat_across_a_reload_and_a_takeover",
            "bpf() is not permitted here",
        );
    }
    let port = old.port;
    let flows: Vec<std::net::UdpSocket> = (0..16)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s
        })
        .collect();
    // The seat of the worker whose greeting answers each flow now.
    let seats = |srv: &ServerProc| -> Vec<u64> {
        let st = srv.status();
        let by_pid: Vec<(u64, u64)> = st[0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| {
                let i = w["index"].as_u64().unwrap();
                w["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |p| (p["pid"].as_u64().unwrap(), i))
            })
            .collect();
        flows
            .iter()
            .map(|s| {
                s.send(b"?").unwrap();
                let mut buf = [0u8; 128];
                let n = s.recv(&mut buf).unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let pid: u64 = text.trim().rsplit(' ').next().unwrap().parse().unwrap();
                by_pid
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map(|(_, i)| *i)
                    .expect("a worker of this server")
            })
            .collect()
    };
    let before = seats(&old);
    assert!(
        before.contains(&0) && before.contains(&1),
        "16 flows over 2 workers: {before:?}"
    );
    old.signal(libc::SIGHUP);
    wait_lines(&old, "reload: done", 1);
    wait_lines(&old, "retired:", 2);
    assert_eq!(seats(&old), before, "after a reload");
    let new = Spawn::new(
        &[args(&port.to_string()), vec!["--takeover".into()]]
            .concat()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .dir(&dir)
    .start();
    assert!(old.wait_exit().success(), "{:#?}", old.log());
    assert_eq!(seats(&new), before, "after a takeover");
}
