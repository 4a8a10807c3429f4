"""System calls per operation of a serving process: counted with perf's syscall tracepoints (at full
speed) or with `strace -c -f` (slower, but it also counts failed calls)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .context import Context
from .measure import WORKLOADS, bench
from .servers import Server, ServerKind, free_port


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
