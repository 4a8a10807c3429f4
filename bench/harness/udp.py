"""Issue 24: the engine's UDP workers against the minimal C recvmmsg/sendmmsg echo (the floor), one worker each,
runs alternating between the two: datagrams per second, loss, p99, and datagrams per server CPU-second, printed and
saved to $OUT/udp-*.json. BENCHMARKS.md is not touched.

The load is `port-sharding bench --workload udp --interval 0`: flows (one source port each) keeping `--window`
datagrams in flight, every echo checked; a datagram whose echo does not come within the timeout is lost."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

from .context import Context
from .measure import CLK_TCK, group_cpu_s, machine
from .servers import Server, free_port, log

FLOWS, WINDOW, SIZE = 16, 8, 64  # 128 datagrams in flight, 64 B each


def udp_ready(port: int, timeout: float = 30.0) -> None:
    """Waits until a datagram to `port` comes back."""
    until = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < until:
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                if s.recvfrom(16)[0] == b"ping":
                    return
            except OSError:
                pass
    raise RuntimeError(f"nothing answers on udp port {port}")


def one_run(ctx: Context, argv: list[str], name: str, server_cpus: str | None, load_cpus: str | None) -> dict:
    port = free_port()
    with Server(ctx, argv, port, server_cpus, name) as srv:
        udp_ready(port)
        s0 = group_cpu_s(srv.pid)
        load = [str(ctx.bin), "bench", "--workload", "udp", "--port", str(port), "-c", str(FLOWS), "--interval", "0",
                "--window", str(WINDOW), "--size", str(SIZE), "--duration", f"{ctx.duration}s", "--timeout", "1s",
                "--json", "--no-status"]
        r = subprocess.run(ctx.pinned(load, load_cpus), env=ctx.env(), capture_output=True, timeout=ctx.duration + 60)
        s1 = group_cpu_s(srv.pid)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr.decode(errors='replace')[-400:]}")
    out = json.loads(r.stdout)
    cpu = max(s1 - s0, 1 / CLK_TCK)
    return {"dgrams_per_s": out["ops_per_sec"], "lost": out["errors"]["lost"], "errors": out["errors"]["total"],
            "p99_us": out["latency_us"]["p99"], "dgrams_per_server_cpu_s": out["ops"] / cpu,
            "server_cpu": cpu / max(out["elapsed_s"], 1e-6)}


def cmd_udp(ctx: Context) -> int:
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release`")
        return 2
    c_bin = Path(os.environ.get("BENCH_C_UDP_SERVER", ctx.root / "target" / "bench" / "c_udp_echo"))
    servers = {
        "engine": [str(ctx.bin), "serve", "--protocol", "udp", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
                   "--quiet"],
        "c-recvmmsg": [str(c_bin), "-p", "{port}", "-w", "1"],
    }
    # One CPU for the server, the rest for the load (on 2 CPUs: one each).
    n = os.cpu_count() or 2
    server_cpus, load_cpus = ("0", f"1-{n - 1}") if n > 1 else (None, None)
    runs: dict[str, list[dict]] = {k: [] for k in servers}
    for i in range(ctx.runs):
        for key, argv in servers.items():
            r = one_run(ctx, argv, f"udp-{key}", server_cpus, load_cpus)
            log(f"run {i + 1}/{ctx.runs} {key}: {r['dgrams_per_s']:.0f} datagrams/s, {r['lost']} lost, "
                f"{r['dgrams_per_server_cpu_s']:.0f} per server CPU-s")
            runs[key].append(r)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    e, c = med["engine"], med["c-recvmmsg"]
    lines = [f"UDP echo, {FLOWS} flows × {WINDOW} in flight, {SIZE} B, 1 worker, medians of {ctx.runs} runs of "
             f"{ctx.duration:g} s (server pinned to CPU {server_cpus}, load to {load_cpus})", "",
             "| server | datagrams/s | lost | p99 | datagrams per server CPU-s |", "|---|---|---|---|---|"]
    for k, m in med.items():
        lines.append(f"| {k} | {m['dgrams_per_s']:,.0f} | {m['lost']:.0f} | {m['p99_us']:.0f} µs | "
                     f"{m['dgrams_per_server_cpu_s']:,.0f} |")
    lines.append("")
    lines.append(f"engine / C floor: {e['dgrams_per_s'] / max(c['dgrams_per_s'], 1):.2f}× the datagrams/s, "
                 f"{e['dgrams_per_server_cpu_s'] / max(c['dgrams_per_server_cpu_s'], 1):.2f}× the datagrams per CPU-second")
    md = "\n".join(lines)
    out_dir = Path(os.environ.get("OUT", ctx.root / "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"udp-{stamp}.json").write_text(json.dumps({"machine": machine(ctx), "median": med, "runs": runs},
                                                           indent=1, default=str))
    print(md)
    log(f"wrote {out_dir}/udp-{stamp}.json")
    return 0
