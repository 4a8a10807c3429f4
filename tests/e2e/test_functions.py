"""Function workers across runtimes: rolling upgrades by takeover between a Python server whose workers are a
Python function, a Ruby server whose workers are a Ruby block, and the Rust CLI's built-in workers, under
continuous load, with nothing lost."""

from __future__ import annotations

import sys

import pytest

from .harness import ClientLoad, Server, assert_gone, runtime_available

# `serve` flags as the harness passes them (--host H --port P --workers N [--takeover]), then the talk's loop.
PYTHON_FUNCTION = r"""
import argparse, port_sharding
p = argparse.ArgumentParser()
p.add_argument("--host"); p.add_argument("--port", type=int); p.add_argument("--workers", type=int)
p.add_argument("--takeover", action="store_true")
a = p.parse_args()
def worker(listener):
    for client, addr in listener:
        client.sendall(client.recv(1024))
        client.close()
port_sharding.serve(a.port, host=a.host, workers=a.workers, takeover=a.takeover, worker=worker)
"""
RUBY_BLOCK = r"""
require "port_sharding"
get = ->(name) { i = ARGV.index(name); i && ARGV[i + 1] }
PortSharding.serve(Integer(get.("--port")), host: get.("--host"), workers: Integer(get.("--workers")),
                   takeover: ARGV.include?("--takeover")) do |listener|
  listener.each { |client, _addr| client.write(client.recv(1024)); client.close }
end
"""
COMMANDS = {
    "python-function": ("python", [sys.executable, "-c", PYTHON_FUNCTION]),
    "ruby-block": ("ruby", ["ruby", "-e", RUBY_BLOCK, "--"]),
    "rust": ("rust", None),
}
CHAIN = ["python-function", "ruby-block", "python-function", "rust", "ruby-block"]


def test_takeovers_between_function_block_and_builtin_workers_under_load_lose_nothing(control_dir, servers, loads):
    for kind in set(CHAIN):
        if why := runtime_available(COMMANDS[kind][0]):
            pytest.skip(why)

    def start(kind: str, port: int, *args: str) -> Server:
        runtime, command = COMMANDS[kind]
        server = Server(runtime, port, control_dir, *args, command=command)
        servers.append(server)
        return server.ready()

    first = start(CHAIN[0], 0, "--workers", "2")
    load = ClientLoad(first.port)
    loads.append(load)
    load.wait_for(200)
    generations = [first]
    for kind in CHAIN[1:]:
        new = start(kind, first.port, "--workers", "2", "--takeover")
        old = generations[-1]
        assert old.wait_exit() == 0, "\n".join(old.lines)
        assert any("stopped (taken over)" in line for line in old.lines), "\n".join(old.lines)
        load.wait_for(200)
        generations.append(new)
    report = load.stop()
    print(f"takeovers {'→'.join(CHAIN)}: {report}")
    assert report["failed"] == 0 and report["wrong"] == 0, report
    last = generations[-1]
    last.proc.terminate()
    assert last.wait_exit() == 0
    assert_gone([pid for g in generations for pid in g.worker_pids()])
