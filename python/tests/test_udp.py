"""UDP function workers: ``for data, addr in listener`` in worker processes, a reload of two of them under the
done-when load (64 flows, one numbered datagram every 2 ms each, every echo checked by ``port-sharding bench
--workload udp``) loses no datagram, and ``status`` counts the datagrams and flows."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

import port_sharding
from conftest import TIMEOUT, Proc

Spawn = Callable[..., Proc]

CHILD = r"""
import sys
import port_sharding

def echo(listener):
    for data, addr in listener:
        listener.socket.sendto(data, addr)

report = port_sharding.serve(0, host="127.0.0.1", workers=2, protocol="udp", worker=echo, drain_timeout=2)
print("serve returned", report.reason, flush=True)
"""


def bench(port: int) -> "subprocess.Popen[bytes]":
    """The load, until SIGINT (bounded by its --duration all the same)."""
    args = ["bench", "--workload", "udp", "--port", str(port), "-c", "64", "--interval", "2ms", "--duration", "120s",
            "--timeout", "2s", "--json", "--no-status"]
    return subprocess.Popen([sys.executable, "-m", "port_sharding", *args], stdout=subprocess.PIPE,
                            start_new_session=True)


def finish(load: "subprocess.Popen[bytes]") -> dict:  # type: ignore[type-arg]
    load.send_signal(signal.SIGINT)
    out, _ = load.communicate(timeout=TIMEOUT)
    report: dict = json.loads(out)  # type: ignore[type-arg]
    return report


def test_a_reload_of_two_udp_function_workers_loses_no_datagram(spawn: Spawn) -> None:
    p = spawn("-c", CHILD)
    port = p.ready_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"one", ("127.0.0.1", port))
        assert s.recvfrom(16) == (b"one", ("127.0.0.1", port))
    load = bench(port)
    try:
        time.sleep(0.5)  # under load (not a timing assertion: the loss count is)
        [reloaded] = port_sharding.reload(port)
        assert reloaded["failed"] is None and len(reloaded["replaced"]) == 2, reloaded
        p.wait_for(r"worker 1 \(pid \d+, generation 1\) retired")
        p.wait_for(r"worker 0 \(pid \d+, generation 1\) retired")
        [status] = port_sharding.status(port)
        assert status["mode"] == "udp function"
        assert all(w["generation"] == 2 and w["datagrams_in"] > 0 for w in status["workers"]), status
        time.sleep(0.3)
    finally:
        report = finish(load)
    print(f"python udp reload: {report['ops']} datagrams echoed, {report['errors']['lost']} lost")
    assert report["ops"] > 0
    assert report["errors"]["total"] == 0, report
    os.kill(p.pid, signal.SIGTERM)
    assert p.finish() == 0
    assert "serve returned terminate" in p.out, p.describe()
