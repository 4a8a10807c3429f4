#!/usr/bin/env python3
"""Reloads under load, measured (README "Run your own server" and "Known servers"): a server with 2 command
workers (unless SERVE_ARGS give `-w`/`--workers`), `port-sharding bench` for SECONDS with 8 connections,
`port-sharding reload` three times meanwhile, then a stop; prints the requests, the failed ones, how long the
stop took and its exit status.

    python3 bench/reload_under_load.py [--workload http|http-keepalive] [--seconds 12] -- SERVE_ARGS... -- COMMAND...
    e.g. python3 bench/reload_under_load.py -- --stop-signal QUIT -- unicorn -c examples/unicorn/unicorn.conf.rb examples/puma/config.ru

Uses target/release/port-sharding (PORT_SHARDING_BIN overrides); run from the repository root."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("PORT_SHARDING_BIN", str(ROOT / "target" / "release" / "port-sharding"))


def main() -> int:
    argv = sys.argv[1:]
    if argv.count("--") < 2:
        print(__doc__)
        return 2
    a = argv.index("--")
    b = argv.index("--", a + 1)
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="http")
    p.add_argument("--seconds", type=float, default=12)
    opts = p.parse_args(argv[:a])
    serve_args, command = argv[a + 1:b], argv[b + 1:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = tempfile.mkdtemp(prefix="ps-reload-")
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=ctl)
    log = Path(ctl) / "server.log"
    with open(log, "w") as out:
        workers = [] if {"-w", "--workers"} & set(serve_args) else ["-w", "2"]
        server = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", str(port), *workers, *serve_args,
                                   "--", *command], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                print(log.read_text())
                return 1
            time.sleep(0.05)
        load = subprocess.Popen([BIN, "bench", "-p", str(port), "-W", opts.workload, "-c", "8", "-d",
                                 f"{opts.seconds}s", "--json", "--no-status"], stdout=subprocess.PIPE, text=True)
        for _ in range(3):
            time.sleep(opts.seconds / 4)
            r = subprocess.run([BIN, "reload", "--port", str(port), "--pid", str(server.pid)], env=env,
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                print("reload failed:", r.stdout, r.stderr)
        out, _ = load.communicate(timeout=opts.seconds + 120)
        rep = json.loads(out)
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(120)
        stop = time.monotonic() - t0
        errors = {k: v for k, v in rep["errors"].items() if v and k != "total"}
        print(f"{' '.join(command)} [{' '.join(serve_args)}] {opts.workload}: {rep['ops']} requests, "
              f"{rep['errors']['total']} failed {errors or ''}; stop took {stop:.2f} s, exit {code}")
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
