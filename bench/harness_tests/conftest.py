"""The shared guards of the Python suites (scripts/pytest_guards.py): a per-test time limit, a private control
directory for the session, and no listener left on port 1234."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from pytest_guards import *  # noqa: E402,F401,F403
