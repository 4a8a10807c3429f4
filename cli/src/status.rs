//! What `status` prints: one heading line per server, then a row per worker.

use std::fmt::Write as _;

use port_sharding::{Health, Role, ServerStatus, SteeringState, WorkerStats};

/// Each column's heading and width; over UDP the connection columns count datagrams and flows instead.
const TCP: [(&str, usize); 13] = [
    ("worker", 6),
    ("kind", 8),
    ("gen", 4),
    ("pid", 8),
    ("state", 9),
    ("health", 13),
    ("accepted", 10),
    ("active", 8),
    ("bytes in", 12),
    ("bytes out", 12),
    ("errors", 7),
    ("restarts", 8),
    ("queue", 6),
];
const UDP: [(&str, usize); 13] = [
    ("worker", 6),
    ("kind", 8),
    ("gen", 4),
    ("pid", 8),
    ("state", 9),
    ("dgrams in", 10),
    ("dgrams out", 10),
    ("flows", 6),
    ("bytes in", 12),
    ("bytes out", 12),
    ("errors", 7),
    ("restarts", 8),
    ("queue B", 8),
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
        let udp = s.mode.starts_with("udp");
        let columns = if udp { &UDP } else { &TCP };
        row(&mut out, columns, columns.map(|(h, _)| h.to_string()));
        for w in &s.workers {
            let (a, b, c) = if udp {
                (w.datagrams_in, w.datagrams_out, w.active)
            } else {
                (w.accepted, w.active, 0)
            };
            let (fifth, sixth, seventh) = if udp {
                (a.to_string(), b.to_string(), c.to_string())
            } else {
                (health(w), a.to_string(), b.to_string())
            };
            row(
                &mut out,
                columns,
                [
                    w.index.to_string(),
                    w.kind.to_string(),
                    w.generation.to_string(),
                    w.pid.to_string(),
                    w.state.to_string(),
                    fifth,
                    sixth,
                    seventh,
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
                let counts = if udp {
                    [p.datagrams_in, p.datagrams_out, p.active].map(|n| n.to_string())
                } else {
                    [String::new(), p.accepted.to_string(), p.active.to_string()]
                };
                let [x, y, z] = counts;
                row(
                    &mut out,
                    columns,
                    [
                        String::new(),
                        p.role.to_string(),
                        p.generation.to_string(),
                        p.pid.to_string(),
                        p.state.to_string(),
                        x,
                        y,
                        z,
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

fn row(out: &mut String, columns: &[(&str, usize); 13], cells: [String; 13]) {
    out.push(' ');
    for ((_, width), cell) in columns.iter().zip(cells) {
        write!(out, " {cell:>width$}").ok();
    }
    out.push('\n');
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
