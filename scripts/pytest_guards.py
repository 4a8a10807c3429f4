"""Guards every Python suite shares (python/tests, tests/e2e, bench/harness_tests), from issue #19: a test suite must
not depend on how it was started, nor hang, nor touch what belongs to others. Each suite's conftest.py does

    sys.path.insert(0, str(REPO / "scripts"))
    from pytest_guards import *  # noqa: F401,F403

which registers these hooks for that suite:

- a per-test time limit (pytest-timeout, which `make setup-python` installs): a test that hangs fails, named, after
  TEST_LIMIT seconds instead of stalling the run; a test that legitimately needs longer says so with
  `@pytest.mark.timeout(N)`. pytest-timeout interrupts a test with SIGALRM, whose Python handler runs only when the
  main thread runs Python code: a test stuck in native code that never looks at signals (an in-process `serve()`
  that runs on) would hang on. For those a watchdog thread ends the whole session BACKSTOP seconds later, naming the
  test and dumping every thread's stack;
- a private control directory for the whole session (PORT_SHARDING_CONTROL_DIR), so that a test that forgets its own
  can never reach the default one, where a developer's servers live;
- a guard against port 1234 (the default port): a test after which a process this session started listens on :1234
  fails, naming the process (an engine that wrongly accepted a bad value would bind the default port).

DEFAULT_SIGNALS is the prefix the harnesses put before every server they spawn: `nohup make test &`, or any job started
with SIGINT ignored, passes the ignored SIGINT and SIGQUIT on to every child across exec, and a server that ignores the
Ctrl-C a test sends it fails that test. `env --default-signal` (GNU coreutils) resets them in the child only, without
a preexec_fn (unsafe in a process with threads, as the harnesses are).
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Generator, List, Optional, Tuple

import pytest

__all__ = ["DEFAULT_SIGNALS", "TEST_LIMIT", "pytest_configure", "pytest_collection_modifyitems", "pytest_unconfigure",
           "pytest_runtest_protocol", "pytest_runtest_call"]

TEST_LIMIT = 120.0  # seconds; generous: the slowest tests take well under a minute here
DEFAULT_PORT = 1234
DEFAULT_SIGNALS = ["env", "--default-signal=INT,QUIT"]

BACKSTOP = 30.0  # seconds after a test's limit
_session_dir: Optional[str] = None
# The test running now: its id, when it started, and its limit (set on the main thread, read by the watchdog).
_running: Optional[Tuple[str, float, float]] = None


def pytest_configure(config: pytest.Config) -> None:
    global _session_dir
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not installed: every test runs under a time limit "
                                "(make setup-python installs it, or: pip install pytest-timeout)")
    if _session_dir is None:  # once, even when two conftests import this module
        _session_dir = tempfile.mkdtemp(prefix="port-sharding-tests-")
        os.environ["PORT_SHARDING_CONTROL_DIR"] = _session_dir
        threading.Thread(target=_watch, args=(config,), name="test time limit backstop", daemon=True).start()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _session_dir
    if _session_dir is not None:
        shutil.rmtree(_session_dir, ignore_errors=True)
        _session_dir = None


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_LIMIT))


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    if marker is not None and "timeout" in marker.kwargs:
        return float(marker.kwargs["timeout"])
    return TEST_LIMIT


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Generator[None, object, object]:
    global _running
    _running = (item.nodeid, time.monotonic(), _limit(item))
    try:
        return (yield)
    finally:
        _running = None


def _watch(config: pytest.Config) -> None:
    """Ends the session when a test outlives its limit by BACKSTOP: pytest-timeout could not interrupt it."""
    while True:
        time.sleep(1)
        running = _running
        if running is None or time.monotonic() - running[1] < running[2] + BACKSTOP:
            continue
        nodeid, _, limit = running
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=False)  # so that what follows reaches the real stderr
        sys.stderr.write(f"\nTEST TIME LIMIT: {nodeid} still running {BACKSTOP:.0f} s past its limit of {limit:.0f} s; "
                         "pytest-timeout could not interrupt it (stuck outside Python code). Ending the session; "
                         "every thread's stack follows (scripts/pytest_guards.py)\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)


def listening_inodes(port: int) -> set[str]:
    """The sockets (`socket:[inode]`, as /proc/PID/fd links read) listening on TCP `port`, from /proc/net."""
    return tcp_inodes(port, "0A")  # 0A: LISTEN


def tcp_inodes(port: int, state: str) -> set[str]:
    """The TCP sockets on local `port` in `state` (/proc/net/tcp's hex code: 0A LISTEN, 01 ESTABLISHED), as
    /proc/PID/fd links read them (`socket:[inode]`)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _started_by_us(pid: int) -> bool:
    """Whether `pid` is this process or one of its descendants (servers, their workers)."""
    me = os.getpid()
    for _ in range(64):  # bounded walk up the parent chain
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _holders(inodes: set[str]) -> List[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if any(os.readlink(f"/proc/{name}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{name}/fd")):
                pids.append(int(name))
        except OSError:
            continue  # gone, or not ours to read
    return pids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fails a test that leaves a process of this session listening on port 1234 (tests use ephemeral ports).
    Checked right after the test body, before its fixtures kill the servers it started."""
    result = yield  # raises what the test raised
    inodes = listening_inodes(DEFAULT_PORT)
    if inodes:  # the common case is the cheap one: nobody listens there
        ours = [pid for pid in _holders(inodes) if _started_by_us(pid)]
        if ours:
            what = "; ".join(f"pid {pid}: {_cmdline(pid)}" for pid in ours)
            pytest.fail(f"a process this test started listens on port {DEFAULT_PORT} (tests must use port 0): {what}")
    return result
