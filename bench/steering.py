#!/usr/bin/env python3
"""Steering benchmark: what a stopped worker costs clients with steering off and on, and what steering costs
when nothing stalls. Writes bench/results/steering.json; bench/STEERING.md explains the numbers.

    python3 bench/steering.py [--bin target/release/port-sharding] [--base OTHER_BINARY] [--runs 3]

Stall: `serve --workers N` (N = 2, 4) under `port-sharding bench --workload conn -c 8` with 1 s timeouts
for 7 s; 1.5 s in, worker 1 gets SIGSTOP for 4 s. Counted: operations that timed out, latency percentiles of
those that completed, and the time from SIGSTOP to the supervisor's "steering started" line (read as it is
printed). No stall: conn and pingpong (-c 32, 4 s) against steering on, off, and `--base` (a build
without the sampler), alternating, with the supervisor's CPU time over each run.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Serve:
    """A `serve` process in its own process group, with its log lines timestamped as they arrive."""

    def __init__(self, binary, workers, extra=()):
        self.dir = tempfile.mkdtemp(prefix="ps-steer-")
        os.chmod(self.dir, 0o700)
        env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=self.dir)
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--workers", str(workers), *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                                     start_new_session=True, text=True)
        self.lines = []  # (monotonic time, line)
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait("server starting on").split("starting on ")[1].split(": ")[0].rsplit(":", 1)[1])
        self.wait("ready:")
        self.pids = [int(l.split("started: pid ")[1].split(",")[0]) for _, l in self.lines if "started: pid" in l]

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append((time.monotonic(), line.rstrip()))

    def wait(self, needle, timeout=20.0):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self.lock:
                for _, l in self.lines:
                    if needle in l:
                        return l
            time.sleep(0.005)
        raise RuntimeError(f"no {needle!r} in {[l for _, l in self.lines]}")

    def first_time(self, needle, after=0.0):
        with self.lock:
            return next((t for t, l in self.lines if needle in l and t >= after), None)

    def cpu_seconds(self):
        """CPU time of the supervisor (its main thread; the CLI's supervisor has no other), in ns resolution."""
        return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[0]) / 1e9

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in Path(self.dir).iterdir():
            f.unlink()
        os.rmdir(self.dir)


def bench(binary, port, workload, concurrency, seconds, timeout="5s"):
    cmd = [binary, "bench", "--port", str(port), "--workload", workload, "-c", str(concurrency), "-d", f"{seconds}s",
           "--timeout", timeout, "--connect-timeout", timeout, "--json", "--quiet", "--no-status"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def stall_run(binary, workers, steering):
    srv = Serve(binary, workers, [f"--steering={'true' if steering else 'false'}"])
    try:
        load = bench(binary, srv.port, "conn", 8, 7, timeout="1s")
        time.sleep(1.5)
        victim = srv.pids[1]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        time.sleep(4.0)
        os.kill(victim, signal.SIGCONT)
        report = json.loads(load.communicate()[0])
        detected = srv.first_time("worker 1 (pid", after=t0)
        steered = srv.first_time("steering started", after=t0)
        lat = report["latency_us"]
        return {
            "workers": workers,
            "steering": steering,
            "ops": report["ops"],
            "timed_out": report["errors"]["timeout"],
            "failed": report["errors"]["total"],
            "p50_us": lat["p50"],
            "p99_us": lat["p99"],
            "p999_us": lat["p999"],
            "max_us": lat["max"],
            "stall_noticed_ms": None if detected is None else round((detected - t0) * 1000, 1),
            "steering_started_ms": None if steered is None else round((steered - t0) * 1000, 1),
        }
    finally:
        srv.stop()


def steady_run(binary, extra, workload):
    srv = Serve(binary, 2, extra)
    try:
        cpu0 = srv.cpu_seconds()
        report = json.loads(bench(binary, srv.port, workload, 32, 4).communicate()[0])
        return {"ops_per_sec": report["ops_per_sec"], "supervisor_cpu_ms": round((srv.cpu_seconds() - cpu0) * 1000, 2),
                "failed": report["errors"]["total"]}
    finally:
        srv.stop()


def idle_run(binary, extra, seconds):
    """Supervisor CPU per second with 4 idle workers: the sampler's own cost, tick after tick."""
    srv = Serve(binary, 4, extra)
    try:
        cpu0 = srv.cpu_seconds()
        time.sleep(seconds)
        return round((srv.cpu_seconds() - cpu0) / seconds * 1e6, 1)  # µs of CPU per second
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/port-sharding"))
    ap.add_argument("--base", help="a port-sharding binary built without steering, for the sampler's cost")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["stall", "steady"], help="run one part")
    args = ap.parse_args()

    stall = []
    for _ in range(args.runs if args.only != "steady" else 0):
        for workers in (2, 4):
            for steering in (False, True):
                r = stall_run(args.bin, workers, steering)
                print(json.dumps(r), file=sys.stderr)
                stall.append(r)

    variants = {"steering on": (args.bin, []), "steering off": (args.bin, ["--steering=false"])}
    if args.base:
        variants["before steering"] = (args.base, [])
    steady = {name: {"conn": [], "pingpong": []} for name in variants}
    idle = {name: [] for name in variants}
    for _ in range(args.runs if args.only != "stall" else 0):
        for name, (binary, extra) in variants.items():
            idle[name].append(idle_run(binary, extra, 10))
            print(name, "idle supervisor µs/s", idle[name][-1], file=sys.stderr)
        for workload in ("conn", "pingpong"):
            for name, (binary, extra) in variants.items():
                r = steady_run(binary, extra, workload)
                print(name, workload, json.dumps(r), file=sys.stderr)
                steady[name][workload].append(r)

    summary = {}
    for name, by in steady.items():
        if not idle[name]:
            continue
        summary[name] = {w: {"median_ops_per_sec": round(statistics.median(r["ops_per_sec"] for r in runs)),
                             "median_supervisor_cpu_ms": statistics.median(r["supervisor_cpu_ms"] for r in runs)}
                         for w, runs in by.items()}
        summary[name]["idle_supervisor_us_per_s"] = statistics.median(idle[name])
    out = {"stall": stall, "steady": steady, "steady_summary": summary}
    path = ROOT / "bench/results/steering.json"
    if path.exists():  # keep the part not run this time
        old = json.loads(path.read_text())
        if not stall:
            out["stall"] = old.get("stall", [])
        if not summary:
            out["steady"], out["steady_summary"] = old.get("steady", {}), old.get("steady_summary", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
