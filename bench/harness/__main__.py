"""The bench's command line: `python3 -m harness COMMAND` from bench/ (or `python3 bench/run.py COMMAND`).

    matrix                  servers x workloads, memory, start-up, drain, system calls -> BENCHMARKS.md + bench/chart.svg
    floor                   the engine vs the minimal C server only (once, echo, pingpong, bulk; CPU and system
                            calls per operation) -> stdout + $OUT/floor-*.json; BENCHMARKS.md untouched
    bulk                    the engine vs uvloop and the C server on bulk streams (stream-4, bulk-4 = 4 × 256 MiB):
                            MB/s and server CPU per GB -> stdout + $OUT/bulk-*.json; BENCHMARKS.md untouched
    udp                     the engine's UDP workers vs a minimal C recvmmsg/sendmmsg echo (the floor): datagrams/s,
                            loss, p99, datagrams per server CPU-second -> stdout + $OUT/udp-*.json
    scaling                 workers 1..16 against one load generator -> $OUT/ + BENCHMARKS.md
    report                  rewrite BENCHMARKS.md + chart from bench/results/matrix.json
    merge-scaling FILE.md   add a scaling table measured on another machine
    apps                    gunicorn, Puma, uvicorn: own master vs command workers, 2 workers, uniform and mixed
                            -> bench/results/apps.json + the "Real servers" section of BENCHMARKS.md

Environment: BENCH_DURATION (seconds per run, default 3), BENCH_RUNS (default 3), BENCH_ONLY (comma list
of server keys), BENCH_BULK_RUNS (matrix: runs of stream-4 and bulk-4 for the engine, uvloop and the C
server, default 15; the runs beyond BENCH_RUNS serve only those two), OUT (scaling: output folder, default
bench-out), BENCH_WORKERS (scaling: default 1,2,4,8,16), BENCH_THREADS (scaling: load threads, default half
the CPUs), BENCH_PIN (0 disables taskset),
BENCH_KEEP_LOGS=1 (keep the servers' logs in /tmp/ps-bench-logs-*), PORT_SHARDING_BIN (the engine's binary),
BENCH_C_SERVER (the C server's binary, default target/bench/c_epoll_echo), BENCH_STRACE=0 (no system-call counts),
BENCH_BASELINE_BIN (another engine build, measured beside the current one: before/after a change),
BENCH_CC (bulk: run in a network namespace of its own with this TCP congestion control, e.g. cubic, and
put the tables into BENCHMARKS.md; needs root), BENCH_SERVER_CPU_QUOTA (bulk: every server held to this
percentage of one core, a cgroup; needs root), BENCH_FLOOR_ALSO (floor: more server keys to measure, e.g.
engine-python,engine-ruby), BENCH_ALLOW_DEBUG=1 (measure a
build under target/debug anyway; refused otherwise, as the Makefile exports PORT_SHARDING_BIN as the tests' debug build).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from .apps import cmd_apps
from .context import Context
from .matrix import cmd_bulk, cmd_floor, cmd_matrix, cmd_report
from .netns import bench_again, rerun_inside, wanted
from .scaling import cmd_merge_scaling, cmd_scaling
from .udp import cmd_udp


# Commands that start the engine or its load generator (the others only rewrite files from saved results).
MEASURES = {"matrix", "floor", "bulk", "udp", "scaling", "apps"}


def debug_builds(bins: list[Path]) -> list[Path]:
    """The binaries among `bins` that cargo built without optimisations (they sit in a `debug` folder)."""
    return [b for b in bins if b.parent.name == "debug"]


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "matrix"
    control_dir = Path(tempfile.mkdtemp(prefix="ps-bench-"))
    logs = Path(tempfile.mkdtemp(prefix="ps-bench-logs-"))
    ctx = Context.from_env(control_dir, logs)
    try:
        baseline = os.environ.get("BENCH_BASELINE_BIN")
        slow = debug_builds([ctx.bin] + ([Path(baseline)] if baseline else []))
        if cmd in MEASURES and slow and os.environ.get("BENCH_ALLOW_DEBUG") != "1":
            print(f"bench: {', '.join(map(str, slow))} is a debug build, several times slower than the release build "
                  "people run: its numbers would say nothing. Run the bench through make (it passes the release "
                  "build), set PORT_SHARDING_BIN to target/release/port-sharding, or BENCH_ALLOW_DEBUG=1 to measure "
                  "it anyway.", file=sys.stderr)
            return 2
        if cmd == "matrix":
            return cmd_matrix(ctx)
        if cmd == "floor":
            return cmd_floor(ctx)
        if cmd == "bulk":
            if cc := wanted():  # the whole command again, inside a namespace with that congestion control
                code, why = rerun_inside(cc, bench_again(argv))
                if why:
                    print(f"bench: BENCH_CC={cc}: {why}", file=sys.stderr)
                return code
            return cmd_bulk(ctx)
        if cmd == "report":
            return cmd_report(ctx)
        if cmd == "merge-scaling" and len(argv) > 1:
            return cmd_merge_scaling(ctx, argv[1])
        if cmd == "apps":
            return cmd_apps(ctx)
        if cmd == "udp":
            return cmd_udp(ctx)
        if cmd == "scaling":
            return cmd_scaling(ctx)
        print(__doc__)
        return 2
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
        if os.environ.get("BENCH_KEEP_LOGS") != "1":  # failures already quote the server's log tail
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
