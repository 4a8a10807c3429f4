"""Python functions as workers (serve(worker=...), Server(worker=...)), in real subprocesses: the talk's loop
supervised, exceptions, drains, reload under load, Ctrl-C, asyncio, drain_timeout, host threads, at-fork."""

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

import port_sharding
from conftest import TIMEOUT, Proc, alive, connect, holds_listener, recv_all, wait_gone, wait_stopped, wait_until

Spawn = Callable[..., Proc]

# A server child: `serve(worker=...)` with the worker function named in argv[1], an atexit handler, a
# buffered stdout line and a ticking thread. argv: worker workers drain_timeout [port]
CHILD = r"""
import asyncio, atexit, os, signal, sys, threading, time
import port_sharding

atexit.register(lambda: print("atexit ran in", os.getpid(), flush=True))
print("buffered before serve")  # stdout is a pipe: this stays in Python's buffer across the forks

def talk(listener):  # the talk's loop
    for client, addr in listener:
        data = client.recv(1024)
        client.send(data)
        client.close()

def boom(listener):
    for client, addr in listener:
        data = client.recv(1024)
        if data == b"boom":
            client.close()
            raise RuntimeError("boom requested")
        client.sendall(data)
        client.close()

def slow(listener):
    for client, addr in listener:
        data = client.recv(1024)
        time.sleep(1)
        client.sendall(data)
        client.close()

async def aio(listener):
    async def handle(reader, writer):
        writer.write(await reader.read(1024))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, sock=listener.socket)
    listener.ready()
    await listener.wait_draining()
    server.close()
    await server.wait_closed()
    os.write(2, b"asyncio worker drained %d\n" % listener.index)  # one write: two workers share stderr

def stuck(listener):
    listener.ready()
    time.sleep(600)

stop_ticks = threading.Event()
def tick():
    for i in range(10000):  # bounded: 10000 * 50 ms
        if stop_ticks.wait(0.05):
            return
        print("tick", i, file=sys.stderr, flush=True)
threading.Thread(target=tick, daemon=True).start()

worker = globals()[sys.argv[1]]
workers, drain_timeout = int(sys.argv[2]), float(sys.argv[3])
port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
try:
    report = port_sharding.serve(port, host="127.0.0.1", workers=workers, worker=worker, drain_timeout=drain_timeout)
    print("serve returned", report.reason, flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
stop_ticks.set()
"""


def server(spawn: Spawn, worker: str, workers: int = 2, drain_timeout: float = 20, port: int = 0) -> Proc:
    return spawn("-c", CHILD, worker, str(workers), str(drain_timeout), str(port))


def ask(port: int, data: bytes) -> bytes:
    """The talk's protocol: send, then read until the server closes."""
    with connect(port) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk


def worker_pids(port: int) -> List[int]:
    return [w["pid"] for s in port_sharding.status(port) for w in s["workers"] if w["kind"] == "function"]


def ran_once(p: Proc) -> None:
    """The workers ran no atexit handler and flushed no copy of the parent's stdout buffer."""
    assert p.out.count("buffered before serve") == 1, p.describe()
    assert [line for line in p.out if line.startswith("atexit ran")] == [f"atexit ran in {p.pid}"], p.describe()


def ticks(p: Proc) -> int:
    return sum(1 for line in list(p.err) if line.startswith("tick "))


def test_the_talks_loop_as_a_worker_shares_the_port_with_a_builtin_server(spawn: Spawn) -> None:
    p = server(spawn, "talk")
    port = p.ready_port()
    hello = spawn("-c", f"import port_sharding; port_sharding.serve({port}, host='127.0.0.1', workers=2, mode='hello')")
    hello.ready_port()
    answers = [ask(port, b"ping %d" % i) for i in range(200)]
    echoed = sum(1 for i, a in enumerate(answers) if a == b"ping %d" % i)
    greeted = sum(1 for a in answers if a.startswith(b"Hello from"))
    assert echoed + greeted == 200 and echoed > 0 and greeted > 0, (echoed, greeted)
    status = [s for s in port_sharding.status(port) if s["pid"] == p.pid][0]
    assert status["mode"] == "function"
    assert sum(w["accepted"] for w in status["workers"]) == echoed
    # Other threads of the host keep running while serve() supervises.
    before = ticks(p)
    p.wait_for(f"^tick {before + 3}$")
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0
    assert "serve returned terminate" in p.out, p.describe()
    ran_once(p)
    os.kill(hello.pid, signal.SIGTERM)
    hello.finish()


def test_an_exception_is_logged_and_the_worker_replaced_and_its_queue_answered(spawn: Spawn) -> None:
    p = server(spawn, "boom", workers=1)
    port = p.ready_port()
    first = connect(port)
    first.sendall(b"boom")
    # Queued behind the connection that kills the worker: its replacement on the same listener answers them.
    queued = [connect(port) for _ in range(10)]
    for i, s in enumerate(queued):
        s.sendall(b"queued %d" % i)
    assert first.recv(10) == b""
    for i, s in enumerate(queued):
        assert s.recv(100) == b"queued %d" % i
        s.close()
    first.close()
    header = p.wait_for(r"worker 0 \(pid (\d+)\): the worker function raised")
    p.wait_for("RuntimeError: boom requested")
    p.wait_for(rf"worker 0 \(pid {header.group(1)}\) exited with status 1 .*restarting")
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0
    ran_once(p)


def test_a_drain_finishes_slow_connections_in_flight(spawn: Spawn) -> None:
    p = server(spawn, "slow")
    port = p.ready_port()
    clients = [connect(port) for _ in range(4)]
    for i, s in enumerate(clients):
        s.sendall(b"slow %d" % i)
    time.sleep(0.3)  # let the workers take the first ones (not a timing assertion: either way all are answered)
    os.kill(p.pid, signal.SIGTERM)
    for i, s in enumerate(clients):
        assert s.recv(100) == b"slow %d" % i
        s.close()
    assert p.finish() == 0
    assert "serve returned terminate" in p.out, p.describe()
    assert not [line for line in p.err if "SIGKILL" in line], p.describe()


def test_reload_under_continuous_load_loses_nothing_and_replaces_every_worker(spawn: Spawn) -> None:
    p = server(spawn, "talk", workers=2)
    port = p.ready_port()
    before = worker_pids(port)
    stop = threading.Event()
    results = {"ok": 0, "failed": 0}

    def load() -> None:
        deadline = time.monotonic() + 60
        for i in range(100_000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                ok = ask(port, b"load %d" % i) == b"load %d" % i
            except OSError:
                ok = False
            results["ok" if ok else "failed"] += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.3)
        for _ in range(2):
            reports = port_sharding.reload(port)
            assert reports[0]["failed"] is None, reports
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(TIMEOUT)
    after = worker_pids(port)
    assert results["failed"] == 0 and results["ok"] > 0, results
    assert len(after) == 2 and not set(before) & set(after), (before, after)
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0
    ran_once(p)


def test_a_drain_serves_what_queues_after_it_began(spawn: Spawn) -> None:
    """A draining function worker hands out what is queued on its listener before it says drained: the drain is
    asked for first (the worker is stopped meanwhile) and 10 connections queue after it; when the worker resumes
    its `accept` sees the drain request, and must still hand out all 10 before it lets go of the listener (which
    would reset them)."""
    p = server(spawn, "talk", workers=1)
    port = p.ready_port()
    [pid] = worker_pids(port)
    os.kill(pid, signal.SIGSTOP)
    wait_stopped(pid)
    os.kill(p.pid, signal.SIGTERM)
    p.wait_for(r"draining \(SIGTERM\)")
    # The supervisor writes the drain byte to the worker's pipe, then lets go of its copy of the listener.
    wait_until("the supervisor to let go of the listener", lambda: not holds_listener(p.pid, port))
    clients = [connect(port) for _ in range(10)]
    for i, c in enumerate(clients):
        c.sendall(b"late %d" % i)
        c.shutdown(socket.SHUT_WR)
    os.kill(pid, signal.SIGCONT)
    answered = 0
    for i, c in enumerate(clients):
        try:
            answered += recv_all(c) == b"late %d" % i
        except OSError:
            pass  # reset: the listener was closed with the connection still queued
        c.close()
    assert answered == 10, f"{answered} of 10 answered; {p.describe()}"
    assert p.finish() == 0, p.describe()


# A server whose worker function, once `hold` exists, stays alive but never accepts nor calls ready(): a new
# release stuck in its start-up. Its replies name the worker's pid. argv: hold
HOLDING = r"""
import os, sys, time
import port_sharding

def worker(listener):
    if os.path.exists(sys.argv[1]):
        os.write(2, b"holding %d\n" % os.getpid())
        time.sleep(600)
    for client, addr in listener:
        client.sendall(b"%d " % os.getpid() + client.recv(1024))
        client.close()

port_sharding.serve(0, host="127.0.0.1", workers=1, worker=worker, ready_timeout=4)
"""


def test_a_reload_keeps_the_old_worker_until_the_new_one_is_ready(spawn: Spawn, tmp_path: Path) -> None:
    """A reload must not promote a new function worker before it is ready (its first accept, or ready()): until
    the ready timeout every connection is answered by the OLD worker; then the reload reports the failure, the new
    worker is gone and the old one still serves."""
    hold = tmp_path / "hold"
    p = spawn("-c", HOLDING, str(hold))
    port = p.ready_port()
    [old] = worker_pids(port)
    hold.touch()  # from now on a new worker holds
    reports: List[Any] = []
    reloading = threading.Thread(target=lambda: reports.extend(port_sharding.reload(port)))
    reloading.start()
    try:
        new = int(p.wait_for(r"^holding (\d+)$").group(1))
        asked = 0
        while reloading.is_alive() and asked < 2000:  # bounded by the ready timeout, and by count
            reply = ask(port, b"during %d" % asked)
            assert reply == b"%d during %d" % (old, asked), f"answered {reply!r} before the new worker was ready"
            asked += 1
    finally:
        reloading.join(TIMEOUT)
    [report] = reports
    assert report["replaced"] == [], report
    failed = report["failed"]
    assert failed is not None and failed["pid"] == new, report
    assert "was not ready within 4s" in failed["reason"], report
    assert asked > 0, "the reload ended before a connection could be tried"
    assert wait_gone([new]) == []
    # `status` names the old worker, still serving, and once the supervisor has reaped the killed one, no
    # process of the failed reload is left on its listener.
    def seat() -> Any:
        return port_sharding.status(port)[0]["workers"][0]

    assert (seat()["pid"], seat()["state"]) == (old, "serving"), seat()
    wait_until("the failed reload's worker is reaped", lambda: len(seat()["processes"]) == 1)
    assert [(w["pid"], w["role"]) for w in seat()["processes"]] == [(old, "serving")], seat()
    for i in range(20):
        assert ask(port, b"after %d" % i) == b"%d after %d" % (old, i)
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0, p.describe()


def test_ctrl_c_drains_the_function_workers(spawn: Spawn) -> None:
    p = server(spawn, "slow", workers=2)
    port = p.ready_port()
    pids = worker_pids(port)
    client = connect(port)
    client.sendall(b"in flight")
    time.sleep(0.3)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    assert client.recv(100) == b"in flight"
    client.close()
    assert p.finish() == 0
    assert "KeyboardInterrupt" in p.out, p.describe()
    for pid in pids:
        p.wait_for(rf"worker \d \(pid {pid}\) exited$")
    assert wait_gone(pids) == []


def test_an_asyncio_worker_serves_and_drains(spawn: Spawn) -> None:
    p = server(spawn, "aio", workers=2)
    port = p.ready_port()
    for i in range(20):
        assert ask(port, b"aio %d" % i) == b"aio %d" % i
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0
    assert "serve returned terminate" in p.out, p.describe()
    assert "\n".join(p.err).count("asyncio worker drained") == 2, p.describe()


def test_a_function_that_never_accepts_is_killed_at_drain_timeout(spawn: Spawn) -> None:
    p = server(spawn, "stuck", workers=1, drain_timeout=1)
    port = p.ready_port()
    [pid] = worker_pids(port)
    os.kill(p.pid, signal.SIGTERM)
    p.wait_for(rf"worker 0 \(pid {pid}\) still running .* sending SIGKILL")
    assert p.finish() == 0
    assert not alive(pid)


# Forks while other threads hold the GIL, allocate and import: from Server.start and from serve, many times.
BUSY = r"""
import importlib, os, socket, sys, threading, time
import port_sharding
port_sharding.set_quiet(True)

stop = threading.Event()
def churn(n):
    for i in range(10**9):
        if stop.is_set():
            return
        junk = [bytearray(512) for _ in range(200)]  # allocating, holding the GIL
        if i % 50 == n:
            importlib.reload(importlib.import_module("json"))  # importing
threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
for t in threads:
    t.start()

def talk(listener):
    for client, addr in listener:
        client.sendall(client.recv(1024))
        client.close()

def ask(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        return s.recv(1024)

ok = 0
for round in range(8):
    with port_sharding.Server(0, host="127.0.0.1", workers=2, worker=talk) as server:
        ok += all(ask(server.port, b"start %d %d" % (round, i)) == b"start %d %d" % (round, i) for i in range(5))
for round in range(8):
    bound = port_sharding.Server(0, host="127.0.0.1", workers=1)  # only to pick a free port
    port = bound.port
    bound.stop()
    def client():
        global ok
        for _ in range(400):  # bounded: 400 * 50 ms
            try:
                answers = [ask(port, b"serve %d" % i) for i in range(5)]
                break
            except OSError:
                time.sleep(0.05)
        else:
            answers = []
        ok += answers == [b"serve %d" % i for i in range(5)]
        port_sharding.stop(port)
    t = threading.Thread(target=client)
    t.start()
    port_sharding.serve(port, host="127.0.0.1", workers=2, worker=talk)
    t.join()
stop.set()
for t in threads:
    t.join()
print("rounds ok", ok, flush=True)
"""


@pytest.mark.timeout(300)  # it waits up to 120 s for its child
def test_workers_fork_and_serve_while_other_threads_are_busy(spawn: Spawn) -> None:
    p = spawn("-c", BUSY)
    assert p.finish(timeout=120) == 0, p.describe()
    assert "rounds ok 16" in p.out, p.describe()


def test_listener_api_in_a_worker() -> None:
    """Server(worker=...) from this process: the Listener's attributes as the worker saw them."""
    r, w = os.pipe()

    def report(listener: port_sharding.Listener) -> None:
        s = listener.socket
        line = f"{listener.index} {listener.draining} {s.family == socket.AF_INET} {s.getblocking()}\n"
        os.write(w, line.encode())
        for client, addr in listener:
            client.sendall(b"%d %s" % (listener.index, str(addr[0]).encode()))
            client.close()
        os.write(w, f"drained {listener.index} {listener.draining}\n".encode())

    with port_sharding.Server(0, host="127.0.0.1", workers=1, worker=report) as server:
        with connect(server.port) as c:
            assert c.recv(100) == b"0 127.0.0.1"
    os.close(w)
    lines = os.fdopen(r).read().splitlines()
    assert lines == ["0 False True False", "drained 0 True"], lines


def test_a_worker_holds_its_own_listener_and_no_other_engine_socket() -> None:
    """The at-fork hook that closes the engine's fds in host-forked children keeps this worker's listener and
    drain pipe (a unix socket pair: the one unix socket), and closes the others' listeners, their drain pipes
    and the control and notify sockets (a listener kept would stay in the group)."""
    r, w = os.pipe()

    def count(listener: port_sharding.Listener) -> None:
        listening, unix = 0, 0
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue  # not a socket
            with s:
                if s.family == socket.AF_UNIX:
                    unix += 1
                elif s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    listening += 1
        os.write(w, f"{listener.index} {listening} {unix}\n".encode())
        for client, addr in listener:
            client.close()

    with port_sharding.Server(0, host="127.0.0.1", workers=3, worker=count):
        pass
    os.close(w)
    lines = sorted(os.fdopen(r).read().splitlines())
    assert lines == ["0 1 1", "1 1 1", "2 1 1"], lines


def test_a_worker_that_is_not_callable_is_refused_before_anything_forks() -> None:
    for call in (port_sharding.Server, port_sharding.serve):
        with pytest.raises(TypeError, match="worker= must be a function"):
            call(0, host="127.0.0.1", worker=42)  # type: ignore[arg-type]
