"""A bench inside its own network namespace with a chosen TCP congestion control (`BENCH_CC`, e.g. cubic).

Why: the congestion control is a machine setting, and it decides loopback bulk numbers more than any server
does. Under BBR, TCP paces every socket itself (no `fq` qdisc on `lo`), arming a high-resolution timer per
transmit; in a VM each timer reprogramming exits to the hypervisor, and the timers' softirqs send from either
CPU, so segments of one connection race through both CPUs' backlogs and arrive reordered. Measured on the
2-core VM of 6 Dec 2026: a quarter of both cores in `tcp_write_xmit`'s timer path, bulk-4 at ≈ 1,600 MB/s
under BBR against ≈ 3,400 under cubic, for the engine and uvloop alike. A namespace of the bench's own
changes the setting for its processes only (the machine's other sockets keep theirs); it needs root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INSIDE = "PS_BENCH_NETNS_CC"  # set in the namespace: the congestion control it was given
CC_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")


def congestion_control() -> str:
    """This network namespace's default TCP congestion control ("?" when unreadable)."""
    try:
        return CC_SYSCTL.read_text().strip()
    except OSError:
        return "?"


def bench_again(argv: list[str]) -> list[str]:
    """The command line of this bench with the same arguments."""
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "run.py"), *argv]


def wanted() -> str | None:
    """The congestion control BENCH_CC asks for, when this process is not yet inside its namespace."""
    cc = os.environ.get("BENCH_CC", "")
    return cc if cc and os.environ.get(INSIDE) != cc else None


def rerun_inside(cc: str, command: list[str]) -> tuple[int, str]:
    """Runs `command` (the bench again) in a new network namespace (`unshare --net`) with `lo` up and
    `net.ipv4.tcp_congestion_control` = `cc` there, INSIDE=cc in its environment. Returns its exit status
    and, when the namespace could not be made (not root, no such algorithm), why."""
    script = ('ip link set lo up && echo "$0" > /proc/sys/net/ipv4/tcp_congestion_control || exit 97; '
              'exec "$@"')
    env = dict(os.environ, **{INSIDE: cc})
    try:
        r = subprocess.run(["unshare", "--net", "--", "sh", "-c", script, cc, *command], env=env)
    except OSError as e:
        return 2, f"unshare: {e}"
    if r.returncode == 97:
        sysctl = Path("/proc/sys/net/ipv4")
        allowed = (sysctl / "tcp_allowed_congestion_control").read_text().strip()
        hint = "" if cc in allowed.split() else (
            f"; a namespace other than the first may only pick an allowed one: as root, "
            f"`echo '{allowed} {cc}' > /proc/sys/net/ipv4/tcp_allowed_congestion_control` allows it")
        return 2, (f"could not bring up lo or set tcp_congestion_control={cc} in the new namespace "
                   f"(available: {(sysctl / 'tcp_available_congestion_control').read_text().strip()}, "
                   f"allowed: {allowed}){hint}")
    if r.returncode != 0 and os.geteuid() != 0:
        return r.returncode, "a network namespace needs root (unshare --net)"
    return r.returncode, ""
