#!/usr/bin/env python3
"""The talk's plain rolling restart, measured: run inside a throwaway network namespace (`unshare -n`).

Server A serves under continuous load; server B joins the port (no takeover); A gets SIGTERM and drains.
With net.ipv4.tcp_migrate_req=1 (set by A's --migrate) the kernel moves A's queued connections to B;
with 0, connections queued on A's listeners when they close are reset. Prints one JSON line.

    unshare -n python3 tests/e2e/plain_restart.py --migrate 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Load, Server  # noqa: E402

SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--migrate", type=int, choices=[0, 1], required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    SYSCTL.write_text("0\n")  # a new namespace starts at 0; be explicit
    control = Path(tempfile.mkdtemp(prefix="ps-restart-"))
    a = Server("rust", 0, control, "--workers", "2", *(["--migrate"] if args.migrate else [])).ready()
    b = None
    try:
        load = Load(a.port, seconds=args.seconds, concurrency=16)
        time.sleep(args.seconds / 4)
        b = Server("rust", a.port, control, "--workers", "2").ready()
        time.sleep(args.seconds / 4)
        a.proc.terminate()
        a_exit = a.wait_exit()
        report = load.result()
    finally:
        a.kill()
        if b:
            b.kill()
    warned = any("tcp_migrate_req=0" in line for line in a.lines)
    print(json.dumps({
        "tcp_migrate_req": int(SYSCTL.read_text()),
        "connections": report["ops"],
        "failed": report["errors"]["total"],
        "errors": report["errors"],
        "old_exit": a_exit,
        "warned": warned,
        "error_samples": report.get("error_samples", [])[:5],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
