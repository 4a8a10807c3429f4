#!/usr/bin/env python3
"""Steering against a shared accept queue, with a real server (issue 22): gunicorn sync workers whose app sleeps
2 s on 1 request in 50 (bench/apps/slow_wsgi.py), loaded by `port-sharding bench --workload http`.

    python3 bench/steering_apps.py [--bin target/release/port-sharding] [--runs 3] [--duration 15]
                                   [--concurrency 8] [--timeouts 1,5]

Five setups, 2 gunicorn workers each, alternating within every run (same session, same machine):
- `steering on`:  `port-sharding serve -w 2 -- gunicorn -w 1 ...` (a gunicorn master + sync worker per slot, each
                  slot its own reuseport queue), steering on (the default);
- `steering on, stall_after 20ms`: the same, judging stalls five times sooner;
- `steering off`: the same with `--steering=false`;
- `gunicorn -w 2`: gunicorn's own master with 2 sync workers on one listener (one shared accept queue);
- `serve -w 1 -- gunicorn -w 2`: the same gunicorn as one command worker of port-sharding (one slot, its queue
  shared by gunicorn's 2 workers: reloads and takeovers from port-sharding, the queue from gunicorn).
Each cell is `port-sharding bench --workload http -c 8 -d 15s --timeout T --connect-timeout T --json`, once
with T = 1 s (how many requests wait longer than a second: every slow request itself, plus those stuck behind
one) and once with T = 5 s (latency percentiles with every request completing). Prints a markdown table of
medians and writes bench/results/steering_apps.json.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "--no-control-socket", "--chdir", str(ROOT / "bench/apps"),
            "--access-logfile", "-", "--access-logformat", "", "slow_wsgi:app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(3)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start(setup: str, binary: str, port: int, extra: list) -> subprocess.Popen:
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=tempfile.mkdtemp(prefix="ps-apps-"))
    os.chmod(env["PORT_SHARDING_CONTROL_DIR"], 0o700)
    if setup == "gunicorn -w 2":
        cmd = [*GUNICORN[:3], "-w", "2", "-b", f"127.0.0.1:{port}", *GUNICORN[3:]]
    elif setup == "serve -w 1 -- gunicorn -w 2":
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", str(port), "-w", "1", *extra, "--",
               *GUNICORN[:3], "-w", "2", *GUNICORN[3:]]
    else:
        flag = "--steering=true" if setup.startswith("steering on") else "--steering=false"
        if "stall_after " in setup:  # e.g. "steering on, stall_after 20ms"
            extra = [*extra, "--stall-after", setup.split("stall_after ")[1]]
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", str(port), "-w", "2", flag, *extra, "--",
               *GUNICORN[:3], "-w", "1", *GUNICORN[3:]]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    for _ in range(300):  # bounded: 30 s
        if answers(port):
            # Each process has served one request: the next slow one is its 50th from here on.
            return p
        time.sleep(0.1)
    stop(p)
    raise RuntimeError(f"{setup} did not answer on {port}")


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    except ProcessLookupError:
        pass


def load(binary: str, port: int, duration: float, concurrency: int, timeout: float) -> dict:
    t = f"{timeout}s"
    out = subprocess.run([binary, "bench", "-p", str(port), "--workload", "http", "-c", str(concurrency),
                          "-d", f"{duration}s", "--timeout", t, "--connect-timeout", t, "--json", "--no-status"],
                         capture_output=True, text=True, timeout=duration + 60)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/port-sharding"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeouts", default="1,5")
    ap.add_argument("--setups", default="steering on;steering on, stall_after 20ms;steering off;gunicorn -w 2;"
                                        "serve -w 1 -- gunicorn -w 2",
                    help="';'-separated")
    ap.add_argument("--serve-args", default="", help="more `serve` arguments, e.g. '--stall-after 20ms'")
    a = ap.parse_args()
    setups = a.setups.split(";")
    timeouts = [float(x) for x in a.timeouts.split(",")]
    results: dict = {f"{s} @{t:g}s": [] for t in timeouts for s in setups}
    for r in range(a.runs):
        for t in timeouts:
            for s in setups:
                port = free_port()
                p = start(s, a.bin, port, a.serve_args.split())
                try:
                    rep = load(a.bin, port, a.duration, a.concurrency, t)
                finally:
                    stop(p)
                lat = rep["latency_us"]
                row = {"ops": rep["ops"], "ops_per_sec": rep["ops_per_sec"], "timeouts": rep["errors"]["timeout"],
                       "errors": rep["errors"]["total"], "p50_ms": lat["p50"] / 1e3, "p90_ms": lat["p90"] / 1e3,
                       "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3, "max_ms": lat["max"] / 1e3}
                results[f"{s} @{t:g}s"].append(row)
                print(f"run {r + 1}, timeout {t:g}s, {s}: {json.dumps(row)}", flush=True)
    out = ROOT / "bench/results/steering_apps.json"
    meta = {"command": " ".join(sys.argv), "gunicorn": gunicorn_version(), "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    med = lambda rows, k: statistics.median(x[k] for x in rows)  # noqa: E731
    print("\n| setup | timeout | requests/s | timed out (% of requests) | errors | p50 / p90 / p99 / p99.9 (ms) |")
    print("|---|---|---|---|---|---|")
    for t in timeouts:
        for s in setups:
            rows = results[f"{s} @{t:g}s"]
            tos = med(rows, "timeouts")
            share = 100 * tos / max(1, med(rows, "ops") + tos)
            print(f"| {s} | {t:g} s | {med(rows, 'ops_per_sec'):.1f} | {tos:.0f} ({share:.1f} %) | "
                  f"{med(rows, 'errors'):.0f} | {med(rows, 'p50_ms'):.1f} / {med(rows, 'p90_ms'):.1f} / "
                  f"{med(rows, 'p99_ms'):.0f} / {med(rows, 'p999_ms'):.0f} |")


def gunicorn_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import gunicorn; print(gunicorn.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    main()
