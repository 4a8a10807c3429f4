//! `net.ipv4.tcp_migrate_req`: whether closing a reuseport listener moves its queued connections to the rest
//! of the group (1) or resets them (0, the default in every new network namespace).

use crate::error::{Error, Result};
use crate::log::log;

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
