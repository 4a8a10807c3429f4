//! Whether closing a reuseport listener moves its queued connections to the rest of the group or resets
//! them: a `SELECT_OR_MIGRATE` eBPF program on this server's group where permitted (see
//! [`crate::reuseport::load_migrate_program`]), else `net.ipv4.tcp_migrate_req` (0, the default in every new
//! network namespace, resets; 1 migrates, for every group of the namespace).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{Error, Result};
use crate::log::log;
use crate::reuseport;

const MIGRATE_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// The sysctl's value in this network namespace, if readable.
pub(crate) fn migrate_req() -> Option<bool> {
    std::fs::read_to_string(MIGRATE_SYSCTL)
        .ok()
        .map(|s| s.trim() == "1")
}

/// Sets it to 1 (needs CAP_NET_ADMIN in this network namespace).
pub(crate) fn enable_migration() -> Result<()> {
    if migrate_req() == Some(true) {
        return Ok(());
    }
    std::fs::write(MIGRATE_SYSCTL, "1").map_err(|e| {
        Error::io(
            format!("migrate: set net.ipv4.tcp_migrate_req=1 (needs CAP_NET_ADMIN in this network namespace; {MIGRATE_SYSCTL})"),
            e,
        )
    })?;
    log!("migrate: set net.ipv4.tcp_migrate_req=1 in this network namespace");
    Ok(())
}

/// Makes closing a listener of `listener`'s group migrate its queue: with the eBPF program where it can be
/// loaded and attached (returned, so the supervisor can attach it again after steering), else by setting the
/// sysctl. Says which it used.
pub(crate) fn enable(listener: &impl AsRawFd) -> Result<Option<OwnedFd>> {
    let ebpf = reuseport::load_migrate_program()
        .and_then(|prog| reuseport::attach_ebpf(listener, &prog).map(|()| prog));
    match ebpf {
        Ok(prog) => {
            log!(
                "migrate: attached a reuseport eBPF program (select-or-migrate) to this server's group: closing a \
                 listener moves its queue to the others; net.ipv4.tcp_migrate_req left as it is"
            );
            Ok(Some(prog))
        }
        Err(e) => {
            log!("migrate: no eBPF program ({e}); using net.ipv4.tcp_migrate_req instead");
            enable_migration()?;
            Ok(None)
        }
    }
}
