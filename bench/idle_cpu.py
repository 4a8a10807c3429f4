#!/usr/bin/env python3
"""The supervisor's own CPU at rest (issue 23, item 5): `serve --workers 2` with no traffic, and how much CPU
time the supervisor process (all its threads) uses over a window, from `/proc/<pid>/task/*/schedstat`
(nanoseconds; `/proc/<pid>/stat`'s utime+stime, in 10 ms ticks, is printed beside it).

    python3 bench/idle_cpu.py [--bin target/release/port-sharding] [--base OTHER_BINARY] [--runs 3] [--window 10]
                              [--load WORKLOAD [--clients 32]] [-- extra serve arguments]

With `--load conn` (or another workload), `port-sharding bench -c CLIENTS` loads the server during the window: the
supervisor's CPU under load. Extra arguments that give `-w`/`--workers` replace `--workers 2`; a real server's
load, e.g. `--load http --clients 8 -- -w 1 -- python3 -m gunicorn -w 2 -k gthread --chdir examples/gunicorn
--no-control-socket app:app`. With `--base`, runs alternate between the two binaries (same session, same
machine). Prints one line per run and the medians, in milliseconds of CPU per window, and the supervisor's
wake-ups (voluntary context switches).
"""

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def wakeups(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    return total


def one_run(binary: str, window: float, extra: list, load: str = "", clients: int = 32) -> tuple:
    d = tempfile.mkdtemp(prefix="ps-idle-")
    os.chmod(d, 0o700)
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=d)
    workers = [] if {"-w", "--workers"} & set(extra) else ["--workers", "2"]
    cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", *workers, *extra]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True,
                         text=True)
    try:
        assert p.stderr is not None
        port = 0
        for _ in range(200):  # bounded: the start-up lines
            line = p.stderr.readline()
            if "starting on " in line:
                port = int(line.split("starting on ")[1].split(": ")[0].rsplit(":", 1)[1])
            if not line or "ready:" in line:
                break
        time.sleep(2.0)  # settle: the start-up's own work is not rest
        hz = os.sysconf("SC_CLK_TCK")
        gen = None
        if load:  # the same binary's load generator, for the window
            gen = subprocess.Popen([binary, "bench", "-p", str(port), "-W", load, "-c", str(clients),
                                    "-d", f"{window + 1}s", "--no-status", "-q"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        c0, t0, w0 = cpu_ns(p.pid), ticks(p.pid), wakeups(p.pid)
        time.sleep(window)
        c1, t1, w1 = cpu_ns(p.pid), ticks(p.pid), wakeups(p.pid)
        if gen:
            gen.wait(30)
        return (c1 - c0) / 1e6, (t1 - t0) * 1000 / hz, w1 - w0
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/port-sharding"))
    ap.add_argument("--base")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--load", default="", help="a bench workload during the window (conn, pingpong): CPU under load")
    ap.add_argument("--clients", type=int, default=32, help="the load's connections at once")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    bins = {"this build": a.bin}
    if a.base:
        bins["base"] = a.base
    got = {k: [] for k in bins}
    for r in range(a.runs):
        for name, b in bins.items():
            ms, tick_ms, wakes = one_run(b, a.window, a.extra, a.load, a.clients)
            got[name].append((ms, tick_ms, wakes))
            print(f"run {r + 1} {name}: {ms:.2f} ms CPU in {a.window:.0f} s (utime+stime {tick_ms:.0f} ms), "
                  f"{wakes} wake-ups", flush=True)
    for name, runs in got.items():
        print(f"median {name}: {statistics.median(x[0] for x in runs):.2f} ms CPU per {a.window:.0f} s, "
              f"{statistics.median(x[2] for x in runs):.0f} wake-ups")


if __name__ == "__main__":
    main()
