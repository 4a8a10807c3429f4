"""End-to-end helpers: servers of any runtime (rust CLI, Python, Ruby) as real processes on 127.0.0.1.

Each server runs in its own process group and is killed by its PID (group) on teardown, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PORT_SHARDING_BIN", ROOT / "target" / "debug" / "port-sharding"))
RUBY_EXE = ROOT / "ruby" / "exe" / "port_sharding"
PATIENCE = 30.0  # seconds; reached only when something is broken


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

    def __init__(self, runtime: str, port: int, control_dir: Path, *args: str) -> None:
        self.runtime = runtime
        env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir), PYTHONUNBUFFERED="1")
        cmd = serve_command(runtime) + ["--host", "127.0.0.1", "--port", str(port), *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_log("server starting on")
        self.port = int(line.split("starting on ")[1].split(":")[1])

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
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: only what we started
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


class Load:
    """`port-sharding bench --workload conn` in the background: bounded in time and count, every echo checked."""

    def __init__(self, port: int, seconds: float, concurrency: int = 8, max_ops: int = 500_000) -> None:
        cmd = [str(BIN), "bench", "--port", str(port), "--workload", "conn", "--concurrency", str(concurrency),
               "--duration", f"{seconds}s", "--connections", str(max_ops), "--json"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     text=True)

    def result(self) -> dict:
        """Waits for the run to end (its --duration bounds it) and returns its JSON report."""
        out, err = self.proc.communicate(timeout=PATIENCE * 4)
        assert out.strip(), f"bench printed no report: {err}"
        return json.loads(out)


@pytest.fixture
def control_dir(tmp_path: Path) -> Path:
    d = tmp_path / "control"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def servers():
    """Collects servers started by a test and kills any still running at the end."""
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()
