"""What a run becomes on paper: number formats, the targets table, the SVG chart and BENCHMARKS.md."""

from __future__ import annotations

import re
import statistics

from .bulk import bulk_table, disturbance_table, paired_table
from .context import Context
from .format import fmt_num, fmt_us
from .measure import BYTE_WORKLOADS, WORKLOADS, work_of
from .targets import targets

# The scaling section is kept between these markers when the rest of the file is rewritten.
SCALING_BEGIN, SCALING_END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
# So is the real servers' section (`make bench-apps`, harness/apps.py).
APPS_BEGIN, APPS_END = "<!-- apps:begin -->", "<!-- apps:end -->"
# So is the bulk comparison under another congestion control (`BENCH_CC=cubic bench/run.py bulk`), and the
# same with the server held to a CPU quota (BENCH_SERVER_CPU_QUOTA).
BULK_CC_BEGIN, BULK_CC_END = "<!-- bulk-cc:begin -->", "<!-- bulk-cc:end -->"
BULK_QUOTA_BEGIN, BULK_QUOTA_END = "<!-- bulk-cc-quota:begin -->", "<!-- bulk-cc-quota:end -->"


def bulk_cc_markers(quota: bool) -> tuple[str, str]:
    return (BULK_QUOTA_BEGIN, BULK_QUOTA_END) if quota else (BULK_CC_BEGIN, BULK_CC_END)


def floor_table(summary: dict, syscalls: dict | None, wkeys: list[str], runs: int, labels: dict[str, str] | None = None,
                order: list[str] | None = None) -> str:
    """Issue 14's tables: every server's ops per server CPU-second as a ratio to the minimal C epoll server,
    and the system calls per operation of the engine and the C server."""
    labels = labels or {}
    order = order or list(summary)
    floor = summary.get("c-epoll", {})
    L = ["## Against the C floor: ops per server CPU-second, ratio to the minimal C epoll server\n",
         f"Median of {runs} run(s) per cell, both servers with one process pinned to the same core, measured in the same "
         "session. ≥ 1.00× means the server spends no more CPU per operation than the minimal C server "
         "(bench/servers/c_epoll_echo.c). conn-32 = connect, echo, the client closes (`--mode echo`); once-32 = the "
         "server closes after one echo (`--mode once`); stream-4 and bulk-4 (4 connections × 256 MiB) count MB echoed "
         "per server CPU-second instead of operations.\n",
         "| server | " + " | ".join(wkeys) + " |", "|---|" + "---:|" * len(wkeys)]
    for k in order:
        if k not in summary:
            continue
        row = []
        for w in wkeys:
            c, b = summary[k].get(w), floor.get(w)
            unit = " MB" if w in BYTE_WORKLOADS else ""
            if not c:
                row.append("n/a")
            elif k == "c-epoll" or not b or not work_of(b, w):
                row.append(fmt_num(work_of(c, w)) + unit)
            else:
                row.append(f"{work_of(c, w) / work_of(b, w):.2f}× ({fmt_num(work_of(c, w))}{unit})")
        L.append(f"| {labels.get(k, k)} | " + " | ".join(row) + " |")
    L.append("")
    titles = {"perf": "at full speed (perf's syscall tracepoints, one timed run)",
              "strace": "under `strace -c -f` (a bounded run; strace slows the server several times, so a client's "
                        "bytes are usually there when its connection is accepted)"}
    for tracer, by_server in (syscalls or {}).items():
        if tracer not in titles:  # results written before the counts were split by tool
            continue
        traced = [w for w in wkeys if any(w in by for by in by_server.values())]
        L.append(f"### System calls per operation {titles[tracer]}\n")
        L.append("| server | " + " | ".join(traced) + " |")
        L.append("|---|" + "---|" * len(traced))
        for k, by in by_server.items():
            row = []
            for w in traced:
                r = by.get(w)
                if not r:
                    row.append("—")
                    continue
                parts = ", ".join(f"{n} {v:.2f}" for n, v in r["per_op"].items() if v >= 0.005)
                row.append(f"**{r['total_per_op']:.2f}**: {parts}")
            L.append(f"| {labels.get(k, k)} | " + " | ".join(row) + " |")
        L.append("")
    if syscalls:
        L.append("Calls of the serving processes (the engine's worker, the C server's child) divided by the operations "
                 "completed; strace counts failed calls too (`EAGAIN`). `epoll_wait` is shared by all the connections "
                 "ready at once. The `accept4` beyond 1 per connection is the one that returns `EAGAIN` and ends each "
                 "batch.\n")
    return "\n".join(L)


def existing_scaling(ctx: Context) -> str:
    return kept_section(ctx, SCALING_BEGIN, SCALING_END)


def kept_section(ctx: Context, begin: str, end: str) -> str:
    """What BENCHMARKS.md holds between two markers (without them), or ""."""
    if not ctx.benchmarks.exists():
        return ""
    text = ctx.benchmarks.read_text()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < 0:
        return ""
    return text[i + len(begin):j].strip("\n")


def bulk_section(matrix: dict, summary: dict, labels: dict[str, str], order: list[str]) -> str:
    """Issue 25: the servers measured on the byte workloads against uvloop, as medians and run by run, and what
    TCP counted meanwhile. Empty when uvloop was not measured."""
    if "uvloop" not in summary:
        return ""
    wkeys = [w for w, *_ in WORKLOADS if w in BYTE_WORKLOADS]
    more = matrix.get("more_runs")
    keys = [k for k in order if k in summary and (not more or k in more["servers"])]
    L = ["## Bulk streams against uvloop (issue 25)\n"]
    if more:
        L.append(f"stream-4 and bulk-4 of these servers had {more['runs']} more runs than the other cells (a fresh "
                 "server per run serving only these two workloads, the servers alternating): under BBR on a VM a bulk run "
                 "can land in one of two regimes (see the notes), and a median of a few runs would be a coin toss "
                 "between them. The medians here and in the tables above are of all the runs.\n")
    L.append(bulk_table(summary, wkeys, labels, keys))
    L.append("Run by run against uvloop (run i of each server shared the machine's state):\n")
    L.append(paired_table(matrix["cells"], wkeys, labels, keys))
    if table := disturbance_table(matrix["cells"], wkeys, labels, keys):
        L.append("What TCP counted during the runs (deltas of /proc/net/snmp and /proc/net/netstat, the whole machine's; "
                 "on loopback these come from reordering between the two CPUs, not from a lossy link):\n")
        L.append(table)
    return "\n".join(L)


def write_benchmarks(ctx: Context, m: dict, matrix: dict, summary: dict, memory: dict | None, startup: dict | None, drain: dict | None,
                     syscalls: dict | None,
                     elapsed: float, scaling_md: str | None = None) -> None:
    labels = {s["key"]: s["label"] for s in matrix["servers"]}
    served = {s["key"]: s["workloads"] for s in matrix["servers"]}
    order = [s["key"] for s in matrix["servers"]]
    L = []
    L.append("# Benchmarks\n")
    L.append("Written by `make bench` (bench/harness); do not edit by hand — analysis notes come from bench/NOTES.md. "
             "Every number is a median of runs on the machine below; a loopback benchmark on a shared 2-core VM is noisy, "
             "so read ratios, not absolutes.\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m['cpus']} × {m['cpu']}; memory {m['memory']}; kernel {m['kernel']} ({m['os']})")
    L.append(f"- {m['rustc']}; Python {m['python']}; {m['ruby']}; net.ipv4.tcp_tw_reuse={m['tcp_tw_reuse']}, "
             f"net.ipv4.tcp_congestion_control={m.get('tcp_congestion_control', '?')}")
    if m.get("binary"):  # results saved before 6 Dec 2026 do not say
        L.append(f"- engine and load generator: `{m['binary']}`")
    L.append(f"- run {m['date']}, load average at start {m['loadavg_at_start']:.2f}, whole run {elapsed / 60:.1f} min")
    other = [r.get("other_cpu") for by_w in matrix["cells"].values() for runs in by_w.values() for r in runs if r.get("other_cpu") is not None]
    if other:
        L.append(f"- noise: other processes kept {statistics.median(other):.2f} cores busy during the median run "
                 f"(max {max(other):.2f}; 0 = quiet machine; the server and the load generator have 1 core each)")
    pin = "server pinned to CPU 0, load generator to CPU 1 (taskset)" if ctx.taskset else "no CPU pinning (taskset missing)"
    L.append(f"- {pin}; every server with 1 worker; {ctx.runs} runs of {ctx.duration:g} s per cell, 127.0.0.1, ephemeral ports\n")
    L.append("## Throughput (median ops/s; stream: MB/s of verified echo)\n")
    head = "| server | " + " | ".join(w for w, *_ in WORKLOADS) + " |"
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    base = summary.get("talk-python", {})
    for k in order:
        if k in matrix["skipped"]:
            L.append(f"| {labels[k]} | " + " | ".join("skipped" for _ in WORKLOADS) + " |")
            continue
        row = []
        for w, *_ in WORKLOADS:
            c = summary.get(k, {}).get(w)
            if c is None:
                serves = served.get(k)
                row.append("n/a" if serves is not None and w not in serves else ("failed" if k in matrix["failures"] else "—"))
                continue
            val = c["mb_per_sec"] if w in BYTE_WORKLOADS else c["ops_per_sec"]
            txt = fmt_num(val) + (" MB/s" if w in BYTE_WORKLOADS else "")
            b = base.get(w)
            if b and b["ops_per_sec"] and k != "talk-python":
                txt += f" ({c['ops_per_sec'] / b['ops_per_sec']:.2f}×)"
            if c["errors"]:
                txt += f" ⚠ {c['errors']} err"
            row.append(txt)
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("\n(×) = ratio to the talk's Python loop. n/a: the server does not serve that workload — the talk's loops do "
             "one `recv` per connection and close, so only `conn` and `once` apply to them; asyncio has no `once` mode. "
             "⚠ = failed operations summed over the runs (see the JSON).\n")
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
            for w, *_ in WORKLOADS:
                c, b = summary[k].get(w), aio.get(w)
                row.append(f"{c['ops_per_sec'] / b['ops_per_sec']:.2f}×" if c and b and b["ops_per_sec"] else "n/a")
            L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
        L.append("")
    L.append("## Where the CPU went: ops per server CPU-second (server core busy / load-generator core busy)\n")
    L.append("Each side has one core. When the load generator's core is near 100 % and the server's is not, the "
             "ops/s above measure the load generator (on loopback the sender also runs the receiver's TCP stack), "
             "and ops per server CPU-second is the fairer comparison of servers. stream-4 and bulk-4: MB echoed per "
             "server CPU-second.\n")
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    for k in order:
        if k not in summary:
            continue
        row = []
        for w, *_ in WORKLOADS:
            c = summary[k].get(w)
            b = base.get(w)
            if not c:
                row.append("n/a")
                continue
            txt = f"{fmt_num(work_of(c, w))}" + (" MB" if w in BYTE_WORKLOADS else "")
            if b and b.get("ops_per_server_cpu_s") and k != "talk-python":
                txt += f" ({c['ops_per_server_cpu_s'] / b['ops_per_server_cpu_s']:.2f}×)"
            txt += f" · {c['server_cpu']:.0%} / {c['client_cpu']:.0%}"
            row.append(txt)
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("")
    if "c-epoll" in summary:
        L.append(floor_table(summary, syscalls, [w for w, *_ in WORKLOADS], ctx.runs, labels, order))
    L.append(bulk_section(matrix, summary, labels, order))
    for begin, end in (bulk_cc_markers(False), bulk_cc_markers(True)):
        L.append(begin + "\n" + kept_section(ctx, begin, end) + "\n" + end + "\n")
    L.append("## Latency (median of runs: p50 / p99)\n")
    L.append(head)
    L.append("|---|" + "---:|" * len(WORKLOADS))
    for k in order:
        if k not in summary:
            continue
        row = []
        for w, *_ in WORKLOADS:
            c = summary[k].get(w)
            row.append(f"{fmt_us(c['p50_us'])} / {fmt_us(c['p99_us'])}" if c else "n/a")
        L.append(f"| {labels[k]} | " + " | ".join(row) + " |")
    L.append("\nconn latency is connect → last echoed byte; pingpong one round trip; stream one 64 KiB message "
             "(2 in flight per connection); bulk one whole 256 MiB upload and its echo.\n")
    if ctx.chart.exists():
        L.append(f"![throughput chart]({ctx.rel(ctx.chart)})\n")
    L.append("## Targets (issues 6, 14 and 25; measured, not asserted)\n")
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
    if ctx.notes.exists():
        L.append(ctx.notes.read_text().rstrip() + "\n")
    L.append("## Reproduce\n")
    L.append("```sh")
    L.append("make bench            # this file and bench/chart.svg (BENCH_DURATION=3 BENCH_RUNS=5 by default)")
    L.append("make bench-floor      # the engine vs the minimal C server only: CPU and system calls per op (stdout, $OUT)")
    L.append("make bench-bulk       # the engine vs uvloop and the C server on stream-4 and bulk-4: MB/s, CPU per GB (stdout, $OUT)")
    L.append("BENCH_CC=cubic [BENCH_SERVER_CPU_QUOTA=40] make bench-bulk   # the same in a network namespace with cubic, the server")
    L.append("                      # free or held to 40 % of its core (root): the two sections after \"Bulk streams against uvloop\"")
    L.append("make bench-scaling    # workers 1,2,4,8,16, engine and C server: $OUT/scaling-*.md/json and the section below")
    L.append("python3 bench/run.py merge-scaling bench/results/scaling-X.md   # add a table measured on another machine")
    L.append("python3 bench/run.py report   # rewrite this file from bench/results/matrix.json (after editing bench/NOTES.md)")
    L.append("# one cell by hand, e.g. the engine under conn-32:")
    L.append("taskset -c 0 target/release/port-sharding serve --host 127.0.0.1 --port 0 -w 1 --mode echo &   # prints the port")
    L.append("taskset -c 1 target/release/port-sharding bench --host 127.0.0.1 -p PORT --workload conn -c 32 -d 3s --size 64")
    L.append("# bulk-4: taskset -c 1 target/release/port-sharding bench -p PORT -W stream -c 4 --size 256MiB --window 1 -n 4")
    L.append("# the baselines: python3 bench/servers/talk_echo.py PORT 127.0.0.1 | ruby bench/servers/talk_echo.rb PORT 127.0.0.1 |")
    L.append("#                python3 bench/servers/asyncio_echo.py PORT | python3 bench/servers/uvloop_echo.py PORT [--once] |")
    L.append("#                target/bench/c_epoll_echo -p PORT -w 1 -m echo|once   (built by make bench)")
    L.append("```\n")
    L.append(f"Raw results: `{ctx.rel(ctx.results / 'matrix.json')}`.\n")
    L.append(SCALING_BEGIN)
    L.append(scaling_md if scaling_md is not None else (existing_scaling(ctx) or
             "## Scaling\n\nNot measured yet on a machine with more cores: run `make bench-scaling` there."))
    L.append(SCALING_END + "\n")
    if apps := kept_section(ctx, APPS_BEGIN, APPS_END):
        L.append(APPS_BEGIN + "\n" + apps + "\n" + APPS_END + "\n")
    ctx.benchmarks.write_text("\n".join(L))


def merge_scaling(ctx: Context, md: str, key: str) -> None:
    """Puts one machine's scaling table into BENCHMARKS.md, replacing an older one for the same machine."""
    # Merge into BENCHMARKS.md: one subsection per machine, replaced when the same machine runs again.
    prev = existing_scaling(ctx)
    sections = re.split(r"(?m)^(?=### )", prev)
    keep = [s for s in sections if s.strip() and not s.startswith("## Scaling") and not s.startswith(f"### {key}\n")]
    scaling_md = ("## Scaling\n\n`make bench-scaling`: one engine server with N workers against one load generator "
                  "(several threads).\n\n" + "\n".join(s.rstrip() + "\n" for s in keep + [md]))
    merge_section(ctx, SCALING_BEGIN, SCALING_END, scaling_md)


def merge_section(ctx: Context, begin: str, end: str, md: str) -> None:
    """Puts `md` between two markers of BENCHMARKS.md (at its end when they are missing)."""
    text = ctx.benchmarks.read_text() if ctx.benchmarks.exists() else "# Benchmarks\n"
    i, j = text.find(begin), text.find(end)
    block = begin + "\n" + md.strip("\n") + "\n" + end
    text = text[:i] + block + text[j + len(end):] if i >= 0 and j >= 0 else text.rstrip("\n") + "\n\n" + block + "\n"
    ctx.benchmarks.write_text(text)
