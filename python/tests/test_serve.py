"""serve() in real subprocesses: echo, port sharing, the talk's loop, signals, threads, fork safety, CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable, List, Set

import pytest

import port_sharding
from conftest import REPO, TIMEOUT, Proc, alive, connect, echo, recv_exactly, wait_gone

# A server child: atexit handler, unflushed stdout and a live thread while the workers fork.
# argv: mode workers [port]
CHILD = r"""
import atexit, os, signal, sys, threading, time
import port_sharding

atexit.register(lambda: print("atexit ran in", os.getpid(), flush=True))
print("buffered before serve")  # stdout is a pipe, so this stays in Python's buffer across the fork

stop_ticks = threading.Event()
def tick():
    for i in range(10000):  # bounded: 10000 * 50 ms
        if stop_ticks.wait(0.05):
            return
        print("tick", i, file=sys.stderr, flush=True)
threading.Thread(target=tick, daemon=True).start()

mode, workers = sys.argv[1], int(sys.argv[2])
port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
try:
    report = port_sharding.serve(port, host="127.0.0.1", workers=workers, mode=mode, drain_timeout=20)
    print("serve returned", report.reason, flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    stop_ticks.set()
    # Python's own SIGINT handler is back: a second Ctrl-C raises again.
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("second SIGINT was not raised", flush=True)
    except KeyboardInterrupt:
        print("handler restored", flush=True)
    sys.exit(130)
stop_ticks.set()
"""

Spawn = Callable[..., Proc]


def server(spawn: Spawn, mode: str = "echo", workers: int = 2, port: int = 0) -> Proc:
    return spawn("-c", CHILD, mode, str(workers), str(port))


def worker_pids(port: int) -> List[int]:
    return [w["pid"] for s in port_sharding.status(port) for w in s["workers"]]


def ran_once(p: Proc) -> None:
    """Fork safety: the workers ran no atexit handler and flushed no copy of Python's stdout buffer."""
    assert p.out.count("buffered before serve") == 1, p.describe()
    assert [line for line in p.out if line.startswith("atexit ran")] == [f"atexit ran in {p.pid}"], p.describe()


def ticks(p: Proc) -> int:
    return sum(1 for line in list(p.err) if line.startswith("tick "))


def test_serve_echoes_keeps_threads_running_and_sigterm_returns(spawn: Spawn) -> None:
    p = server(spawn)
    port = p.ready_port()
    assert echo(port, b"hello from the test") == b"hello from the test"
    # The GIL is released during serve: the child's other thread keeps printing.
    seen = ticks(p)
    p.wait_for(rf"^tick {seen + 3}$")
    pids = worker_pids(port)
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0, p.describe()
    assert "serve returned terminate" in p.out
    ran_once(p)
    assert wait_gone(pids) == []


def test_sigint_drains_slow_connections_then_raises_keyboard_interrupt(spawn: Spawn) -> None:
    p = server(spawn)
    port = p.ready_port()
    conns = [connect(port) for _ in range(3)]
    for i, c in enumerate(conns):
        c.sendall(b"first %d" % i)
        assert recv_exactly(c, 7) == b"first %d" % i
    pids = worker_pids(port)
    assert len(pids) == 2 and all(alive(pid) for pid in pids)

    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, workers included
    p.wait_for(r"draining \(")  # the supervisor has begun the drain
    assert p.popen.poll() is None, "the server must wait for the open connections"
    for i, c in enumerate(conns):  # in-flight connections are still served, then complete
        c.sendall(b"second %d" % i)
        assert recv_exactly(c, 8) == b"second %d" % i
        c.close()

    assert p.finish() == 130, p.describe()
    assert "KeyboardInterrupt" in p.out and "handler restored" in p.out, p.describe()
    ran_once(p)
    assert wait_gone(pids) == [], "orphan workers"


def test_two_python_processes_share_a_port(spawn: Spawn) -> None:
    first = server(spawn, mode="hello", workers=1)
    port = first.ready_port()
    second = server(spawn, mode="hello", workers=1, port=port)
    assert second.ready_port() == port
    servers = port_sharding.status(port)
    assert sorted(s["pid"] for s in servers) == sorted([first.pid, second.pid])
    assert all(s["runtime"] == "python" for s in servers)
    owner = {w["pid"]: s["pid"] for s in servers for w in s["workers"]}

    answered: Set[int] = set()
    deadline = time.monotonic() + TIMEOUT
    for _ in range(200):  # the kernel hashes connections over both listeners: both answer long before
        m = re.fullmatch(rb"Hello from python process (\d+)\n", echo(port, b""))
        assert m
        answered.add(owner[int(m.group(1))])
        if len(answered) == 2 or time.monotonic() > deadline:
            break
    assert answered == {first.pid, second.pid}

    assert sorted(port_sharding.stop(port)) == sorted([first.pid, second.pid])
    for p in (first, second):
        assert p.finish() == 0, p.describe()
        assert "serve returned stop" in p.out


def test_takeover_between_python_servers(spawn: Spawn) -> None:
    old = server(spawn, mode="hello", workers=1)
    port = old.ready_port()
    new = spawn("-c", "import port_sharding, sys\nport_sharding.serve(int(sys.argv[1]), host='127.0.0.1', workers=1, "
                "mode='hello', takeover=True)\nprint('serve returned', flush=True)", str(port))
    assert new.ready_port() == port
    # The old server hands its sockets over and drains: serve() returns there.
    assert old.finish() == 0, old.describe()
    assert "serve returned taken_over" in old.out
    [running] = port_sharding.status(port)
    assert running["pid"] == new.pid
    assert echo(port, b"").startswith(b"Hello from python process ")
    os.kill(new.pid, signal.SIGTERM)
    assert new.finish() == 0, new.describe()


def test_talk_loop_on_listen_shares_the_port_with_an_engine_server(spawn: Spawn) -> None:
    with port_sharding.Server(port=0, host="127.0.0.1", workers=1, mode="hello") as engine:
        loop = spawn(str(REPO / "examples" / "seed_echo_listen.py"), str(engine.port), "127.0.0.1")
        replies: Set[str] = set()
        deadline = time.monotonic() + TIMEOUT
        # Until both have answered (connections made before the loop listens all go to the engine).
        for _ in range(2000):
            try:
                reply = echo(engine.port, b"ping")
            except OSError:  # hello mode closes at once: a "ping" arriving after that is answered by a reset
                continue
            replies.add("loop" if reply == b"ping" else "engine" if reply.startswith(b"Hello from python") else repr(reply))
            if replies == {"loop", "engine"} or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert replies == {"loop", "engine"}, loop.describe()
        assert loop.popen.poll() is None


def test_examples_join_the_same_port(spawn: Spawn) -> None:
    with port_sharding.Server(port=0, host="127.0.0.1", workers=1, mode="once") as engine:
        hello = spawn(str(REPO / "examples" / "hello.py"), str(engine.port), "127.0.0.1")
        assert hello.ready_port() == engine.port
        once = spawn(str(REPO / "examples" / "echo.py"), str(engine.port), "127.0.0.1")
        assert once.ready_port() == engine.port
        pids = sorted(s["pid"] for s in port_sharding.status(engine.port))
        assert pids == sorted([os.getpid(), hello.pid, once.pid])
        # Stop the two examples; the engine in this process is stopped by the `with`.
        for p in (hello, once):
            os.kill(p.pid, signal.SIGTERM)
        assert hello.finish() == 0, hello.describe()
        assert once.finish() == 0, once.describe()


def test_serve_on_another_thread_leaves_signals_alone(spawn: Spawn) -> None:
    # An Event, not Thread.join(): on CPython 3.11 a join interrupted by Ctrl-C marks the thread stopped.
    code = r"""
import threading
import port_sharding
done = threading.Event()
def target():
    port_sharding.serve(port=0, host="127.0.0.1", workers=1)
    done.set()
threading.Thread(target=target).start()
try:
    done.wait(60)
except KeyboardInterrupt:  # Python's handler is still in charge of SIGINT, in the main thread
    print("main thread got KeyboardInterrupt", flush=True)
done.wait(60)
print("serve thread done" if done.is_set() else "serve thread still running", flush=True)
"""
    p = spawn("-c", code)
    port = p.ready_port()
    assert echo(port, b"a") == b"a"
    os.kill(p.pid, signal.SIGINT)
    p.wait_for("main thread got KeyboardInterrupt", stream="out")
    assert echo(port, b"still serving") == b"still serving"
    assert port_sharding.stop(port) == [p.pid]
    assert p.finish() == 0, p.describe()
    assert "serve thread done" in p.out


def test_ctrl_c_interrupts_server_wait(spawn: Spawn) -> None:
    code = r"""
import port_sharding
server = port_sharding.Server(port=0, host="127.0.0.1", workers=1).start()
try:
    print("waiting", flush=True)
    server.wait()
except KeyboardInterrupt:  # Python's handler ran between two waits; the server still serves
    print("interrupted while", server.phase, flush=True)
print("stopped:", server.stop(30).reason, server.wait().reason, flush=True)
"""
    p = spawn("-c", code)
    p.wait_for("^waiting$", stream="out")
    os.kill(p.pid, signal.SIGINT)  # to the Python process only: its workers ignore SIGINT anyway
    assert p.finish() == 0, p.describe()
    assert p.out == ["waiting", "interrupted while serving", "stopped: stop stop"], p.describe()


def run_cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "port_sharding", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=os.environ.copy())


def test_python_m_port_sharding_serve_status_stop(spawn: Spawn) -> None:
    p = spawn("-m", "port_sharding", "serve", "--port", "0", "--host", "127.0.0.1", "-w", "1", "--mode", "hello")
    port = p.ready_port()
    status = run_cli("status", "--port", str(port), "--json")
    assert status.returncode == 0, status.stderr
    [found] = json.loads(status.stdout)
    assert found["pid"] == p.pid and found["runtime"] == "python" and found["mode"] == "hello"
    table = run_cli("status", "--port", str(port))
    assert f"python server pid {p.pid} on 127.0.0.1:{port}" in table.stdout
    stop = run_cli("stop", "--port", str(port), "--wait", "20s")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert p.finish() == 0, p.describe()
    assert run_cli("status", "--port", str(port)).returncode == 3


def test_python_m_port_sharding_serve_ctrl_c_exits_130(spawn: Spawn) -> None:
    p = spawn("-m", "port_sharding", "serve", "--port", "0", "--host", "127.0.0.1", "-w", "1")
    port = p.ready_port()
    pids = worker_pids(port)
    os.killpg(p.pid, signal.SIGINT)
    assert p.finish() == 130, p.describe()
    assert not any("Traceback" in line for line in p.err), p.describe()
    assert wait_gone(pids) == []


def test_python_m_port_sharding_errors() -> None:
    bad = run_cli("serve", "--port", "0", "--workers", "0")
    assert bad.returncode == 2 and "workers" in bad.stderr
    bad = run_cli("serve", "--port", "0", "--mode", "loud")
    assert bad.returncode == 2 and "mode" in bad.stderr
    bad = run_cli("serve", "--port", "0", "--drain-timeout", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr
    version = run_cli("--version")
    assert version.stdout.strip() == f"port-sharding {port_sharding.__version__}"


def rust_cli() -> Path:
    """The Rust `port-sharding` binary of this checkout (`cargo build -p port-sharding-cli`)."""
    # `make test` says where cargo put it (PORT_SHARDING_BIN, from `cargo metadata`).
    default = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "port-sharding"
    binary = Path(os.environ.get("PORT_SHARDING_BIN", default))
    if not binary.exists():
        pytest.skip(f"{binary} is missing: run `cargo build -p port-sharding-cli` to compare with the Rust CLI")
    return binary


def test_python_m_port_sharding_is_the_rust_command_line() -> None:
    binary = rust_cli()
    for args in ([], ["--help"], ["serve", "--help"], ["status", "--help"], ["stop", "--help"], ["bench", "--help"],
                 ["serve", "-w", "0"], ["serve", "--drain_timeout=1"]):
        ours = run_cli(*args)
        theirs = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=TIMEOUT)
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr), args


def test_status_table_is_the_rust_one() -> None:
    binary = rust_cli()
    with port_sharding.Server(port=0, host="127.0.0.1", workers=2) as server:
        ours = run_cli("status", "--port", str(server.port)).stdout
        theirs = subprocess.run([str(binary), "status", "--port", str(server.port)], capture_output=True, text=True,
                                timeout=TIMEOUT, env=os.environ.copy()).stdout
    assert f"python server pid {os.getpid()} on 127.0.0.1:{server.port}" in ours
    uptime = re.compile(r"up \d+s")  # the one cell that may tick between the two calls
    assert uptime.sub("up Ns", ours) == uptime.sub("up Ns", theirs)


def test_port_sharding_script_runs_the_command_line() -> None:
    script = Path(sysconfig.get_path("scripts")) / "port-sharding"
    if not script.exists():
        pytest.skip(f"{script} is missing: the package was not installed with its console script")
    ran = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert (ran.returncode, ran.stdout.strip()) == (0, f"port-sharding {port_sharding.__version__}")
