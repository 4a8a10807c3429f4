"""Serve one TCP port from every core with SO_REUSEPORT, on a Rust engine.

    import port_sharding

    def worker(listener):                  # your accept loop, run in every worker process
        for client, addr in listener:      # ends once the server drains and this listener's queue is empty
            client.sendall(client.recv(1024)); client.close()

    port_sharding.serve(1234, worker=worker)   # one worker per CPU; Ctrl-C drains, then raises KeyboardInterrupt
    port_sharding.serve(1234)                  # the engine's own echo loop (Rust) instead

The calling process becomes the supervisor: it binds one reuseport listener per worker, forks the workers
and drains them on stop. A worker function runs in a process forked from this interpreter (as ``os.fork``
does) and leaves with ``_exit`` once it returns (status 0) or raises (the traceback is logged, status 1); it
is restarted on the same listener either way while the server serves. This process's ``atexit`` handlers
do not run in workers. Without ``worker=``, workers run Rust only. ``listen()`` gives an unsupervised
accept loop a socket that shares the port.

Signals during ``serve()`` on the main thread: SIGINT (Ctrl-C) drains, then raises ``KeyboardInterrupt``;
SIGTERM drains, then ``serve()`` returns normally; a second signal stops at once. Python's own handlers
are back in place once ``serve()`` returns. On any other thread ``serve()`` leaves signals alone: stop it
with ``port_sharding.stop(port)``, or use a ``Server`` and its ``stop()``.

Settings are keyword arguments; ``None`` (or leaving one out) means the engine's default. The engine
checks them and names the one at fault: ``ConfigError`` (a ``ValueError``) for a bad value,
``SettingTypeError`` (also a ``TypeError``) for a value of the wrong type.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterator, List, Literal, Mapping, Optional, Tuple,
                    Type, TypedDict, Union)

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:  # typing_extensions is a dependency of type checkers only; annotations are strings here
    from typing_extensions import Unpack

from . import _port_sharding as _native

_Socket = socket.socket  # for annotations inside Listener, whose `socket` property hides the module there
from ._errors import (AddressError, AddrInUseError, ConfigError, ControlError, Error, InvalidStateError, IoError,
                      NotRunningError, PermissionDeniedError, SettingTypeError, TakeoverError)

__version__: str = _native.VERSION

# A child this process forks (os.fork, multiprocessing) must not keep a server's listeners in the port's group
# or hold its drain pipes open: it closes the engine's descriptors at once. Workers the engine forks itself
# close what they do not serve on their own.
os.register_at_fork(after_in_child=_native.close_in_forked_child)
__all__ = ["__version__", "serve", "Server", "Settings", "Report", "Listener", "Worker", "listen", "status", "stop",
           "reload", "upgrade", "set_quiet",
           # One exception class per engine error, all under Error (see _errors.py).
           "Error", "ConfigError", "SettingTypeError", "AddressError", "AddrInUseError", "PermissionDeniedError",
           "NotRunningError", "TakeoverError", "ControlError", "InvalidStateError", "IoError"]


class Settings(TypedDict, total=False):
    """The settings ``serve()`` and ``Server()`` take as keywords; ``None`` (or leaving one out) means the
    engine's default. The engine's table (``port-sharding serve --help`` says the same) is below."""

    host: Optional[str]
    port: Optional[int]
    workers: Optional[int]
    protocol: Optional[Literal["tcp", "udp"]]
    udp_flow_idle: Optional[float]
    mode: Optional[Literal["echo", "once", "hello"]]
    backlog: Optional[int]
    drain_timeout: Optional[float]
    drain_delay: Optional[float]
    max_connections: Optional[int]
    idle_timeout: Optional[float]
    command: Optional[Union[List[str], Tuple[str, ...]]]
    ready: Optional[Literal["delay", "notify"]]
    ready_delay: Optional[float]
    ready_timeout: Optional[float]
    stop_signal: Optional[str]
    takeover: Optional[bool]
    migrate: Optional[bool]
    steering: Optional[bool]
    stall_after: Optional[float]
    stall_restart_after: Optional[float]
    admin: Optional[str]


_SETTING_NAMES = frozenset(Settings.__annotations__)


def _given(call: str, port: Optional[int], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings a caller of ``call`` gave, names checked as Python checks keywords; the engine fills in the
    rest and checks the values."""
    for name in settings:
        if name not in _SETTING_NAMES:
            raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")
    if port is not None and settings.get("port") is not None:
        raise TypeError(f"{call}() got multiple values for argument 'port'")
    given = {"port": port, **settings}
    return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True)
class Report:
    """How a server's run ended: what ``serve()``, ``Server.stop()`` and ``Server.wait()`` return (as in Rust
    and Ruby). A server stopped before it ran reports ``Report("stop", False, 0, 0.0)``."""

    #: What started the drain: ``"interrupt"`` (SIGINT), ``"terminate"`` (SIGTERM or SIGQUIT), ``"stop"`` (a stop
    #: request: ``Server.stop()``, ``port_sharding.stop()``, ``port-sharding stop``) or ``"taken_over"``.
    reason: str
    #: A second signal, or the drain's time limit, ended it early: connections may have been cut.
    forced: bool
    #: Connections the workers accepted over the whole run (restarts and reloads included).
    served: int
    #: How long the drain took, in seconds.
    drain: float


class Listener:
    """A function worker's listener: what ``worker(listener)`` gets, in a process of its own.

    ``for client, addr in listener`` (or ``accept()``) hands out connections until the server drains and this
    listener's queue has stayed empty for a moment; then the loop ends and the function should return.
    With ``protocol="udp"``, ``for data, addr in listener`` (or ``receive()``) hands out datagrams instead, until
    the socket is read empty after a drain (at once on a hand-over); reply with
    ``listener.socket.sendto(data, addr)``.
    The first ``accept()`` tells the supervisor this worker is ready; ``ready()`` does so without accepting
    (for an event loop that accepts on ``socket`` itself, e.g. ``asyncio.start_server(sock=listener.socket)``).
    """

    def __init__(self, native: _native.Listener) -> None:
        self._native = native
        self._socket: Optional[_Socket] = None

    @property
    def index(self) -> int:
        """The worker's index: which of the server's listeners it serves."""
        return self._native.index

    @property
    def draining(self) -> bool:
        """Whether the server asked this worker to drain (``accept`` still hands out what is queued)."""
        return self._native.draining

    @property
    def socket(self) -> _Socket:
        """The listening socket (nonblocking: the supervisor, and during a reload the successor, share it)."""
        if self._socket is None:
            self._socket = socket.socket(fileno=os.dup(self._native.fileno()))
            self._socket.setblocking(False)
        return self._socket

    def ready(self) -> None:
        """Tell the supervisor this worker serves (otherwise the first ``accept`` does)."""
        self._native.ready()

    def accept(self, timeout: Optional[float] = None) -> Optional[Tuple[_Socket, Any]]:
        """The next connection and its peer address, as ``socket.accept()`` gives them; ``None`` once drained
        (``draining`` is then true) or when ``timeout`` seconds passed first. Other threads run meanwhile."""
        fd = self._native.accept(timeout)
        if fd is None:
            return None
        client = socket.socket(fileno=fd)
        try:
            addr = client.getpeername()
        except OSError:  # the client already reset: it reads as closed
            addr = None
        return client, addr

    @property
    def udp(self) -> bool:
        """Whether the socket is a UDP socket (``protocol="udp"``): iterate for datagrams, not connections."""
        return self._native.udp

    def receive(self, timeout: Optional[float] = None) -> Optional[Tuple[bytes, Any]]:
        """UDP: the next datagram and its sender's address, as ``socket.recvfrom()`` gives them; ``None`` once
        drained or when ``timeout`` seconds passed first. Other threads run meanwhile."""
        return self._native.receive(timeout)

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        """``(client, addr)`` for each connection, or over UDP ``(data, addr)`` for each datagram."""
        next_one = self.receive if self.udp else self.accept
        while True:
            pair = next_one()
            if pair is None:
                return
            yield pair

    async def wait_draining(self) -> None:
        """Return once the server drains and this listener's queue has stayed empty for the grace window
        (so an asyncio server on ``socket`` can close then, having served what was queued)."""
        loop = asyncio.get_running_loop()
        drain = self._native.drain_fileno()
        asked: asyncio.Future[None] = loop.create_future()

        def on_drain() -> None:
            if not asked.done():
                asked.set_result(None)

        loop.add_reader(drain, on_drain)
        try:
            await asked
        finally:
            loop.remove_reader(drain)
        while not self._native.drained():
            await asyncio.sleep(0.02)

    def __repr__(self) -> str:
        return f"<port_sharding.Listener {self.index}{' draining' if self.draining else ''}>"


#: A worker function: called with the worker's ``Listener``, in a worker process; may be ``async def``.
Worker = Callable[[Listener], Union[None, Awaitable[None], Any]]


def _callable(worker: Optional[Worker]) -> Optional[Worker]:
    """``worker`` itself, checked here rather than failing in every forked worker."""
    if worker is not None and not callable(worker):
        raise TypeError(f"worker= must be a function taking a port_sharding.Listener, got {worker!r}")
    return worker


def _run_worker(worker: Worker, native: _native.Listener) -> int:
    """In a forked worker: run ``worker``, report how it ended, return the exit status (the engine then
    leaves with ``_exit``)."""
    listener = Listener(native)
    code = 0
    try:
        result = worker(listener)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        sys.stderr.write(f"port-sharding: worker {listener.index} (pid {os.getpid()}): the worker function raised:\n")
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing left to save
            pass
    return code


def serve(port: Optional[int] = None, /, *, worker: Optional[Worker] = None, **settings: Unpack[Settings]) -> Report:
    """Serve ``host:port`` with ``workers`` processes until drained; returns the ``Report`` (why it stopped:
    ``"terminate"``, ``"stop"``, ``"taken_over"``, …; connections served; how long the drain took) and raises
    ``KeyboardInterrupt`` after a Ctrl-C drain. The GIL is released meanwhile: other Python threads keep
    running. ``worker``: a function every worker runs with its ``Listener`` (``async def`` ones under
    ``asyncio.run``); without it, the engine's own loop (``mode``).
    """
    report = Report(*_native.Server(_given("serve", port, settings), _callable(worker)).run())
    if report.reason == "interrupt":
        raise KeyboardInterrupt
    return report


class Server:
    """A server you start and stop from Python; it runs on a background thread of this process.

    Binding happens here, so ``Server(port=0).port`` is the real port and connections queue from now on::

        with port_sharding.Server(port=0, host="127.0.0.1", workers=2) as server:
            print(server.port, server.phase, server.stats())
    """

    def __init__(self, port: Optional[int] = None, /, *, worker: Optional[Worker] = None,
                 **settings: Unpack[Settings]) -> None:
        self._native = _native.Server(_given("Server", port, settings), _callable(worker))

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        return self._native.port

    @property
    def host(self) -> str:
        """The bound IP address."""
        return self._native.host

    @property
    def phase(self) -> str:
        """``"starting"``, ``"serving"``, ``"handing over"``, ``"draining"`` or ``"stopped"``."""
        return self._native.phase

    def start(self, timeout: float = 30.0) -> "Server":
        """Fork the workers; return once every one is serving (``ControlError`` if not within ``timeout``
        seconds, after stopping it; ``InvalidStateError`` if it already started). Ctrl-C meanwhile begins the
        drain."""
        self._native.start(timeout)
        return self

    def stop(self, timeout: Optional[float] = None) -> Optional[Report]:
        """Drain: stop accepting, finish open connections, then return the ``Report`` (reason ``"stop"``,
        or what stopped it first). ``None`` when ``timeout`` seconds passed first (the drain goes on, bounded by
        the drain timeout). A server that never started closes its listeners; one already stopped reports
        again."""
        return _report(self._native.stop(timeout))

    def wait(self, timeout: Optional[float] = None) -> Optional[Report]:
        """Wait until the server has stopped, at most ``timeout`` seconds (``None``: no limit); returns its
        ``Report`` (reason ``"stop"``, ``"terminate"``, ``"taken_over"``, …), or ``None`` on timeout.
        ``InvalidStateError`` if it was never started."""
        return _report(self._native.wait(timeout))

    def stats(self) -> List[Dict[str, Any]]:
        """Per-worker counters: ``index``, ``pid``, ``state``, ``accepted``, ``active``, ``bytes_in``,
        ``bytes_out``, ``errors``, ``restarts``, ``queue_len``, ``health`` (``"keeping up"``, ``"stalled"`` or
        ``"overloaded"``), ``stalled_ms`` (how long it has been stalled, else ``None``), ``kind`` (``"builtin"``,
        ``"command"`` or ``"function"``) and ``generation`` (1 for the first worker on a listener; each restart or
        reload adds one)."""
        stats: List[Dict[str, Any]] = json.loads(self._native.stats_json())
        return stats

    def __enter__(self) -> "Server":
        if not self._native.started:
            self.start()
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<port_sharding.Server {self.host}:{self.port} {self.phase}>"


def _report(native: Optional[Tuple[str, bool, int, float]]) -> Optional[Report]:
    return None if native is None else Report(*native)


# The settings and their help, as the engine (and `port-sharding serve --help`) gives them.
_SETTINGS_DOC = "\n\nSettings (``None``: the default shown):\n\n" + "\n".join(
    f"- ``{s['name']}``: {s['help']} [default: {s['default']}]" for s in _native.settings()
)
Settings.__doc__ = (Settings.__doc__ or "").rstrip() + _SETTINGS_DOC
serve.__doc__ = (serve.__doc__ or "").rstrip() + _SETTINGS_DOC
Server.__init__.__doc__ = ("Bind; nothing runs until ``start()``. ``worker``: a function every worker runs, as for "
                           "``serve``." + _SETTINGS_DOC)


def listen(port: Optional[int] = None, host: Optional[str] = None, backlog: Optional[int] = None) -> socket.socket:
    """A blocking listening ``socket.socket`` with SO_REUSEPORT, made by the engine with the same options as
    its workers' sockets, so a plain accept/recv/send/close loop shares ``port`` with engine servers.

    Run as a command worker (``port-sharding serve -- python3 loop.py``), it adopts the socket the supervisor
    passed as fd 3 (``LISTEN_FDS``/``LISTEN_PID`` name this process) instead, after checking it is a listening
    TCP socket bound to ``port`` (``AddressError`` otherwise)."""
    given = {"port": port, "host": host, "backlog": backlog}
    return socket.socket(fileno=_native.listen({name: value for name, value in given.items() if value is not None}))


def status(port: int, host: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every port-sharding server on ``port`` (only those bound to ``host``, when given), any runtime: pid,
    runtime, addr, mode, state, uptime_secs, control_socket and per-worker ``workers`` counters.
    Raises ``NotRunningError`` when none answers."""
    servers: List[Dict[str, Any]] = json.loads(_native.status_json(port, host))
    return servers


def stop(port: int, host: Optional[str] = None) -> List[int]:
    """Ask every server on ``port`` (only those bound to ``host``, when given) to drain; returns their pids.
    Raises ``NotRunningError`` when none answers."""
    return _native.stop(port, host)


def reload(port: int, host: Optional[str] = None, pid: Optional[int] = None,
           batch: Optional[int] = None) -> List[Dict[str, Any]]:
    """Replace the workers of every server on ``port`` in place (only those bound to ``host``, or the one whose
    supervisor is ``pid``, when given), ``batch`` at a time (default 1): per listener a new worker starts, and
    the old one is asked to stop once the new one is ready; nothing queued is lost. Returns one report per
    server: ``pid``, ``runtime``, ``replaced`` (``index``, ``old_pid``, ``new_pid``, ``generation``) and
    ``failed`` (``None``, or ``index``, ``pid`` and ``reason`` of the new worker that stopped the reload: the
    workers not replaced keep serving, and the servers after it are not reloaded).
    Raises ``NotRunningError`` when none answers, ``ControlError`` when a server refuses (draining, starting)."""
    reports: List[Dict[str, Any]] = json.loads(_native.reload_json(port, host, pid, batch))
    return reports


def upgrade(port: int, host: Optional[str] = None, pid: Optional[int] = None) -> List[Dict[str, Any]]:
    """Upgrade every server on ``port`` in place (only those bound to ``host``, or the one whose supervisor is
    ``pid``, when given), as SIGUSR2 does: each starts its successor — the same program again, from disk (a Python
    host re-executes its interpreter with the same command line) — as its own child, and hands it its sockets;
    once the successor is ready it is the main process (``MAINPID=`` under systemd) and the old one drains and
    exits. Returns one report per server: ``pid``, ``runtime``, ``successor`` (its pid, or ``None``), ``failed``
    (``None``, or why: the successor could not start, exited or was not ready in time; the old one keeps serving)
    and ``seconds`` (until the successor was ready). The servers after a failed one are not upgraded.
    Raises ``NotRunningError`` when none answers, ``ControlError`` when a server refuses (draining, starting)."""
    reports: List[Dict[str, Any]] = json.loads(_native.upgrade_json(port, host, pid))
    return reports


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) the engine's log lines on stderr, in this process and workers forked later."""
    _native.set_quiet(quiet)
