"""`apps` (make bench-apps, issue 23): real HTTP servers with 2 workers, each under its own master (one accept
queue shared by its workers), as port-sharding command workers (one reuseport queue per worker) and as one
port-sharding slot running the server's own master (its shared queue, reloaded by port-sharding), on a
uniform workload, a mixed one (every 50th request of a process sleeps 200 ms) and uniform requests on
kept-alive connections. Per cell: requests/s,
p50/p99/p99.9 latency, errors, server CPU per request (every process of the server's session: master or
supervisor included) and memory (PSS, so pages shared between forked workers count once).
-> stdout, bench/results/apps.json and the "Real servers" section of BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

from .context import Context
from .markdown import APPS_BEGIN, APPS_END, merge_section

CLOCK = os.sysconf("SC_CLK_TCK")
# name -> (the app's environment, `port-sharding bench` workload)
WORKLOADS = {"uniform": ({}, "http"), "mixed": ({"SLOW_EVERY": "50", "SLOW_MS": "200"}, "http"),
             "keep-alive": ({}, "http-keepalive")}
CONCURRENCY = 8
GUNICORN = ["{py}", "-m", "gunicorn", "--no-control-socket", "--chdir", "examples/gunicorn"]
PUMA = "exec puma -C examples/puma/puma.rb -t 0:5 {more}-b tcp://127.0.0.1:{port} examples/puma/config.ru"
UVICORN = ["{py}", "-m", "uvicorn", "--app-dir", "examples/asgi", "--no-access-log"]
SERVE = ["{bin}", "serve", "--host", "127.0.0.1", "--port", "{port}", "-w", "2"]
SLOT = ["{bin}", "serve", "--host", "127.0.0.1", "--port", "{port}", "-w", "1"]

# (key, label, {mode: command}); {port} {py} {bin} filled in per run. `slot`: one port-sharding worker slot
# whose server runs its own master and 2 workers on fd 3 — their one shared queue, reloaded by port-sharding.
SETUPS: list[tuple[str, str, dict[str, list[str]]]] = [
    ("gunicorn-sync", "gunicorn sync", {
        "master": GUNICORN + ["-w", "2", "-k", "sync", "-b", "127.0.0.1:{port}", "app:app"],
        "command": SERVE + ["--"] + GUNICORN + ["-w", "1", "-k", "sync", "app:app"],
        "slot": SLOT + ["--"] + GUNICORN + ["-w", "2", "-k", "sync", "app:app"]}),
    ("gunicorn-gthread", "gunicorn gthread (4 threads)", {
        "master": GUNICORN + ["-w", "2", "-k", "gthread", "--threads", "4", "-b", "127.0.0.1:{port}", "app:app"],
        "command": SERVE + ["--"] + GUNICORN + ["-w", "1", "-k", "gthread", "--threads", "4", "app:app"],
        "slot": SLOT + ["--"] + GUNICORN + ["-w", "2", "-k", "gthread", "--threads", "4", "app:app"]}),
    ("puma", "Puma 0:5 threads (cluster -w 2 / single mode)", {
        "master": ["sh", "-c", PUMA.replace("{more}", "-w 2 ")],
        "command": SERVE + ["--ready-delay", "1s", "--", "sh", "-c",
                            PUMA.replace("{more}", "").replace("{port}", "$PORT_SHARDING_PORT")],
        "slot": SLOT + ["--ready-delay", "1s", "--", "sh", "-c",
                        PUMA.replace("{more}", "-w 2 ").replace("{port}", "$PORT_SHARDING_PORT")]}),
    ("uvicorn", "uvicorn (--workers 2 / --fd 3)", {
        "master": UVICORN + ["--workers", "2", "--host", "127.0.0.1", "--port", "{port}", "app:app"],
        "command": SERVE + ["--"] + UVICORN + ["--fd", "3", "app:app"],
        "slot": SLOT + ["--"] + UVICORN + ["--fd", "3", "--workers", "2", "app:app"]}),
]
MODES = ("master", "command", "slot")


def modes_in(d: dict) -> list[str]:
    """The modes, in MODES order, that `d` (a setup's commands, or a cell's results) has."""
    return [m for m in MODES if d.get(m)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(sid: int) -> list[int]:
    """Every live process of session `sid` (the server and all it started: command workers lead their own
    process groups but stay in the session)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(f[3]) == sid and f[0] != "Z":
                out.append(int(d.name))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / CLOCK


def pss_mib(pids: list[int]) -> float:
    kib = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024


def answers(port: int) -> int | None:
    """The pid in one reply to `GET /`, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        words = reply.partition(b"\r\n\r\n")[2].split()
        return int(words[4]) if reply.startswith(b"HTTP/1.1 200") and len(words) >= 5 else None
    except (OSError, ValueError):
        return None


def one_run(ctx: Context, cmd: list[str], env: dict[str, str], log: Path, workload: str = "http") -> dict:
    port = free_port()
    argv = [a.format(port=port, py=ctx.py, bin=ctx.bin) for a in cmd]
    with open(log, "w") as out:
        proc = subprocess.Popen(ctx.pinned(argv, "0"), cwd=ctx.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Ready: both workers answer (at most 30 s), then a moment for the rest of their start-up.
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
            pid = answers(port)
            if pid:
                pids.add(pid)
            else:
                time.sleep(0.05)
        if len(pids) < 2:
            raise RuntimeError(f"{argv}: not serving from 2 workers after 30 s; log: {log.read_text()[-2000:]}")
        time.sleep(0.5)
        procs = session(proc.pid)
        cpu0 = cpu_seconds(procs)
        bench = [str(ctx.bin), "bench", "-p", str(port), "-W", workload, "-c", str(CONCURRENCY),
                 "-d", f"{ctx.duration}s", "--json", "--no-status"]
        r = subprocess.run(ctx.pinned(bench, "1"), capture_output=True, text=True, timeout=ctx.duration + 60)
        cpu = cpu_seconds(procs) - cpu0
        mem = pss_mib(session(proc.pid))
        rep = json.loads(r.stdout)
        lat = rep["latency_us"]
        return {"rps": rep["ops_per_sec"], "ops": rep["ops"], "errors": rep["errors"]["total"],
                "mean_ms": lat["mean"] / 1000, "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000,
                "p99_ms": lat["p99"] / 1000, "p999_ms": lat["p999"] / 1000,
                "cpu_us_per_req": cpu * 1e6 / max(rep["ops"], 1), "pss_mib": mem, "processes": len(procs)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        for p in session(proc.pid):  # only what this run started (its session), by pid
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def versions(ctx: Context) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "missing"
    return {
        "gunicorn": out([ctx.py, "-c", "import gunicorn; print(gunicorn.__version__)"]),
        "uvicorn": out([ctx.py, "-c", "import uvicorn; print(uvicorn.__version__)"]),
        "puma": out(["puma", "--version"]),
        "python": platform.python_version(),
        "ruby": out(["ruby", "-v"]),
        "kernel": platform.release(),
        "port-sharding": out([str(ctx.bin), "--version"]),
    }


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def cmd_apps(ctx: Context) -> int:
    only = [k for k in os.environ.get("BENCH_ONLY", "").split(",") if k]
    setups = [s for s in SETUPS if not only or s[0] in only]
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    results: dict = {}
    for run in range(ctx.runs):
        for key, label, cmds in setups:
            for workload, (extra, load) in WORKLOADS.items():
                # Alternate the order of the modes, so none always runs on a machine another warmed.
                modes = modes_in(cmds) if run % 2 == 0 else modes_in(cmds)[::-1]
                for mode in modes:
                    cmd = cmds[mode]
                    env = dict(ctx.env(), **extra, PYTHONUNBUFFERED="1")
                    r = one_run(ctx, cmd, env, ctx.logs / f"{key}-{mode}-{workload}-{run}.log", load)
                    results.setdefault(key, {}).setdefault(workload, {}).setdefault(mode, []).append(r)
                    print(f"run {run + 1}/{ctx.runs} {key:17} {workload:8} {mode:8} {r['rps']:8.0f} req/s  "
                          f"p99 {r['p99_ms']:7.2f} ms  p99.9 {r['p999_ms']:7.2f} ms  errors {r['errors']}  "
                          f"{r['cpu_us_per_req']:6.0f} µs CPU/req  {r['pss_mib']:5.1f} MiB", flush=True)
    data = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": os.getloadavg()[0], "minutes": (time.monotonic() - t0) / 60,
            "duration_s": ctx.duration, "runs": ctx.runs, "concurrency": CONCURRENCY, "versions": versions(ctx),
            "setups": {k: {"label": lbl, **cmds} for k, lbl, cmds in setups}, "results": results}
    ctx.results.mkdir(parents=True, exist_ok=True)
    (ctx.results / "apps.json").write_text(json.dumps(data, indent=1) + "\n")
    merge_apps(ctx, apps_markdown(data))
    print(f"wrote bench/results/apps.json and the Real servers section of BENCHMARKS.md "
          f"in {data['minutes']:.1f} min")
    return 0


def apps_markdown(data: dict) -> str:
    v = data["versions"]
    L = ["## Real servers: their own master vs port-sharding command workers (`make bench-apps`)\n",
         f"Run {data['when']} on {data['cpus']} CPUs (load average {data['load_start']:.2f} at start, "
         f"{data['load_end']:.2f} at the end; other builds may have shared the machine): the server pinned to CPU 0 — "
         "**both workers share one core**, this machine has only 2 — and the load generator "
         f"(`port-sharding bench -W http -c {data['concurrency']}`) to CPU 1. "
         f"Medians of {data['runs']} runs of {data['duration_s']:g} s per cell, modes alternating. gunicorn "
         f"{v['gunicorn']}, uvicorn {v['uvicorn']}, {v['puma']}, Python {v['python']}, {v['ruby']}, "
         f"Linux {v['kernel']}, {v['port-sharding']}.\n",
         "- **master**: the server's own master with 2 workers on one listening socket (one accept queue, shared).",
         "- **command**: `port-sharding serve -w 2 -- …`, one server process per worker, each on its own "
         "SO_REUSEPORT socket (one queue each; the kernel hashes connections between them, steering goes around "
         "a stalled or backed-up one).",
         "- **slot**: `port-sharding serve -w 1 -- …` running the server's own master with 2 workers on fd 3: "
         "their one shared queue, with port-sharding's reloads and takeovers of the whole slot.",
         "- **uniform**: every request is answered at once; **mixed**: every 50th request of a process sleeps "
         "200 ms first (`SLOW_EVERY=50 SLOW_MS=200`, examples/*/app); both one `GET /` per connection "
         "(`Connection: close`). **keep-alive**: uniform requests back to back on 8 persistent connections "
         "(`bench -W http-keepalive`; gunicorn's sync worker closes each, and the client reconnects).",
         "- CPU per request: user + system time of every process of the server (master or supervisor included) "
         "over the run, divided by requests; memory: PSS of them all after the run.\n"]
    for workload in WORKLOADS:
        L.append(f"### {workload}\n")
        L.append("| server | mode | req/s | mean ms | p50 | p90 | p99 | p99.9 | errors | CPU µs/req | PSS MiB | "
                 "÷ master: req/s | p90 | p99 |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, s in data["setups"].items():
            cell = data["results"].get(key, {}).get(workload, {})
            if not cell.get("master"):
                continue
            for mode in modes_in(cell):
                rows = cell[mode]
                ratio = ""
                if mode != "master":
                    rr = median(rows, "rps") / median(cell["master"], "rps")
                    p9 = median(rows, "p90_ms") / median(cell["master"], "p90_ms")
                    pr = median(rows, "p99_ms") / median(cell["master"], "p99_ms")
                    ratio = f"{rr:.2f}× | {p9:.2f}× | {pr:.2f}×"
                else:
                    ratio = " | | "
                L.append(f"| {s['label']} | {mode} | {median(rows, 'rps'):,.0f} | {median(rows, 'mean_ms'):.2f} | "
                         f"{median(rows, 'p50_ms'):.2f} | {median(rows, 'p90_ms'):.2f} | {median(rows, 'p99_ms'):.2f} | "
                         f"{median(rows, 'p999_ms'):.2f} | "
                         f"{sum(r['errors'] for r in rows)} | {median(rows, 'cpu_us_per_req'):.0f} | "
                         f"{median(rows, 'pss_mib'):.1f} | {ratio} |")
        L.append("")
    L.append("Command lines (`{port}` is a free port; `{py}` this Python; `{bin}` target/release/port-sharding):\n")
    L.append("```sh")
    for key, s in data["setups"].items():
        for mode in modes_in(s):
            L.append(f"# {key}, {mode}:\n" + shlex.join(s[mode]))
    L.append("```\n")
    L.append("Raw results: `bench/results/apps.json`; reproduce with `make bench-apps` (BENCH_RUNS, BENCH_DURATION, "
             "BENCH_ONLY=gunicorn-sync,puma,…).\n")
    return "\n".join(L)


def merge_apps(ctx: Context, md: str) -> None:
    merge_section(ctx, APPS_BEGIN, APPS_END, md)
