"""One load run and what it cost: `port-sharding bench --json` with the CPU time of the server's process
group and of the load generator; the machine; memory per idle connection, start-up and drain."""

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
import time
from pathlib import Path

from .context import Context
from .servers import Server, ServerKind, echo_once, free_port, log, raise_nofile, status

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


def bench(ctx: Context, port: int, workload: str, conc: int, size: int, duration: float, cpus: str | None, threads: int = 1,
          server_pgid: int | None = None, sources: int = 1, connections: int | None = None) -> dict:
    """One `port-sharding bench --json` run; adds the CPU time the server's process group and the load
    generator used, so a run limited by the load generator can be told from one limited by the server."""
    argv = [str(ctx.bin), "bench", "--host", "127.0.0.1", "--port", str(port), "--workload", workload, "--concurrency", str(conc),
            "--duration", f"{duration}s", "--size", str(size), "--threads", str(threads), "--sources", str(sources),
            "--json"] + (["--connections", str(connections)] if connections else [])
    s0 = group_cpu_s(server_pgid) if server_pgid else None
    m0 = machine_busy_s()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(ctx.pinned(argv, cpus), env=ctx.env(), capture_output=True, timeout=duration + 60, preexec_fn=raise_nofile)
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


WORKLOADS = [  # key, workload, concurrency, size, the server's mode
    ("conn-1", "conn", 1, 64, "echo"),
    ("conn-32", "conn", 32, 64, "echo"),  # connect, echo, the client closes (issue 14's `echo`)
    ("once-32", "conn", 32, 64, "once"),  # connect, echo, the server closes (the talk's protocol)
    ("pingpong-32", "pingpong", 32, 64, "echo"),
    ("stream-4", "stream", 4, 65536, "echo"),
]

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


# ------------------------------------------------------------------------------------- system calls


def children(pid: int) -> list[int]:
    """The direct children of `pid` (the engine's workers, the C server's processes)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{pid}/stat").read_text()
            rest = text[text.rindex(")") + 2:].split()
            total += int(rest[11]) + int(rest[12])
    return total


def settle(pids: list[int], deadline: float) -> None:
    """Waits until `pids` have used no CPU for 0.3 s (or the deadline passed)."""
    last, quiet_since = cpu_ticks(pids), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_ticks(pids)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= 0.3:
            return


def parse_strace_c(text: str) -> dict[str, int]:
    """`strace -c` summary -> calls per system call (errors included, as they are calls too)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[3].isdigit() or parts[-1] == "total":
            continue
        calls[parts[-1]] = calls.get(parts[-1], 0) + int(parts[3])
    return calls


PERF_SYSCALLS = ("accept4", "read", "recvfrom", "write", "sendto", "close", "shutdown", "epoll_ctl", "epoll_wait",
                 "epoll_pwait", "brk", "mmap", "munmap", "clock_gettime")


def parse_perf_stat(text: str) -> dict[str, int]:
    """`perf stat -x,` output -> count per event (`raw_syscalls:sys_enter` as `total`)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#") or not parts[0].strip().isdigit():
            continue
        event = parts[2].strip()
        name = "total" if event == "raw_syscalls:sys_enter" else event.removeprefix("syscalls:sys_enter_")
        counts[name] = int(parts[0])
    return counts


def trace_server(ctx: Context, kind: ServerKind, wkey: str, cpus: tuple[str | None, str | None], tracer: str,
                 ops: int) -> dict:
    """System calls the server's serving processes make per operation, counted by `tracer` attached to them
    (the children of the started process, or the process itself when it has none) during one run; the
    start-up and the supervisor's own housekeeping are not counted.

    - `perf`: the kernel's syscall tracepoints (`perf stat`), at full speed, during a `ctx.duration` run.
    - `strace`: `strace -c -f`, which slows the server down several times (so, e.g., a client's data is
      usually there by the time a connection is accepted); bounded to `ops` operations. It also counts
      failed calls (`EAGAIN`)."""
    binary = shutil.which(tracer)
    if binary is None:
        raise RuntimeError(f"{tracer} not installed")
    w = next(w for w in WORKLOADS if w[0] == wkey)
    argv = kind.argv_for(w[4])
    if argv is None:
        raise RuntimeError(f"{kind.key} has no {w[4]} mode")
    port = free_port()
    out_file = ctx.logs / f"{tracer}-{kind.key}-{wkey}.txt"
    with Server(ctx, argv, port, cpus[0], f"{tracer}-{kind.key}") as srv:
        srv.wait_ready()
        pids = children(srv.pid) or [srv.pid]
        if tracer == "perf":
            events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in PERF_SYSCALLS])
            cmd = [binary, "stat", "-x,", "-e", events, "-o", str(out_file), "-p", ",".join(map(str, pids))]
        else:
            cmd = [binary, "-c", "-f", "-q", "-o", str(out_file)] + [a for p in pids for a in ("-p", str(p))]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # attaching
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{tracer} exited: {err[-300:]}")
            if tracer == "perf":
                r = bench(ctx, port, w[1], w[2], w[3], ctx.duration, cpus[1])
            else:
                r = bench(ctx, port, w[1], w[2], w[3], 60.0, cpus[1], connections=ops)
            # A traced server lags behind (ptrace is slow): let it finish the closes the run left it.
            settle(pids, time.monotonic() + 15)
        finally:
            proc.send_signal(signal.SIGINT)  # detaches and writes the summary
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    text = out_file.read_text()
    calls = parse_perf_stat(text) if tracer == "perf" else parse_strace_c(text)
    total = calls.pop("total", None)
    if total is None:
        total = sum(calls.values())
    done = max(r["ops"], 1)
    return {"tool": tracer, "ops": r["ops"], "errors": r["errors"]["total"], "processes": len(pids),
            "per_op": {k: v / done for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v},
            "total_per_op": total / done}
