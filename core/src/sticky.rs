//! UDP flow stickiness: a `BPF_PROG_TYPE_SK_REUSEPORT` program on the port's group that keeps each flow on
//! the socket that got its first datagram, while new flows go to the sockets the supervisor selects.
//!
//! Three maps:
//! - `socks` (`REUSEPORT_SOCKARRAY`): slot → one of our sockets. A socket leaves it when it closes, or when
//!   the supervisor lets go of it ([`Sticky::remove`]): its flows then move to the selected sockets.
//! - `flows` (`LRU_HASH`): the kernel's flow hash (`sk_reuseport_md.hash`, of the 4-tuple) → slot, learned
//!   on a flow's **first** datagram (not on the reply, so a multi-datagram handshake cannot split).
//! - `pick` (`ARRAY`, one entry): how many slots new flows are spread over, and which.
//!
//! ```text
//!   slot = flows[hash]; if found and select(socks, slot) succeeds: done
//!   n, slots = pick[0]; if n == 0: kernel's hash
//!   slot = slots[hash % n]; flows[hash] = slot; select(socks, slot)
//! ```
//!
//! Needs `CAP_BPF` (or root); [`Sticky::new`] fails with `EPERM` otherwise, and the supervisor falls back to
//! the stateless classic BPF program ([`crate::reuseport`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Slots in `socks`: room for every live socket of the largest server (253 seats × 8 workers each).
pub(crate) const SLOTS: u32 = 4096;
/// Flows remembered (least recently used ones are forgotten first).
const FLOWS: u32 = 65_536;
/// The most slots new flows are spread over (`pick`'s array).
pub(crate) const PICK: usize = 255;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const MAP_ARRAY: u32 = 2;
const MAP_LRU_HASH: u32 = 9;
const MAP_REUSEPORT_SOCKARRAY: u32 = 20;
const PROG_SK_REUSEPORT: u32 = 21;
const ATTACH_SK_REUSEPORT_SELECT: u32 = 39;
/// Helpers: `bpf_map_lookup_elem`, `bpf_map_update_elem`, `bpf_sk_select_reuseport`.
const LOOKUP: i32 = 1;
const UPDATE: i32 = 2;
const SELECT: i32 = 82;
/// `offsetof(struct sk_reuseport_md, hash)`.
const MD_HASH: i16 = 32;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<i64> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of `attr.len()` bytes; the pointers in it point to
    // memory the caller keeps alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create_map(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 72];
    for (i, v) in [kind, key, value, entries].into_iter().enumerate() {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a fresh fd the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn op(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const FP: u8 = 10;

fn mov(dst: u8, src: u8) -> Insn {
    op(0xbf, dst, src, 0, 0)
}
fn mov_imm(dst: u8, imm: i32) -> Insn {
    op(0xb7, dst, 0, 0, imm)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    op(0x07, dst, 0, 0, imm)
}
fn load32(dst: u8, src: u8, off: i16) -> Insn {
    op(0x61, dst, src, off, 0)
}
fn store32(dst: u8, off: i16, src: u8) -> Insn {
    op(0x63, dst, src, off, 0)
}
fn call(helper: i32) -> Insn {
    op(0x85, 0, 0, 0, helper)
}
/// `if dst == imm goto +off`.
fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
    op(0x15, dst, 0, off, imm)
}
/// `ld_imm64 dst, map fd` (two instructions).
fn map(dst: u8, fd: &OwnedFd) -> [Insn; 2] {
    [op(0x18, dst, 1, 0, fd.as_raw_fd()), op(0, 0, 0, 0, 0)]
}
/// `r2 = fp + off`, the address of a stack slot, for a helper's key argument.
fn stack(dst: u8, off: i32) -> [Insn; 2] {
    [mov(dst, FP), add_imm(dst, off)]
}

/// The program; `PASS` is its last two instructions (`r0 = SK_PASS; exit`).
fn program(socks: &OwnedFd, flows: &OwnedFd, pick: &OwnedFd) -> Vec<Insn> {
    let mut p: Vec<Insn> = Vec::new();
    // Jumps to PASS are patched at the end (their `off` holds -1 until then); NEW is patched once known.
    let mut to_pass = Vec::new();
    p.push(mov(R6, R1));
    p.push(load32(R7, R6, MD_HASH));
    p.push(store32(FP, -4, R7));
    p.extend(map(R1, flows));
    p.extend(stack(R2, -4));
    p.push(call(LOOKUP));
    let to_new = p.len();
    p.push(jeq(R0, 0, 0));
    p.push(load32(R1, R0, 0));
    p.push(store32(FP, -8, R1));
    p.push(mov(R1, R6));
    p.extend(map(R2, socks));
    p.extend(stack(R3, -8));
    p.push(mov_imm(R4, 0));
    p.push(call(SELECT));
    to_pass.push(p.len());
    p.push(jeq(R0, 0, 0));
    // NEW: a flow not seen yet (or whose socket is gone).
    let new = p.len();
    p[to_new].off = (new - to_new - 1) as i16;
    p.push(op(0x62, FP, 0, -12, 0)); // *(u32 *)(fp - 12) = 0
    p.extend(map(R1, pick));
    p.extend(stack(R2, -12));
    p.push(call(LOOKUP));
    to_pass.push(p.len());
    p.push(jeq(R0, 0, 0));
    p.push(mov(R8, R0));
    p.push(load32(R1, R8, 0));
    to_pass.push(p.len());
    p.push(jeq(R1, 0, 0));
    p.push(mov(R2, R7));
    p.push(op(0x9c, R2, R1, 0, 0)); // w2 %= w1
    to_pass.push(p.len());
    p.push(op(0x35, R2, 0, 0, PICK as i32)); // if r2 >= PICK goto PASS
    p.push(op(0x67, R2, 0, 0, 2)); // r2 <<= 2
    p.push(op(0x0f, R8, R2, 0, 0)); // r8 += r2
    p.push(load32(R1, R8, 4));
    p.push(store32(FP, -8, R1));
    p.extend(map(R1, flows));
    p.extend(stack(R2, -4));
    p.extend(stack(R3, -8));
    p.push(mov_imm(R4, 0));
    p.push(call(UPDATE));
    p.push(mov(R1, R6));
    p.extend(map(R2, socks));
    p.extend(stack(R3, -8));
    p.push(mov_imm(R4, 0));
    p.push(call(SELECT));
    let pass = p.len();
    for at in to_pass {
        p[at].off = (pass - at - 1) as i16;
    }
    p.push(mov_imm(R0, 1)); // SK_PASS
    p.push(op(0x95, 0, 0, 0, 0));
    p
}

/// The first words of `struct bpf_prog_info` / `struct bpf_map_info` of `fd`: (type, key size, value size).
fn info(fd: &OwnedFd) -> io::Result<(u32, u32, u32)> {
    let mut info = [0u32; 20];
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(std::mem::size_of_val(&info) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info[0], info[2], info[3]))
}

/// The program and its maps, owned by the supervisor (and closed with it). A takeover passes them on with
/// the sockets ([`Sticky::fds`], [`Sticky::adopt`]): a socket can be in one socket array only, and the flows
/// learned stay where they are.
pub(crate) struct Sticky {
    prog: OwnedFd,
    socks: OwnedFd,
    flows: OwnedFd,
    pick: OwnedFd,
}

impl Sticky {
    /// Creates the maps and loads the program.
    ///
    /// # Errors
    /// `EPERM` without `CAP_BPF`; the verifier's complaint (its log) should the kernel refuse the program.
    pub(crate) fn new() -> io::Result<Sticky> {
        let socks = create_map(MAP_REUSEPORT_SOCKARRAY, 4, 8, SLOTS)?;
        let flows = create_map(MAP_LRU_HASH, 4, 4, FLOWS)?;
        let pick = create_map(MAP_ARRAY, 4, 4 * (1 + PICK as u32), 1)?;
        let insns = program(&socks, &flows, &pick);
        let license = b"MIT\0";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = [0u8; 72];
        attr[0..4].copy_from_slice(&PROG_SK_REUSEPORT.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes()); // log level
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        attr[48..57].copy_from_slice(b"ps_sticky"); // prog_name
        attr[68..72].copy_from_slice(&ATTACH_SK_REUSEPORT_SELECT.to_ne_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            let said = String::from_utf8_lossy(&log[..end]);
            let tail: String = said.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            if tail.is_empty() {
                e
            } else {
                io::Error::new(e.kind(), format!("{e}: {tail}"))
            }
        })?;
        // SAFETY: a fresh fd the kernel just returned.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Sticky {
            prog,
            socks,
            flows,
            pick,
        })
    }

    /// The program's and maps' fds, in the order [`Sticky::adopt`] takes them.
    pub(crate) fn fds(&self) -> [RawFd; 4] {
        [&self.prog, &self.socks, &self.flows, &self.pick].map(|f| f.as_raw_fd())
    }

    /// The program and maps another server passed (as [`Sticky::fds`] lists them), once each is what it
    /// should be.
    ///
    /// # Errors
    /// One is not a BPF object, or not of the expected type and sizes.
    pub(crate) fn adopt(fds: [OwnedFd; 4]) -> io::Result<Sticky> {
        let [prog, socks, flows, pick] = fds;
        let want = [
            (&prog, (PROG_SK_REUSEPORT, None)),
            (&socks, (MAP_REUSEPORT_SOCKARRAY, Some((4, 8)))),
            (&flows, (MAP_LRU_HASH, Some((4, 4)))),
            (&pick, (MAP_ARRAY, Some((4, 4 * (1 + PICK as u32))))),
        ];
        for (fd, (kind, sizes)) in want {
            let (t, k, v) = info(fd)?;
            if t != kind || sizes.is_some_and(|s| s != (k, v)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a BPF object of type {t} ({k}/{v}), not {kind}"),
                ));
            }
        }
        Ok(Sticky {
            prog,
            socks,
            flows,
            pick,
        })
    }

    /// Attaches the program to the group of `socket` (replacing whatever program it had).
    pub(crate) fn attach(&self, socket: &impl AsRawFd) -> io::Result<()> {
        crate::reuseport::attach_ebpf(socket, &self.prog)
    }

    /// Puts `socket` at `slot`: flows learned on it reach it from now on.
    pub(crate) fn insert(&self, slot: u32, socket: &impl AsRawFd) -> io::Result<()> {
        let fd = socket.as_raw_fd() as u64;
        update(&self.socks, &slot.to_ne_bytes(), &fd.to_ne_bytes())
    }

    /// Takes the socket at `slot` out: its flows move to the selected sockets (their next datagram is
    /// learned anew). A socket also leaves when it closes.
    pub(crate) fn remove(&self, slot: u32) -> io::Result<()> {
        delete(&self.socks, &slot.to_ne_bytes())
    }

    /// New flows go to `slots` from now on (at most [`PICK`]; none: the kernel's hash over the group).
    pub(crate) fn pick(&self, slots: &[u32]) -> io::Result<()> {
        let slots = &slots[..slots.len().min(PICK)];
        let mut value = vec![0u8; 4 * (1 + PICK)];
        value[0..4].copy_from_slice(&(slots.len() as u32).to_ne_bytes());
        for (i, s) in slots.iter().enumerate() {
            value[4 + 4 * i..8 + 4 * i].copy_from_slice(&s.to_ne_bytes());
        }
        update(&self.pick, &0u32.to_ne_bytes(), &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Which of `socks` got a datagram from each client (by index), reading each empty.
    fn receivers(socks: &[UdpSocket]) -> Vec<usize> {
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            while s.recv_from(&mut buf).is_ok() {
                got.push(i);
            }
        }
        got
    }

    #[test]
    fn passed_on_objects_are_checked_by_type() {
        let Ok(sticky) = Sticky::new() else {
            eprintln!(
                "SKIPPED passed_on_objects_are_checked_by_type: bpf() refused; needs CAP_BPF"
            );
            return;
        };
        let dup = |fds: [RawFd; 4]| {
            // SAFETY: dup of fds `sticky` holds open; each copy is owned once.
            fds.map(|fd| unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) })
        };
        assert!(Sticky::adopt(dup(sticky.fds())).is_ok());
        let [p, s, f, k] = sticky.fds();
        let err = Sticky::adopt(dup([p, f, s, k]))
            .err()
            .expect("maps swapped");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn flows_stay_where_they_began_and_new_ones_go_where_picked() {
        let sticky = match Sticky::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "SKIPPED flows_stay_where_they_began: bpf() refused ({e}); needs CAP_BPF"
                );
                return;
            }
        };
        let a = crate::datagram::bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = crate::datagram::bind(addr, true).unwrap();
        sticky.insert(0, &a).unwrap();
        sticky.insert(1, &b).unwrap();
        sticky.pick(&[0]).unwrap();
        sticky.attach(&a).unwrap();
        let socks = [a, b];
        let clients: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for c in &clients {
            c.send_to(b"x", addr).unwrap();
        }
        assert_eq!(
            receivers(&socks),
            vec![0; 8],
            "new flows go to the picked socket"
        );
        // A new generation: new flows to b, the known ones stay on a.
        sticky.pick(&[1]).unwrap();
        for c in &clients {
            c.send_to(b"x", addr).unwrap();
        }
        let newcomer = UdpSocket::bind("127.0.0.1:0").unwrap();
        newcomer.send_to(b"x", addr).unwrap();
        let got = receivers(&socks);
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 8, "{got:?}");
        assert_eq!(got.iter().filter(|&&i| i == 1).count(), 1, "{got:?}");
        // Let go of a: its flows move to the picked socket.
        sticky.remove(0).unwrap();
        for c in &clients {
            c.send_to(b"x", addr).unwrap();
        }
        assert_eq!(receivers(&socks), vec![1; 8]);
    }
}
