"""What a server costs besides throughput: memory per idle connection, start-up time, and how a drain
ends with connections open."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import statistics
import time
from pathlib import Path

from .context import Context
from .measure import SERVER_CPU
from .servers import Server, ServerKind, echo_once, free_port, log, raise_nofile, status


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


def measure_memory(ctx: Context, n: int = 10_000) -> dict:
    raise_nofile()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and limit < n + 100:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {limit} is below {n + 100}: raise it (ulimit -Hn) to measure")
    out = {"connections": n}
    # The engine: one worker, limit above n.
    port = free_port()
    argv = [str(ctx.bin), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--mode", "echo", "--quiet",
            "--max-connections", str(n * 2), "--backlog", "4096"]
    with Server(ctx, argv, port, None, "mem-engine", preexec=raise_nofile) as srv:
        srv.wait_ready()
        st = status(ctx, port)
        if not st:
            raise RuntimeError("no status from the engine")
        wpid = st[0]["workers"][0]["pid"]
        deadline = time.monotonic() + 120
        base = wait_stable_rss(wpid, time.monotonic() + 3)
        socks = open_idle(port, n, deadline)
        try:
            # Wait until the worker has accepted them all.
            while time.monotonic() < deadline:
                st = status(ctx, port)
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
    with Server(ctx, [ctx.py, str(ctx.bench_dir / "servers" / "asyncio_echo.py"), str(port)], port, None, "mem-asyncio", preexec=raise_nofile) as srv:
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


def measure_startup(ctx: Context, kinds: list[ServerKind], skipped: dict, runs: int = 5) -> dict:
    out = {}
    for k in kinds:
        if k.key in skipped:
            continue
        times = []
        for _ in range(runs):
            port = free_port()
            try:
                with Server(ctx, k.argv, port, SERVER_CPU, f"start-{k.key}") as srv:
                    times.append(srv.wait_ready())
            except RuntimeError as e:
                log(f"start-up {k.key}: {e}")
                break
        if times:
            out[k.key] = {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000, "runs": len(times)}
    return out


def measure_drain(ctx: Context, n: int = 1000) -> dict:
    raise_nofile()
    out = {"connections": n}
    argv = [str(ctx.bin), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--mode", "echo", "--quiet",
            "--drain-timeout", "2s"]
    # A: clients close right after the signal; B: clients stay idle, the drain timeout closes them.
    for case in ("clients_close", "clients_idle"):
        port = free_port()
        srv = Server(ctx, argv, port, SERVER_CPU, f"drain-{case}", preexec=raise_nofile)
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
