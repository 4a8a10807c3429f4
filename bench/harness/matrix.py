"""`matrix`: every server under every workload, pinned, medians of runs -> BENCHMARKS.md and the chart;
`report`: the same file again from the saved results."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from .context import Context
from .chart import svg_chart
from .footprint import measure_drain, measure_memory, measure_startup
from .bulk import bulk_table, disturbance_table, paired_table
from .markdown import bulk_cc_markers, floor_table, merge_section, write_benchmarks
from .netns import INSIDE
from .quota import joiner, server_quota
from .measure import (BYTE_WORKLOADS, CLIENT_CPU, SERVER_CPU, WORKLOADS, bench_cell, machine, machine_key, median_of,
                      per_server_cpu_s)
from .syscalls import trace_server
from .targets import targets
from .servers import Server, ServerKind, available, free_port, log, server_kinds


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
                # MB per server CPU-second for byte workloads, else ops: what the floor and bulk tables compare.
                "work_per_server_cpu_s": statistics.median(per_server_cpu_s(r, wkey) for r in runs),
                "runs": len(runs),
                "all_ops_per_sec": [r["ops_per_sec"] for r in runs],
            }
    return s


def applicable(kind: ServerKind, workloads: list[tuple] = WORKLOADS) -> list[tuple]:
    """The workloads a server can serve: its modes, and its own list when it has one."""
    return [w for w in workloads if kind.argv_for(w[4]) is not None and (kind.workloads is None or w[0] in kind.workloads)]


def run_matrix(ctx: Context, kinds: list[ServerKind], workloads: list[tuple] = WORKLOADS, more: tuple[int, set[str]] = (0, set()),
               group: Path | None = None) -> dict:
    """Every runnable server under each workload it serves, `ctx.runs` times, a fresh server per run and mode.
    `more` = (n, servers): n further runs of the byte workloads alone for those servers (issue 25's comparison
    needs more runs than the others: under BBR a bulk run can land in one of two regimes, see bench/NOTES.md). `group`: a
    cgroup every server runs in (harness.quota)."""
    skipped = {}
    runnable = []
    for k in kinds:
        why = available(ctx, k)
        if why:
            log(f"skip {k.key}: {why}")
            skipped[k.key] = why
        else:
            runnable.append(k)
    cells: dict[str, dict[str, list[dict]]] = {k.key: {} for k in runnable}
    failures: dict[str, str] = {}
    # Run-major order: each repetition visits every server, so slow drift (other builds) spreads evenly.
    total = ctx.runs + more[0]
    for run in range(total):
        for k in runnable:
            if k.key in failures:
                continue
            mine = applicable(k, workloads)
            if run >= ctx.runs:
                if k.key not in more[1]:
                    continue
                mine = [w for w in mine if w[0] in BYTE_WORKLOADS]
            # One server start per mode it serves (echo, then once).
            for mode in dict.fromkeys(w[4] for w in mine):
                port = free_port()
                log(f"run {run + 1}/{total}: {k.key} --mode {mode} on :{port}")
                try:
                    with Server(ctx, k.argv_for(mode) or [], port, SERVER_CPU, k.key, preexec=joiner(group)) as srv:
                        srv.wait_ready()
                        for w in (w for w in mine if w[4] == mode):
                            wkey = w[0]
                            r = bench_cell(ctx, port, w, CLIENT_CPU, server_pgid=srv.pid)
                            cells[k.key].setdefault(wkey, []).append(r)
                            log(f"  {wkey:12} {r['ops_per_sec']:>10.0f} ops/s {r['mb_per_sec']:>8.1f} MB/s "
                                f"p99 {r['latency_us']['p99']:>9.0f}µs errors {r['errors']['total']}  cpu server "
                                f"{r['server_cpu']:.0%} client {r['client_cpu']:.0%} other {r['other_cpu']:.2f} cores  "
                                f"{r['ops_per_server_cpu_s']:,.0f} ops per server CPU-s")
                except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as e:
                    log(f"  {k.key} failed: {e}")
                    failures[k.key] = str(e)[:300]
                    break
    return {
        "servers": [{"key": k.key, "label": k.label, "workloads": [w[0] for w in applicable(k, workloads)]} for k in kinds],
        "skipped": skipped,
        "failures": failures,
        "cells": cells,
        "more_runs": {"runs": more[0], "servers": sorted(more[1] & {k.key for k in runnable}),
                      "workloads": sorted(BYTE_WORKLOADS)} if more[0] else None,
    }


SYSCALL_SERVERS = ("engine-cli", "engine-baseline", "c-epoll")
SYSCALL_WORKLOADS = {"once-32": 4000, "conn-32": 4000, "pingpong-32": 20000}  # workload -> operations traced


def measure_syscalls(ctx: Context, kinds: list[ServerKind], skipped: dict) -> dict:
    """System calls per operation of the engine and the C floor (issue 14): counted at full speed with
    perf's tracepoints, and under strace (which also counts failed calls), each run bounded."""
    out: dict[str, dict] = {}
    for tracer in ("perf", "strace"):
        for k in kinds:
            if k.key not in SYSCALL_SERVERS or k.key in skipped:
                continue
            for wkey, ops in SYSCALL_WORKLOADS.items():
                try:
                    r = trace_server(ctx, k, wkey, (SERVER_CPU, CLIENT_CPU), tracer, ops)
                except (RuntimeError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                    log(f"system calls ({tracer}) {k.key} {wkey}: {e}")
                    continue
                out.setdefault(tracer, {}).setdefault(k.key, {})[wkey] = r
                top = ", ".join(f"{n} {v:.2f}" for n, v in list(r["per_op"].items())[:7])
                log(f"  {tracer:6} {k.key:15} {wkey:12} {r['total_per_op']:.2f} system calls per op ({top})")
    return out


def selected(ctx: Context) -> list[ServerKind]:
    kinds = server_kinds(ctx)
    only = {k for k in os.environ.get("BENCH_ONLY", "").split(",") if k}
    return [k for k in kinds if k.key in only] if only else kinds


def cmd_floor(ctx: Context) -> int:
    """The engine against the minimal C server only (issue 14): once, echo, pingpong and bulk, work per server
    CPU-second and system calls per operation, printed and saved to $OUT/floor-*.json. BENCHMARKS.md is
    not touched: this is the quick loop for changes to the worker."""
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release`")
        return 2
    also = {k for k in os.environ.get("BENCH_FLOOR_ALSO", "").split(",") if k}  # e.g. engine-python
    kinds = [k for k in server_kinds(ctx) if k.key in SYSCALL_SERVERS or k.key in also]
    workloads = [w for w in WORKLOADS if w[0] in SYSCALL_WORKLOADS or w[0] == "bulk-4"]
    matrix = run_matrix(ctx, kinds, workloads)
    summary = summarize(matrix)
    syscalls = None if os.environ.get("BENCH_STRACE") == "0" else measure_syscalls(ctx, kinds, matrix["skipped"])
    md = floor_table(summary, syscalls, [w[0] for w in workloads], ctx.runs)
    out_dir = Path(os.environ.get("OUT", ctx.root / "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"floor-{stamp}.json").write_text(json.dumps({"machine": machine(ctx), "summary": summary, "syscalls": syscalls,
                                                             "matrix": matrix}, indent=1, default=str))
    print(md)
    log(f"wrote {out_dir}/floor-{stamp}.json")
    return 0


BULK_SERVERS = ("engine-cli", "engine-baseline", "uvloop", "c-epoll")


def cmd_bulk(ctx: Context) -> int:
    """Issue 25: the engine against uvloop (and the C server) on bulk streams only — stream-4 and bulk-4
    (4 connections × 256 MiB), runs alternating between servers — MB/s and server CPU-seconds per GB, printed
    and saved to $OUT/bulk-*.json. BENCHMARKS.md is not touched."""
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release`")
        return 2
    m = machine(ctx)
    kinds = [k for k in server_kinds(ctx) if k.key in BULK_SERVERS]
    workloads = [w for w in WORKLOADS if w[0] in BYTE_WORKLOADS]
    quota = int(os.environ.get("BENCH_SERVER_CPU_QUOTA") or 0)
    try:
        with server_quota(quota) as group:
            matrix = run_matrix(ctx, kinds, workloads, group=group)
    except OSError as e:
        log(f"BENCH_SERVER_CPU_QUOTA={quota}: {e}")
        return 2
    summary = summarize(matrix)
    load_end = os.getloadavg()[0]
    md = bulk_table(summary, [w[0] for w in workloads], {k.key: k.short for k in kinds}, [k.key for k in kinds])
    held = f" (held to {quota} % of it)" if quota else ""
    md += (f"\nMedian of {ctx.runs} runs per cell, alternating servers; load average {m['loadavg_at_start']:.2f} at the "
           f"start, {load_end:.2f} at the end; server pinned to CPU {SERVER_CPU}{held}, load generator to CPU {CLIENT_CPU}.\n")
    md += "\nRun by run against uvloop (run i of each server shared the machine's state):\n\n"
    md += paired_table(matrix["cells"], [w[0] for w in workloads], {k.key: k.short for k in kinds}, [k.key for k in kinds])
    if table := disturbance_table(matrix["cells"], [w[0] for w in workloads], {k.key: k.short for k in kinds}, [k.key for k in kinds]):
        md += "\nWhat TCP counted during the runs (deltas for the whole network namespace):\n\n" + table
    out_dir = Path(os.environ.get("OUT", ctx.root / "bench-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"bulk-{stamp}.json").write_text(json.dumps({"machine": m, "loadavg_at_end": load_end, "summary": summary,
                                                            "matrix": matrix}, indent=1, default=str))
    print(md)
    log(f"wrote {out_dir}/bulk-{stamp}.json")
    if cc := os.environ.get(INSIDE):
        begin, end = bulk_cc_markers(bool(quota))
        merge_section(ctx, begin, end, bulk_cc_section(cc, quota, m, md))
        log(f"wrote the {cc} tables into {ctx.rel(ctx.benchmarks)}")
    return 0


def bulk_cc_section(cc: str, quota: int, m: dict, md: str) -> str:
    """BENCHMARKS.md's part for `BENCH_CC=cc bench/run.py bulk`: its tables under a heading that says how."""
    if quota:
        return (f"### Under {cc}, the server held to {quota} % of its core\n\n"
                f"`BENCH_CC={cc} BENCH_SERVER_CPU_QUOTA={quota} make bench-bulk` (`make bench` runs it too), {m['date']}: "
                f"as above, with every server in a cgroup allowed {quota} % of one CPU, so that the server, not the load "
                "generator, limits MB/s: MB/s is then what a server does with the CPU it has.\n\n" + md)
    return (f"### The same under {cc}, in a network namespace of the bench's own\n\n"
            f"`BENCH_CC={cc} make bench-bulk` (`make bench` runs it after the matrix), {m['date']}: the servers and the "
            f"load generator in a new network namespace whose `net.ipv4.tcp_congestion_control` is {cc} (the machine's "
            "is in the Machine section; see the notes on what BBR's pacing costs in this VM). Each run a fresh server. "
            "Both cores free, the load generator's is the busier one (near 100 %): MB/s here is mostly its limit, "
            "and server CPU per byte is the server's own figure.\n\n" + md)


def cmd_matrix(ctx: Context) -> int:
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release` (make bench does)")
        return 2
    t0 = time.monotonic()
    m = machine(ctx)
    log(f"machine: {machine_key(m)}; load {m['loadavg_at_start']:.2f}; {ctx.runs} runs × {ctx.duration:g}s")
    kinds = selected(ctx)
    more = max(0, int(os.environ.get("BENCH_BULK_RUNS", "15")) - ctx.runs)
    matrix = run_matrix(ctx, kinds, more=(more, set(BULK_SERVERS)))
    summary = summarize(matrix)
    log("system calls per operation (strace -c)")
    syscalls = None if os.environ.get("BENCH_STRACE") == "0" else measure_syscalls(ctx, kinds, matrix["skipped"])
    log("start-up times")
    startup = measure_startup(ctx, [k for k in kinds if k.key in summary], matrix["skipped"])
    log("memory per idle connection")
    try:
        memory = measure_memory(ctx)
    except (RuntimeError, OSError) as e:
        log(f"memory: {e}")
        memory = None
    log("drain")
    try:
        drain = measure_drain(ctx)
    except (RuntimeError, OSError) as e:
        log(f"drain: {e}")
        drain = None
    elapsed = time.monotonic() - t0
    ctx.results.mkdir(parents=True, exist_ok=True)
    (ctx.results / "matrix.json").write_text(json.dumps(
        {"machine": m, "duration_s": ctx.duration, "runs": ctx.runs, "summary": summary, "matrix": matrix, "memory": memory,
         "startup": startup, "drain": drain, "syscalls": syscalls, "elapsed_s": elapsed}, indent=1, default=str))
    labels = {k.key: k.short for k in kinds}
    ctx.chart.write_text(svg_chart(summary, labels, [k.key for k in kinds]))
    write_benchmarks(ctx, m, matrix, summary, memory, startup, drain, syscalls, elapsed)
    for t in targets(summary, memory):
        log(" | ".join(t))
    log(f"wrote {ctx.rel(ctx.benchmarks)}, {ctx.rel(ctx.chart)} in {elapsed / 60:.1f} min")
    return 0


def cmd_report(ctx: Context) -> int:
    """Rewrites BENCHMARKS.md and the chart from bench/results/matrix.json (e.g. after editing bench/NOTES.md)."""
    d = json.loads((ctx.results / "matrix.json").read_text())
    ctx = ctx.with_runs(d["duration_s"], d["runs"])
    kinds = server_kinds(ctx)
    labels = {k.key: k.short for k in kinds}
    ctx.chart.write_text(svg_chart(d["summary"], labels, [k.key for k in kinds]))
    write_benchmarks(ctx, d["machine"], d["matrix"], d["summary"], d["memory"], d["startup"], d["drain"], d.get("syscalls"),
                     d["elapsed_s"])
    log(f"rewrote {ctx.rel(ctx.benchmarks)} and {ctx.rel(ctx.chart)} from {ctx.rel(ctx.results / 'matrix.json')}")
    return 0
