//! What `status` prints: one heading line per server, then a row per worker.

use std::fmt::Write as _;

use port_sharding::{Health, Role, ServerStatus, SteeringState, WorkerStats};

const HEADINGS: [&str; 13] = [
    "worker",
    "kind",
    "gen",
    "pid",
    "state",
    "health",
    "accepted",
    "active",
    "bytes in",
    "bytes out",
    "errors",
    "restarts",
    "queue",
];

/// The status table of `servers`.
pub(crate) fn table(servers: &[ServerStatus]) -> String {
    let mut out = String::new();
    for s in servers {
        let steering = match (&s.steering.state, &s.steering.note) {
            (SteeringState::Active, _) => format!(
                "steering new connections to worker(s) {}",
                s.steering
                    .to
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (SteeringState::Off, Some(why)) => format!("steering off: {why}"),
            (state, _) => format!("steering {state}"),
        };
        let what = if s.command.is_empty() {
            format!("mode {}", s.mode)
        } else {
            format!("command {}", s.command.join(" "))
        };
        let state = match s.drain_in_secs {
            Some(secs) => format!("{} (drain delay: draining in {secs:.1}s)", s.state),
            None => s.state.to_string(),
        };
        // A server in another pid namespace (a container): whose pids these are.
        let ns = match &s.pid_namespace {
            Some(ns) if ns.translated == Some(true) => {
                format!(" (pid {} in its pid namespace)", ns.pid)
            }
            Some(ns) if ns.translated == Some(false) => {
                " (in another pid namespace: the pids below are that namespace's)".to_string()
            }
            _ => String::new(),
        };
        writeln!(
            out,
            "{} server pid {}{ns} on {} — {state}, {what}, up {:.0}s, {steering}",
            s.runtime, s.pid, s.addr, s.uptime_secs
        )
        .ok();
        row(&mut out, HEADINGS.map(str::to_string));
        for w in &s.workers {
            row(
                &mut out,
                [
                    w.index.to_string(),
                    w.kind.to_string(),
                    w.generation.to_string(),
                    w.pid.to_string(),
                    w.state.to_string(),
                    health(w),
                    w.accepted.to_string(),
                    w.active.to_string(),
                    w.bytes_in.to_string(),
                    w.bytes_out.to_string(),
                    w.errors.to_string(),
                    w.restarts.to_string(),
                    w.queue_len.to_string(),
                ],
            );
            // During a reload (and while replaced workers finish their connections), the listener's
            // other processes, one line each under its row.
            for p in w.processes.iter().filter(|p| p.role != Role::Serving) {
                row(
                    &mut out,
                    [
                        String::new(),
                        p.role.to_string(),
                        p.generation.to_string(),
                        p.pid.to_string(),
                        p.state.to_string(),
                        String::new(),
                        p.accepted.to_string(),
                        p.active.to_string(),
                        p.bytes_in.to_string(),
                        p.bytes_out.to_string(),
                        p.errors.to_string(),
                        String::new(),
                        String::new(),
                    ],
                );
            }
        }
    }
    out
}

/// `keeping up`, `stalled 3.2s` or `overloaded`.
fn health(w: &WorkerStats) -> String {
    match (w.health, w.stalled_ms) {
        (Health::Stalled, Some(ms)) => format!("stalled {:.1}s", ms as f64 / 1000.0),
        (h, _) => h.to_string(),
    }
}

fn row(out: &mut String, cells: [String; 13]) {
    let [a, k, n, b, c, x, d, e, f, g, h, i, j] = cells;
    writeln!(
        out,
        "  {a:>6} {k:>8} {n:>4} {b:>8} {c:>9} {x:>13} {d:>10} {e:>8} {f:>12} {g:>12} {h:>7} {i:>8} {j:>6}"
    )
    .ok();
}

/// Whether `pid` exists and has not exited (a zombie waiting for its parent counts as gone).
pub(crate) fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
