"""upgrade() from Python: a server run by the Python host (``python -m port_sharding serve``) starts its successor —
this interpreter again, with the same command line — which takes its sockets over; the old one drains and exits 0.
(An in-process Server is not upgraded here: its successor would be this test run again.)"""

from pathlib import Path
from typing import Callable

import pytest

import port_sharding
from conftest import TIMEOUT, Proc, echo


def test_upgrade_starts_the_python_host_again_and_hands_it_the_sockets(spawn: Callable[..., Proc]) -> None:
    old = spawn("-m", "port_sharding", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2")
    port = old.ready_port()
    assert echo(port, b"before") == b"before"
    [report] = port_sharding.upgrade(port)
    assert report["pid"] == old.pid and report["runtime"] == "python" and report["failed"] is None, report
    successor = report["successor"]
    assert isinstance(successor, int) and successor != old.pid and report["seconds"] > 0, report
    # The same program again: this interpreter, `-m port_sharding serve` and the same arguments.
    argv = Path(f"/proc/{successor}/cmdline").read_bytes().split(b"\0")[:-1]
    assert argv[1:] == [b"-m", b"port_sharding", b"serve", b"--host", b"127.0.0.1", b"--port", b"0", b"--workers",
                        b"2"], argv
    assert old.popen.wait(TIMEOUT) == 0, old.describe()
    assert echo(port, b"after") == b"after"
    [status] = port_sharding.status(port)
    assert status["pid"] == successor and status["runtime"] == "python", status
    assert port_sharding.stop(port) == [successor]


def test_upgrade_names_a_server_that_is_not_there(spawn: Callable[..., Proc]) -> None:
    server = spawn("-m", "port_sharding", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1")
    port = server.ready_port()
    with pytest.raises(port_sharding.NotRunningError, match="supervisor pid 1"):
        port_sharding.upgrade(port, pid=1)
