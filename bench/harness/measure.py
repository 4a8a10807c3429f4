"""One load run and what it cost: `port-sharding bench --json` with the CPU time of the server's process
group and of the load generator; the workloads; the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
from pathlib import Path

from .context import Context
from .netns import congestion_control
from .servers import raise_nofile

CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid:  # field 5, pgrp
            total += int(rest[11]) + int(rest[12])  # fields 14, 15: utime, stime
    return total / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy so far (/proc/stat: everything but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK


# TCP's own counters that tell a run's bulk transfer was disturbed: on loopback, a connection whose packets
# are transmitted from both CPUs (the writer's, and the reader's when its ACK lets the writer's queued data
# go) is reordered between the two CPUs' backlogs, which TCP takes for loss (fast retransmits, undone by
# DSACK); a receive queue over its budget is pruned (`RcvPruned`, a real drop) and an unlucky tail loss
# waits for the retransmission timeout (`TCPTimeouts`, 200 ms and more with backoff).
TCP_COUNTERS = {"Tcp": ("RetransSegs",), "TcpExt": ("TCPTimeouts", "TCPSACKReorder", "TCPDSACKRecv", "RcvPruned")}


def tcp_counters() -> dict[str, int]:
    """The machine's TCP_COUNTERS so far (/proc/net/snmp and /proc/net/netstat: a header line of names, then
    a line of values, per protocol). Per network namespace: another process's traffic in it counts too."""
    out: dict[str, int] = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            lines = Path(f).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            proto, names_, values_ = names.split(":")[0], names.split()[1:], values.split()[1:]
            for n, v in zip(names_, values_):
                if n in TCP_COUNTERS.get(proto, ()):
                    out[n] = int(v)
    return out


def bench(ctx: Context, port: int, workload: str, conc: int, size: int, duration: float, cpus: str | None, threads: int = 1,
          server_pgid: int | None = None, sources: int = 1, connections: int | None = None, window: int | None = None) -> dict:
    """One `port-sharding bench --json` run; adds the CPU time the server's process group and the load
    generator used, so a run limited by the load generator can be told from one limited by the server."""
    argv = [str(ctx.bin), "bench", "--host", "127.0.0.1", "--port", str(port), "--workload", workload, "--concurrency", str(conc),
            "--duration", f"{duration}s", "--size", str(size), "--threads", str(threads), "--sources", str(sources),
            "--json"] + (["--connections", str(connections)] if connections else []) + (["--window", str(window)] if window else [])
    s0 = group_cpu_s(server_pgid) if server_pgid else None
    m0 = machine_busy_s()
    t0 = tcp_counters()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(ctx.pinned(argv, cpus), env=ctx.env(), capture_output=True, timeout=duration + 60, preexec_fn=raise_nofile)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m1 = machine_busy_s()
    t1 = tcp_counters()
    s1 = group_cpu_s(server_pgid) if server_pgid else None
    if r.returncode not in (0, 1):
        raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr.decode(errors='replace')[-400:]}")
    out = json.loads(r.stdout)
    el = max(out["elapsed_s"], 1e-6)
    out["tcp"] = {n: t1[n] - t0[n] for n in t1 if n in t0}
    out["client_cpu"] = ((c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)) / el
    if s0 is not None:
        out["server_cpu"] = (s1 - s0) / el
        out["ops_per_server_cpu_s"] = out["ops"] / max(s1 - s0, 1 / CLK_TCK)
        out["mb_per_server_cpu_s"] = out["bytes"] / 1e6 / max(s1 - s0, 1 / CLK_TCK)
        # Cores kept busy by everything else on the machine meanwhile (other builds, the script itself): noise.
        out["other_cpu"] = max(0.0, (m1 - m0) / el - out["server_cpu"] - out["client_cpu"])
    return out


WORKLOADS = [  # key, workload, concurrency, size, the server's mode
    ("conn-1", "conn", 1, 64, "echo"),
    ("conn-32", "conn", 32, 64, "echo"),  # connect, echo, the client closes (issue 14's `echo`)
    ("once-32", "conn", 32, 64, "once"),  # connect, echo, the server closes (the talk's protocol)
    ("pingpong-32", "pingpong", 32, 64, "echo"),
    ("stream-4", "stream", 4, 65536, "echo"),  # 64 KiB messages, 2 in flight per connection
    ("bulk-4", "stream", 4, 256 << 20, "echo"),  # 4 connections × one 256 MiB message each, to the end (issue 25)
]

# Workloads that move bulk bytes: measured in MB/s and MB per server CPU-second rather than operations.
BYTE_WORKLOADS = {"stream-4", "bulk-4"}

# `bench` arguments beyond the tuple's: bulk-4 is one whole 256 MiB upload per connection (window 1, one
# operation each), so it runs until the 1 GiB is back, not for the run's duration (this is only its bound).
BENCH_EXTRA: dict[str, dict] = {"bulk-4": {"window": 1, "connections": 4, "duration": 120.0}}


def bench_cell(ctx: Context, port: int, w: tuple, cpus: str | None, server_pgid: int | None = None) -> dict:
    """One run of a WORKLOADS entry, with its extra arguments."""
    wkey, workload, conc, size, _ = w
    extra = BENCH_EXTRA.get(wkey, {})
    return bench(ctx, port, workload, conc, size, extra.get("duration", ctx.duration), cpus, server_pgid=server_pgid,
                 connections=extra.get("connections"), window=extra.get("window"))


def work_of(cell: dict, wkey: str) -> float:
    """A summary cell's work per server CPU-second (summaries saved before it was recorded: from the medians)."""
    if "work_per_server_cpu_s" in cell:
        return cell["work_per_server_cpu_s"]
    return per_server_cpu_s(cell, wkey)


def per_server_cpu_s(r: dict, wkey: str) -> float:
    """Work per server CPU-second: MB for byte workloads, operations otherwise (older results lack the MB)."""
    if wkey not in BYTE_WORKLOADS:
        return r["ops_per_server_cpu_s"]
    if "mb_per_server_cpu_s" in r:
        return r["mb_per_server_cpu_s"]
    return r["mb_per_sec"] / r["server_cpu"] if r.get("server_cpu") else float("nan")

SERVER_CPU = "0"
CLIENT_CPU = "1"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine(ctx: Context) -> dict:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.0f} GiB"

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"

    return {
        "cpu": model,
        "cpus": cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "rustc": version(["rustc", "--version"]),
        "python": platform.python_version(),
        "ruby": version([ctx.ruby, "--version"]) if ctx.ruby else "n/a",
        "loadavg_at_start": os.getloadavg()[0],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tcp_tw_reuse": Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text().strip() if Path("/proc/sys/net/ipv4/tcp_tw_reuse").exists() else "?",
        "tcp_congestion_control": congestion_control(),
        "binary": str(ctx.rel(ctx.bin)) if ctx.bin.is_relative_to(ctx.root) else str(ctx.bin),
    }


def machine_key(m: dict) -> str:
    return f"{m['cpus']} × {m['cpu']}"


def median_of(runs: list[dict], path: str) -> float:
    vals = []
    for r in runs:
        v = r
        for p in path.split("."):
            v = v[p]
        vals.append(float(v))
    return statistics.median(vals) if vals else float("nan")
