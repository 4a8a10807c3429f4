"""The servers under test: what each one is, whether it can run here, and one running in its own process group."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .context import Context

READY_TIMEOUT = 30.0  # a server must answer an echo within this long of starting
STOP_TIMEOUT = 10.0  # after SIGTERM, then SIGKILL


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def echo_once(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"ping")
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == b"ping"
    except OSError:
        return False


@dataclass
class ServerKind:
    key: str
    label: str
    argv: list[str]  # serves echo; "{port}" is replaced
    argv_once: list[str] | None = None  # serves `once` (echo the first read, then close); None: no such mode
    workloads: set[str] | None = None  # None: all those its modes serve
    note: str = ""
    check: list[str] | None = None  # a command that must succeed for the server to be available
    short: str = ""  # the name in the chart
    check_rc: int = 0  # the exit status `check` must have

    def argv_for(self, mode: str) -> list[str] | None:
        return self.argv if mode == "echo" else self.argv_once


def server_kinds(ctx: Context) -> list[ServerKind]:
    def engine(mode: str) -> list[str]:
        return [str(ctx.bin), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--mode", mode, "--quiet"]

    def py_serve(mode: str) -> list[str]:
        return [ctx.py, "-c", f"import port_sharding; port_sharding.serve({{port}}, host='127.0.0.1', workers=1, mode='{mode}')"]

    def rb_serve(mode: str) -> list[str]:
        return [ruby, "-e", f'require "port_sharding"; PortSharding.serve({{port}}, host: "127.0.0.1", workers: 1, mode: :{mode})']

    def c_server(mode: str) -> list[str]:
        return [str(ctx.c_server), "-p", "{port}", "-w", "1", "-m", mode]

    ruby = ctx.ruby or "ruby"
    servers = ctx.bench_dir / "servers"
    talk = [ctx.py, str(servers / "talk_echo.py"), "{port}", "127.0.0.1"]
    talk_rb = [ruby, str(servers / "talk_echo.rb"), "{port}", "127.0.0.1"]
    uvloop = [ctx.py, str(servers / "uvloop_echo.py"), "{port}", "127.0.0.1"]
    # The talk's loops echo one read and close: they serve conn (the client sends one message) and once.
    talk_only = {"conn-1", "conn-32", "once-32"}
    def engine_at(binary: str, mode: str) -> list[str]:
        return [binary, *engine(mode)[1:]]

    # Another build of the engine, measured in the same session (e.g. before a change to the worker).
    baseline = os.environ.get("BENCH_BASELINE_BIN")
    before = [ServerKind(key="engine-baseline", short="engine (baseline build)", label=f"engine, baseline build `{baseline}`",
                         argv=engine_at(baseline, "echo"), argv_once=engine_at(baseline, "once"))] if baseline else []
    return [
        ServerKind(key="engine-cli", short="engine (CLI)", label="engine, CLI (`port-sharding serve -w 1`)", argv=engine("echo"),
                   argv_once=engine("once")),
        *before,
        ServerKind(
            key="c-epoll",
            short="minimal C epoll",
            label="minimal C epoll server (bench/servers/c_epoll_echo.c, 1 process)",
            argv=c_server("echo"),
            argv_once=c_server("once"),
            check=[str(ctx.c_server), "-h"],
            check_rc=2,
            note="built by `make bench` with the system C compiler",
        ),
        ServerKind(
            key="engine-python",
            short="engine via Python serve",
            label="engine, Python `port_sharding.serve(workers=1)`",
            argv=py_serve("echo"),
            argv_once=py_serve("once"),
            check=[ctx.py, "-c", "import port_sharding; port_sharding.serve"],
            note="`make setup-python`",
        ),
        ServerKind(
            key="engine-ruby",
            short="engine via Ruby serve",
            label="engine, Ruby `PortSharding.serve(workers: 1)`",
            argv=rb_serve("echo"),
            argv_once=rb_serve("once"),
            check=[ruby, "-e", 'require "port_sharding"; PortSharding.method(:serve)'],
            note="`make setup-ruby`",
        ),
        ServerKind(
            key="talk-python",
            short="talk's Python loop",
            label="talk's Python loop (listen(0), one recv)",
            argv=talk,
            argv_once=talk,
            workloads=talk_only,
        ),
        ServerKind(
            key="talk-ruby",
            short="talk's Ruby loop",
            label="talk's Ruby loop (listen 0, one recv)",
            argv=talk_rb,
            argv_once=talk_rb,
            workloads=talk_only,
            check=[ruby, "-e", "1"],
        ),
        ServerKind(
            key="asyncio",
            short="Python asyncio",
            label="Python asyncio `start_server(reuse_port=True)`",
            argv=[ctx.py, str(servers / "asyncio_echo.py"), "{port}"],
        ),
        ServerKind(
            key="uvloop",
            short="Python uvloop",
            label="Python uvloop, protocol-based (`create_server(reuse_port=True)`)",
            argv=uvloop,
            argv_once=[*uvloop, "--once"],
            check=[ctx.py, "-c", "import uvloop"],
            note="`pip install --user uvloop`; `make bench` does",
        ),
    ]


def available(ctx: Context, kind: ServerKind) -> str | None:
    """None when the server can run, else why not."""
    if kind.check is None:
        return None
    try:
        r = subprocess.run(kind.check, cwd=ctx.root, env=ctx.env(), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{kind.check[0]}: {e}"
    if r.returncode != kind.check_rc:
        last = (r.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        return f"not installed ({kind.note or 'see README'}): {last[:120]}"
    return None


class Server:
    """A server process in its own process group, stopped by pid."""

    def __init__(self, ctx: Context, argv: list[str], port: int, cpus: str | None, name: str, preexec=None):
        self.port = port
        self.name = name
        self.log_path = ctx.logs / f"{name}-{port}.log"
        self.log_file = open(self.log_path, "wb")
        argv = [a.replace("{port}", str(port)) for a in argv]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ctx.pinned(argv, cpus),
            cwd=ctx.root,
            env=ctx.env(),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from start until an echo came back."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            if echo_once(self.port, timeout=0.5):
                return time.monotonic() - self.t0
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} not answering after {timeout}s: {self.tail()}")

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> float | None:
        """SIGTERM to the process group; SIGKILL after STOP_TIMEOUT. Returns seconds to exit after SIGTERM."""
        if self.proc.poll() is not None:
            self.log_file.close()
            return None
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
            took = None
        # Workers of the engine share the group: make sure none outlives the supervisor.
        self.signal(signal.SIGKILL)
        self.log_file.close()
        return took

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def status(ctx: Context, port: int) -> list[dict] | None:
    try:
        r = subprocess.run([str(ctx.bin), "status", "--port", str(port), "--host", "127.0.0.1", "--json"], env=ctx.env(),
                           capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)
