"""Plain rolling restart (a second server joins, SIGTERM drains the first) in a throwaway network namespace.

What the clients saw is counted independently of the servers (harness.ClientLoad)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import BIN

SCENARIO = Path(__file__).with_name("plain_restart.py")


def run_in_netns(migrate: int) -> dict:
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    if not BIN.exists():
        pytest.skip(f"{BIN} is not built")
    out = subprocess.run(["unshare", "-n", sys.executable, str(SCENARIO), "--migrate", str(migrate)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"plain restart, tcp_migrate_req={migrate}: {result}")
    assert result["old_exit"] == 0
    assert result["answered_after_old_exit"] > 0, "the load ran on after the old server exited"
    assert result["wrong"] == 0, result
    return result


def test_plain_restart_with_migration_loses_at_most_the_close_race():
    r = run_in_netns(1)
    # --migrate prefers the group's eBPF program (root here) and leaves the sysctl at 0; else it sets it.
    assert r["tcp_migrate_req"] == (0 if r["migrated_by"] == "ebpf" else 1), r
    assert not r["warned"], "no reset warning when migration is on"
    # The kernel moves queued and half-open connections to the remaining listeners. What it cannot move is a
    # SYN matched to a listener in the instant that listener closes: measured as 1 reset in 2 of ~40 runs,
    # never more. Queued connections being reset would show as many. (Takeover has no such window: see
    # test_takeover.py, which allows none.)
    assert r["failed"] <= 1, r
    assert set(r["errors"]) <= {"ECONNRESET"}, r


def test_plain_restart_without_migration_warns_and_loses_only_by_reset():
    r = run_in_netns(0)
    assert r["tcp_migrate_req"] == 0
    # Whether a connection is queued on the old listeners when they close depends on timing; what must hold
    # is that the risk is announced, and that whatever the clients lost was reset (closing a listener resets
    # its queue) — not timed out, refused or answered wrong.
    assert r["warned"], "the server warns that closing listeners can reset queued connections"
    assert set(r["errors"]) <= {"ECONNRESET"}, r
    print(f"measured: {r['failed']} of {r['connections']} connections reset")
