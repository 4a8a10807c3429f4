"""A child the host forks (what ``multiprocessing`` does by default on Linux) lets go of the engine's
descriptors: it neither keeps a stopped server's port in its reuseport group nor delays the drain."""

import multiprocessing
import socket
import time

import pytest

import port_sharding


def test_a_forked_child_neither_delays_stop_nor_keeps_the_port() -> None:
    server = port_sharding.Server(0, host="127.0.0.1", workers=2, drain_timeout=20.0).start()
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    try:
        # Without the at-fork hook the child holds the workers' drain pipes and the listeners: the drain would
        # wait for it (up to drain_timeout) and the port would still accept connections into its queues.
        assert server.stop(timeout=10.0), "stop() waited for the forked child"
        assert child.is_alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        child.kill()
        child.join()
