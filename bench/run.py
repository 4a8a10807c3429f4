#!/usr/bin/env python3
"""`make bench` and `make bench-scaling`: run a fixed benchmark matrix and write BENCHMARKS.md.

Stdlib only. Every server runs in its own process group (start_new_session) and is stopped by its pid;
every wait is bounded. Loopback (127.0.0.1) and ephemeral ports only.

    python3 bench/run.py matrix     # servers x workloads, memory, start-up, drain -> BENCHMARKS.md + chart
    python3 bench/run.py scaling    # workers 1..16 against one load generator -> $OUT/ + BENCHMARKS.md
    python3 bench/run.py report     # rewrite BENCHMARKS.md + chart from bench/results/matrix.json
    python3 bench/run.py merge-scaling $OUT/scaling-X.md   # add a table measured on another machine

Environment: BENCH_DURATION (seconds per run, default 3), BENCH_RUNS (default 3), BENCH_ONLY (comma list
of server keys), OUT (scaling: output folder, default bench-out), BENCH_WORKERS (scaling: default
1,2,4,8,16), BENCH_THREADS (scaling: load threads, default half the CPUs), BENCH_PIN (0 disables taskset),
BENCH_KEEP_LOGS=1 (keep the servers' logs in /tmp/ps-bench-logs-*).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(os.environ.get("PORT_SHARDING_BIN", ROOT / "target" / "release" / "port-sharding"))
BENCHMARKS = ROOT / "BENCHMARKS.md"
CHART = BENCH / "chart.svg"
RESULTS = BENCH / "results"
NOTES = BENCH / "NOTES.md"
PY = sys.executable or "python3"
RUBY = shutil.which("ruby")
TASKSET = shutil.which("taskset") if os.environ.get("BENCH_PIN", "1") != "0" else None
CONTROL_DIR = Path(tempfile.mkdtemp(prefix="ps-bench-"))
LOGS = Path(tempfile.mkdtemp(prefix="ps-bench-logs-"))

DURATION = float(os.environ.get("BENCH_DURATION", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
READY_TIMEOUT = 30.0  # a server must answer an echo within this long of starting
STOP_TIMEOUT = 10.0  # after SIGTERM, then SIGKILL


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return [TASKSET, "-c", cpus, *cmd] if (TASKSET and cpus) else cmd


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PORT_SHARDING_CONTROL_DIR"] = str(CONTROL_DIR)
    e.pop("RUST_BACKTRACE", None)
    return e


def echo_once(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"ping")
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == b"ping"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- servers


@dataclass
class ServerKind:
    key: str
    label: str
    argv: list[str]  # "{port}" is replaced
    workloads: set[str] | None = None  # None: all
    note: str = ""
    check: list[str] | None = None  # a command that must succeed for the server to be available


def server_kinds() -> list[ServerKind]:
    engine = [str(BIN), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--mode", "echo", "--quiet"]
    py_serve = "import port_sharding; port_sharding.serve({port}, host='127.0.0.1', workers=1)"
    rb_serve = 'require "port_sharding"; PortSharding.serve({port}, host: "127.0.0.1", workers: 1)'
    talk_only = {"conn-1", "conn-32"}
    return [
        ServerKind("engine-cli", "engine, CLI (`port-sharding serve -w 1`)", engine),
        ServerKind(
            "engine-python",
            "engine, Python `port_sharding.serve(workers=1)`",
            [PY, "-c", py_serve],
            check=[PY, "-c", "import port_sharding; port_sharding.serve"],
            note="`make setup-python`",
        ),
        ServerKind(
            "engine-ruby",
            "engine, Ruby `PortSharding.serve(workers: 1)`",
            [RUBY or "ruby", "-e", rb_serve],
            check=[RUBY or "ruby", "-e", 'require "port_sharding"; PortSharding.method(:serve)'],
            note="`make setup-ruby`",
        ),
        ServerKind(
            "talk-python",
            "talk's Python loop (listen(0), one recv)",
            [PY, str(BENCH / "servers" / "talk_echo.py"), "{port}", "127.0.0.1"],
            workloads=talk_only,
        ),
        ServerKind(
            "talk-ruby",
            "talk's Ruby loop (listen 0, one recv)",
            [RUBY or "ruby", str(BENCH / "servers" / "talk_echo.rb"), "{port}", "127.0.0.1"],
            workloads=talk_only,
            check=[RUBY or "ruby", "-e", "1"],
        ),
        ServerKind("asyncio", "Python asyncio `start_server(reuse_port=True)`", [PY, str(BENCH / "servers" / "asyncio_echo.py"), "{port}"]),
    ]


def available(kind: ServerKind) -> str | None:
    """None when the server can run, else why not."""
    if kind.check is None:
        return None
    try:
        r = subprocess.run(kind.check, cwd=ROOT, env=env(), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{kind.check[0]}: {e}"
    if r.returncode != 0:
        last = (r.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        return f"not installed ({kind.note or 'see README'}): {last[:120]}"
    return None


class Server:
    """A server process in its own process group, stopped by pid."""

    def __init__(self, argv: list[str], port: int, cpus: str | None, name: str, preexec=None):
        self.port = port
        self.name = name
        self.log_path = LOGS / f"{name}-{port}.log"
        self.log_file = open(self.log_path, "wb")
        argv = [a.replace("{port}", str(port)) for a in argv]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            pinned(argv, cpus),
            cwd=ROOT,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from start until an echo came back."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            if echo_once(self.port, timeout=0.5):
                return time.monotonic() - self.t0
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} not answering after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> float | None:
        """SIGTERM to the process group; SIGKILL after STOP_TIMEOUT. Returns seconds to exit after SIGTERM."""
        if self.proc.poll() is not None:
            self.log_file.close()
            return None
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
            took = None
        # Workers of the engine share the group: make sure none outlives the supervisor.
        self.signal(signal.SIGKILL)
        self.log_file.close()
        return took

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def status(port: int) -> list[dict] | None:
    try:
        r = subprocess.run([str(BIN), "status", "--port", str(port), "--host", "127.0.0.1", "--json"], env=env(), capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------- load


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


def bench(port: int, workload: str, conc: int, size: int, duration: float, cpus: str | None, threads: int = 1,
          server_pgid: int | None = None, sources: int = 1) -> dict:
    """One `port-sharding bench --json` run; adds the CPU time the server's process group and the load
    generator used, so a run limited by the load generator can be told from one limited by the server."""
    argv = [str(BIN), "bench", "--host", "127.0.0.1", "--port", str(port), "--workload", workload, "--concurrency", str(conc),
            "--duration", f"{duration}s", "--size", str(size), "--threads", str(threads), "--sources", str(sources),
            "--json"]
    s0 = group_cpu_s(server_pgid) if server_pgid else None
    m0 = machine_busy_s()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(pinned(argv, cpus), env=env(), capture_output=True, timeout=duration + 60, preexec_fn=raise_nofile)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m1 = machine_busy_s()
    s1 = group_cpu_s(server_pgid) if server_pgid else None
    if r.returncode not in (0, 1):
        raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr.decode(errors='replace')[-400:]}")
    out = json.loads(r.stdout)
    el = max(out["elapsed_s"], 1e-6)
    out["client_cpu"] = ((c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)) / el
    if s0 is not None:
        out["server_cpu"] = (s1 - s0) / el
        out["ops_per_server_cpu_s"] = out["ops"] / max(s1 - s0, 1 / CLK_TCK)
        # Cores kept busy by everything else on the machine meanwhile (other builds, the script itself): noise.
        out["other_cpu"] = max(0.0, (m1 - m0) / el - out["server_cpu"] - out["client_cpu"])
    return out


WORKLOADS = [  # key, workload, concurrency, size
    ("conn-1", "conn", 1, 64),
    ("conn-32", "conn", 32, 64),
    ("pingpong-32", "pingpong", 32, 64),
    ("stream-4", "stream", 4, 65536),
]

SERVER_CPU = "0"
CLIENT_CPU = "1"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict:
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
        "ruby": version([RUBY, "--version"]) if RUBY else "n/a",
        "loadavg_at_start": os.getloadavg()[0],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tcp_tw_reuse": Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text().strip() if Path("/proc/sys/net/ipv4/tcp_tw_reuse").exists() else "?",
    }


def machine_key(m: dict) -> str:
    return f"{m['cpus']} × {m['cpu']}"


# ------------------------------------------------------------------------------------------- matrix


def run_matrix() -> dict:
    kinds = server_kinds()
    only = {k for k in os.environ.get("BENCH_ONLY", "").split(",") if k}
    if only:
        kinds = [k for k in kinds if k.key in only]
    skipped = {}
    runnable = []
    for k in kinds:
        why = available(k)
        if why:
            log(f"skip {k.key}: {why}")
            skipped[k.key] = why
        else:
            runnable.append(k)
    cells: dict[str, dict[str, list[dict]]] = {k.key: {} for k in runnable}
    failures: dict[str, str] = {}
    # Run-major order: each repetition visits every server, so slow drift (other builds) spreads evenly.
    for run in range(RUNS):
        for k in runnable:
            if k.key in failures:
                continue
            port = free_port()
            log(f"run {run + 1}/{RUNS}: {k.key} on :{port}")
            try:
                with Server(k.argv, port, SERVER_CPU, k.key) as srv:
                    srv.wait_ready()
                    for wkey, workload, conc, size in WORKLOADS:
                        if k.workloads is not None and wkey not in k.workloads:
                            continue
                        r = bench(port, workload, conc, size, DURATION, CLIENT_CPU, server_pgid=srv.pid)
                        cells[k.key].setdefault(wkey, []).append(r)
                        log(f"  {wkey:12} {r['ops_per_sec']:>10.0f} ops/s {r['mb_per_sec']:>8.1f} MB/s p99 {r['latency_us']['p99']:>9.0f}µs "
                            f"errors {r['errors']['total']}  cpu server {r['server_cpu']:.0%} client {r['client_cpu']:.0%} "
                            f"other {r['other_cpu']:.2f} cores")
            except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as e:
                log(f"  {k.key} failed: {e}")
                failures[k.key] = str(e)[:300]
    return {
        "servers": [{"key": k.key, "label": k.label, "workloads": sorted(k.workloads) if k.workloads else None} for k in kinds],
        "skipped": skipped,
        "failures": failures,
        "cells": cells,
    }


def median_of(runs: list[dict], path: str) -> float:
    vals = []
    for r in runs:
        v = r
        for p in path.split("."):
            v = v[p]
        vals.append(float(v))
    return statistics.median(vals) if vals else float("nan")


# ---------------------------------------------------------------------------------- memory / start / drain


def rss_kib(pid: int) -> dict:
    out = {}
    text = Path(f"/proc/{pid}/status").read_text()
    for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) if m else 0
    return out


def open_idle(port: int, n: int, deadline: float) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        if time.monotonic() > deadline:
            raise RuntimeError(f"opened only {len(socks)} of {n} connections in time")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def echo_each(socks: list[socket.socket]) -> None:
    for s in socks:
        s.sendall(b"x")
    for s in socks:
        if s.recv(1) != b"x":
            raise RuntimeError("idle connection did not echo")


def wait_stable_rss(pid: int, deadline: float) -> dict:
    last = None
    while time.monotonic() < deadline:
        cur = rss_kib(pid)
        if last is not None and cur["VmRSS"] == last["VmRSS"]:
            return cur
        last = cur
        time.sleep(0.3)
    return last or rss_kib(pid)


def measure_memory(n: int = 10_000) -> dict:
    raise_nofile()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and limit < n + 100:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {limit} is below {n + 100}: raise it (ulimit -Hn) to measure")
    out = {"connections": n}
    # The engine: one worker, limit above n.
    port = free_port()
    argv = [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--mode", "echo", "--quiet",
            "--max-connections", str(n * 2), "--backlog", "4096"]
    with Server(argv, port, None, "mem-engine", preexec=raise_nofile) as srv:
        srv.wait_ready()
        st = status(port)
        if not st:
            raise RuntimeError("no status from the engine")
        wpid = st[0]["workers"][0]["pid"]
        deadline = time.monotonic() + 120
        base = wait_stable_rss(wpid, time.monotonic() + 3)
        socks = open_idle(port, n, deadline)
        try:
            # Wait until the worker has accepted them all.
            while time.monotonic() < deadline:
                st = status(port)
                if st and st[0]["workers"][0]["active"] >= n:
                    break
                time.sleep(0.1)
            idle = wait_stable_rss(wpid, time.monotonic() + 5)
            echo_each(socks)
            after_echo = wait_stable_rss(wpid, time.monotonic() + 5)
        finally:
            for s in socks:
                s.close()
        out["engine"] = {"base": base, "idle": idle, "after_echo": after_echo,
                         "per_conn_idle": (idle["VmRSS"] - base["VmRSS"]) * 1024 / n,
                         "per_conn_after_echo": (after_echo["VmRSS"] - base["VmRSS"]) * 1024 / n}
    # asyncio for comparison: one process.
    port = free_port()
    with Server([PY, str(BENCH / "servers" / "asyncio_echo.py"), str(port)], port, None, "mem-asyncio", preexec=raise_nofile) as srv:
        srv.wait_ready()
        base = wait_stable_rss(srv.pid, time.monotonic() + 3)
        socks = open_idle(port, n, time.monotonic() + 120)
        try:
            echo_each(socks)  # proves every connection was accepted
            after_echo = wait_stable_rss(srv.pid, time.monotonic() + 5)
        finally:
            for s in socks:
                s.close()
        out["asyncio"] = {"base": base, "after_echo": after_echo, "per_conn_after_echo": (after_echo["VmRSS"] - base["VmRSS"]) * 1024 / n}
    return out


def measure_startup(kinds: list[ServerKind], skipped: dict, runs: int = 5) -> dict:
    out = {}
    for k in kinds:
        if k.key in skipped:
            continue
        times = []
        for _ in range(runs):
            port = free_port()
            try:
                with Server(k.argv, port, SERVER_CPU, f"start-{k.key}") as srv:
                    times.append(srv.wait_ready())
            except RuntimeError as e:
                log(f"start-up {k.key}: {e}")
                break
        if times:
            out[k.key] = {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000, "runs": len(times)}
    return out


def measure_drain(n: int = 1000) -> dict:
    raise_nofile()
    out = {"connections": n}
    argv = [str(BIN), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--mode", "echo", "--quiet",
            "--drain-timeout", "2s"]
    # A: clients close right after the signal; B: clients stay idle, the drain timeout closes them.
    for case in ("clients_close", "clients_idle"):
        port = free_port()
        srv = Server(argv, port, SERVER_CPU, f"drain-{case}", preexec=raise_nofile)
        try:
            srv.wait_ready()
            socks = open_idle(port, n, time.monotonic() + 60)
            echo_each(socks)
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGTERM)  # the supervisor only: it drains its workers
            refused_at = None
            if case == "clients_close":
                for s in socks:
                    s.close()
            closed_by_server = 0
            while srv.proc.poll() is None and time.monotonic() - t0 < 15:
                if refused_at is None and not echo_once(port, timeout=0.2):
                    refused_at = time.monotonic() - t0
                time.sleep(0.002)
            exit_s = time.monotonic() - t0 if srv.proc.poll() is not None else None
            if case == "clients_idle":
                for s in socks:
                    s.settimeout(1)
                    try:
                        if s.recv(1) == b"":
                            closed_by_server += 1
                    except OSError:
                        closed_by_server += 1
                    s.close()
            out[case] = {"exit_s": exit_s, "new_connections_refused_after_s": refused_at, "closed_by_server": closed_by_server,
                         "exit_code": srv.proc.returncode}
        finally:
            srv.stop()
    return out


# -------------------------------------------------------------------------------------------- output


def fmt_num(v: float) -> str:
    if v != v:  # nan
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def fmt_us(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} µs"


def summarize(matrix: dict) -> dict:
    """Medians per cell: ops/s, MB/s, p50, p99, errors (sum)."""
    s = {}
    for key, by_w in matrix["cells"].items():
        for wkey, runs in by_w.items():
            s.setdefault(key, {})[wkey] = {
                "ops_per_sec": median_of(runs, "ops_per_sec"),
                "mb_per_sec": median_of(runs, "mb_per_sec"),
                "p50_us": median_of(runs, "latency_us.p50"),
                "p99_us": median_of(runs, "latency_us.p99"),
                "p999_us": median_of(runs, "latency_us.p999"),
                "max_us": max(r["latency_us"]["max"] for r in runs),
                "errors": sum(r["errors"]["total"] for r in runs),
                "server_cpu": median_of(runs, "server_cpu"),
                "client_cpu": median_of(runs, "client_cpu"),
                "ops_per_server_cpu_s": median_of(runs, "ops_per_server_cpu_s"),
                "runs": len(runs),
                "all_ops_per_sec": [r["ops_per_sec"] for r in runs],
            }
    return s


def targets(summary: dict, memory: dict | None) -> list[tuple[str, str, str, str]]:
    def cell(srv, w, f="ops_per_sec"):
        return summary.get(srv, {}).get(w, {}).get(f)

    rows = []

    def ratio_row(name, srv, base, w, need):
        a, b = cell(srv, w), cell(base, w)
        if a is None or b is None or not b:
            rows.append((name, f"≥ {need}×", "not measured", "—"))
            return
        r = a / b
        ea, eb = cell(srv, w, "ops_per_server_cpu_s"), cell(base, w, "ops_per_server_cpu_s")
        eff = ea / eb if ea and eb else float("nan")
        client = cell(srv, w, "client_cpu") or 0
        txt = (f"{r:.2f}× ops/s; {eff:.2f}× ops per server CPU-second; cores busy: server "
               f"{cell(srv, w, 'server_cpu') or 0:.0%}, load generator {client:.0%}")
        if r >= need:
            verdict = "met"
        elif eff >= need:
            verdict = "**missed** in ops/s, met per server CPU-second"
        else:
            verdict = "**missed**"
        rows.append((name, f"≥ {need}×", txt, verdict))

    ratio_row("conn-32: engine (CLI) vs the talk's Python loop", "engine-cli", "talk-python", "conn-32", 1.4)
    ratio_row("pingpong-32: engine (CLI) vs asyncio", "engine-cli", "asyncio", "pingpong-32", 2.0)
    # The CLI's own run-to-run spread, to tell a real difference from noise.
    spread = 0.0
    for w, _, _, _ in WORKLOADS:
        runs = summary.get("engine-cli", {}).get(w, {}).get("all_ops_per_sec") or []
        if len(runs) > 1 and statistics.median(runs):
            spread = max(spread, (max(runs) - min(runs)) / statistics.median(runs))
    for host in ("engine-python", "engine-ruby"):
        worst = worst_cpu = None
        for w, _, _, _ in WORKLOADS:
            a, b = cell(host, w), cell("engine-cli", w)
            if a is not None and b:
                d = (a - b) / b
                worst = d if worst is None or abs(d) > abs(worst) else worst
            a, b = cell(host, w, "ops_per_server_cpu_s"), cell("engine-cli", w, "ops_per_server_cpu_s")
            if a and b:
                d = (a - b) / b
                worst_cpu = d if worst_cpu is None or abs(d) > abs(worst_cpu) else worst_cpu
        name = f"{'Python' if host == 'engine-python' else 'Ruby'}-hosted serve vs CLI (worst workload)"
        if worst is None:
            rows.append((name, "within 5%", "not measured (package not installed)", "—"))
            continue
        per = []
        for w, _, _, _ in WORKLOADS:
            a, b = cell(host, w), cell("engine-cli", w)
            if a is not None and b:
                per.append(f"{w} {(a - b) / b * 100:+.0f}%")
        txt = f"worst {worst * 100:+.1f}% ops/s ({', '.join(per)})"
        if worst_cpu is not None:
            txt += f"; worst {worst_cpu * 100:+.1f}% per server CPU-second"
        txt += f"; the CLI's own run-to-run spread: up to {spread * 100:.0f}%"
        if abs(worst) <= 0.05:
            verdict = "met"
        elif abs(worst) <= spread:
            verdict = "**missed** as measured, within the run-to-run noise"
        else:
            verdict = "**missed**"
        rows.append((name, "within 5%", txt, verdict))
    if memory and "engine" in memory:
        b = memory["engine"]["per_conn_idle"]
        b2 = memory["engine"]["per_conn_after_echo"]
        rows.append(("user-space memory per idle connection (engine worker RSS)", "≤ 1 KiB",
                     f"{b:.0f} B (after one echo each: {b2:.0f} B)", "met" if max(b, b2) <= 1024 else "**missed**"))
    return rows


def svg_chart(summary: dict, labels: dict[str, str], order: list[str]) -> str:
    """Grouped horizontal bars: one panel per workload, one bar per server (median, runs as ticks)."""
    panels = [(w, "ops/s" if w != "stream-4" else "MB/s") for w, _, _, _ in WORKLOADS]
    colors = {"engine-cli": "#1f77b4", "engine-python": "#4c9be8", "engine-ruby": "#9ecae9", "talk-python": "#d62728",
              "talk-ruby": "#ff9896", "asyncio": "#2ca02c"}
    bar_h, gap, panel_gap, left, width = 16, 4, 36, 180, 460
    y = 40
    parts = []
    for w, unit in panels:
        rows = [k for k in order if w in summary.get(k, {})]
        field_ = "mb_per_sec" if unit == "MB/s" else "ops_per_sec"
        vmax = max([summary[k][w][field_] for k in rows] + [1e-9])
        parts.append(f'<text x="10" y="{y}" font-weight="bold" font-size="14">{w} ({unit}, median of runs)</text>')
        y += 10
        for k in rows:
            v = summary[k][w][field_]
            bw = width * v / vmax
            parts.append(f'<text x="{left - 8}" y="{y + bar_h - 4}" text-anchor="end" font-size="12">{esc(labels.get(k, k))}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{colors.get(k, "#888")}"/>')
            parts.append(f'<text x="{left + bw + 6:.1f}" y="{y + bar_h - 4}" font-size="12">{fmt_num(v)}</text>')
            y += bar_h + gap
        y += panel_gap
    height = y
    total_w = left + width + 120
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="10" y="20" font-size="15">port-sharding bench: one server worker on CPU 0, load generator on CPU 1 (higher is better)</text>\n'
            + "\n".join(parts) + "\n</svg>\n")


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "")


SCALING_BEGIN, SCALING_END = "<!-- scaling:begin -->", "<!-- scaling:end -->"


def existing_scaling() -> str:
    if not BENCHMARKS.exists():
        return ""
    text = BENCHMARKS.read_text()
    i, j = text.find(SCALING_BEGIN), text.find(SCALING_END)
    if i < 0 or j < 0:
        return ""
    return text[i + len(SCALING_BEGIN):j].strip("\n")


def write_benchmarks(m: dict, matrix: dict, summary: dict, memory: dict | None, startup: dict | None, drain: dict | None,
                     elapsed: float, scaling_md: str | None = None) -> None:
    labels = {s["key"]: s["label"] for s in matrix["servers"]}
    order = [s["key"] for s in matrix["servers"]]
    L = []
    L.append("# Benchmarks\n")
    L.append("Written by `make bench` (bench/run.py); do not edit by hand — analysis notes come from bench/NOTES.md. "
             "Every number is a median of runs on the machine below; a loopback benchmark on a shared 2-core VM is noisy, "
             "so read ratios, not absolutes.\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m['cpus']} × {m['cpu']}; memory {m['memory']}; kernel {m['kernel']} ({m['os']})")
    L.append(f"- {m['rustc']}; Python {m['python']}; {m['ruby']}; net.ipv4.tcp_tw_reuse={m['tcp_tw_reuse']}")
    L.append(f"- run {m['date']}, load average at start {m['loadavg_at_start']:.2f}, whole run {elapsed / 60:.1f} min")
    other = [r.get("other_cpu") for by_w in matrix["cells"].values() for runs in by_w.values() for r in runs if r.get("other_cpu") is not None]
    if other:
        L.append(f"- noise: other processes kept {statistics.median(other):.2f} cores busy during the median run "
                 f"(max {max(other):.2f}; 0 = quiet machine; the server and the load generator have 1 core each)")
    pin = "server pinned to CPU 0, load generator to CPU 1 (taskset)" if TASKSET else "no CPU pinning (taskset missing)"
    L.append(f"- {pin}; every server with 1 worker; {RUNS} runs of {DURATION:g} s per cell, 127.0.0.1, ephemeral ports\n")
    L.append("## Throughput (median ops/s; stream: MB/s of verified echo)\n")
    head = "| server | " + " | ".join(w for w, _, _, _ in WORKLOADS) + " |"
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    base = summary.get("talk-python", {})
    for k in order:
        if k in matrix["skipped"]:
            L.append(f"| {labels[k]} | " + " | ".join("skipped" for _ in WORKLOADS) + " |")
            continue
        row = []
        for w, _, _, _ in WORKLOADS:
            c = summary.get(k, {}).get(w)
            if c is None:
                row.append("n/a" if k.startswith("talk") else ("failed" if k in matrix["failures"] else "—"))
                continue
            val = c["mb_per_sec"] if w == "stream-4" else c["ops_per_sec"]
            txt = fmt_num(val) + (" MB/s" if w == "stream-4" else "")
            b = base.get(w)
            if b and b["ops_per_sec"] and k != "talk-python":
                txt += f" ({c['ops_per_sec'] / b['ops_per_sec']:.2f}×)"
            if c["errors"]:
                txt += f" ⚠ {c['errors']} err"
            row.append(txt)
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("\n(×) = ratio to the talk's Python loop. n/a: the talk's loops do one `recv` per connection and close, so only "
             "`conn` applies to them. ⚠ = failed operations summed over the runs (see the JSON).\n")
    # Ratios to asyncio.
    aio = summary.get("asyncio", {})
    if aio:
        L.append("### Ratio to Python asyncio\n")
        L.append(head)
        L.append("|---|" + "---:|" * len(WORKLOADS))
        for k in order:
            if k not in summary or k == "asyncio":
                continue
            row = []
            for w, _, _, _ in WORKLOADS:
                c, b = summary[k].get(w), aio.get(w)
                row.append(f"{c['ops_per_sec'] / b['ops_per_sec']:.2f}×" if c and b and b["ops_per_sec"] else "n/a")
            L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
        L.append("")
    L.append("## Where the CPU went: ops per server CPU-second (server core busy / load-generator core busy)\n")
    L.append("Each side has one core. When the load generator's core is near 100 % and the server's is not, the "
             "ops/s above measure the load generator (on loopback the sender also runs the receiver's TCP stack), "
             "and ops per server CPU-second is the fairer comparison of servers.\n")
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    for k in order:
        if k not in summary:
            continue
        row = []
        for w, _, _, _ in WORKLOADS:
            c = summary[k].get(w)
            b = base.get(w)
            if not c:
                row.append("n/a")
                continue
            txt = f"{fmt_num(c['ops_per_server_cpu_s'])}"
            if b and b.get("ops_per_server_cpu_s") and k != "talk-python":
                txt += f" ({c['ops_per_server_cpu_s'] / b['ops_per_server_cpu_s']:.2f}×)"
            txt += f" · {c['server_cpu']:.0%} / {c['client_cpu']:.0%}"
            row.append(txt)
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("")
    L.append("## Latency (median of runs: p50 / p99)\n")
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    for k in order:
        if k not in summary:
            continue
        row = []
        for w, _, _, _ in WORKLOADS:
            c = summary[k].get(w)
            row.append(f"{fmt_us(c['p50_us'])} / {fmt_us(c['p99_us'])}" if c else "n/a")
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("\nconn latency is connect → last echoed byte; pingpong one round trip; stream one 64 KiB message "
             "(2 in flight per connection).\n")
    if CHART.exists():
        L.append(f"![throughput chart]({CHART.relative_to(ROOT)})\n")
    L.append("## Targets (issue 6; measured, not asserted)\n")
    L.append("| target | goal | measured | |")
    L.append("|---|---|---|---|")
    for t in targets(summary, memory):
        L.append("| " + " | ".join(t) + " |")
    L.append("")
    if matrix["skipped"] or matrix["failures"]:
        L.append("Skipped or failed servers:\n")
        for k, why in matrix["skipped"].items():
            L.append(f"- {labels.get(k, k)}: skipped — {why}")
        for k, why in matrix["failures"].items():
            L.append(f"- {labels.get(k, k)}: failed — {why}")
        L.append("")
    if memory:
        L.append("## Memory per idle connection\n")
        e = memory["engine"]
        n = memory["connections"]
        L.append(f"One engine worker, {n:,} idle connections (opened by the bench script, which raises RLIMIT_NOFILE):\n")
        L.append("| state | worker VmRSS | RssAnon | bytes per connection (ΔVmRSS / n) |")
        L.append("|---|---:|---:|---:|")
        L.append(f"| no connections | {e['base']['VmRSS']:,} KiB | {e['base']['RssAnon']:,} KiB | |")
        L.append(f"| {n:,} idle (accepted, never sent) | {e['idle']['VmRSS']:,} KiB | {e['idle']['RssAnon']:,} KiB | {e['per_conn_idle']:.0f} B |")
        L.append(f"| {n:,} after one 1-byte echo each | {e['after_echo']['VmRSS']:,} KiB | {e['after_echo']['RssAnon']:,} KiB | {e['per_conn_after_echo']:.0f} B |")
        if "asyncio" in memory:
            a = memory["asyncio"]
            L.append(f"| asyncio, {n:,} after one echo each | {a['after_echo']['VmRSS']:,} KiB (from {a['base']['VmRSS']:,}) | "
                     f"{a['after_echo']['RssAnon']:,} KiB | {a['per_conn_after_echo']:.0f} B |")
        L.append("\nUser-space memory only: kernel socket buffers are not in RSS.\n")
    if startup:
        L.append("## Start-up (process start → first echo answered)\n")
        L.append("| server | median | fastest | runs |")
        L.append("|---|---:|---:|---:|")
        for k in order:
            if k in startup:
                s = startup[k]
                L.append(f"| {labels[k]} | {s['median_ms']:.0f} ms | {s['min_ms']:.0f} ms | {s['runs']} |")
        L.append("\nIncludes the interpreter's own start for Python and Ruby.\n")
    if drain:
        L.append(f"## Drain with {drain['connections']:,} idle connections (engine, 1 worker, `--drain-timeout 2s`)\n")
        L.append("| case | SIGTERM → exit | new connections refused after | closed by the server |")
        L.append("|---|---:|---:|---:|")
        names = {"clients_close": "clients close right after the signal", "clients_idle": "clients stay idle (drain timeout)"}
        for case in ("clients_close", "clients_idle"):
            d = drain.get(case)
            if not d:
                continue
            ex = f"{d['exit_s'] * 1000:.0f} ms" if d["exit_s"] is not None else "did not exit in 15 s"
            rf = f"{d['new_connections_refused_after_s'] * 1000:.0f} ms" if d["new_connections_refused_after_s"] is not None else "—"
            cb = f"{d['closed_by_server']:,}" if case == "clients_idle" else "—"
            L.append(f"| {names[case]} | {ex} | {rf} | {cb} |")
        L.append("")
    if NOTES.exists():
        L.append(NOTES.read_text().rstrip() + "\n")
    L.append("## Reproduce\n")
    L.append("```sh")
    L.append("make bench            # this file and bench/chart.svg (BENCH_DURATION=3 BENCH_RUNS=3 by default)")
    L.append("make bench-scaling    # workers 1,2,4,8,16: writes $OUT/scaling-*.md/json and the section below")
    L.append("python3 bench/run.py merge-scaling bench/results/scaling-X.md   # add a table measured on another machine")
    L.append("python3 bench/run.py report   # rewrite this file from bench/results/matrix.json (after editing bench/NOTES.md)")
    L.append("# one cell by hand, e.g. the engine under conn-32:")
    L.append("taskset -c 0 target/release/port-sharding serve --host 127.0.0.1 --port 0 -w 1 --mode echo &   # prints the port")
    L.append("taskset -c 1 target/release/port-sharding bench --host 127.0.0.1 -p PORT --workload conn -c 32 -d 3s --size 64")
    L.append("# the baselines: python3 bench/servers/talk_echo.py PORT 127.0.0.1 | ruby bench/servers/talk_echo.rb PORT 127.0.0.1 |")
    L.append("#                python3 bench/servers/asyncio_echo.py PORT")
    L.append("```\n")
    L.append(f"Raw results: `{(RESULTS / 'matrix.json').relative_to(ROOT)}`.\n")
    L.append(SCALING_BEGIN)
    L.append(scaling_md if scaling_md is not None else (existing_scaling() or
             "## Scaling\n\nNot measured yet on a machine with more cores: run `make bench-scaling` there."))
    L.append(SCALING_END + "\n")
    BENCHMARKS.write_text("\n".join(L))


def cmd_matrix() -> int:
    if not BIN.exists():
        log(f"{BIN} missing: run `cargo build --release` (make bench does)")
        return 2
    t0 = time.monotonic()
    m = machine()
    log(f"machine: {machine_key(m)}; load {m['loadavg_at_start']:.2f}; {RUNS} runs × {DURATION:g}s")
    matrix = run_matrix()
    summary = summarize(matrix)
    kinds = server_kinds()
    log("start-up times")
    startup = measure_startup([k for k in kinds if k.key in summary], matrix["skipped"])
    log("memory per idle connection")
    try:
        memory = measure_memory()
    except (RuntimeError, OSError) as e:
        log(f"memory: {e}")
        memory = None
    log("drain")
    try:
        drain = measure_drain()
    except (RuntimeError, OSError) as e:
        log(f"drain: {e}")
        drain = None
    elapsed = time.monotonic() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "matrix.json").write_text(json.dumps(
        {"machine": m, "duration_s": DURATION, "runs": RUNS, "summary": summary, "matrix": matrix, "memory": memory,
         "startup": startup, "drain": drain, "elapsed_s": elapsed}, indent=1, default=str))
    labels = {"engine-cli": "engine (CLI)", "engine-python": "engine via Python serve", "engine-ruby": "engine via Ruby serve",
              "talk-python": "talk's Python loop", "talk-ruby": "talk's Ruby loop", "asyncio": "Python asyncio"}
    CHART.write_text(svg_chart(summary, labels, [k.key for k in kinds]))
    write_benchmarks(m, matrix, summary, memory, startup, drain, elapsed)
    for t in targets(summary, memory):
        log(" | ".join(t))
    log(f"wrote {BENCHMARKS.relative_to(ROOT)}, {CHART.relative_to(ROOT)} in {elapsed / 60:.1f} min")
    return 0


# ------------------------------------------------------------------------------------------- scaling


def merge_scaling(md: str, key: str) -> None:
    """Puts one machine's scaling table into BENCHMARKS.md, replacing an older one for the same machine."""
    # Merge into BENCHMARKS.md: one subsection per machine, replaced when the same machine runs again.
    prev = existing_scaling()
    sections = re.split(r"(?m)^(?=### )", prev)
    keep = [s for s in sections if s.strip() and not s.startswith("## Scaling") and not s.startswith(f"### {key}\n")]
    scaling_md = ("## Scaling\n\n`make bench-scaling`: one engine server with N workers against one load generator "
                  "(several threads).\n\n" + "\n".join(s.rstrip() + "\n" for s in keep + [md]))
    if BENCHMARKS.exists():
        text = BENCHMARKS.read_text()
        i, j = text.find(SCALING_BEGIN), text.find(SCALING_END)
        if i >= 0 and j >= 0:
            text = text[:i] + SCALING_BEGIN + "\n" + scaling_md + SCALING_END + text[j + len(SCALING_END):]
        else:
            text += "\n" + SCALING_BEGIN + "\n" + scaling_md + SCALING_END + "\n"
    else:
        text = "# Benchmarks\n\n" + SCALING_BEGIN + "\n" + scaling_md + SCALING_END + "\n"
    BENCHMARKS.write_text(text)


def cmd_merge_scaling(path: str) -> int:
    """Adds a scaling table written by `make bench-scaling` elsewhere ($OUT/scaling-*.md) to BENCHMARKS.md."""
    md = Path(path).read_text()
    m = re.match(r"### (.+)\n", md)
    if not m:
        log(f"{path}: not a scaling table (no '### machine' heading)")
        return 2
    merge_scaling(md.rstrip() + "\n", m.group(1))
    log(f"merged {path} into {BENCHMARKS.relative_to(ROOT)}")
    return 0


def cmd_scaling() -> int:
    if not BIN.exists():
        log(f"{BIN} missing: run `cargo build --release`")
        return 2
    out_dir = Path(os.environ.get("OUT", ROOT / "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    m = machine()
    ncpu = m["cpus"]
    workers = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2,4,8,16").split(",")]
    threads = int(os.environ.get("BENCH_THREADS", max(1, ncpu // 2)))
    duration = float(os.environ.get("BENCH_DURATION", "5"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    # Split the CPUs: servers on the first half, the load generator on the rest (all CPUs when only one).
    cpus = sorted(os.sched_getaffinity(0))
    if ncpu >= 2 and TASKSET:
        half = ncpu - min(threads, ncpu - 1)
        server_cpus = ",".join(map(str, cpus[:half]))
        client_cpus = ",".join(map(str, cpus[half:]))
    else:
        server_cpus = client_cpus = None
    # conn-256-src16 spreads the clients over 16 source addresses (127.0.0.1-16): from one address, every
    # connection to the port competes for the same ephemeral ports, and that caps conn-256 on the client side.
    loads = [("conn-256", "conn", 256, 64, 1), ("conn-256-src16", "conn", 256, 64, 16),
             ("pingpong-512", "pingpong", 512, 64, 1)]
    log(f"scaling on {machine_key(m)}: workers {workers}, {threads} load threads, server CPUs {server_cpus}, client CPUs {client_cpus}")
    results: dict[str, dict[str, list[dict]]] = {}
    t0 = time.monotonic()
    for run in range(runs):
        for w in workers:
            port = free_port()
            argv = [str(BIN), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(w), "--mode", "echo", "--quiet"]
            with Server(argv, port, server_cpus, f"scale-{w}", preexec=raise_nofile) as srv:
                srv.wait_ready()
                for key, workload, conc, size, sources in loads:
                    r = bench(port, workload, conc, size, duration, client_cpus, threads=threads, sources=sources)
                    results.setdefault(str(w), {}).setdefault(key, []).append(r)
                    log(f"run {run + 1} workers {w:>2} {key:13} {r['ops_per_sec']:>10.0f} ops/s errors {r['errors']['total']}")
    summary = {w: {k: {"ops_per_sec": median_of(rs, "ops_per_sec"), "p99_us": median_of(rs, "latency_us.p99"),
                       "errors": sum(r["errors"]["total"] for r in rs),
                       "spread": [wk["accepted"] for wk in (rs[-1].get("workers") or [])]}
                   for k, rs in by.items()} for w, by in results.items()}
    key = machine_key(m)
    L = [f"### {key}\n",
         f"{m['date']}; kernel {m['kernel']}; {m['rustc']}; load generator: {threads} thread(s) on CPUs {client_cpus or 'any'}, "
         f"servers on CPUs {server_cpus or 'any'}; {runs} runs × {duration:g} s; median ops/s (× = vs 1 worker)\n",
         "| workers | " + " | ".join(k for k, *_ in loads) + " | p99 " + " | p99 ".join(k for k, *_ in loads) + " | accepted per worker (last conn run) |",
         "|---:|" + "---:|" * (2 * len(loads)) + "---|"]
    one = summary.get(str(workers[0]), {})
    for w in workers:
        s = summary.get(str(w), {})
        cells = []
        for k, *_ in loads:
            c = s.get(k)
            base = one.get(k, {}).get("ops_per_sec")
            cells.append(f"{fmt_num(c['ops_per_sec'])} ({c['ops_per_sec'] / base:.2f}×)" + (f" ⚠ {c['errors']} err" if c["errors"] else "")
                         if c and base else "—")
        for k, *_ in loads:
            c = s.get(k)
            cells.append(fmt_us(c["p99_us"]) if c else "—")
        spread = s.get(loads[0][0], {}).get("spread") or []
        cells.append(" ".join(str(x) for x in spread) if spread else "—")
        L.append(f"| {w} | " + " | ".join(cells) + " |")
    md = "\n".join(L) + "\n"
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:60]
    (out_dir / f"scaling-{slug}.md").write_text(md)
    (out_dir / f"scaling-{slug}.json").write_text(json.dumps({"machine": m, "workers": workers, "threads": threads,
                                                              "server_cpus": server_cpus, "client_cpus": client_cpus,
                                                              "summary": summary, "results": results}, indent=1))
    merge_scaling(md, key)
    print(md)
    log(f"wrote {out_dir}/scaling-{slug}.md/.json and the Scaling section of BENCHMARKS.md in {(time.monotonic() - t0) / 60:.1f} min")
    return 0


def cmd_report() -> int:
    """Rewrites BENCHMARKS.md and the chart from bench/results/matrix.json (e.g. after editing bench/NOTES.md)."""
    d = json.loads((RESULTS / "matrix.json").read_text())
    global DURATION, RUNS
    DURATION, RUNS = d["duration_s"], d["runs"]
    kinds = server_kinds()
    labels = {"engine-cli": "engine (CLI)", "engine-python": "engine via Python serve", "engine-ruby": "engine via Ruby serve",
              "talk-python": "talk's Python loop", "talk-ruby": "talk's Ruby loop", "asyncio": "Python asyncio"}
    CHART.write_text(svg_chart(d["summary"], labels, [k.key for k in kinds]))
    write_benchmarks(d["machine"], d["matrix"], d["summary"], d["memory"], d["startup"], d["drain"], d["elapsed_s"])
    log(f"rewrote {BENCHMARKS.relative_to(ROOT)} and {CHART.relative_to(ROOT)} from {RESULTS / 'matrix.json'}")
    return 0


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "matrix"
    try:
        if cmd == "matrix":
            return cmd_matrix()
        if cmd == "report":
            return cmd_report()
        if cmd == "merge-scaling" and len(sys.argv) > 2:
            return cmd_merge_scaling(sys.argv[2])
        if cmd == "scaling":
            return cmd_scaling()
        print(__doc__)
        return 2
    finally:
        shutil.rmtree(CONTROL_DIR, ignore_errors=True)
        if os.environ.get("BENCH_KEEP_LOGS") != "1":  # failures already quote the server's log tail
            shutil.rmtree(LOGS, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
