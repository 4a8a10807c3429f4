//! What travels on the control socket: one JSON line each way, with limits on both sides.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats::WorkerStats;

/// The longest request line a server reads; a longer one is answered with a short error and closed.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;
/// The longest answer a client reads (a status of 253 workers is about 60 KiB).
pub(crate) const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// What a server answers to `takeover` while draining: the new server then looks for another.
pub(crate) const DRAINING: &str = "this server is draining";
/// A takeover's answer from a server of the other protocol on the same port: not a refusal, another server.
pub(crate) const OTHER_PROTOCOL: &str = "this server serves the port over the other protocol";

/// One request line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub(crate) enum Request {
    Status,
    Stop,
    Takeover {
        addr: SocketAddr,
        /// The new server runs command workers, which use the sockets in blocking mode (`O_NONBLOCK`
        /// belongs to the socket, so both sides must agree).
        #[serde(default)]
        command: bool,
        /// The new server serves UDP: only a UDP server's sockets will do (absent: TCP).
        #[serde(default)]
        udp: bool,
    },
    Ready,
    /// Replace every worker in place, `batch` at a time (1 when absent).
    Reload {
        #[serde(default)]
        batch: Option<usize>,
    },
    /// Start the successor (this program again) and hand it the sockets.
    Upgrade,
}

/// What `takeover` answers, beside the sockets.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub pid: u32,
    pub runtime: String,
    pub addr: SocketAddr,
    pub sockets: usize,
    /// Each socket's index in the port's reuseport group (join order), when the old server knows it: the
    /// new one's steering program needs it. Older servers leave it out.
    #[serde(default)]
    pub order: Option<Vec<u32>>,
    /// The sockets are the service manager's (socket activation): it keeps a copy of each, so the new
    /// server must never bind beside them, and one may lack `SO_REUSEPORT`.
    #[serde(default)]
    pub managed: bool,
    /// UDP with eBPF: the slot of each socket in the flow-sticky program's socket array; the program and
    /// its three maps follow the sockets as four more fds (a socket can be in one such array only, and the
    /// flows learned stay with their workers' sockets).
    #[serde(default)]
    pub flow_slots: Option<Vec<u32>>,
}

/// A running server as `status` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The supervisor's process id.
    pub pid: u32,
    /// `rust`, `python` or `ruby`.
    pub runtime: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// `echo`, `once` or `hello`; `command` for command workers.
    pub mode: String,
    /// The program command workers run (empty for built-in workers).
    #[serde(default)]
    pub command: Vec<String>,
    /// Where the server is: serving, handing over or draining (a stopped server no longer answers).
    pub state: crate::lifecycle::Phase,
    /// Seconds since the server started.
    pub uptime_secs: f64,
    /// Path of its control socket.
    pub control_socket: PathBuf,
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
    /// Whether new connections are being steered away from stalled or overloaded workers.
    #[serde(default)]
    pub steering: SteeringStatus,
    /// During the drain delay (after SIGTERM, see `Config::drain_delay`): seconds until the drain begins.
    /// The server still accepts meanwhile, and its state is `serving`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_in_secs: Option<f64>,
    /// The supervisor's pid namespace; a client in another one (on the host, the server in a container)
    /// translates the pids above to its own where the kernel shows how, and says whether it could.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<super::PidNamespace>,
}

/// What a server does about workers that do not keep up (see [`Config::steering`](crate::Config::steering)).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SteeringStatus {
    /// `active`: new connections go to `to` only; `idle`: the kernel's even hash (nothing to steer around);
    /// `off`: the setting is off, or steering cannot work here now (`note` says why).
    pub state: SteeringState,
    /// While active: the workers that receive new connections.
    pub to: Vec<usize>,
    /// Why steering is off, when it is.
    pub note: Option<String>,
}

/// See [`SteeringStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SteeringState {
    /// Not steering: the setting is off or it cannot work here.
    #[default]
    Off,
    /// Ready to steer; every worker keeps up (or none does), so the kernel hashes evenly.
    Idle,
    /// New connections go only to the workers that keep up.
    Active,
}

impl std::fmt::Display for SteeringState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SteeringState::Off => "off",
            SteeringState::Idle => "idle",
            SteeringState::Active => "active",
        })
    }
}

/// What a reload of one server did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The supervisor's process id.
    pub pid: u32,
    /// `rust`, `python` or `ruby`.
    pub runtime: String,
    /// The workers replaced, in order: each new one was ready before its predecessor was asked to stop.
    pub replaced: Vec<Replaced>,
    /// Why the reload stopped early; the workers not yet replaced keep serving.
    pub failed: Option<ReloadFailure>,
}

/// One worker replaced by a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// The listener (worker index).
    pub index: usize,
    /// The worker that was serving it, now stopping (0 when none was running).
    pub old_pid: u32,
    /// The worker serving it now.
    pub new_pid: u32,
    /// The new worker's generation.
    pub generation: u64,
}

/// The new worker that stopped a reload, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// The listener (worker index); `None` when the reload stopped for the whole server (it drained).
    pub index: Option<usize>,
    /// The new worker's pid, when it was started.
    pub pid: Option<u32>,
    /// What happened: `exited with status 1 before it was ready`, `was not ready within 30s`, …
    pub reason: String,
}

/// What an upgrade of one server did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// The supervisor's process id (now draining, when the upgrade succeeded).
    pub pid: u32,
    /// `rust`, `python` or `ruby`.
    pub runtime: String,
    /// The successor's process id, once it is ready and serves: the main process from now on.
    pub successor: Option<u32>,
    /// Why the upgrade failed (the old supervisor keeps serving): the successor could not be started,
    /// exited, or was not ready in time.
    pub failed: Option<String>,
    /// Seconds from the successor's start until it was ready (or failed).
    pub seconds: f64,
}

/// One line: `value` as JSON and `\n`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// `{"error": msg}` as a line.
pub(crate) fn error_line(msg: &str) -> Vec<u8> {
    encode(&serde_json::json!({ "error": msg }))
}

/// Parses a request line; the error quotes at most the first 64 bytes of it.
pub(crate) fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    serde_json::from_slice(line.trim_ascii()).map_err(|e| {
        format!(
            "bad request {:?}{} ({e})",
            String::from_utf8_lossy(&line[..line.len().min(64)]),
            if line.len() > 64 { "…" } else { "" }
        )
    })
}

/// Parses an answer line; `{"error": …}` becomes [`Error::Control`].
pub(crate) fn parse_answer<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T> {
    let bad = |e: serde_json::Error| {
        Error::Control(format!(
            "bad answer {:?} ({e})",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ))
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(bad)?;
    if let Some(msg) = value.get("error").and_then(|m| m.as_str()) {
        return Err(Error::Control(msg.to_string()));
    }
    serde_json::from_value(value).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_request_is_never_quoted_whole() {
        let line = vec![b'x'; 10_000];
        let err = parse_request(&line).unwrap_err();
        assert!(err.len() < 200, "{err}");
        assert!(matches!(
            parse_request(b"{\"cmd\":\"status\"}\n"),
            Ok(Request::Status)
        ));
    }
}
