//! Pids across pid namespaces: a server in a container reports its own namespace's pids (its supervisor
//! is pid 1 there), which mean other processes, or nothing, to a client on the host. The server says
//! which namespace it is in ([`PidNamespace`]); a client in another one translates what the kernel lets
//! it see — the supervisor's pid from `SO_PEERCRED` (the kernel gives it in the reader's namespace), its
//! workers' from their `NSpid` lines (every namespace's pid of a process, outermost first) — and says
//! whether it could.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::protocol::ServerStatus;

/// The server's pid namespace, and whose pids a status carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidNamespace {
    /// The namespace's inode (`/proc/<pid>/ns/pid`), as the server reports it.
    pub inode: u64,
    /// The supervisor's pid in its own namespace (1 when it is a container's init).
    pub pid: u32,
    /// Set by a client in another pid namespace: `true` when the pids of this status were translated
    /// to the client's namespace, `false` when they could not be (they are the server's namespace's).
    /// Absent when client and server share the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated: Option<bool>,
}

/// This process's pid namespace, as a server reports it.
pub(crate) fn here() -> Option<PidNamespace> {
    Some(PidNamespace {
        inode: inode("self")?,
        pid: std::process::id(),
        translated: None,
    })
}

/// The inode of `/proc/<who>/ns/pid`.
fn inode(who: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{who}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Rewrites the pids of `status` for this client, when the server is in another pid namespace:
/// `peer` is the supervisor's pid as the kernel gave it to this client (`SO_PEERCRED`; 0 when not
/// visible from here).
pub(crate) fn translate(status: &mut ServerStatus, peer: u32) {
    let Some(ns) = status.pid_namespace.as_mut() else {
        return; // a server of an earlier version: nothing to go by
    };
    if inode("self").is_none_or(|mine| mine == ns.inode) {
        return;
    }
    if peer == 0 {
        ns.translated = Some(false);
        return;
    }
    let workers = children_by_namespace_pid(peer);
    let mut all = true;
    let mut map = |pid: &mut u32| {
        if *pid == 0 {
            return;
        }
        match workers.get(pid) {
            Some(&here) => *pid = here,
            None => all = false,
        }
    };
    for w in &mut status.workers {
        // A seat whose worker is gone (being restarted) keeps the last pid: no process to look at.
        if w.state != crate::lifecycle::Phase::Stopped {
            map(&mut w.pid);
        }
        for p in &mut w.processes {
            map(&mut p.pid);
        }
    }
    status.pid = peer;
    ns.translated = Some(all);
}

/// The children of `supervisor` (a pid in our namespace), keyed by their pid in the supervisor's own
/// namespace.
fn children_by_namespace_pid(supervisor: u32) -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    // Its depth: how many namespaces its NSpid line lists; its children's pid in its namespace is at
    // the same place in theirs.
    let Some(depth) = nspid(supervisor).map(|p| p.len()) else {
        return out;
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{supervisor}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if let Some(inner) = nspid(child).and_then(|p| p.get(depth - 1).copied()) {
                out.insert(inner, child);
            }
        }
    }
    out
}

/// The `NSpid` line of `/proc/<pid>/status`: its pid in each namespace, from this `/proc`'s inward.
fn nspid(pid: u32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_knows_its_namespace_and_its_own_nspid() {
        let me = here().expect("/proc/self/ns/pid");
        assert_eq!(me.pid, std::process::id());
        let ids = nspid(std::process::id()).expect("NSpid");
        assert_eq!(*ids.first().unwrap(), std::process::id());
    }
}
