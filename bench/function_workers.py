"""The talk's loops as supervised function workers vs the same loops standalone, and an asyncio worker vs plain
asyncio: `port-sharding bench --workload conn -c 8` against each, in alternating rounds (pairs run back to back so
the machine's other load hits both alike), one session; prints each pair's ratio per round and the median.
Usage (after make setup-python setup-ruby): python3 bench/function_workers.py [SECONDS [ROUNDS]]. Every server runs
in its own process group and is stopped by its pid."""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("PORT_SHARDING_BIN", str(ROOT / "target" / "release" / "port-sharding"))
SECONDS = sys.argv[1] if len(sys.argv) > 1 else "5"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
PY = sys.executable

PLAIN_ASYNCIO = r"""
import asyncio, sys
import port_sharding
async def echo(reader, writer):
    writer.write(await reader.read(1024)); await writer.drain(); writer.close()
async def main():
    server = await asyncio.start_server(echo, sock=port_sharding.listen(int(sys.argv[1]), "127.0.0.1"))
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(300):  # bounded: 30 s
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"x")
                if s.recv(10):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answers on {port}")


def run(name: str, commands: list[list[str]]) -> float:
    port = free_port()
    procs = [subprocess.Popen([a.replace("PORT", str(port)) for a in c], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for c in commands]
    try:
        wait_listening(port)
        time.sleep(0.5)  # every copy listening
        out = subprocess.run([BIN, "bench", "-p", str(port), "-W", "conn", "-c", "8", "-d", f"{SECONDS}s", "--json"],
                             capture_output=True, text=True, timeout=120)
        report = json.loads(out.stdout)
        rate = float(report["ops_per_sec"])
        print(f"{name:45s} {rate:10.0f} conn/s  errors {report['errors']['total']}", flush=True)
        return rate
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
    listen_py = [PY, "examples/seed_echo_listen.py", "PORT", "127.0.0.1"]
    listen_rb = ["ruby", "examples/seed_echo_listen.rb", "PORT", "127.0.0.1"]
    pairs = {}  # name -> (standalone commands, supervised commands)
    for n in (1, 2):
        worker_py = [PY, "examples/seed_echo.py", "PORT", "127.0.0.1", str(n)]
        worker_rb = ["ruby", "examples/seed_echo.rb", "PORT", "127.0.0.1", str(n)]
        pairs[f"Python talk loop x{n}"] = ([listen_py] * n, [worker_py])
        pairs[f"Ruby talk loop x{n}"] = ([listen_rb] * n, [worker_rb])
    pairs["asyncio x1"] = ([[PY, "-c", PLAIN_ASYNCIO, "PORT"]],
                           [[PY, "examples/asyncio_worker.py", "PORT", "127.0.0.1", "1"]])
    ratios: dict[str, list[float]] = {name: [] for name in pairs}
    for r in range(ROUNDS):
        for name, (alone, supervised) in pairs.items():
            a = run(f"round {r + 1}: {name} standalone", alone)
            b = run(f"round {r + 1}: {name} as worker(s)", supervised)
            ratios[name].append(b / a)
    print("supervised / standalone, conn/s (per round; median):")
    for name, rs in ratios.items():
        print(f"  {name:22s} {' '.join(f'{x:.2f}' for x in rs)}   median {statistics.median(rs):.2f}")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
