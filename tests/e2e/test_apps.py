"""Real programs as command workers (`port-sharding serve -- CMD`): the talk's loops on listen() (which adopts
the socket passed as fd 3), gunicorn, Puma, unicorn, uvicorn, hypercorn, node and Go, and one slot running
gunicorn's or Puma's own workers; reload in place under continuous load; listen()'s refusal of a socket for
another port. Loopback only, every load bounded."""

from __future__ import annotations

import json
import signal
import socket
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import ROOT, BIN, ClientLoad, HttpLoad, Server, alive, runtime_available

PUMA = ["sh", "-c", "exec puma -C examples/puma/puma.rb -b tcp://127.0.0.1:$PORT_SHARDING_PORT examples/puma/config.ru"]
GUNICORN = [sys.executable, "-m", "gunicorn", "-w", "1", "--no-control-socket", "--chdir", "examples/gunicorn",
            "app:app"]


def need(*what: str) -> None:
    """Skips, saying why, when something a test runs is missing (make setup installs all of it)."""
    for w in what:
        if w in ("rust", "python", "ruby"):
            if why := runtime_available(w):
                pytest.skip(why)
        elif w == "gunicorn":
            r = subprocess.run([sys.executable, "-c", "import gunicorn"], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"gunicorn is not installed for {sys.executable} (make setup-python pip-installs it)")
        elif w == "puma":
            r = subprocess.run(["ruby", "-e", 'require "rack"'], capture_output=True) if shutil.which("ruby") else None
            if not shutil.which("puma") or r is None or r.returncode != 0:
                pytest.skip("puma or ruby-rack is not installed (make setup-system installs the Debian packages)")


def _env(server: Server) -> dict[str, str]:
    return dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(server.control_dir))


def worker_pids(server: Server) -> list[int]:
    """The pids serving `server`'s listeners now, from `status --json`."""
    out = subprocess.run([str(BIN), "status", "--json", "--port", str(server.port)], capture_output=True,
                         text=True, env=_env(server), check=True)
    mine = [s for s in json.loads(out.stdout) if s["pid"] == server.pid][0]
    return [w["pid"] for w in mine["workers"]]


def reload(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "reload", "--port", str(server.port), "--pid", str(server.pid), *args],
                          capture_output=True, text=True, env=_env(server), timeout=300)


def start(servers: list[Server], control_dir: Path, *args: str, port: int = 0) -> Server:
    s = Server("rust", port, control_dir, *args)
    servers.append(s)
    return s.ready()


def reload_under_load(servers: list[Server], loads: list[ClientLoad], control_dir: Path, load_class: type,
                      *args: str) -> None:
    server = start(servers, control_dir, *args)
    before = worker_pids(server)
    load = load_class(server.port, threads=6, max_seconds=120)
    loads.append(load)
    load.wait_for(500)
    done = reload(server)
    assert done.returncode == 0, done.stdout + done.stderr
    load.wait_for(1500)
    summary = load.stop()
    print(f"reload under load ({args[-1]}): {summary['answered']} answered, {summary['failed']} failed, "
          f"{summary['wrong']} wrong")
    assert summary["failed"] == 0 and summary["wrong"] == 0, summary
    after = worker_pids(server)
    assert len(after) == len(before) and not set(after) & set(before), (before, after)
    for old, new in zip(before, after):
        assert f"pid {old} → pid {new} (generation 2)" in done.stdout, done.stdout


def test_the_talks_python_loop_reloads_under_load_without_a_failure(servers, loads, control_dir):
    need("rust", "python")
    reload_under_load(servers, loads, control_dir, ClientLoad, "-w", "2", "--ready-delay", "500ms", "--",
                      sys.executable, "examples/seed_echo_listen.py")


def test_gunicorn_workers_answer_http_and_reload_under_load_without_a_failure(servers, loads, control_dir):
    need("rust", "gunicorn")
    reload_under_load(servers, loads, control_dir, HttpLoad, "-w", "2", "--", *GUNICORN)


def test_puma_workers_answer_http_beside_gunicorn_on_one_port(servers, loads, control_dir):
    need("rust", "gunicorn", "puma")
    g = start(servers, control_dir, "-w", "1", "--", *GUNICORN)
    start(servers, control_dir, "-w", "1", "--", *PUMA, port=g.port)
    load = HttpLoad(g.port, threads=4, max_seconds=60)
    loads.append(load)
    load.wait_for(300)
    summary = load.stop()
    assert summary["failed"] == 0 and summary["wrong"] == 0, summary
    assert load.by_who["gunicorn"] > 0 and load.by_who["puma"] > 0, load.by_who


def test_listen_adopts_the_inherited_socket_in_python_and_ruby_and_refuses_another_port(servers, control_dir):
    need("rust", "python", "ruby")
    for interpreter, script in ((sys.executable, "examples/seed_echo_listen.py"), ("ruby", "examples/seed_echo_listen.rb")):
        server = start(servers, control_dir, "-w", "2", "--ready-delay", "300ms", "--", interpreter, script)
        load = ClientLoad(server.port, threads=2, max_ops=1000)
        load.wait_for(100)
        summary = load.stop()
        assert summary["failed"] == 0 and summary["wrong"] == 0, (script, summary)
        # Another port than the one passed: listen() refuses, the worker exits before it is ready.
        other = Server("rust", 0, control_dir, "-w", "1", "--", interpreter, script, "1")
        servers.append(other)
        line = other.wait_log("this process was given a socket to serve")
        assert f"is bound to 127.0.0.1:{other.port}, not 0.0.0.0:1" in line, line
        other.wait_log("before it was ready")
        assert not any("ready:" in line for line in other.lines)


def test_mixed_apps_example_answers_from_gunicorn_and_puma_and_loses_nothing():
    need("rust", "gunicorn", "puma")
    out = subprocess.run(["examples/mixed_apps.sh", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         start_new_session=True,
                         env=dict(os.environ, LOAD_SECONDS="6", PORT_SHARDING_BIN=str(BIN), PYTHON=sys.executable))
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed" in out.stdout, out.stdout
    assert "gunicorn" in out.stdout and "puma" in out.stdout, out.stdout


def test_old_workers_exit(servers, control_dir):
    """After a reload every old worker has exited (none left holding a listener)."""
    need("rust", "python")
    server = start(servers, control_dir, "-w", "2", "--ready-delay", "300ms", "--", sys.executable,
                   "examples/seed_echo_listen.py")
    before = worker_pids(server)
    assert reload(server).returncode == 0
    deadline = time.monotonic() + 30
    while any(alive(p) for p in before):
        assert time.monotonic() < deadline, [p for p in before if alive(p)]
        time.sleep(0.05)


# Event-loop servers (issue 23). uvicorn adopts fd 3 with `--fd 3`; hypercorn with `--bind fd://3`, in its default
# mode (a master that serves through one child process, in the worker's process group).
UVICORN = [sys.executable, "-m", "uvicorn", "--fd", "3", "--app-dir", "examples/asgi", "--no-access-log", "app:app"]
HYPERCORN = [sys.executable, "-m", "hypercorn", "--bind", "fd://3", "--graceful-timeout", "5", "examples.asgi.app:app"]


def need_module(module: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"{module} is not installed for {sys.executable} (make setup-python pip-installs it)")


def in_groups(pgids: set[int]) -> list[int]:
    """Live processes whose process group is one of `pgids` (a command worker's group holds its children)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(d.name))
    return found


def listening(port: int) -> bool:
    """Whether any socket on this machine listens on `port` (/proc/net/tcp and tcp6, state 0A)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def reloads_then_stop(servers: list[Server], loads: list[ClientLoad], control_dir: Path, reloads: int,
                      *args: str) -> None:
    """Command workers (`args`) under HTTP load from 6 clients; `reloads` reloads, each checked to replace every
    worker; then a stop (SIGTERM to the supervisor): 0 failed requests, exit 0, and nothing of it left running or
    listening."""
    server = start(servers, control_dir, *args)
    pgids = set(worker_pids(server))
    load = HttpLoad(server.port, threads=6, max_seconds=200)
    loads.append(load)
    try:
        load.wait_for(300)
        for n in range(reloads):
            before = worker_pids(server)
            done = reload(server)
            assert done.returncode == 0, done.stdout + done.stderr
            after = worker_pids(server)
            pgids |= set(after)
            assert len(after) == len(before) and not set(after) & set(before), (before, after)
            load.wait_for(300)
        summary = load.stop()
        print(f"{reloads} reloads under load ({args[-1]}): {summary['answered']} answered, "
              f"{summary['failed']} failed, {summary['wrong']} wrong; by pid {len(load.pids)}")
        assert summary["failed"] == 0 and summary["wrong"] == 0, summary
        server.proc.send_signal(signal.SIGTERM)
        code = server.wait_exit()
        print("\n".join(l for l in server.lines if "retired" in l or "stopped" in l or "SIGKILL" in l))
        assert code == 0, "\n".join(server.lines)
        assert not in_groups(pgids), (in_groups(pgids), "\n".join(server.lines))
        assert not listening(server.port), "\n".join(server.lines)
    finally:
        for pid in in_groups(pgids):  # only what this test started: its workers' groups
            os.kill(pid, signal.SIGKILL)


def test_uvicorn_workers_reload_three_times_under_load_without_a_failure_and_stop_cleanly(servers, loads, control_dir):
    need("rust")
    need_module("uvicorn")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--ready-delay", "1s", "--", *UVICORN)


def test_hypercorn_workers_reload_three_times_under_load_without_a_failure_and_stop_cleanly(servers, loads,
                                                                                             control_dir):
    need("rust")
    need_module("hypercorn")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--ready-delay", "1500ms", "--", *HYPERCORN)


UNICORN = ["unicorn", "-c", "examples/unicorn/unicorn.conf.rb", "examples/puma/config.ru"]
NODE = ["node", "examples/node/server.js"]


def need_program(program: str, why: str) -> None:
    if not shutil.which(program):
        pytest.skip(f"{program} is not installed ({why})")


def test_gunicorn_workers_reload_three_times_under_load_without_a_failure_and_stop_cleanly(servers, loads,
                                                                                            control_dir):
    need("rust", "gunicorn")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--", *GUNICORN)


def test_one_slot_running_gunicorns_own_master_and_2_workers_reloads_three_times_without_a_failure(
        servers, loads, control_dir):
    # The setup the README recommends for sync workers with uneven requests: gunicorn's master shares one
    # accept queue among its workers (fd 3, inherited by both), and port-sharding reloads the whole slot.
    need("rust", "gunicorn")
    shared = [a if a != "1" else "2" for a in GUNICORN]
    assert shared[shared.index("-w") + 1] == "2"
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "1", "--", *shared)


def test_one_slot_running_a_puma_cluster_of_2_workers_reloads_three_times_without_a_failure(
        servers, loads, control_dir):
    need("rust", "puma")
    cluster = [PUMA[0], PUMA[1], PUMA[2].replace("exec puma ", "exec puma -w 2 ")]
    assert cluster != PUMA
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "1", "--", *cluster)


def test_puma_workers_reload_three_times_under_load_without_a_failure_and_stop_cleanly(servers, loads, control_dir):
    need("rust", "puma")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--", *PUMA)


def test_unicorn_workers_stopped_with_quit_reload_three_times_under_load_without_a_failure(servers, loads,
                                                                                          control_dir):
    need("rust")
    need_program("unicorn", "make setup-system installs the Debian package")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--stop-signal", "QUIT", "--", *UNICORN)


def test_node_workers_closing_on_sigterm_reload_three_times_under_load_without_a_failure(servers, loads,
                                                                                       control_dir):
    need("rust")
    need_program("node", "make setup-system installs the Debian package nodejs")
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--", *NODE)


def test_go_workers_shutting_down_on_sigterm_reload_three_times_under_load_without_a_failure(servers, loads,
                                                                                         control_dir, tmp_path):
    # examples/go/server.go: net.FileListener on fd 3, READY=1 on NOTIFY_SOCKET, http.Server.Shutdown on SIGTERM.
    need("rust")
    need_program("go", "make setup-system installs the Debian package golang-go")
    exe = tmp_path / "go-server"
    # The build cache under target/ (ignored): a second run builds nothing.
    env = dict(os.environ, GOCACHE=str(ROOT / "target" / "go-build"))
    built = subprocess.run(["go", "build", "-o", str(exe), "examples/go/server.go"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    reloads_then_stop(servers, loads, control_dir, 3, "-w", "2", "--ready", "notify", "--", str(exe))


STUBBORN = [sys.executable, "tests/e2e/stubborn_child.py"]


def answers(port: int, n: int) -> set[int]:
    """`n` HTTP GETs; the pids that answered them."""
    load = HttpLoad(port, threads=1, max_ops=n, max_seconds=60)
    while load.running:
        time.sleep(0.01)
    summary = load.stop()
    assert summary["failed"] == 0 and summary["wrong"] == 0, summary
    return load.pids


def test_stop_reaches_a_child_that_ignores_sigterm_and_the_supervisor_outlives_it(servers, control_dir):
    """The worker exits on SIGTERM, its child ignores it and keeps the listener: the supervisor waits for the
    child, SIGKILLs the worker's process group after the drain timeout, and only then exits (1: a drain that
    had to kill), leaving nothing running or listening."""
    need("rust", "python")
    server = start(servers, control_dir, "-w", "1", "--ready-delay", "300ms", "--drain-timeout", "1s", "--",
                   *STUBBORN)
    pgids = set(worker_pids(server))
    try:
        served_by = answers(server.port, 20)
        assert served_by and not served_by & pgids, served_by  # the child serves, not the worker itself
        server.proc.send_signal(signal.SIGTERM)
        code = server.wait_exit()
        log = "\n".join(server.lines)
        assert "its process group lives on" in log and "sending it SIGKILL" in log, log
        assert code == 1, log
        assert not in_groups(pgids), (in_groups(pgids), log)
        assert not listening(server.port), log
    finally:
        for pid in in_groups(pgids):
            os.kill(pid, signal.SIGKILL)


def test_a_reload_kills_what_a_replaced_worker_left_running_and_keeps_serving(servers, control_dir):
    """After a reload, the old worker's child (ignoring SIGTERM) is SIGKILLed with its group after the drain
    timeout; the new generation serves throughout."""
    need("rust", "python")
    server = start(servers, control_dir, "-w", "1", "--ready-delay", "300ms", "--drain-timeout", "1s", "--",
                   *STUBBORN)
    old = set(worker_pids(server))
    pgids = set(old)
    try:
        done = reload(server)
        assert done.returncode == 0, done.stdout + done.stderr
        pgids |= set(worker_pids(server))
        server.wait_log("the last process of its group has exited")
        assert not in_groups(old), in_groups(old)
        assert answers(server.port, 20)
        log = "\n".join(server.lines)
        assert "sending it SIGKILL" in log, log
    finally:
        for pid in in_groups(pgids):
            os.kill(pid, signal.SIGKILL)


def test_a_replaced_uvicorn_is_not_stopped_while_a_connection_it_accepted_has_not_sent_its_request(servers,
                                                                                                 control_dir):
    """uvicorn closes, on shutdown, connections whose request has not arrived. A client connects to the old
    worker and sends its request only well after the reload: the old worker must still be there to answer it
    (it is asked to stop once it has read something from every connection it holds)."""
    need("rust")
    need_module("uvicorn")
    server = start(servers, control_dir, "-w", "1", "--ready-delay", "1s", "--", *UVICORN)
    old = worker_pids(server)
    pgids = set(old)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as quiet:
            time.sleep(0.3)  # accepted by the old worker, which reads nothing: no request yet
            done = reload(server)
            assert done.returncode == 0, done.stdout + done.stderr
            pgids |= set(worker_pids(server))
            time.sleep(1.5)  # well past the 250 ms its socket must stay empty
            assert alive(old[0]), "\n".join(server.lines)
            quiet.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := quiet.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and f"process {old[0]}".encode() in reply, reply
        server.wait_log(f"worker 0 (pid {old[0]}, generation 1) retired")
    finally:
        for pid in in_groups(pgids):
            os.kill(pid, signal.SIGKILL)
