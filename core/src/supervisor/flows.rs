//! The UDP group's flow-sticky program as the supervisor drives it ([`crate::sticky`]): which slot of the
//! socket array each of our sockets has, and which sockets new flows are picked from.
//!
//! At a reload the new worker's socket joins the array but not the pick set; once the new worker is ready,
//! the pick set becomes the new sockets, so new flows go to the new generation while flows the old socket
//! already served stay on it. When those flows have been idle for `udp_flow_idle` (or `drain_timeout` has
//! passed), the seat has the supervisor let go of the old socket (out of the array: any flow that comes
//! back is learned anew by the new generation), its worker reads it empty, and it closes.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;

use super::group::SockId;
use crate::sticky::{Sticky, SLOTS};

pub(super) struct Flows {
    sticky: Sticky,
    slots: HashMap<SockId, u32>,
}

impl Flows {
    /// Loads the program, puts `sockets` in the array, picks all of them, and attaches it through the
    /// first.
    pub(super) fn new<S: AsRawFd>(sockets: &[(SockId, &S)]) -> io::Result<Flows> {
        let mut f = Flows {
            sticky: Sticky::new()?,
            slots: HashMap::new(),
        };
        for (id, s) in sockets {
            f.join(*id, *s)?;
        }
        let ids: Vec<SockId> = sockets.iter().map(|(id, _)| *id).collect();
        f.pick(&ids)?;
        if let Some((_, first)) = sockets.first() {
            f.sticky.attach(*first)?;
        }
        Ok(f)
    }

    /// The program and maps another server passed at a takeover, with the slots of `sockets` in them: the
    /// flows it learned stay where they are. Picks every socket and attaches the program (again).
    pub(super) fn adopt<S: AsRawFd>(
        sticky: Sticky,
        sockets: &[(SockId, u32, &S)],
        others: &[(SockId, &S)],
    ) -> io::Result<Flows> {
        let mut f = Flows {
            sticky,
            slots: sockets.iter().map(|(id, slot, _)| (*id, *slot)).collect(),
        };
        for (id, s) in others {
            f.join(*id, *s)?;
        }
        let mut ids: Vec<SockId> = sockets.iter().map(|(id, _, _)| *id).collect();
        ids.extend(others.iter().map(|(id, _)| *id));
        f.pick(&ids)?;
        if let Some((_, _, first)) = sockets.first() {
            f.sticky.attach(*first)?;
        }
        Ok(f)
    }

    /// What a takeover passes on: the program's and maps' fds, and the slot of each of `ids`.
    pub(super) fn handover(&self, ids: &[SockId]) -> Option<([std::os::fd::RawFd; 4], Vec<u32>)> {
        let slots: Option<Vec<u32>> = ids.iter().map(|id| self.slots.get(id).copied()).collect();
        Some((self.sticky.fds(), slots?))
    }

    /// Attaches the program again (a takeover's successor that went away may have left its own).
    pub(super) fn attach(&self, any: &impl AsRawFd) -> io::Result<()> {
        self.sticky.attach(any)
    }

    /// A new socket takes the lowest free slot.
    pub(super) fn join(&mut self, id: SockId, socket: &impl AsRawFd) -> io::Result<()> {
        let slot = (0..SLOTS)
            .find(|s| !self.slots.values().any(|v| v == s))
            .ok_or_else(|| io::Error::other("no free slot in the socket array"))?;
        self.sticky.insert(slot, socket)?;
        self.slots.insert(id, slot);
        Ok(())
    }

    /// Takes socket `id` out of the array (its flows move on); it stays open.
    pub(super) fn let_go(&mut self, id: SockId) -> io::Result<()> {
        match self.slots.get(&id) {
            Some(&slot) => self.sticky.remove(slot),
            None => Ok(()),
        }
    }

    /// Socket `id` closed: the kernel took it out of the array; its slot is free again.
    pub(super) fn leave(&mut self, id: SockId) {
        if let Some(slot) = self.slots.remove(&id) {
            let _ = self.sticky.remove(slot);
        }
    }

    /// New flows go to `ids` from now on.
    pub(super) fn pick(&self, ids: &[SockId]) -> io::Result<()> {
        let slots: Vec<u32> = ids
            .iter()
            .filter_map(|id| self.slots.get(id).copied())
            .collect();
        if slots.len() != ids.len() {
            return Err(io::Error::other("a socket to pick is not in the array"));
        }
        self.sticky.pick(&slots)
    }
}
