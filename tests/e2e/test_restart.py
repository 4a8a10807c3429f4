"""Plain rolling restart (a second server joins, SIGTERM drains the first) in a throwaway network namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN

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
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"plain restart, tcp_migrate_req={migrate}: {result}")
    return result


def test_plain_restart_with_migration_loses_nothing_queued():
    r = run_in_netns(1)
    assert r["tcp_migrate_req"] == 1
    assert r["old_exit"] == 0
    assert r["connections"] > 1000
    # The kernel moves queued and half-open connections to the remaining listeners. What it cannot move is a
    # SYN already matched to a listener in the instant that listener closes: measured here as 1 reset in 2 of
    # ~40 runs (~50k connections each), never more. Takeover (test_takeover.py) has no such window and must
    # lose nothing; here more than 1 in 10,000 would mean queued connections are being reset.
    assert r["failed"] * 10_000 <= r["connections"], r
    assert not r["warned"], "no reset warning when migration is on"


def test_plain_restart_without_migration_reports_its_loss():
    r = run_in_netns(0)
    assert r["tcp_migrate_req"] == 0
    assert r["old_exit"] == 0
    assert r["connections"] > 1000
    # Whether any connection was reset depends on timing; what must hold is that the risk is announced
    # and the count is measured and reported (printed above), not hidden.
    assert r["warned"], "the server warns that closing listeners can reset queued connections"
    assert r["failed"] == sum(v for k, v in r["errors"].items() if k != "total")
