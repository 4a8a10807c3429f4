#!/usr/bin/env python3
"""The talk's plain rolling restart, measured: run inside a throwaway network namespace (`unshare -n`).

Server A serves under continuous load; server B joins the port (no takeover); A gets SIGTERM and drains.
With A's --migrate the kernel moves A's queued connections to B: by the select-or-migrate eBPF program A
attaches to the group where bpf() is permitted (the sysctl stays 0), else by net.ipv4.tcp_migrate_req=1,
which A then sets. Without, connections queued on A's listeners when they close are reset. Each step waits for an event (a log
line, connections answered) rather than sleeping, so the restart always happens during the load: the load
answers connections before B joins, between B's start and A's SIGTERM, and after A has exited. Prints one
JSON line with what the clients saw.

    unshare -n python3 tests/e2e/plain_restart.py --migrate 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import ClientLoad, Server  # noqa: E402

SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")
STEP = 500  # connections answered between events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--migrate", type=int, choices=[0, 1], required=True)
    args = ap.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    SYSCTL.write_text("0\n")  # a new namespace starts at 0; be explicit
    control = Path(tempfile.mkdtemp(prefix="ps-restart-"))
    servers: list[Server] = []
    load = None
    try:
        a = Server("rust", 0, control, "--workers", "2", *(["--migrate"] if args.migrate else [])).ready()
        servers.append(a)
        load = ClientLoad(a.port, threads=16)
        load.wait_for(STEP)
        b = Server("rust", a.port, control, "--workers", "2")
        servers.append(b)
        b.ready()
        load.wait_for(STEP)
        a.proc.terminate()
        a_exit = a.wait_exit()
        answered_before_exit = load.ok
        load.wait_for(STEP)  # B alone answers now
        report = load.stop()
    finally:
        if load:
            load.stop()
        for s in servers:
            s.kill()
        shutil.rmtree(control, ignore_errors=True)
    print(json.dumps({
        "tcp_migrate_req": int(SYSCTL.read_text()),
        "old_exit": a_exit,
        "warned": any("tcp_migrate_req=0" in line for line in a.lines),
        "migrated_by": "ebpf" if any("attached a reuseport eBPF program" in line for line in a.lines)
        else "sysctl" if args.migrate else None,
        "answered_after_old_exit": report["answered"] - answered_before_exit,
        **report,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
