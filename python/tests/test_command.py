"""Command workers from Python: Server(command=[...]) execs a program per listener from this multi-threaded
process, reload() replaces them in place, and bad command settings are named."""

import socket
import sys

import pytest

import port_sharding
from conftest import REPO, TIMEOUT


def ask(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply


def test_the_talks_loop_as_command_workers_reloads_in_place() -> None:
    loop = [sys.executable, str(REPO / "examples" / "seed_echo_listen.py")]
    with port_sharding.Server(port=0, host="127.0.0.1", workers=2, command=loop, ready_delay=0.3) as server:
        before = server.stats()
        assert [(w["kind"], w["generation"]) for w in before] == [("command", 1)] * 2
        assert ask(server.port, b"one") == b"one"
        [report] = port_sharding.reload(server.port, batch=2)
        assert report["failed"] is None and len(report["replaced"]) == 2, report
        assert {r["old_pid"] for r in report["replaced"]} == {w["pid"] for w in before}
        after = server.stats()
        assert [w["generation"] for w in after] == [2, 2]
        assert {w["pid"] for w in after} == {r["new_pid"] for r in report["replaced"]}
        assert ask(server.port, b"two") == b"two"
        [status] = port_sharding.status(server.port)
        assert status["mode"] == "command" and status["command"] == loop


def test_command_settings_are_checked_by_the_engine() -> None:
    with pytest.raises(port_sharding.SettingTypeError, match=r"command=: expected a list of strings"):
        port_sharding.Server(port=0, host="127.0.0.1", command="gunicorn app:app")  # type: ignore[arg-type]
    with pytest.raises(port_sharding.SettingTypeError, match=r"command=: expected a list of strings"):
        port_sharding.Server(port=0, host="127.0.0.1", command=["python3", 1])  # type: ignore[list-item]
    with pytest.raises(port_sharding.ConfigError, match=r"stop_signal=: \"NOPE\" is not a signal name"):
        port_sharding.Server(port=0, host="127.0.0.1", stop_signal="NOPE")
    with pytest.raises(port_sharding.ConfigError, match=r"ready=: \"soon\" is not one of delay, notify"):
        port_sharding.Server(port=0, host="127.0.0.1", ready="soon")  # type: ignore[arg-type]


def test_reload_names_a_server_that_is_not_there() -> None:
    with port_sharding.Server(port=0, host="127.0.0.1", workers=1) as server:
        with pytest.raises(port_sharding.NotRunningError, match="supervisor pid 1"):
            port_sharding.reload(server.port, pid=1)
