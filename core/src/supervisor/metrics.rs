//! `/metrics`: the server and its workers in the Prometheus text exposition format (version 0.0.4), from
//! what the supervisor already has — the stats area (each seat's counters, folded over its workers, live
//! and exited) and the counts it keeps of its own events ([`Counters`]).
//!
//! Written here rather than with the `prometheus-client` crate: that crate's model is metric objects
//! registered once and updated in place, while these numbers live in shared memory written by other
//! processes, so it would serve only as an encoder — and its encoder writes OpenMetrics (`# EOF`, its own
//! rules for counter names), for a page of a dozen families whose escaping fits in two functions. It
//! would also bring `parking_lot` and a proc-macro crate into an engine that the Python and Ruby
//! extensions link. The page is checked by a real parser in the tests (`prometheus_client`'s).
//!
//! Per worker (one listener), labels `worker` (its index) and `kind`: counters cumulative over every
//! process that served the listener (restarts and reloads do not reset them). Its generation is a gauge
//! and a label of `port_sharding_worker_info` only: as a label of the counters it would start a new
//! series at every restart and reload, splitting each counter (Prometheus' `rate()` across the split
//! loses the increments) and growing the series count with every reload.

use std::fmt::{Display, Write as _};

use crate::lifecycle::Phase;
use crate::stats::{Health, WorkerStats};

/// What the supervisor counts of its own events, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    /// Reloads that replaced every worker.
    pub(super) reloads_done: u64,
    /// Reloads that stopped early (a new worker failed, or the server began to drain).
    pub(super) reloads_failed: u64,
    /// This server took over a running server's sockets (0 or 1).
    pub(super) adopted: u64,
    /// This server handed its sockets over to a successor that reported ready (0 or 1).
    pub(super) handed_over: u64,
    /// Workers that died unasked: a crash, or a failed start.
    pub(super) crashes: u64,
}

/// Everything the page shows, gathered by the supervisor when a scrape comes in.
pub(super) struct Page<'a> {
    pub(super) runtime: &'a str,
    pub(super) addr: std::net::SocketAddr,
    pub(super) phase: Phase,
    /// What `/readyz` says.
    pub(super) ready: bool,
    pub(super) workers: &'a [WorkerStats],
    pub(super) counters: Counters,
    pub(super) orphans: u64,
    pub(super) steering_active: bool,
    /// Times new connections began to go around a backed-up worker.
    pub(super) went_around: u64,
}

/// The exposition, `text/plain; version=0.0.4`.
pub(super) fn render(p: &Page<'_>) -> String {
    let mut w = Writer(String::with_capacity(4096 + 1024 * p.workers.len()));
    let version = crate::VERSION;
    let addr = p.addr.to_string();
    w.family(
        "port_sharding_info",
        "gauge",
        "The server: who hosts the engine, the address it serves, the engine's version (always 1).",
    );
    w.sample(
        "port_sharding_info",
        &[
            ("runtime", p.runtime),
            ("address", &addr),
            ("version", version),
        ],
        1,
    );
    w.family(
        "port_sharding_ready",
        "gauge",
        "1 while the listeners accept (serving, handing over, the drain delay): what /readyz says.",
    );
    w.sample("port_sharding_ready", &[], u8::from(p.ready));
    w.family(
        "port_sharding_phase",
        "gauge",
        "The server's phase: 1 for the current one.",
    );
    for phase in [
        Phase::Starting,
        Phase::Serving,
        Phase::HandingOver,
        Phase::Draining,
    ] {
        let on = u8::from(phase == p.phase);
        w.sample("port_sharding_phase", &[("phase", phase.as_str())], on);
    }
    w.family(
        "port_sharding_workers",
        "gauge",
        "Listeners, each with its serving worker.",
    );
    w.sample("port_sharding_workers", &[], p.workers.len());
    w.family(
        "port_sharding_reloads_total",
        "counter",
        "Reloads in place: done (every worker replaced) or failed (stopped early; the others kept serving).",
    );
    let c = p.counters;
    w.sample(
        "port_sharding_reloads_total",
        &[("result", "done")],
        c.reloads_done,
    );
    w.sample(
        "port_sharding_reloads_total",
        &[("result", "failed")],
        c.reloads_failed,
    );
    w.family(
        "port_sharding_takeovers_total",
        "counter",
        "Takeovers this server took part in: adopted (it took a running server's sockets) or handed_over.",
    );
    w.sample(
        "port_sharding_takeovers_total",
        &[("side", "adopted")],
        c.adopted,
    );
    w.sample(
        "port_sharding_takeovers_total",
        &[("side", "handed_over")],
        c.handed_over,
    );
    w.family(
        "port_sharding_worker_starts_total",
        "counter",
        "Worker processes started: first starts, restarts and reloads.",
    );
    let starts: u64 = p.workers.iter().map(|s| s.generation).sum();
    w.sample("port_sharding_worker_starts_total", &[], starts);
    w.family(
        "port_sharding_worker_crashes_total",
        "counter",
        "Workers that died unasked (or before they were ready); each was restarted.",
    );
    w.sample("port_sharding_worker_crashes_total", &[], c.crashes);
    w.family(
        "port_sharding_orphans_reaped_total",
        "counter",
        "Processes that were not workers reaped as PID 1 or subreaper (orphans of command workers).",
    );
    w.sample("port_sharding_orphans_reaped_total", &[], p.orphans);
    w.family(
        "port_sharding_steering_active",
        "gauge",
        "1 while new connections are steered away from stalled or overloaded workers.",
    );
    w.sample(
        "port_sharding_steering_active",
        &[],
        u8::from(p.steering_active),
    );
    w.family(
        "port_sharding_steering_around_backed_up_total",
        "counter",
        "Times new connections began to go around a worker whose queue was not draining (backed up).",
    );
    w.sample(
        "port_sharding_steering_around_backed_up_total",
        &[],
        p.went_around,
    );
    per_worker(&mut w, p.workers);
    w.0
}

/// The per-worker families, every worker under each.
fn per_worker(w: &mut Writer, workers: &[WorkerStats]) {
    let labels: Vec<(String, String)> = workers
        .iter()
        .map(|s| (s.index.to_string(), s.kind.to_string()))
        .collect();
    let ids = |i: usize| {
        [
            ("worker", labels[i].0.as_str()),
            ("kind", labels[i].1.as_str()),
        ]
    };
    w.family(
        "port_sharding_worker_info",
        "gauge",
        "Each worker (listener): its generation (the first is 1) and the pid serving it (always 1).",
    );
    for (i, s) in workers.iter().enumerate() {
        let (gen, pid) = (s.generation.to_string(), s.pid.to_string());
        let [a, b] = ids(i);
        w.sample(
            "port_sharding_worker_info",
            &[a, b, ("generation", &gen), ("pid", &pid)],
            1,
        );
    }
    type Get = fn(&WorkerStats) -> u64;
    let families: [(&str, &str, &str, Get); 9] = [
        ("port_sharding_worker_generation", "gauge", "Which worker serves the listener: 1 for the first, one more for each restart or reload.", |s| s.generation),
        ("port_sharding_worker_ready", "gauge", "1 while the listener's worker serves (its state is serving).", |s| u64::from(s.state == Phase::Serving)),
        ("port_sharding_worker_connections_accepted_total", "counter", "Connections accepted on the listener (command workers do not report theirs).", |s| s.accepted),
        ("port_sharding_worker_connections_active", "gauge", "Connections open now, in every live worker of the listener.", |s| s.active),
        ("port_sharding_worker_received_bytes_total", "counter", "Bytes read from clients.", |s| s.bytes_in),
        ("port_sharding_worker_sent_bytes_total", "counter", "Bytes written to clients.", |s| s.bytes_out),
        ("port_sharding_worker_errors_total", "counter", "Connections that ended in an error (reset, failed accept, idle or drain timeout).", |s| s.errors),
        ("port_sharding_worker_restarts_total", "counter", "Times the listener's worker was replaced after it died.", |s| s.restarts),
        ("port_sharding_worker_queue_length", "gauge", "Connections waiting in the listener's accept queue, as last sampled.", |s| s.queue_len),
    ];
    for (name, kind, help, get) in families {
        w.family(name, kind, help);
        for (i, s) in workers.iter().enumerate() {
            w.sample(name, &ids(i), get(s));
        }
    }
    w.family(
        "port_sharding_worker_health",
        "gauge",
        "The supervisor's judgement of each worker: 1 for the current one (keeping up, stalled, overloaded).",
    );
    for (i, s) in workers.iter().enumerate() {
        for h in [Health::KeepingUp, Health::Stalled, Health::Overloaded] {
            let [a, b] = ids(i);
            let name = h.to_string();
            let on = u8::from(s.health == h);
            w.sample(
                "port_sharding_worker_health",
                &[a, b, ("health", &name)],
                on,
            );
        }
    }
}

/// The page being written.
struct Writer(String);

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}").ok();
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (k, (label, v)) in labels.iter().enumerate() {
                if k > 0 {
                    self.0.push(',');
                }
                write!(self.0, "{label}=\"{}\"", escape_label(v)).ok();
            }
            self.0.push('}');
        }
        writeln!(self.0, " {value}").ok();
    }
}

/// A label value as the format quotes it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut w = Writer(String::new());
        w.sample("m", &[("a", "x\"y\\z\nw")], 3);
        assert_eq!(w.0, "m{a=\"x\\\"y\\\\z\\nw\"} 3\n");
        w.family("f", "counter", "a \\ b\nc");
        assert!(w.0.ends_with("# HELP f a \\\\ b\\nc\n# TYPE f counter\n"));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let page = Page {
            runtime: "rust",
            addr: "127.0.0.1:80".parse().unwrap(),
            phase: Phase::Serving,
            ready: true,
            workers: &[],
            counters: Counters::default(),
            orphans: 0,
            steering_active: false,
            went_around: 0,
        };
        let text = render(&page);
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types.len(), helps);
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.dedup();
        assert_eq!(names.len(), types.len());
        assert!(text.contains("port_sharding_ready 1\n"), "{text}");
    }
}
