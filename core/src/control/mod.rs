//! The control socket: how `status`, `stop`, `reload`, `upgrade` and `takeover` reach a running server.
//!
//! Each server instance listens on its own unix socket in [`control_dir`] (0700, owned by the user;
//! sockets 0600). The protocol is one JSON line each way ([`protocol`]). A request from another uid is
//! refused (`SO_PEERCRED`) and logged; a client likewise refuses a server of another uid. For `takeover`
//! the answer carries the listening sockets as `SCM_RIGHTS`, and the connection stays open until the new
//! server says `ready` — if it closes first, the old server keeps serving.
//!
//! By job: [`protocol`] (messages and limits), [`registry`] (the directory and the names of running
//! servers), [`client`] (`status`, `stop`, the new server's side of takeover), [`server`] (the
//! supervisor's non-blocking side).

mod client;
mod pidns;
mod protocol;
mod registry;
mod server;

pub use client::{reload, status, stop, upgrade};
pub use pidns::PidNamespace;
pub use protocol::{
    ReloadFailure, ReloadReport, Replaced, ServerStatus, SteeringState, SteeringStatus,
    UpgradeReport,
};
pub use registry::control_dir;

pub(crate) use client::Client;
pub(crate) use pidns::here as pid_namespace;
pub(crate) use protocol::{encode, error_line, Offer, Request, DRAINING, OTHER_PROTOCOL};
pub(crate) use registry::{ensure_dir, find, Found};
pub(crate) use server::{send_line, send_offer, ConnId, ControlSocket};
