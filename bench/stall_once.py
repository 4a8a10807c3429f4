#!/usr/bin/env python3
"""One stall under load, for any kind of worker (issue 22): `serve -w 2 [ARGS]` on 127.0.0.1, 8 client threads of
connect / 16-byte echo / close with 1 s timeouts; 1 s in, worker 1 gets SIGSTOP for 4 s, then SIGCONT; 1.5 s later
the load stops. Prints the clients' counts and the supervisor's stall and steering lines (seconds from SIGSTOP).

    python3 bench/stall_once.py BINARY [serve arguments...]
    python3 bench/stall_once.py target/release/port-sharding --steering=false -- python3 cli/tests/programs/fd3_worker.py --notify
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

CLIENTS = 8


def main() -> None:
    binary, extra = sys.argv[1], sys.argv[2:]
    d = tempfile.mkdtemp(prefix="ps-stall-")
    os.chmod(d, 0o700)
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=d)
    p = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2", *extra],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                         start_new_session=True)
    lines: list = []

    def read() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append((time.monotonic(), line.rstrip()))

    threading.Thread(target=read, daemon=True).start()
    try:
        until = time.monotonic() + 30
        while not any("ready:" in line for _, line in lines):
            if time.monotonic() > until or p.poll() is not None:
                sys.exit(f"not ready: {lines}")
            time.sleep(0.01)
        start = [line for _, line in lines if "starting on" in line][0]
        port = int(start.split("starting on ")[1].split(": ")[0].rsplit(":", 1)[1])
        pids = [int(line.split("started: pid ")[1].split(",")[0]) for _, line in lines if "started: pid" in line]
        stop = threading.Event()
        counts = {"ok": 0, "timed_out": 0, "failed": 0}
        lock = threading.Lock()

        def client() -> None:
            for _ in range(1_000_000):  # bounded: the run lasts 6.5 s
                if stop.is_set():
                    return
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.settimeout(1)
                        s.sendall(b"0123456789abcdef")
                        what = "ok" if s.recv(100) else "failed"
                except socket.timeout:
                    what = "timed_out"
                except OSError:
                    what = "failed"
                with lock:
                    counts[what] += 1

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1)
        t0 = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(4)
        os.kill(pids[1], signal.SIGCONT)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(10)
        print(f"{' '.join(extra) or 'built-in workers'}: {counts}")
        for t, line in lines:
            if any(w in line for w in ("stalled", "steering", "serving again", "overloaded")):
                print(f"  {t - t0:7.3f} s  {line}")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


if __name__ == "__main__":
    main()
