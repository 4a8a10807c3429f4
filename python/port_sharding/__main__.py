"""``python -m port_sharding`` and the ``port-sharding`` script: the engine's one command line."""

import signal
import sys
from typing import List, Optional

from . import _port_sharding as _native


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``port-sharding`` on ``argv`` (default ``sys.argv``; the first item is the program name)."""
    # As the Rust binary: Ctrl-C ends status/stop/bench at once, and `serve` handles it itself.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    return _native.cli_main(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
