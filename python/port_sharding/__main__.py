"""``python -m port_sharding serve|status|stop``: the ``port-sharding`` command line, on the Python package.

Same subcommands, options and exit codes as the Rust CLI: 2 for a bad argument or address, 3 when no
server runs on the port, 130 after a Ctrl-C drain, 1 when a drain was cut short or for any other error.
"""

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional

import port_sharding


def duration(text: str) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``, ``1.5h`` (as the Rust CLI parses them)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):] or "s"
    try:
        return float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (try 30s, 500ms, 2m)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m port_sharding", description="Serve one TCP port from many processes")
    p.add_argument("--version", action="version", version=f"port_sharding {port_sharding.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve a port with N worker processes; SIGINT/SIGTERM drain")
    s.add_argument("--host", default="0.0.0.0", help="address to bind (default: %(default)s)")
    s.add_argument("-p", "--port", type=int, default=1234, help="port; 0 picks a free one (default: %(default)s)")
    s.add_argument("-w", "--workers", type=int, default=None, help="worker processes (default: number of CPUs)")
    s.add_argument("-m", "--mode", default="echo", choices=["echo", "once", "hello"], help="(default: %(default)s)")
    s.add_argument("--backlog", type=int, default=1024, help="listen(2) backlog per worker (default: %(default)s)")
    s.add_argument("--drain-timeout", type=duration, default=30.0, metavar="DURATION", help="longest drain, e.g. 30s, 500ms (default: 30s)")
    s.add_argument("--max-connections", type=int, default=10000, help="open connections per worker (default: %(default)s)")
    s.add_argument("--idle-timeout", type=duration, default=None, metavar="DURATION", help="close connections idle this long (default: off)")
    s.add_argument("--takeover", action="store_true", help="adopt the sockets of the server running on host:port")
    s.add_argument("--migrate", action="store_true", help="set net.ipv4.tcp_migrate_req=1 (needs privilege)")
    s.add_argument("-q", "--quiet", action="store_true", help="print no log lines")

    for name, text in [("status", "show per-worker counters of the servers on a port"),
                       ("stop", "ask the servers on a port to drain and exit")]:
        t = sub.add_parser(name, help=text)
        t.add_argument("-p", "--port", type=int, default=1234, help="port of the servers (default: %(default)s)")
        t.add_argument("--host", default=None, help="only servers bound to this address")
        if name == "status":
            t.add_argument("--json", action="store_true", help="print JSON instead of a table")
        else:
            t.add_argument("--wait", type=duration, default=None, metavar="DURATION", help="wait until they exited, at most this long")
    return p


def print_status(servers: List[Dict[str, Any]]) -> None:
    # (heading, field, width) as the Rust CLI prints them.
    columns = [("worker", "index", 6), ("pid", "pid", 8), ("state", "state", 9), ("accepted", "accepted", 10),
               ("active", "active", 8), ("bytes in", "bytes_in", 12), ("bytes out", "bytes_out", 12),
               ("errors", "errors", 7), ("restarts", "restarts", 8), ("queue", "queue_len", 6)]
    for s in servers:
        print(f"{s['runtime']} server pid {s['pid']} on {s['addr']} — {s['state']}, mode {s['mode']}, "
              f"up {s['uptime_secs']:.0f}s")
        print("  " + " ".join(f"{heading:>{width}}" for heading, _, width in columns))
        for w in s["workers"]:
            print("  " + " ".join(f"{w[field]:>{width}}" for _, field, width in columns))


def alive(pid: int) -> bool:
    """Whether `pid` still runs. A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: Optional[List[str]] = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.command == "serve":
            port_sharding.set_quiet(a.quiet)
            # serve() without its KeyboardInterrupt, to learn whether the drain was cut short (exit 1, as the CLI).
            server = port_sharding._native_server(
                port=a.port, host=a.host, workers=a.workers, mode=a.mode, backlog=a.backlog,
                drain_timeout=a.drain_timeout, max_connections=a.max_connections, idle_timeout=a.idle_timeout,
                takeover=a.takeover, migrate=a.migrate,
            )
            reason, forced = server.run()
            return 1 if forced else 130 if reason == "interrupt" else 0
        elif a.command == "status":
            servers = port_sharding.status(a.port, a.host)
            print(json.dumps(servers, indent=2)) if a.json else print_status(servers)
        else:
            pids = port_sharding.stop(a.port, a.host)
            for pid in pids:
                print(f"asked server pid {pid} to drain")
            if a.wait is not None:
                deadline = time.monotonic() + a.wait
                while any(alive(p) for p in pids):
                    if time.monotonic() >= deadline:
                        print(f"port_sharding: still running after {a.wait}s", file=sys.stderr)
                        return 1
                    time.sleep(0.05)
                print("stopped")
    except KeyboardInterrupt:
        return 130  # drained after Ctrl-C, as shells report a SIGINT exit
    except (port_sharding.ConfigError, port_sharding.AddressError, TypeError) as e:
        print(f"port_sharding: error: {e}", file=sys.stderr)
        return 2
    except port_sharding.NotRunningError as e:
        print(f"port_sharding: error: {e}", file=sys.stderr)
        return 3
    except port_sharding.Error as e:
        print(f"port_sharding: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
