"""Helpers for the port_sharding tests: real processes and real sockets on 127.0.0.1, ephemeral ports.

Every server subprocess runs in its own session (so its process group holds it and its workers) and is
killed by that group id in teardown. Every wait is bounded by a deadline; every test by a time limit, and the
session by a private control directory (scripts/pytest_guards.py).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from pytest_guards import *  # noqa: E402,F401,F403 -- time limit, private control dir, port 1234 guard
from pytest_guards import DEFAULT_SIGNALS, listening_inodes, tcp_inodes  # noqa: E402
TIMEOUT = 20.0  # seconds any single wait may take before the test fails
READY = re.compile(r"ready: \d+ worker\(s\) serving 127\.0\.0\.1:(\d+)")


@pytest.fixture(autouse=True)
def control_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own control-socket folder, so status/stop only see its own servers."""
    d = tmp_path / "control"
    monkeypatch.setenv("PORT_SHARDING_CONTROL_DIR", str(d))
    return d


class Proc:
    """A Python subprocess whose stdout and stderr lines are collected by reader threads."""

    def __init__(self, args: List[str]) -> None:
        self.popen = subprocess.Popen(
            [*DEFAULT_SIGNALS, sys.executable, *args],  # SIGINT and SIGQUIT as a terminal would give them
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.out: List[str] = []
        self.err: List[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, lines: List[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, stream: str = "err", timeout: float = TIMEOUT) -> "re.Match[str]":
        """The first line of stdout/stderr matching `pattern`; fails after `timeout` or if the process exits."""
        regex = re.compile(pattern)
        lines = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                m = regex.search(line)
                if m:
                    return m
            if self.popen.poll() is not None and all(not t.is_alive() for t in self._readers):
                break
            time.sleep(0.02)
        pytest.fail(f"no line matching {pattern!r} in {stream}; {self.describe()}")

    def ready_port(self) -> int:
        """Waits for the engine's `ready` log line and returns the port it serves (never the default one: tests use
        ephemeral ports)."""
        port = int(self.wait_for(READY.pattern).group(1))
        assert port != 1234, f"a test server on the default port 1234: pass port 0; {self.describe()}"
        return port

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Waits for the exit (failing after `timeout`) and for the output to be read; returns the exit code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {self.pid} still running after {timeout}s; {self.describe()}")
        for t in self._readers:
            t.join(timeout)
        return code

    def describe(self) -> str:
        return f"exit={self.popen.poll()}\nstdout:\n" + "\n".join(self.out) + "\nstderr:\n" + "\n".join(self.err)

    def kill(self) -> None:
        """Kills the whole process group (the server and its workers) by id."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """`spawn("-c", code)` starts a Python subprocess; all are killed by process group at teardown."""
    procs: List[Proc] = []

    def start(*args: str) -> Proc:
        p = Proc(list(args))
        procs.append(p)
        return p

    yield start
    for p in procs:
        # Kill the group even after a clean exit: a worker left behind would be a bug, but not a stray.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.kill()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def echo(port: int, data: bytes) -> bytes:
    """Sends `data`, half-closes, and reads until the server closes."""
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def recv_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pids: List[int], timeout: float = TIMEOUT) -> List[int]:
    """Waits until none of `pids` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def python_code(body: str) -> str:
    """Prefixes a child script with the import every test child needs."""
    return "import port_sharding, sys, os\n" + body


def wait_until(what: str, cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Waits until `cond()` holds; fails the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def wait_stopped(pid: int) -> None:
    """Waits until SIGSTOP took effect on `pid` (state T in /proc/<pid>/stat)."""

    def stopped() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"
        except (FileNotFoundError, IndexError):
            return False

    wait_until(f"pid {pid} to be stopped", stopped)


def holds_listener(pid: int, port: int) -> bool:
    """Whether process `pid` holds a descriptor of a listening TCP socket on `port` (from /proc)."""
    return _descriptors_of(pid, listening_inodes(port)) > 0


def held_connections(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` process `pid` holds a descriptor of (accepted, not
    yet closed), from /proc: what a stopped worker took out of its queue and has not answered."""
    return _descriptors_of(pid, tcp_inodes(port, "01"))  # 01: ESTABLISHED


def _descriptors_of(pid: int, inodes: "set[str]") -> int:
    """How many of process `pid`'s descriptors are sockets in `inodes` (0 once it is gone)."""
    held = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return 0
    for fd in fds:
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except FileNotFoundError:
            continue
    return held
