"""Python and Ruby servers on one port: the kernel spreads connections over both runtimes' workers.

In `hello` mode each connection is answered `Hello from <runtime> process <pid>` and closed, so the
replies show which runtime and which worker took each connection.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections import Counter

import pytest

from .harness import PATIENCE, RUBY_EXE, Server, assert_gone, runtime_available

CONNECTIONS = 200
HELLO = re.compile(r"^Hello from (\w+) process (\d+)\n$")


def hello(port: int) -> tuple[str, int]:
    """One connection: read the greeting until the server closes; (runtime, pid)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as s:
        data = b""
        for _ in range(100):  # a greeting is one short line; bounded anyway
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
    m = HELLO.match(data.decode())
    assert m, f"unexpected reply {data!r}"
    return m.group(1), int(m.group(2))


@pytest.fixture
def mixed(control_dir, servers):
    """A Python server (2 workers) and a Ruby server (2 workers) on the same ephemeral port."""
    for runtime in ("python", "ruby"):
        if why := runtime_available(runtime):
            pytest.skip(why)
    py = Server("python", 0, control_dir, "--workers", "2", "--mode", "hello")
    servers.append(py)
    py.ready()
    rb = Server("ruby", py.port, control_dir, "--workers", "2", "--mode", "hello")
    servers.append(rb)
    rb.ready()
    return py, rb


def test_python_and_ruby_servers_share_a_port(mixed):
    py, rb = mixed
    answers = [hello(py.port) for _ in range(CONNECTIONS)]
    by_runtime = Counter(runtime for runtime, _ in answers)
    by_worker = Counter(answers)
    print(f"\n{CONNECTIONS} connections on port {py.port}: {dict(by_runtime)}")
    for (runtime, pid), n in sorted(by_worker.items()):
        print(f"  {runtime:6} pid {pid:>7}: {n}")
    assert set(by_runtime) == {"python", "ruby"}, by_runtime
    # Every answer came from a worker of the server of that runtime.
    assert {pid for runtime, pid in by_worker if runtime == "python"} <= set(py.worker_pids()), py.lines
    assert {pid for runtime, pid in by_worker if runtime == "ruby"} <= set(rb.worker_pids()), rb.lines

    for s in (py, rb):
        s.proc.terminate()  # SIGTERM drains; a drained SIGTERM exits 0 in every runtime
    for s in (py, rb):
        assert s.wait_exit() == 0, "\n".join(s.lines)
    assert_gone(py.worker_pids() + rb.worker_pids())


def test_status_from_ruby_lists_both_runtimes(mixed, control_dir):
    py, rb = mixed
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir))
    out = subprocess.run(
        ["ruby", str(RUBY_EXE), "status", "--port", str(py.port), "--json"],
        env=env, capture_output=True, text=True, timeout=PATIENCE, check=True,
    ).stdout
    status = {s["pid"]: s for s in json.loads(out)}
    assert {pid: s["runtime"] for pid, s in status.items()} == {py.pid: "python", rb.pid: "ruby"}
    assert all(s["mode"] == "hello" and s["state"] == "serving" for s in status.values()), status
