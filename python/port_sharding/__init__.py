"""Serve one TCP port from every core with SO_REUSEPORT, on a Rust engine.

    import port_sharding
    port_sharding.serve(1234)   # echo on :1234, one worker process per CPU; Ctrl-C drains, then raises KeyboardInterrupt

The calling process becomes the supervisor: it binds one reuseport listener per worker, forks the workers
(which run Rust only and leave with ``_exit``, so no ``atexit`` handler or buffered output runs twice) and
drains them on stop. ``listen()`` gives the talk's own accept loop a socket that shares the port.

Signals during ``serve()`` on the main thread: SIGINT (Ctrl-C) drains, then raises ``KeyboardInterrupt``;
SIGTERM drains, then ``serve()`` returns normally; a second signal stops at once. Python's own handlers
are back in place once ``serve()`` returns. On any other thread ``serve()`` leaves signals alone: stop it
with ``port_sharding.stop(port)``, or use a ``Server`` and its ``stop()``.
"""

import json
import socket
from types import TracebackType
from typing import Any, Dict, List, Optional, Tuple, Type

from . import _port_sharding as _native
from ._errors import (
    AddressError,
    AddrInUseError,
    ConfigError,
    ControlError,
    Error,
    IoError,
    NotRunningError,
    PermissionDeniedError,
    TakeoverError,
    UnsupportedPlatformError,
)

__version__: str = _native.VERSION

__all__ = [
    "__version__",
    "serve",
    "Server",
    "listen",
    "status",
    "stop",
    "set_quiet",
    "Error",
    "ConfigError",
    "AddressError",
    "AddrInUseError",
    "PermissionDeniedError",
    "UnsupportedPlatformError",
    "NotRunningError",
    "TakeoverError",
    "ControlError",
    "IoError",
]


# Types each argument must have (None allowed where marked), so a wrong type is a TypeError naming it.
_TYPES: Dict[str, Tuple[Tuple[type, ...], bool]] = {
    "port": ((int,), False),
    "host": ((str,), False),
    "workers": ((int,), True),
    "mode": ((str,), False),
    "backlog": ((int,), False),
    "drain_timeout": ((int, float), False),
    "max_connections": ((int,), False),
    "idle_timeout": ((int, float), True),
    "takeover": ((bool,), False),
    "migrate": ((bool,), False),
}


def _native_server(**args: Any) -> _native.Server:
    """Type-check ``args`` (ranges are checked by the engine, which names the parameter too) and bind."""
    for name, value in args.items():
        types, optional = _TYPES[name]
        # bool is an int subclass: port=True is a mistake, not port 1.
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not ok and not (optional and value is None):
            wanted = " or ".join(t.__name__ for t in types) + (" or None" if optional else "")
            raise TypeError(f"{name} must be {wanted}, not {type(value).__name__}")
    return _native.Server(**args)


def serve(
    port: int = 1234,
    host: str = "0.0.0.0",
    workers: Optional[int] = None,
    mode: str = "echo",
    backlog: int = 1024,
    drain_timeout: float = 30.0,
    max_connections: int = 10000,
    idle_timeout: Optional[float] = None,
    takeover: bool = False,
    migrate: bool = False,
) -> None:
    """Serve ``host:port`` with ``workers`` processes (default: one per CPU) until drained.

    ``mode``: ``"echo"`` (echo until the client closes), ``"once"`` (the talk's loop: one read, echo,
    close) or ``"hello"`` (``Hello from python process <pid>``). ``takeover=True`` adopts the sockets of
    the server already on this port (a rolling upgrade). The GIL is released meanwhile: other Python
    threads keep running. Raises ``KeyboardInterrupt`` after a Ctrl-C drain; returns after SIGTERM,
    ``stop()`` or a takeover by a newer server.
    """
    server = _native_server(
        port=port, host=host, workers=workers, mode=mode, backlog=backlog, drain_timeout=drain_timeout,
        max_connections=max_connections, idle_timeout=idle_timeout, takeover=takeover, migrate=migrate,
    )
    reason, _forced = server.run()
    if reason == "interrupt":
        raise KeyboardInterrupt


class Server:
    """A server you start and stop from Python; it runs on a background thread of this process.

    Binding happens here, so ``Server(port=0).port`` is the real port and connections queue from now on::

        with port_sharding.Server(port=0, host="127.0.0.1", workers=2) as server:
            print(server.port, server.stats())
    """

    def __init__(
        self,
        port: int = 1234,
        host: str = "0.0.0.0",
        workers: Optional[int] = None,
        mode: str = "echo",
        backlog: int = 1024,
        drain_timeout: float = 30.0,
        max_connections: int = 10000,
        idle_timeout: Optional[float] = None,
        takeover: bool = False,
        migrate: bool = False,
    ) -> None:
        self._native = _native_server(
            port=port, host=host, workers=workers, mode=mode, backlog=backlog, drain_timeout=drain_timeout,
            max_connections=max_connections, idle_timeout=idle_timeout, takeover=takeover, migrate=migrate,
        )

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        return self._native.port

    @property
    def host(self) -> str:
        """The bound IP address."""
        return self._native.host

    @property
    def stopped(self) -> bool:
        """Whether the server has stopped."""
        return self._native.stopped

    def start(self, timeout: float = 30.0) -> "Server":
        """Fork the workers; return once every one is serving (``ControlError`` if not within ``timeout``)."""
        self._native.start(timeout)
        return self

    def stats(self) -> List[Dict[str, Any]]:
        """Per-worker counters: ``index``, ``pid``, ``state``, ``accepted``, ``active``, ``bytes_in``,
        ``bytes_out``, ``errors``, ``restarts``, ``queue_len``."""
        stats: List[Dict[str, Any]] = json.loads(self._native.stats_json())
        return stats

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Drain: stop accepting, finish open connections, then return ``True``. ``False`` when ``timeout``
        seconds passed first (the drain goes on, bounded by ``drain_timeout``)."""
        return self._native.stop(timeout)

    def __enter__(self) -> "Server":
        if not self._native.started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<port_sharding.Server {self.host}:{self.port}{' stopped' if self.stopped else ''}>"


def listen(port: int, host: str = "0.0.0.0", backlog: int = 1024) -> socket.socket:
    """A blocking listening ``socket.socket`` with SO_REUSEPORT, made by the engine with the same options as
    its workers' sockets, so a plain accept/recv/send/close loop shares ``port`` with engine servers."""
    for name, value in (("port", port), ("backlog", backlog)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be int, not {type(value).__name__}")
    return socket.socket(fileno=_native.listen(host, port, backlog))


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


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) the engine's log lines on stderr, in this process and workers forked later."""
    _native.set_quiet(quiet)
