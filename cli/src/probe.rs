//! `port-sharding probe`: for exec probes (Kubernetes `exec`, Docker `HEALTHCHECK`, scripts): exit 0 when
//! a server on the port is serving, 1 with a one-line reason otherwise. It asks the servers' control
//! sockets (`status`), so it needs no admin endpoint, no HTTP client and no port in the image.

use port_sharding::{Phase, ServerStatus};

/// Whether `servers` has one that accepts, and the line that says so (or why not).
pub(crate) fn verdict(servers: &[ServerStatus]) -> (bool, String) {
    let describe = |s: &ServerStatus| {
        let ready = s
            .workers
            .iter()
            .filter(|w| w.state == Phase::Serving)
            .count();
        let delay = s
            .drain_in_secs
            .map(|secs| format!("; drain delay: draining in {secs:.1}s"))
            .unwrap_or_default();
        format!(
            "{} server pid {} on {} is {} ({ready} of {} worker(s) serving{delay})",
            s.runtime,
            s.pid,
            s.addr,
            s.state,
            s.workers.len()
        )
    };
    // Serving, or handing over to a successor (it still serves meanwhile): its listeners accept.
    match servers
        .iter()
        .find(|s| matches!(s.state, Phase::Serving | Phase::HandingOver))
    {
        Some(s) => (true, describe(s)),
        None => {
            let all: Vec<String> = servers.iter().map(describe).collect();
            (false, all.join("; "))
        }
    }
}
