"""The examples people run first, run here with short durations: `examples/mixed.sh` and `make demo`'s
`examples/rolling_upgrade.sh`."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from .harness import BIN, ROOT, runtime_available


def need(*runtimes: str) -> None:
    for runtime in runtimes:
        if why := runtime_available(runtime):
            pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], **env: str) -> str:
    out = subprocess.run(args, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=300, start_new_session=True)
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_mixed_example_answers_from_both_runtimes():
    need("python", "ruby")
    out = run(["examples/mixed.sh", "0", "60"])
    by_runtime = out.split("by runtime:")[1].split("by process:")[0]
    assert "python" in by_runtime and "ruby" in by_runtime, out
    assert "no answer" not in out, out


def test_rolling_upgrade_demo_loses_nothing():
    need("python", "ruby", "rust")
    out = run(["examples/rolling_upgrade.sh", str(free_port())], LOAD_SECONDS="6", PORT_SHARDING_BIN=str(BIN))
    assert "failed connections: 0 " in out, out


def test_mixed_workers_example_reloads_python_functions_and_ruby_blocks_losing_nothing():
    need("python", "ruby")
    out = run(["examples/mixed_workers.sh", "0", "4"])
    counts = dict(line.strip().split(": ") for line in out.split("answers by runtime:")[1].splitlines()[1:3])
    assert int(counts["python"]) > 0 and int(counts["ruby"]) > 0, out
    assert "failed connections: 0\n" in out, out
    assert out.count("failed: None") == 2, out
