"""`matrix`: every server under every workload, pinned, medians of runs -> BENCHMARKS.md and the chart;
`report`: the same file again from the saved results."""

from __future__ import annotations

import json
import os
import subprocess
import time

from .context import Context
from .markdown import svg_chart, targets, write_benchmarks
from .measure import (CLIENT_CPU, SERVER_CPU, WORKLOADS, bench, machine, machine_key, measure_drain, measure_memory,
                      measure_startup, median_of)
from .servers import Server, available, free_port, log, server_kinds

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


def run_matrix(ctx: Context) -> dict:
    kinds = server_kinds(ctx)
    only = {k for k in os.environ.get("BENCH_ONLY", "").split(",") if k}
    if only:
        kinds = [k for k in kinds if k.key in only]
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
    for run in range(ctx.runs):
        for k in runnable:
            if k.key in failures:
                continue
            port = free_port()
            log(f"run {run + 1}/{ctx.runs}: {k.key} on :{port}")
            try:
                with Server(ctx, k.argv, port, SERVER_CPU, k.key) as srv:
                    srv.wait_ready()
                    for wkey, workload, conc, size in WORKLOADS:
                        if k.workloads is not None and wkey not in k.workloads:
                            continue
                        r = bench(ctx, port, workload, conc, size, ctx.duration, CLIENT_CPU, server_pgid=srv.pid)
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


def cmd_matrix(ctx: Context) -> int:
    if not ctx.bin.exists():
        log(f"{ctx.bin} missing: run `cargo build --release` (make bench does)")
        return 2
    t0 = time.monotonic()
    m = machine(ctx)
    log(f"machine: {machine_key(m)}; load {m['loadavg_at_start']:.2f}; {ctx.runs} runs × {ctx.duration:g}s")
    matrix = run_matrix(ctx)
    summary = summarize(matrix)
    kinds = server_kinds(ctx)
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
         "startup": startup, "drain": drain, "elapsed_s": elapsed}, indent=1, default=str))
    labels = {k.key: k.short for k in kinds}
    ctx.chart.write_text(svg_chart(summary, labels, [k.key for k in kinds]))
    write_benchmarks(ctx, m, matrix, summary, memory, startup, drain, elapsed)
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
    write_benchmarks(ctx, d["machine"], d["matrix"], d["summary"], d["memory"], d["startup"], d["drain"], d["elapsed_s"])
    log(f"rewrote {ctx.rel(ctx.benchmarks)} and {ctx.rel(ctx.chart)} from {ctx.rel(ctx.results / 'matrix.json')}")
    return 0
