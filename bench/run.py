#!/usr/bin/env python3
"""`python3 bench/run.py COMMAND`: the same as `python3 -m harness COMMAND` run from bench/ (see harness/__main__.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.__main__ import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
