"""`scaling`: one engine server with 1..16 workers, and the minimal C server with as many processes beside it,
against one multi-threaded load generator;
`merge-scaling`: a table measured on another machine into BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .context import Context
from .format import fmt_num, fmt_us
from .markdown import merge_scaling
from .measure import bench, machine, machine_key, median_of
from .servers import Server, free_port, log, raise_nofile

def cmd_merge_scaling(ctx: Context, path: str) -> int:
    """Adds a scaling table written by `make bench-scaling` elsewhere ($OUT/scaling-*.md) to BENCHMARKS.md."""
    md = Path(path).read_text()
    m = re.match(r"### (.+)\n", md)
    if not m:
        log(f"{path}: not a scaling table (no '### machine' heading)")
        return 2
    merge_scaling(ctx, md.rstrip() + "\n", m.group(1))
    log(f"merged {path} into {ctx.rel(ctx.benchmarks)}")
    return 0


def cmd_scaling(ctx: Context) -> int:
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release`")
        return 2
    out_dir = Path(os.environ.get("OUT", ctx.root / "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    m = machine(ctx)
    ncpu = m["cpus"]
    workers = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2,4,8,16").split(",")]
    threads = int(os.environ.get("BENCH_THREADS", max(1, ncpu // 2)))
    duration = float(os.environ.get("BENCH_DURATION", "5"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    # Split the CPUs: servers on the first half, the load generator on the rest (all CPUs when only one).
    cpus = sorted(os.sched_getaffinity(0))
    if ncpu >= 2 and ctx.taskset:
        half = ncpu - min(threads, ncpu - 1)
        server_cpus = ",".join(map(str, cpus[:half]))
        client_cpus = ",".join(map(str, cpus[half:]))
    else:
        server_cpus = client_cpus = None
    # conn-256-src16 spreads the clients over 16 source addresses (127.0.0.1-16): from one address, every
    # connection to the port competes for the same ephemeral ports, and that caps conn-256 on the client side.
    loads = [("conn-256", "conn", 256, 64, 1), ("conn-256-src16", "conn", 256, 64, 16),
             ("pingpong-512", "pingpong", 512, 64, 1)]
    servers = {"engine": lambda w: [str(ctx.bin), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(w),
                                    "--mode", "echo", "--quiet"]}
    if ctx.c_server.exists():  # the floor, side by side (issue 14): w processes, one reuseport listener each
        servers["c"] = lambda w: [str(ctx.c_server), "-p", "{port}", "-w", str(w), "-m", "echo"]
    else:
        log(f"{ctx.c_server} missing (make bench builds it): scaling the engine alone")
    log(f"scaling on {machine_key(m)}: workers {workers}, {threads} load threads, server CPUs {server_cpus}, "
        f"client CPUs {client_cpus}, servers {', '.join(servers)}")
    results: dict[str, dict[str, dict[str, list[dict]]]] = {}
    t0 = time.monotonic()
    for run in range(runs):
        for w in workers:
            for name, argv in servers.items():
                port = free_port()
                with Server(ctx, argv(w), port, server_cpus, f"scale-{name}-{w}", preexec=raise_nofile) as srv:
                    srv.wait_ready()
                    for key, workload, conc, size, sources in loads:
                        r = bench(ctx, port, workload, conc, size, duration, client_cpus, threads=threads, sources=sources,
                                  server_pgid=srv.pid)
                        results.setdefault(name, {}).setdefault(str(w), {}).setdefault(key, []).append(r)
                        log(f"run {run + 1} {name:6} workers {w:>2} {key:13} {r['ops_per_sec']:>10.0f} ops/s "
                            f"{r['ops_per_server_cpu_s']:>10.0f} per server CPU-s errors {r['errors']['total']}")
    summary = {name: {w: {k: {"ops_per_sec": median_of(rs, "ops_per_sec"), "p99_us": median_of(rs, "latency_us.p99"),
                              "ops_per_server_cpu_s": median_of(rs, "ops_per_server_cpu_s"),
                              "errors": sum(r["errors"]["total"] for r in rs),
                              "spread": [wk["accepted"] for wk in (rs[-1].get("workers") or [])]}
                          for k, rs in by.items()} for w, by in per.items()} for name, per in results.items()}
    key = machine_key(m)
    with_c = "c" in summary
    L = [f"### {key}\n",
         f"{m['date']}; kernel {m['kernel']}; {m['rustc']}; load generator: {threads} thread(s) on CPUs {client_cpus or 'any'}, "
         f"servers on CPUs {server_cpus or 'any'}; {runs} runs × {duration:g} s; median ops/s (× = vs 1 worker)"
         + ("; C = the minimal C epoll server with as many processes, engine/C = ratio of ops/s and of ops per server "
            "CPU-second" if with_c else "") + "\n"]
    head = ["workers"]
    for k, *_ in loads:
        head += [k] + ([f"{k} C", f"{k} engine/C"] if with_c else [])
    head += [f"p99 {k}" for k, *_ in loads] + ["accepted per worker (last conn run)"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|---:|" + "---:|" * (len(head) - 2) + "---|")

    def scaled(name: str, w: int, k: str) -> str:
        c = summary.get(name, {}).get(str(w), {}).get(k)
        base = summary.get(name, {}).get(str(workers[0]), {}).get(k, {}).get("ops_per_sec")
        if not c or not base:
            return "—"
        return f"{fmt_num(c['ops_per_sec'])} ({c['ops_per_sec'] / base:.2f}×)" + (f" ⚠ {c['errors']} err" if c["errors"] else "")

    for w in workers:
        s = summary.get("engine", {}).get(str(w), {})
        cells = []
        for k, *_ in loads:
            cells.append(scaled("engine", w, k))
            if with_c:
                cells.append(scaled("c", w, k))
                e, c = s.get(k), summary["c"].get(str(w), {}).get(k)
                cells.append(f"{e['ops_per_sec'] / c['ops_per_sec']:.2f}× / {e['ops_per_server_cpu_s'] / c['ops_per_server_cpu_s']:.2f}×"
                             if e and c and c["ops_per_sec"] and c["ops_per_server_cpu_s"] else "—")
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
    merge_scaling(ctx, md, key)
    print(md)
    log(f"wrote {out_dir}/scaling-{slug}.md/.json and the Scaling section of BENCHMARKS.md in {(time.monotonic() - t0) / 60:.1f} min")
    return 0
