"""In-process tests of the façade: Server, listen, status, errors, settings, version and stubs."""

import ast
import errno
import inspect
import re
import socket
import subprocess
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union, get_type_hints

import pytest

import port_sharding
from conftest import REPO, alive, connect, echo, recv_exactly, wait_gone


def test_server_context_manager_echoes_and_reports_stats() -> None:
    with port_sharding.Server(port=0, host="127.0.0.1", workers=2) as server:
        assert server.port > 0
        assert echo(server.port, b"hello engine") == b"hello engine"
        stats = server.stats()
        assert [w["index"] for w in stats] == [0, 1]
        assert all(w["state"] == "serving" and w["pid"] > 0 for w in stats)
        assert sum(w["accepted"] for w in stats) == 1
        pids = [w["pid"] for w in stats]
    assert server.phase == "stopped"
    assert wait_gone(pids) == []


def test_udp_server_echoes_datagrams_and_counts_them() -> None:
    with port_sharding.Server(port=0, host="127.0.0.1", workers=2, protocol="udp") as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(20)
            for i in range(3):
                s.sendto(b"datagram %d" % i, ("127.0.0.1", server.port))
                assert s.recvfrom(100) == (b"datagram %d" % i, ("127.0.0.1", server.port))
        stats = server.stats()
        assert sum(w["datagrams_in"] for w in stats) == 3 and sum(w["datagrams_out"] for w in stats) == 3
        [found] = port_sharding.status(server.port, "127.0.0.1")
        assert found["mode"] == "udp echo"
    report = server.wait()
    assert report is not None and report.served == 3, report  # over UDP: datagrams read


def test_server_start_stop_and_status() -> None:
    server = port_sharding.Server(port=0, host="127.0.0.1", workers=1, mode="hello")
    assert server.phase == "starting"
    assert server.start() is server
    assert server.phase == "serving"
    try:
        reply = echo(server.port, b"")
        assert re.fullmatch(rb"Hello from python process \d+\n", reply), reply
        [found] = port_sharding.status(server.port, "127.0.0.1")
        assert found["runtime"] == "python" and found["mode"] == "hello" and found["state"] == "serving"
        assert found["addr"] == f"127.0.0.1:{server.port}"
        assert [w["pid"] for w in found["workers"]] == [w["pid"] for w in server.stats()]
    finally:
        report = server.stop(timeout=30)
    assert report is not None and report.reason == "stop" and not report.forced
    assert report.served == 1 and report.drain >= 0
    assert server.phase == "stopped" and server.wait() == report
    with pytest.raises(port_sharding.NotRunningError):
        port_sharding.status(server.port)


def test_stop_waits_for_an_open_connection() -> None:
    server = port_sharding.Server(port=0, host="127.0.0.1", workers=1, drain_timeout=20).start()
    conn = connect(server.port)
    conn.sendall(b"one")
    assert recv_exactly(conn, 3) == b"one"
    # Draining: the open connection is still served; stop() reports it has not finished yet.
    assert server.stop(timeout=0.2) is None
    assert server.phase == "draining" and server.wait(timeout=0.1) is None
    conn.sendall(b"two")
    assert recv_exactly(conn, 3) == b"two"
    conn.close()
    report = server.stop(timeout=30)
    assert report is not None and report.reason == "stop" and report.served == 1 and not report.forced


def test_stop_before_start_closes_the_listeners() -> None:
    server = port_sharding.Server(port=0, host="127.0.0.1", workers=1)
    port = server.port
    assert server.stop() == port_sharding.Report("stop", forced=False, served=0, drain=0.0)
    assert server.phase == "stopped"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_listen_returns_a_standard_reuseport_socket() -> None:
    sock = port_sharding.listen(0, "127.0.0.1")
    with sock:
        assert isinstance(sock, socket.socket)
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.gettimeout() is None  # blocking, as the talk's loop expects
        port = sock.getsockname()[1]
        # A second listen() on the same port joins the group instead of failing.
        with port_sharding.listen(port, "127.0.0.1", backlog=16) as other:
            assert other.getsockname()[1] == port


def test_listen_ipv6() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with port_sharding.listen(0, "::1") as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_wait_returns_the_stop_reason() -> None:
    server = port_sharding.Server(port=0, host="127.0.0.1", workers=1).start()
    assert server.wait(timeout=0.1) is None  # still serving
    assert port_sharding.stop(server.port) == [os.getpid()]  # a stop request on the control socket
    report = server.wait(float("inf"))
    assert report is not None and report.reason == "stop"
    assert server.phase == "stopped"
    assert server.stop(timeout=0) == report and server.wait(timeout=0) == report
    with pytest.raises(RuntimeError, match="not started") as info:
        port_sharding.Server(port=0, host="127.0.0.1", workers=1).wait(0)
    assert isinstance(info.value, port_sharding.InvalidStateError)
    with pytest.raises(port_sharding.InvalidStateError, match="already stopped"):
        server.start()


# What each kind of engine setting is, typed: ``None`` always means the engine's default.
KIND_TYPES: Dict[str, Any] = {
    "text": Optional[str], "integer": Optional[int], "duration": Optional[float], "flag": Optional[bool],
    "list": Optional[Union[List[str], Tuple[str, ...]]],
}


def test_settings_are_the_engines() -> None:
    """``Settings`` (the keywords of serve() and Server()) is the engine's table: the same names, each typed
    as its kind (a choice as a Literal of its words), and every docstring carries the engine's help and
    default. Fails when either side drifts."""
    engine = port_sharding._native.settings()
    assert {"port", "host", "workers", "drain_timeout", "takeover"} <= {s["name"] for s in engine}
    hints = get_type_hints(port_sharding.Settings)
    assert list(hints) == [s["name"] for s in engine], "Settings lists the engine's settings, in --help order"
    assert port_sharding.Settings.__optional_keys__ == set(hints)
    for s in engine:
        expected = Optional[Literal[tuple(s["choices"])]] if s["kind"] == "choice" else KIND_TYPES[s["kind"]]
        assert hints[s["name"]] == expected, (s["name"], s["kind"])
    for fn in (port_sharding.serve, port_sharding.Server.__init__, port_sharding.Settings):
        for s in engine:
            assert f"``{s['name']}``: {s['help']} [default: {s['default']}]" in (fn.__doc__ or ""), (fn, s)
    for fn in (port_sharding.serve, port_sharding.Server.__init__):
        params = inspect.signature(fn).parameters
        assert [p for p in params if p != "self"] == ["port", "worker", "settings"], fn
        assert params["settings"].annotation == "Unpack[Settings]", fn
        assert params["port"].kind is inspect.Parameter.POSITIONAL_ONLY and params["port"].default is None


def test_the_native_stubs_type_the_engines_settings() -> None:
    """The .pyi's ``_Setting`` (a row of ``_native.settings()``) has the keys every row has, and names every
    kind the engine's settings have."""
    stub = ast.parse((Path(port_sharding.__file__).parent / "_port_sharding.pyi").read_text())
    [row] = [node for node in stub.body if isinstance(node, ast.ClassDef) and node.name == "_Setting"]
    fields = {n.target.id: n.annotation for n in row.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    engine = port_sharding._native.settings()
    assert all(set(s) == set(fields) for s in engine), (set(fields), engine[0])
    kinds = {elt.value for elt in ast.walk(fields["kind"]) if isinstance(elt, ast.Constant)}
    assert {s["kind"] for s in engine} <= kinds


def test_unknown_or_positional_settings_are_python_type_errors() -> None:
    for call in (port_sharding.Server, port_sharding.serve):
        with pytest.raises(TypeError, match="wrokers") as info:
            call(port=0, host="127.0.0.1", wrokers=2)  # type: ignore[call-arg]
        assert not isinstance(info.value, port_sharding.Error)  # Python's kind of error: a bad keyword
        with pytest.raises(TypeError, match="positional"):
            call(0, "127.0.0.1")  # type: ignore[call-arg, arg-type]
        with pytest.raises(TypeError, match="multiple values for argument 'port'"):
            call(0, port=1)


def test_version_is_the_workspace_version() -> None:
    cargo = (REPO / "Cargo.toml").read_text()
    m = re.search(r'\[workspace\.package\][^\[]*?\nversion\s*=\s*"([^"]+)"', cargo)
    assert m, "no [workspace.package] version in Cargo.toml"
    assert port_sharding.__version__ == m.group(1)


def test_all_names_exist() -> None:
    for name in port_sharding.__all__:
        assert hasattr(port_sharding, name), name


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"mode": "loud"}, "mode"),
        ({"protocol": "sctp"}, "protocol"),
        ({"protocol": "udp", "mode": "once"}, "mode"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"port": 2**70}, "port"),
        ({"workers": 0}, "workers"),
        ({"workers": 100000}, "workers"),
        ({"backlog": 0}, "backlog"),
        ({"drain_timeout": 0}, "drain_timeout"),
        ({"drain_timeout": float("nan")}, "drain_timeout"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"idle_timeout": float("inf")}, "idle_timeout"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_bad_values_raise_config_error_naming_the_parameter(kwargs: Dict[str, Any], param: str) -> None:
    # Port 0 and loopback unless under test: an engine that wrongly accepted the value binds an ephemeral port
    # (and the time limit ends its serve()), never the default port 1234.
    for call in (port_sharding.Server, port_sharding.serve):
        with pytest.raises(port_sharding.ConfigError) as info:
            call(**{"port": 0, "host": "127.0.0.1", **kwargs})
        assert isinstance(info.value, ValueError) and isinstance(info.value, port_sharding.Error)
        assert info.value.param == param
        assert str(info.value).startswith(f"invalid {param}=: "), info.value


@pytest.mark.parametrize(
    "kwargs, param",
    # A wrongly accepted "0" or False would still be port 0 (a wrongly accepted "1234" would be the default port).
    [({"port": "0"}, "port"), ({"port": False}, "port"), ({"workers": 1.5}, "workers"),
     ({"mode": 1}, "mode"), ({"host": b"127.0.0.1"}, "host"), ({"takeover": 1}, "takeover"),
     ({"drain_timeout": [1]}, "drain_timeout")],
)
def test_bad_types_raise_setting_type_error_naming_the_parameter(kwargs: Dict[str, Any], param: str) -> None:
    for call in (port_sharding.Server, port_sharding.serve):
        with pytest.raises(port_sharding.SettingTypeError) as info:
            call(**{"port": 0, "host": "127.0.0.1", **kwargs})
        assert isinstance(info.value, TypeError) and isinstance(info.value, port_sharding.ConfigError)
        assert info.value.param == param
        assert str(info.value).startswith(f"invalid {param}=: expected "), info.value


def test_bad_host_raises_address_error() -> None:
    with pytest.raises(port_sharding.AddressError) as info:
        port_sharding.Server(port=0, host="not-an-address")
    assert isinstance(info.value, ValueError)
    with pytest.raises(port_sharding.AddressError):
        port_sharding.listen(0, "999.1.1.1")


def test_taken_port_raises_addr_in_use_with_errno() -> None:
    # A plain socket without SO_REUSEPORT owns the port: nobody may join it.
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        for call in (port_sharding.serve, port_sharding.Server):
            with pytest.raises(port_sharding.AddrInUseError) as info:
                call(port=port, host="127.0.0.1", workers=1)
            e = info.value
            assert isinstance(e, OSError) and isinstance(e, port_sharding.Error)
            assert e.errno == errno.EADDRINUSE
            assert f"127.0.0.1:{port}" in str(e)
        with pytest.raises(OSError) as info2:
            port_sharding.listen(port, "127.0.0.1")
        assert info2.value.errno == errno.EADDRINUSE


def test_listen_bad_arguments() -> None:
    with pytest.raises(port_sharding.ConfigError, match="port"):
        port_sharding.listen(70000, "127.0.0.1")
    with pytest.raises(port_sharding.ConfigError, match="backlog"):
        port_sharding.listen(0, "127.0.0.1", backlog=0)
    with pytest.raises(TypeError, match="port"):
        port_sharding.listen("0")  # type: ignore[arg-type]


def test_not_running() -> None:
    with socket.socket() as s:  # a port nobody serves: bound here, so no server of ours can have it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(port_sharding.NotRunningError):
            port_sharding.status(port)
        with pytest.raises(port_sharding.NotRunningError):
            port_sharding.stop(port, "127.0.0.1")


def test_exception_hierarchy() -> None:
    e = port_sharding
    assert issubclass(e.AddrInUseError, OSError) and issubclass(e.IoError, OSError)
    assert issubclass(e.PermissionDeniedError, PermissionError)
    assert issubclass(e.ConfigError, ValueError) and issubclass(e.AddressError, ValueError)
    assert issubclass(e.SettingTypeError, e.ConfigError) and issubclass(e.SettingTypeError, TypeError)
    assert issubclass(e.InvalidStateError, RuntimeError)
    for cls in (e.ConfigError, e.SettingTypeError, e.AddressError, e.AddrInUseError, e.PermissionDeniedError, e.IoError,
                e.NotRunningError, e.TakeoverError, e.ControlError, e.InvalidStateError):
        assert issubclass(cls, e.Error)


def test_stubs_match_the_module(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "port_sharding"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")},
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_workers_exit_with_the_server() -> None:
    server = port_sharding.Server(port=0, host="127.0.0.1", workers=2).start()
    pids = [w["pid"] for w in server.stats()]
    assert all(alive(p) for p in pids)
    assert server.stop(timeout=30)
    assert wait_gone(pids) == []
