"""The server held to a share of its core (`BENCH_SERVER_CPU_QUOTA`, percent), in a cgroup of the bench's own.

Why: with a core each, a bulk echo on loopback is limited by the load generator (its core near 100 %, the
server's not), so MB/s measures the load generator and a server's lower CPU per byte cannot show. Holding
the server to, say, 40 % of its core makes the server the limit: then MB/s is what a server does with the
CPU it has. cgroup v2 (`cpu.max`) where its cpu controller is enabled, else v1 (`cpu.cfs_quota_us`); both
need root.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

PERIOD_US = 100_000
V2_ROOT = Path("/sys/fs/cgroup")
V1_CPU = Path("/sys/fs/cgroup/cpu")


def make_group(percent: int) -> Path:
    """A new cgroup whose processes together get `percent` % of one CPU. Raises OSError saying why not."""
    if not 1 <= percent <= 100:
        raise OSError(f"BENCH_SERVER_CPU_QUOTA={percent}: a percentage of one core, 1 to 100")
    quota = PERIOD_US * percent // 100
    name = f"ps-bench-{os.getpid()}"
    v2 = V2_ROOT / "cgroup.subtree_control"
    if v2.exists() and "cpu" in v2.read_text().split():
        group = V2_ROOT / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        return group
    if (V1_CPU / "cpu.cfs_quota_us").exists():
        group = V1_CPU / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        return group
    raise OSError("no cgroup cpu controller found (cgroup v2 with cpu in cgroup.subtree_control, or v1 at /sys/fs/cgroup/cpu)")


@contextlib.contextmanager
def server_quota(percent: int | None) -> Iterator[Path | None]:
    """A cgroup for the servers while the block runs (None: no quota); removed afterwards."""
    if not percent:
        yield None
        return
    group = make_group(percent)
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()  # empty once every server of the block has exited


def joiner(group: Path | None):
    """A `preexec_fn` that moves the new process (and so every child it forks) into `group`."""
    if group is None:
        return None

    def join() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))
    return join
