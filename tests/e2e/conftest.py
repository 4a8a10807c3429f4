"""Fixtures of the end-to-end tests; the helpers themselves are in harness.py (also used by plain_restart.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .harness import ROOT, ClientLoad, Server

sys.path.insert(0, str(ROOT / "scripts"))
from pytest_guards import *  # noqa: E402,F401,F403 -- time limit, private control dir, port 1234 guard


@pytest.fixture
def control_dir(tmp_path: Path) -> Path:
    d = tmp_path / "control"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def servers():
    """Collects servers started by a test and kills each one's process group at the end, pass or fail."""
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


@pytest.fixture
def loads():
    """Collects client loads started by a test and stops them at the end, pass or fail."""
    started: list[ClientLoad] = []
    yield started
    for load in started:
        load.stop()
