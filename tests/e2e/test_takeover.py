"""Zero-loss rolling upgrades: five takeovers across the Rust CLI, Python and Ruby under continuous load."""

from __future__ import annotations

import pytest

from conftest import Load, Server, assert_gone, runtime_available

CHAIN = ["python", "ruby", "rust", "python", "rust", "ruby"]  # 5 takeovers: py→rb→cli→py→cli→rb


@pytest.mark.parametrize("chain", [CHAIN], ids=["py-rb-cli-py-cli-rb"])
def test_five_takeovers_across_runtimes_under_load(chain, control_dir, servers):
    for runtime in set(chain):
        if why := runtime_available(runtime):
            pytest.skip(why)
    first = Server(chain[0], 0, control_dir, "--workers", "2").ready()
    servers.append(first)
    port = first.port
    load = Load(port, seconds=4.0 + 2.0 * len(chain))
    generations = [first]
    for i, runtime in enumerate(chain[1:], start=1):
        workers = "3" if i % 2 else "1"  # more sockets than received, then fewer
        new = Server(runtime, port, control_dir, "--workers", workers, "--takeover")
        servers.append(new)
        new.ready()
        old = generations[-1]
        assert old.wait_exit() == 0, "\n".join(old.lines)
        assert any("stopped (taken over)" in line for line in old.lines), "\n".join(old.lines)
        assert any(f"from {old.runtime} server pid {old.pid}" in line for line in new.lines), "\n".join(new.lines)
        generations.append(new)
    report = load.result()
    print(f"takeovers {'→'.join(chain)}: {report['ops']} connections, errors {report['errors']}")
    assert report["errors"]["total"] == 0, report
    assert report["ops"] > 1000
    last = generations[-1]
    last.proc.terminate()
    assert last.wait_exit() == 0
    assert_gone([pid for g in generations for pid in g.worker_pids()])
