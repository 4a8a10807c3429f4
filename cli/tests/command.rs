//! Command workers end to end: `serve -- CMD` with a real program (tests/programs/fd3_worker.py, standard
//! library only) on real sockets, real signals; reload in place under load; takeover between command servers.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

fn worker_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs/fd3_worker.py")
        .display()
        .to_string()
}

/// `serve` args, then `--`, then the worker.
fn args<'a>(serve: &[&'a str], worker: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--port", "0", "--ready-delay", "200ms"];
    v.extend_from_slice(serve);
    v.push("--");
    v.push("python3");
    v.extend_from_slice(worker);
    v
}

/// One round trip to a command worker: `(pid, index)` of who answered.
fn ask(port: u16, msg: &str) -> std::io::Result<(i32, usize)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(msg.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let mut parts = reply.splitn(3, ' ');
    let pid = parts.next().and_then(|p| p.parse().ok());
    let index = parts.next().and_then(|p| p.parse().ok());
    match (pid, index, parts.next()) {
        (Some(pid), Some(index), Some(rest)) if rest == msg => Ok((pid, index)),
        _ => Err(std::io::Error::other(format!(
            "bad reply {reply:?} to {msg:?}"
        ))),
    }
}

/// Clients on threads, back to back, until stopped (at most 60 s or 100,000 connections each): how many
/// were answered, by whom, and what failed.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<std::collections::HashSet<i32>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `echo`: the server echoes (built-in); otherwise it is a command worker answering `pid index msg`.
    fn start(port: u16, threads: usize, echo: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let deadline = Instant::now() + Duration::from_secs(60);
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed, pids) =
                    (stop.clone(), ok.clone(), failed.clone(), pids.clone());
                std::thread::spawn(move || {
                    for i in 0..100_000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            return;
                        }
                        let msg = format!("t{t} m{i}");
                        let result = if echo {
                            std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                                s.set_read_timeout(Some(PATIENCE))?;
                                s.write_all(msg.as_bytes())?;
                                s.shutdown(std::net::Shutdown::Write)?;
                                let mut back = Vec::new();
                                s.read_to_end(&mut back)?;
                                if back == msg.as_bytes() {
                                    Ok(None)
                                } else {
                                    Err(std::io::Error::other(format!("echo {back:?}")))
                                }
                            })
                        } else {
                            ask(port, &msg).map(|(pid, _)| Some(pid))
                        };
                        match result {
                            Ok(pid) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                if let Some(pid) = pid {
                                    pids.lock().unwrap().insert(pid);
                                }
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{msg}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            pids,
            threads,
        }
    }

    /// Waits until `n` more connections were answered (the load runs and is served now).
    fn wait_for(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        wait_until(&format!("{target} answered connections"), || {
            self.ok.load(Ordering::SeqCst) >= target
        });
    }

    /// Stops it: `(answered, failures)`.
    fn stop(self) -> (u64, Vec<String>, std::collections::HashSet<i32>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let pids = self.pids.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed, pids)
    }
}

/// `port-sharding reload` for `srv`'s port: (exit code, stdout, stderr).
fn reload(srv: &ServerProc, extra: &[&str]) -> (i32, String, String) {
    let port = srv.port.to_string();
    let mut a = vec!["reload", "--port", &port];
    a.extend_from_slice(extra);
    let out = cli(&srv.dir, &a);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn current_pids(srv: &ServerProc) -> Vec<i32> {
    srv.status()[0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn command_workers_serve_and_share_the_port_with_a_builtin_server() {
    if !python3("command_workers_serve_and_share_the_port_with_a_builtin_server") {
        return;
    }
    let script = worker_script();
    let cmd = Spawn::new(&args(&["-w", "2"], &[&script])).start();
    let port = cmd.port.to_string();
    let builtin = Spawn::new(&["--port", &port, "-w", "1", "--mode", "hello"])
        .dir(&cmd.dir.clone())
        .start();
    let (mut by_command, mut by_builtin) = (std::collections::HashSet::new(), 0);
    for i in 0..300 {
        let mut s = connect(cmd.port);
        s.write_all(format!("m{i}").as_bytes()).unwrap();
        let reply = String::from_utf8(read_to_end(&mut s)).unwrap();
        if reply.starts_with("Hello from rust process") {
            by_builtin += 1;
        } else {
            let pid: i32 = reply.split(' ').next().unwrap().parse().unwrap();
            assert!(reply.ends_with(&format!(" m{i}")), "{reply:?}");
            by_command.insert(pid);
        }
    }
    assert!(by_builtin > 0, "the built-in server got no connection");
    assert_eq!(by_command.len(), 2, "both command workers answer");
    let status = cmd.status();
    let mine = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == cmd.pid())
        .unwrap();
    assert_eq!(mine["mode"], "command");
    assert_eq!(mine["command"][1], script.as_str());
    for w in mine["workers"].as_array().unwrap() {
        assert_eq!(w["kind"], "command");
        assert_eq!(w["generation"], 1);
        assert_eq!(w["state"], "serving");
        assert!(by_command.contains(&(w["pid"].as_i64().unwrap() as i32)));
    }
    let table = cli(&cmd.dir, &["status", "--port", &port]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("command python3 {script}")),
        "{table}"
    );
    drop(builtin);
}

#[test]
fn a_crashed_command_worker_is_replaced_on_the_same_listener_and_its_queue_answered() {
    if !python3("a_crashed_command_worker_is_replaced_on_the_same_listener_and_its_queue_answered")
    {
        return;
    }
    let script = worker_script();
    let mut srv = Spawn::new(&args(&["-w", "1"], &[&script])).start();
    let old = current_pids(&srv)[0];
    // Stop the worker, queue connections on its listener, then kill it: its replacement answers them.
    unsafe { libc::kill(old, libc::SIGSTOP) };
    wait_until("the worker is stopped", || {
        std::fs::read_to_string(format!("/proc/{old}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('T')
        })
    });
    let mut queued: Vec<_> = (0..20)
        .map(|i| {
            let mut s = connect(srv.port);
            s.write_all(format!("q{i}").as_bytes()).unwrap();
            s
        })
        .collect();
    wait_until("20 connections queued", || {
        kernel_queues(srv.port).iter().sum::<u64>() >= 20
    });
    unsafe { libc::kill(old, libc::SIGKILL) };
    srv.wait_log(&format!("(pid {old}) was killed by SIGKILL"));
    for (i, s) in queued.iter_mut().enumerate() {
        let reply = String::from_utf8(read_to_end(s)).unwrap();
        let pid: i32 = reply.split(' ').next().unwrap().parse().unwrap();
        assert_ne!(pid, old);
        assert!(reply.ends_with(&format!("q{i}")), "{reply:?}");
    }
    let w = &srv.status()[0]["workers"][0];
    assert_eq!(
        (w["generation"].as_u64(), w["restarts"].as_u64()),
        (Some(2), Some(1))
    );
}

fn reload_under_load(serve: &[&str], worker: &[&str], echo: bool) {
    let mut srv = Spawn::new(&args(serve, worker)).start();
    let before = current_pids(&srv);
    let load = Load::start(srv.port, 6, echo);
    load.wait_for(300);
    let (code, out, err) = reload(&srv, &[]);
    assert_eq!(code, 0, "reload failed: {out}{err}");
    load.wait_for(300);
    let (answered, failed, answered_by) = load.stop();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answered + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    let after = current_pids(&srv);
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every pid replaced: {before:?} → {after:?}"
    );
    for (i, (old, new)) in before.iter().zip(&after).enumerate() {
        assert!(
            out.contains(&format!("worker {i} pid {old} → pid {new} (generation 2)")),
            "{out}"
        );
        wait_until("the old worker exits", || !alive(*old));
        // Reaped and logged by the supervisor (a moment after it is gone).
        srv.wait_log(&format!("(pid {old}, generation 1) retired"));
    }
    if !echo {
        assert!(
            after.iter().any(|p| answered_by.contains(p)),
            "the new workers answered"
        );
    }
    assert_capacity_kept(&srv.log(), &before, &after);
    eprintln!("reload under load: {answered} answered, 0 failed");
}

/// From the supervisor's log, in order: each old worker is asked to stop only once its successor is ready
/// (never below N ready), and the next new worker starts only after that (never above N + 1).
fn assert_capacity_kept(log: &[String], before: &[i32], after: &[i32]) {
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}: {log:#?}"))
    };
    let mut last_ready = 0;
    for (i, (old, new)) in before.iter().zip(after).enumerate() {
        let started = at(&format!("worker {i} started: pid {new},"));
        let ready = at(&format!("is ready; pid {old} stops"));
        let retired = at(&format!("(pid {old}, generation 1) retired"));
        assert!(started < ready && ready < retired, "{log:#?}");
        assert!(
            i == 0 || started > last_ready,
            "two new workers at once: {log:#?}"
        );
        last_ready = ready;
    }
}

#[test]
fn reload_of_command_workers_under_load_loses_nothing() {
    if !python3("reload_of_command_workers_under_load_loses_nothing") {
        return;
    }
    let script = worker_script();
    reload_under_load(&["-w", "2"], &[&script], false);
}

#[test]
fn reload_of_builtin_workers_under_load_loses_nothing() {
    let srv = Spawn::new(&["--port", "0", "-w", "2"]).start();
    let before = current_pids(&srv);
    let load = Load::start(srv.port, 6, true);
    load.wait_for(300);
    let (code, out, err) = reload(&srv, &["--batch", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    load.wait_for(300);
    let (answered, failed, _) = load.stop();
    assert!(
        failed.is_empty(),
        "{} of {answered} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let after = current_pids(&srv);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    let status = srv.status();
    for w in status[0]["workers"].as_array().unwrap() {
        assert_eq!(
            (w["kind"].as_str(), w["generation"].as_u64()),
            (Some("builtin"), Some(2))
        );
        assert_eq!(w["state"], "serving");
    }
}

#[test]
fn sighup_reloads() {
    let mut srv = Spawn::new(&["--port", "0", "-w", "2"]).start();
    let before = current_pids(&srv);
    srv.signal(libc::SIGHUP);
    srv.wait_log("reload: done, 2 worker(s) replaced");
    let after = current_pids(&srv);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );
    assert_eq!(round_trip(srv.port, b"still here"), b"still here");
}

#[test]
fn a_reload_whose_new_command_fails_keeps_the_old_workers_serving() {
    if !python3("a_reload_whose_new_command_fails_keeps_the_old_workers_serving") {
        return;
    }
    let dir = control_dir();
    let script: PathBuf = dir.join("app.py");
    std::fs::copy(worker_script(), &script).unwrap();
    let script_arg = script.display().to_string();
    // READY=1 from each: they have read the script before it changes.
    let srv = Spawn::new(&args(
        &["-w", "2", "--ready", "notify"],
        &[&script_arg, "--notify"],
    ))
    .dir(&dir)
    .start();
    let before = current_pids(&srv);
    // New code on disk that cannot start.
    std::fs::write(&script, "import sys\nsys.exit('broken release')\n").unwrap();
    let (code, out, err) = reload(&srv, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("failed: worker 0 (new pid ")
            && err.contains("exited with status 1 before it was ready"),
        "{err}"
    );
    assert_eq!(
        current_pids(&srv),
        before,
        "the old workers keep their listeners"
    );
    let mut answered_by = std::collections::HashSet::new();
    for i in 0..50 {
        answered_by.insert(ask(srv.port, &format!("after {i}")).unwrap().0);
    }
    assert_eq!(answered_by, before.iter().copied().collect());
}

/// A reload must not promote a new worker before it is ready. The new generation starts, stays alive,
/// but never accepts nor sends READY=1 (`--hold-if`, a release stuck in its start-up): until the ready
/// timeout every connection is answered by the OLD worker, then the reload reports the failure, the new
/// worker is gone and the old one still serves. A supervisor that promoted the new worker early would stop
/// the old one: connections would go unanswered, or the reload would report success.
#[test]
fn a_reload_keeps_the_old_worker_until_the_new_one_sends_ready() {
    if !python3("a_reload_keeps_the_old_worker_until_the_new_one_sends_ready") {
        return;
    }
    let dir = control_dir();
    let hold = dir.join("hold");
    let hold_arg = hold.display().to_string();
    let script = worker_script();
    let mut srv = Spawn::new(&args(
        &["-w", "1", "--ready", "notify", "--ready-timeout", "4s"],
        &[&script, "--notify", "--hold-if", &hold_arg],
    ))
    .dir(&dir)
    .start();
    let old = current_pids(&srv)[0];
    std::fs::write(&hold, "").unwrap(); // from now on a new worker holds
    let (port, ctl) = (srv.port.to_string(), srv.dir.clone());
    let reloading = std::thread::spawn(move || cli(&ctl, &["reload", "--port", &port]));
    let started = srv.wait_log("generation 2");
    let new: i32 = started
        .split("started: pid ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    srv.wait_log(&format!("fd3_worker {new}: holding, never ready"));
    // Until the reload gives up (bounded by the ready timeout, and here by count).
    let mut asked = 0;
    while !reloading.is_finished() && asked < 2_000 {
        let (pid, _) = ask(srv.port, &format!("during {asked}"))
            .unwrap_or_else(|e| panic!("not answered while the new worker was not ready: {e}"));
        assert_eq!(
            pid, old,
            "answered by pid {pid} before the new worker was ready"
        );
        asked += 1;
    }
    let out = reloading.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the reload must fail: {err}");
    assert!(
        err.contains(&format!(
            "worker 0 (new pid {new}) was not ready within 4s (the ready timeout)"
        )),
        "{err}"
    );
    assert!(
        asked > 0,
        "the reload ended before a connection could be tried"
    );
    assert_eq!(srv.count_log("is ready; pid"), 0, "{:#?}", srv.log());
    assert_all_gone(&[new]);
    assert_eq!(
        current_pids(&srv),
        vec![old],
        "the old worker keeps its listener"
    );
    for i in 0..20 {
        assert_eq!(ask(srv.port, &format!("after {i}")).unwrap().0, old);
    }
    eprintln!("{asked} connection(s) answered by the old worker while the new one was not ready");
}

#[test]
fn ready_notify_is_honoured_and_the_ready_timeout_enforced() {
    if !python3("ready_notify_is_honoured_and_the_ready_timeout_enforced") {
        return;
    }
    let script = worker_script();
    let mut srv = Spawn::new(&args(
        &["-w", "1", "--ready", "notify"],
        &[&script, "--notify"],
    ))
    .start();
    srv.wait_log("sent READY=1 (fd3_worker serving)");
    ask(srv.port, "hi").unwrap();

    // Without READY=1 the worker never counts as ready: killed at the timeout, restarted with back-off.
    let mut mute = Spawn::new(&args(
        &["-w", "1", "--ready", "notify", "--ready-timeout", "1s"],
        &[&script],
    ))
    .spawn();
    mute.wait_log("was not ready within 1s (no READY=1); killing it");
    mute.wait_log("before it was ready");
    assert_eq!(mute.status()[0]["state"], "starting");
    assert_eq!(mute.count_log("ready:"), 0);
}

#[test]
fn the_stop_signal_is_sent_and_sigkill_follows_after_the_drain_timeout() {
    if !python3("the_stop_signal_is_sent_and_sigkill_follows_after_the_drain_timeout") {
        return;
    }
    let script = worker_script();
    // READY=1 once its handlers are installed: a signal before that would find Python's defaults.
    let mut srv = Spawn::new(&args(
        &["-w", "1", "--stop-signal", "INT", "--ready", "notify"],
        &[&script, "--on-int", "--notify"],
    ))
    .start();
    let pid = current_pids(&srv)[0];
    srv.signal(libc::SIGTERM);
    assert!(srv.wait_exit().success());
    assert!(
        srv.log()
            .iter()
            .any(|l| l == &format!("fd3_worker {pid}: stopping on SIGINT")),
        "{:#?}",
        srv.log()
    );

    let mut stubborn = Spawn::new(&args(
        &["-w", "1", "--drain-timeout", "1s", "--ready", "notify"],
        &[&script, "--ignore-term", "--notify"],
    ))
    .start();
    let pid = current_pids(&stubborn)[0];
    stubborn.signal(libc::SIGTERM);
    stubborn.wait_log("after it was asked SIGTERM; sending SIGKILL");
    assert_eq!(
        stubborn.wait_exit().code(),
        Some(1),
        "a drain cut short exits 1"
    );
    assert_all_gone(&[pid]);
}

#[test]
fn takeover_between_command_servers_loses_nothing() {
    if !python3("takeover_between_command_servers_loses_nothing") {
        return;
    }
    let script = worker_script();
    let mut old = Spawn::new(&args(&["-w", "2"], &[&script])).start();
    let old_pids = current_pids(&old);
    let load = Load::start(old.port, 6, false);
    load.wait_for(300);
    let port = old.port.to_string();
    let mut a = vec![
        "--port",
        port.as_str(),
        "--ready-delay",
        "200ms",
        "-w",
        "2",
        "--takeover",
        "--",
    ];
    a.extend(["python3", script.as_str()]);
    let new = Spawn::new(&a).dir(&old.dir.clone()).start();
    assert!(old.wait_exit().success());
    load.wait_for(300);
    let (answered, failed, _) = load.stop();
    assert!(
        failed.is_empty(),
        "{} of {answered} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_all_gone(&old_pids);
    assert!(current_pids(&new).iter().all(|p| !old_pids.contains(p)));
}

#[test]
fn bench_http_workloads_verify_command_workers_answers() {
    if !python3("bench_http_workloads_verify_command_workers_answers") {
        return;
    }
    let script = worker_script();
    let srv = Spawn::new(&args(&["-w", "2"], &[&script, "--http"])).start();
    let port = srv.port.to_string();
    for workload in ["http", "http-keepalive"] {
        let out = cli(
            &srv.dir,
            &[
                "bench",
                "--port",
                &port,
                "--workload",
                workload,
                "-c",
                "4",
                "-n",
                "200",
                "-d",
                "20s",
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["workload"], workload);
        assert_eq!(report["ops"], 200, "{report}");
        assert_eq!(report["errors"]["total"], 0, "{report}");
    }
    // A server that answers something else than 200 is counted as failing.
    let echo = Spawn::new(&["--port", "0", "-w", "1", "--mode", "hello"]).start();
    let out = cli(
        &echo.dir,
        &[
            "bench",
            "--port",
            &echo.port.to_string(),
            "--workload",
            "http",
            "-c",
            "1",
            "-n",
            "5",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"]["total"], 5, "{report}");
}

#[test]
fn a_command_workers_connections_come_with_tcp_nodelay() {
    // The program sets nothing: TCP_NODELAY is the listener's, inherited by what it accepts (a server that
    // writes headers and body apart would otherwise wait 40 ms for each kept-alive response).
    if !python3("a_command_workers_connections_come_with_tcp_nodelay") {
        return;
    }
    let script = worker_script();
    let srv = Spawn::new(&args(&["-w", "1"], &[&script, "--nodelay"])).start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"?").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with(" nodelay=1"), "{reply:?}");
}

#[test]
fn built_in_and_command_servers_do_not_take_over_from_each_other() {
    if !python3("built_in_and_command_servers_do_not_take_over_from_each_other") {
        return;
    }
    let old = Spawn::new(&["--port", "0", "-w", "1"]).start();
    let port = old.port.to_string();
    let script = worker_script();
    let mut new = Spawn::new(&["--port", &port, "--takeover", "--", "python3", &script])
        .dir(&old.dir.clone())
        .spawn();
    assert_eq!(new.wait_exit().code(), Some(1));
    let refusal = new.wait_log("takeover failed");
    assert!(
        refusal.contains("this server runs built-in workers and the new one command workers"),
        "{refusal}"
    );
    assert_eq!(round_trip(old.port, b"still mine"), b"still mine");
}

#[test]
fn a_dead_supervisors_command_workers_get_the_stop_signal() {
    if !python3("a_dead_supervisors_command_workers_get_the_stop_signal") {
        return;
    }
    let script = worker_script();
    let mut srv = Spawn::new(&args(
        &["-w", "2", "--ready", "notify"],
        &[&script, "--notify"],
    ))
    .start();
    let workers = current_pids(&srv);
    srv.signal(libc::SIGKILL);
    srv.wait_exit();
    // Each worker is in a process group of its own (Ctrl-C reaches only the supervisor), so nothing but
    // PR_SET_PDEATHSIG tells it: it stops as the stop signal asks.
    assert_all_gone(&workers);
    for pid in workers {
        let said = format!("fd3_worker {pid}: stopping on SIGTERM");
        // Two workers write at once: Python writes a line and its newline separately, so lines may merge.
        wait_until(&said, || srv.log().iter().any(|l| l.contains(&said)));
    }
}
