"""End-to-end helpers: servers of any runtime (rust CLI, Python, Ruby) as real processes on 127.0.0.1, and a
client load that counts what it saw.

Each server runs in its own process group and is killed by its PID (group) on teardown, never by name — the
whole group, even when its leader has exited, so workers it left behind do not outlive the test.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PORT_SHARDING_BIN", ROOT / "target" / "debug" / "port-sharding"))
RUBY_EXE = ROOT / "ruby" / "exe" / "port-sharding"
PATIENCE = 30.0  # seconds; reached only when something is broken
# Before every server command: SIGINT and SIGQUIT as a terminal would give them, even when this run inherited
# them ignored (`nohup make test &`); see scripts/pytest_guards.py.
DEFAULT_SIGNALS = ["env", "--default-signal=INT,QUIT"]


def serve_command(runtime: str) -> list[str]:
    """The `serve` command line of each runtime; all three take the same flags."""
    if runtime == "rust":
        return [str(BIN), "serve"]
    if runtime == "python":
        return [sys.executable, "-m", "port_sharding", "serve"]
    if runtime == "ruby":
        return ["ruby", str(RUBY_EXE), "serve"]
    raise ValueError(runtime)


def runtime_available(runtime: str) -> str | None:
    """None when the runtime can serve, else why not (for a skip)."""
    if runtime == "rust":
        return None if BIN.exists() else f"{BIN} is not built (cargo build)"
    if runtime == "python":
        r = subprocess.run([sys.executable, "-c", "import port_sharding"], capture_output=True)
        return None if r.returncode == 0 else "the Python package is not installed (make setup-python)"
    if runtime == "ruby":
        if not shutil.which("ruby"):
            return "ruby is not installed (make setup-system)"
        r = subprocess.run(["ruby", "-e", 'require "port_sharding"'], capture_output=True)
        return None if r.returncode == 0 else "the Ruby gem is not installed (make setup-ruby)"
    return f"unknown runtime {runtime}"


class Server:
    """A `serve` process of one runtime; its stderr log is collected line by line."""

    def __init__(self, runtime: str, port: int, control_dir: Path, *args: str, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """`command` replaces the runtime's `serve` command line (e.g. to run it as another user)."""
        self.runtime = runtime
        self.control_dir = control_dir
        env = dict(env or os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir), PYTHONUNBUFFERED="1")
        cmd = DEFAULT_SIGNALS + (command or serve_command(runtime)) + ["--host", "127.0.0.1", "--port", str(port), *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_log("server starting on")
        # "… server starting on 127.0.0.1:41234: 2 worker(s), …"
        self.port = int(line.split("starting on ")[1].split(": ")[0].rsplit(":", 1)[1])
        assert self.port != 1234, "a test server on the default port 1234: pass port 0"  # tests use ephemeral ports

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_log(self, needle: str, timeout: float = PATIENCE) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                self._reader.join(1)
                for line in self.lines:
                    if needle in line:
                        return line
                break
            time.sleep(0.01)
        raise AssertionError(f"{self.runtime} server: no log line with {needle!r}; log:\n" + "\n".join(self.lines))

    def ready(self) -> "Server":
        self.wait_log("ready:")
        return self

    def worker_pids(self) -> list[int]:
        return [int(line.split("started: pid ")[1].split(",")[0]) for line in self.lines if "started: pid " in line]

    def wait_exit(self, timeout: float = PATIENCE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.runtime} server did not exit; log:\n" + "\n".join(self.lines)) from None
        self._reader.join(1)
        return code

    def kill(self) -> None:
        """SIGKILL to the server's whole group (its own: only what we started), even if the leader is gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + PATIENCE
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"orphans left: {[p for p in pids if alive(p)]}"
        time.sleep(0.02)


def half_close(s: socket.socket) -> None:
    """shutdown(SHUT_WR), reporting a reset as a reset: when the peer's RST lands between send and shutdown, the
    socket is already closed and shutdown says ENOTCONN while the reset waits in SO_ERROR."""
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        pending = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if e.errno == errno.ENOTCONN and pending:
            raise OSError(pending, os.strerror(pending)) from e
        raise


class ClientLoad:
    """Clients that connect, send a unique message, half-close and check the echo, back to back, on threads,
    until stopped: an independent count of what clients saw (answered, failed by kind, wrong). Bounded: each
    thread stops after `max_ops` connections or `max_seconds`, whichever comes first."""

    def __init__(self, port: int, threads: int = 8, max_ops: int = 200_000, max_seconds: float = 120.0) -> None:
        self.port = port
        self.ok = 0
        self.wrong = 0
        self.failed: Counter[str] = Counter()
        self.samples: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, args=(t, max_ops), daemon=True) for t in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, t: int, max_ops: int) -> None:
        for i in range(max_ops):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            try:
                right = self._once(t, i)
                with self._lock:
                    if right:
                        self.ok += 1
                    else:
                        self.wrong += 1
            except OSError as e:
                kind = errno.errorcode.get(e.errno or 0, type(e).__name__)
                with self._lock:
                    self.failed[kind] += 1
                    if len(self.samples) < 5:
                        self.samples.append(f"client {t} op {i}: {e}")

    def _once(self, t: int, i: int) -> bool:
        """One connection: a unique message, half-close, and the echo back. Whether the reply was right."""
        msg = f"client {t} message {i}".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(msg)
            half_close(s)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        return reply == msg

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait_for(self, n: int, timeout: float = PATIENCE) -> None:
        """Waits until `n` more connections were answered: the step before ran under load, and whoever serves
        now answers. Fails when they do not come."""
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert self.running, f"the load ended early: {self.summary()}"
            assert time.monotonic() < deadline, f"only {self.ok} of {target} answered: {self.summary()}"
            time.sleep(0.005)

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(PATIENCE)
        return self.summary()

    def summary(self) -> dict:
        with self._lock:
            failed = sum(self.failed.values())
            return {"connections": self.ok + self.wrong + failed, "answered": self.ok, "wrong": self.wrong,
                    "failed": failed, "errors": dict(self.failed), "samples": list(self.samples)}


class HttpLoad(ClientLoad):
    """ClientLoad for HTTP servers that answer `Hello from <who> process <pid>`: each connection is one
    `GET /` with `Connection: close`; a reply is right when its status is 200 and its body such a line.
    Counts answers by who (`gunicorn`, `puma`, …) and by pid."""

    def __init__(self, port: int, threads: int = 8, max_ops: int = 200_000, max_seconds: float = 120.0) -> None:
        self.by_who: Counter[str] = Counter()
        self.pids: set[int] = set()
        super().__init__(port, threads, max_ops, max_seconds)

    def _once(self, t: int, i: int) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(f"GET /?c={t}.{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        words = body.decode(errors="replace").split()
        if not head.startswith(b"HTTP/1.1 200") or words[:2] != ["Hello", "from"] or len(words) < 5:
            if len(self.samples) < 5:
                self.samples.append(f"client {t} op {i}: {reply[:120]!r}")
            return False
        with self._lock:
            self.by_who[words[2]] += 1
            self.pids.add(int(words[4]))
        return True
