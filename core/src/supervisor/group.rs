//! The port's reuseport group as this server knows it: its members — our listening sockets — in the
//! kernel's order, and the program that picks which of them a new connection goes to.
//!
//! The kernel numbers a group's members in join (bind) order, and when one leaves, the last member moves
//! into its slot. A classic BPF program returns such a number ([`crate::reuseport`]), so the supervisor
//! keeps the order by socket id: sockets it binds join at the end, sockets it closes leave. That holds while
//! the group holds only our sockets (checked with `sock_diag` when we bind; a takeover passes the order on
//! with the sockets) — otherwise the order is unknown and no program is attached.
//!
//! Why a program at all: to keep new connections away from stalled workers ([`super::steering`]), and
//! from sockets that must not get any — a reload's new socket before its worker is ready, an old one its
//! worker is emptying before it stops (see [`super::seat`]).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::Socket;

use super::flows::Flows;
use crate::fds::Tracked;
use crate::log::log;
use crate::reuseport;

/// Each listener's index in the port's group, in `listeners` order; `Err(why)` when it cannot be known.
///
/// `adopted` listeners came from a takeover with the old server's `order` for them; the rest were bound
/// after them. The order holds only if the group held no one else's socket when we bound (a socket that
/// leaves moves the group's last one into its slot).
pub(super) fn group_order(
    addr: SocketAddr,
    udp: bool,
    adopted: usize,
    adopted_order: Option<&[u32]>,
    total: usize,
) -> Result<Vec<u32>, String> {
    let members = reuseport::members(addr, udp)
        .map_err(|e| format!("the port's group cannot be counted ({e})"))?;
    if members != total {
        return Err(format!(
            "the port's group held {} socket(s) besides this server's {total} when it bound, so which \
             listener the kernel numbers which is unknown",
            members.saturating_sub(total)
        ));
    }
    let mut order = match adopted_order {
        _ if adopted == 0 => Vec::new(),
        Some(o) if is_permutation(o, adopted) => o.to_vec(),
        _ => {
            return Err(
                "the adopted sockets came without their order in the group (an older server)"
                    .into(),
            )
        }
    };
    order.extend(adopted as u32..total as u32);
    Ok(order)
}

fn is_permutation(order: &[u32], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&i| (i as usize) < n && !std::mem::replace(&mut seen[i as usize], true))
}

/// The flow-sticky program and maps a predecessor passed at a takeover, and the slot of each socket it
/// passed (in the order it passed them).
pub(super) struct Inherited {
    pub(super) sticky: crate::sticky::Sticky,
    pub(super) slots: Vec<u32>,
}

/// Names one of our sockets for as long as it is in the group.
pub(super) type SockId = u64;

/// One of our sockets — a listening TCP socket, or a bound UDP one — and the id the group knows it by.
pub(super) struct Listener {
    pub(super) id: SockId,
    socket: Tracked<Socket>,
}

impl std::ops::Deref for Listener {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.socket
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// The group's members in the kernel's order, and what its program selects.
pub(super) struct Group {
    /// Our sockets in group order (index = the kernel's number); `Err(why)` when it cannot be known.
    order: Result<Vec<SockId>, String>,
    next_id: SockId,
    v6: bool,
    /// UDP sockets (`protocol = udp`): what [`Group::bind`] makes.
    udp: bool,
    /// The sockets the attached program selects: `Some(empty)` none attached (the kernel's hash, or the
    /// migrate program); `None` unknown (a successor may have changed it).
    applied: Option<Vec<SockId>>,
    /// The migrate program (`--migrate` with eBPF): what "no selection" means in this group.
    migrate: Option<OwnedFd>,
    /// UDP with eBPF: the flow-sticky program, which replaces the classic one (see `flows`); `Err(why)`
    /// where it could not be loaded (the classic program steers, statelessly).
    flows: Result<Flows, String>,
}

impl Group {
    /// Whether flows stick to the socket that got their first datagram (UDP with eBPF), and else why not.
    pub(super) fn sticky(&self) -> Result<(), &str> {
        self.flows.as_ref().map(drop).map_err(String::as_str)
    }

    /// What a takeover passes on with `listeners` (UDP with eBPF): the program's and maps' fds and each
    /// listener's slot.
    pub(super) fn flow_handover(&self, listeners: &[&Listener]) -> Option<([RawFd; 4], Vec<u32>)> {
        let ids: Vec<SockId> = listeners.iter().map(|l| l.id).collect();
        self.flows.as_ref().ok()?.handover(&ids)
    }

    /// Takes socket `id` out of the sticky program's array: the flows still on it move to the picked
    /// sockets (nothing when flows do not stick).
    pub(super) fn let_go(&mut self, id: SockId) {
        if let Ok(flows) = &mut self.flows {
            if let Err(e) = flows.let_go(id) {
                log!("a retiring socket could not be taken out of the eBPF socket array ({e})");
            }
        }
    }

    /// The group of `listeners` (in group order when `order` is `Ok`: see `group_order`).
    /// `adopted`: a takeover gave us some of them, and the old server's program may still be attached.
    pub(super) fn new(
        addr: SocketAddr,
        listeners: Vec<Tracked<Socket>>,
        udp: bool,
        order: Result<Vec<u32>, String>,
        migrate: Option<OwnedFd>,
        adopted: bool,
        inherited: Option<Inherited>,
    ) -> (Group, Vec<Listener>) {
        let listeners: Vec<Listener> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, socket)| Listener {
                id: i as SockId,
                socket,
            })
            .collect();
        // `order[i]` is listener i's number; the group's order lists listeners by number.
        let order = order.map(|numbers| {
            let mut by_number = vec![0; numbers.len()];
            for (i, &n) in numbers.iter().enumerate() {
                by_number[n as usize] = i as SockId;
            }
            by_number
        });
        let applied = if adopted && order.is_ok() {
            None
        } else {
            Some(Vec::new())
        };
        let flows = match (&order, udp, inherited) {
            // The predecessor's program and maps, its sockets first in `listeners`.
            (Ok(_), true, Some(inh)) if inh.slots.len() <= listeners.len() => {
                let (old, new) = listeners.split_at(inh.slots.len());
                let old: Vec<(SockId, u32, &Listener)> = old
                    .iter()
                    .zip(&inh.slots)
                    .map(|(l, &s)| (l.id, s, l))
                    .collect();
                let new: Vec<(SockId, &Listener)> = new.iter().map(|l| (l.id, l)).collect();
                Flows::adopt(inh.sticky, &old, &new)
                    .map_err(|e| format!("the eBPF program passed on could not be used ({e})"))
            }
            (Ok(_), true, _) => {
                let members: Vec<(SockId, &Listener)> =
                    listeners.iter().map(|l| (l.id, l)).collect();
                Flows::new(&members)
                    .map_err(|e| format!("the eBPF program could not be loaded ({e})"))
            }
            (Err(why), true, _) => Err(why.clone()),
            (_, false, _) => Err("not UDP".to_string()),
        };
        let applied = if flows.is_ok() {
            Some(listeners.iter().map(|l| l.id).collect())
        } else {
            applied
        };
        let group = Group {
            order,
            next_id: listeners.len() as SockId,
            v6: addr.is_ipv6(),
            udp,
            applied,
            migrate,
            flows,
        };
        (group, listeners)
    }

    /// Binds a new socket of the group (options as every member's); it joins at the end. Only where the
    /// order is known, and only once a program keeps new connections off it: see [`Group::select`].
    pub(super) fn bind(
        &mut self,
        addr: SocketAddr,
        backlog: u32,
    ) -> crate::error::Result<Listener> {
        let socket = if self.udp {
            Socket::from(crate::datagram::bind(addr, true)?)
        } else {
            Socket::from(crate::listener::bind(addr, backlog, true)?)
        };
        let id = self.next_id;
        self.next_id += 1;
        if let Ok(flows) = &mut self.flows {
            flows.join(id, &socket).map_err(|e| {
                crate::error::Error::io("a new socket into the eBPF socket array", e)
            })?;
        }
        if let Ok(order) = &mut self.order {
            order.push(id);
        }
        Ok(Listener {
            id,
            socket: Tracked::new(socket),
        })
    }

    /// Whether the group migrates closing listeners' queues by our eBPF program.
    pub(super) fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    /// Whether the members' order is known (a program can be attached).
    pub(super) fn known(&self) -> Result<(), &str> {
        self.order.as_ref().map(drop).map_err(String::as_str)
    }

    /// Why the order is not known, from now on (another process's socket joined).
    pub(super) fn forget_order(&mut self, why: String) {
        self.order = Err(why);
    }

    /// Each of `listeners`' number in the group, for a successor; `None` when unknown.
    pub(super) fn numbers(&self, listeners: &[&Listener]) -> Option<Vec<u32>> {
        let order = self.order.as_ref().ok()?;
        listeners
            .iter()
            .map(|l| order.iter().position(|&m| m == l.id).map(|n| n as u32))
            .collect()
    }

    /// How many of our sockets the group holds.
    pub(super) fn members(&self) -> Option<usize> {
        self.order.as_ref().ok().map(Vec::len)
    }

    /// Whether the group's program must be replaced even if it seems right (a successor held our sockets).
    pub(super) fn forget_program(&mut self) {
        self.applied = None;
    }

    /// Whether `want` is what the program selects now.
    pub(super) fn selects(&self, want: &[SockId]) -> bool {
        self.applied.as_deref() == Some(want)
    }

    /// Makes the group send new connections to `want` only (`[]`: to every member, by the kernel's hash),
    /// attaching the program through `any` member.
    pub(super) fn select(&mut self, any: &impl AsRawFd, want: &[SockId]) -> std::io::Result<()> {
        if self.selects(want) {
            return Ok(());
        }
        if let Ok(flows) = &self.flows {
            // New flows to `want` (every member for none); known flows stay where they are.
            let all;
            let pick = match (want.is_empty(), &self.order) {
                (true, Ok(order)) => {
                    all = order.clone();
                    &all
                }
                _ => want,
            };
            if self.applied.is_none() {
                flows.attach(any)?;
            }
            flows.pick(pick)?;
            self.applied = Some(want.to_vec());
            return Ok(());
        }
        let result = match (&self.order, want.is_empty()) {
            (Ok(order), false) => {
                let numbers: Vec<u32> = want
                    .iter()
                    .filter_map(|id| order.iter().position(|m| m == id))
                    .map(|n| n as u32)
                    .collect();
                if numbers.len() != want.len() {
                    return Err(std::io::Error::other(
                        "a socket to select is not in the group",
                    ));
                }
                reuseport::attach(any, &reuseport::steer_to(&numbers, self.v6))
            }
            _ => match &self.migrate {
                Some(prog) => reuseport::attach_ebpf(any, prog),
                None => reuseport::restore_even(any),
            },
        };
        match result {
            Ok(()) => {
                self.applied = Some(want.to_vec());
                Ok(())
            }
            Err(e) => {
                // Whatever is attached now is unknown; leave the group to the kernel's hash if we can.
                if !want.is_empty() {
                    let _ = reuseport::restore_even(any);
                }
                self.applied = Some(Vec::new());
                Err(e)
            }
        }
    }

    /// Closes `leaving` (a member nobody else holds any more) without a new connection reaching a socket
    /// it must not: the kernel moves the last member into the slot `leaving` frees, so first the program
    /// stops naming the last member (valid before and after the move), then the socket closes, then the
    /// program names the moved one at its new number. `any` is another member (to attach through).
    ///
    /// When the last member is the only one selected, no program is valid across the move: for the few
    /// microseconds between the close and the new program the kernel hashes over every member — only a
    /// concern while other retired sockets are still open (one worker, overlapping reloads).
    pub(super) fn close(&mut self, leaving: Listener, any: Option<&impl AsRawFd>) {
        let id = leaving.id;
        if let Ok(flows) = &mut self.flows {
            // Its slot empties as it closes; no member moves under the eBPF program.
            drop(leaving);
            flows.leave(id);
            if let Ok(order) = &mut self.order {
                order.retain(|&m| m != id);
            }
            let was = self.applied.take().unwrap_or_default();
            let again: Vec<SockId> = was.into_iter().filter(|&s| s != id).collect();
            if let Some(any) = any {
                if let Err(e) = self.select(any, &again) {
                    log!("the eBPF pick set could not be updated after a socket left ({e})");
                }
            }
            return;
        }
        let selected = self.applied.clone();
        if let (Ok(order), Some(sel), Some(any)) = (&self.order, &selected, any) {
            let last = order.last().copied();
            if let Some(last) = last.filter(|&l| l != id && sel.contains(&l)) {
                let meanwhile: Vec<SockId> = sel.iter().copied().filter(|&s| s != last).collect();
                if !meanwhile.is_empty() {
                    let _ = self.select(any, &meanwhile);
                }
            }
        }
        drop(leaving);
        if let Ok(order) = &mut self.order {
            if let Some(slot) = order.iter().position(|&m| m == id) {
                let last = order.pop();
                if slot < order.len() {
                    if let Some(last) = last {
                        order[slot] = last;
                    }
                }
            }
        }
        // Select again what was selected (less the socket that left), at the numbers of now.
        if let (Some(sel), Some(any)) = (selected, any) {
            let again: Vec<SockId> = sel.into_iter().filter(|&s| s != id).collect();
            self.applied = None;
            if let Err(e) = self.select(any, &again) {
                log!("the reuseport program could not be updated after a socket left ({e})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_order_must_be_a_permutation() {
        assert!(is_permutation(&[1, 0, 2], 3));
        assert!(!is_permutation(&[1, 1, 2], 3));
        assert!(!is_permutation(&[0, 1], 3));
        assert!(!is_permutation(&[0, 3, 1], 3));
    }

    #[test]
    fn the_order_is_known_only_when_the_group_was_ours_alone() {
        let a = crate::listener::bind("127.0.0.1:0".parse().unwrap(), 16, true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = crate::listener::bind(addr, 16, true).unwrap();
        assert_eq!(group_order(addr, false, 0, None, 2), Ok(vec![0, 1]));
        assert_eq!(group_order(addr, false, 1, Some(&[0]), 2), Ok(vec![0, 1]));
        let why = group_order(addr, false, 1, None, 2).unwrap_err();
        assert!(why.contains("without their order"), "{why}");
        // A third socket we did not bind.
        let c = crate::listener::bind(addr, 16, true).unwrap();
        let why = group_order(addr, false, 0, None, 2).unwrap_err();
        assert!(why.contains("held 1 socket(s) besides"), "{why}");
        drop((a, b, c));
    }
}
