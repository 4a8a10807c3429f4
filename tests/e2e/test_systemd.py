"""port-sharding as a systemd service, under a stand-in service manager (service_manager.py: systemd cannot be
PID 1 here) and under Debian's real ``systemd-socket-activate``: ready, watchdog, reload, upgrade (SIGUSR2 and
``port-sharding upgrade``), a crash with the fd store, socket activation, stop — each under continuous
connect/echo/close load, each losing nothing. The figures (connections, failed, time to READY, upgrade time) are
printed for the report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .harness import BIN, DEFAULT_SIGNALS, ROOT, ClientLoad, HttpLoad, alive, runtime_available, serve_command

MANAGER = Path(__file__).with_name("service_manager.py")
PATIENCE = 30.0
WATCHDOG_USEC = 3_000_000  # pings every 1.5 s; systemd would act on a gap of 3 s


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Managed:
    """A service run by the stand-in manager: its events (JSON lines) and the service's log (stderr)."""

    def __init__(self, command: list[str], *manager_args: str, control_dir: Path) -> None:
        env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(MANAGER), *manager_args, "--", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True, cwd=ROOT)
        self.events: list[dict] = []
        self.lines: list[str] = []
        self._threads = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def dump(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events) + "\n--- log:\n" + "\n".join(self.lines)

    def wait(self, what: str, pred, after: int = 0, timeout: float = PATIENCE) -> tuple[int, dict]:
        """The first event from index `after` on for which pred(event) holds: (index, event)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.events)):
                if pred(self.events[i]):
                    return i, self.events[i]
            if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads[:1]):
                break
            time.sleep(0.005)
        raise AssertionError(f"no {what}:\n{self.dump()}")

    def notified(self, what: str, key: str, value: str | None = None, after: int = 0, main: bool | None = True,
                 pid: int | None = None) -> tuple[int, dict]:
        def pred(e: dict) -> bool:
            return (e["event"] == "notify" and key in e["fields"]
                    and (value is None or e["fields"][key] == value)
                    and (main is None or e["main"] == main) and (pid is None or e["pid"] == pid))
        return self.wait(what, pred, after)

    def log(self, needle: str, timeout: float = PATIENCE) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no log line with {needle!r}:\n{self.dump()}")

    def port(self) -> int:
        line = self.log("server starting on")
        return int(line.split("starting on ")[1].split(": ")[0].rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL to every process group the manager started services in, then to the manager."""
        for e in list(self.events):
            if e["event"] == "start":
                try:
                    os.killpg(e["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def managed():
    started: list[Managed] = []
    yield started
    for m in started:
        m.kill()


def failed(load: ClientLoad) -> int:
    return load.summary()["failed"] + load.summary()["wrong"]


def cli(control_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir))
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=PATIENCE * 4)


def watchdog_gaps(m: Managed) -> tuple[int, float]:
    """How many pings each main process sent, and the longest gap (µs) between two pings of one process."""
    by_pid: dict[int, list[int]] = {}
    for e in m.events:
        if e["event"] == "notify" and e["main"] and e["fields"].get("WATCHDOG") == "1":
            by_pid.setdefault(e["pid"], []).append(e["t"])
    gaps = [b - a for ts in by_pid.values() for a, b in zip(ts, ts[1:])]
    return sum(len(v) for v in by_pid.values()), max(gaps, default=0)


@pytest.mark.timeout(300)
def test_a_service_under_a_manager_reloads_upgrades_survives_a_crash_and_stops_losing_nothing(control_dir, managed):
    """The whole life of a Type=notify-reload service with the fd store, KillMode=control-group, under load."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    m = Managed([str(BIN), "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
                "--watchdog-usec", str(WATCHDOG_USEC), "--fdstore", "16", "--kill-mode", "control-group",
                control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    first = start["pid"]
    # Clients connect while the service starts: they queue, and count.
    port = m.port()
    load = ClientLoad(port, threads=6, max_seconds=240)
    figures: dict[str, object] = {}
    phases: dict[str, int] = {}

    def phase(name: str) -> None:
        phases[name] = failed(load)
        load.wait_for(150)

    # READY=1 only once every worker serves (its STATUS says so), and the first watchdog ping right after it.
    i, ready = m.notified("READY=1", "READY", "1", pid=first)
    assert "2/2 workers ready" in ready["fields"]["STATUS"], ready
    figures["time to READY (ms)"] = (ready["t"] - start["t"]) / 1000
    i, ping = m.wait("the next message", lambda e: e["event"] == "notify" and e["pid"] == first, after=i + 1)
    assert ping["fields"] == {"WATCHDOG": "1"}, m.dump()
    # Each listener went into the fd store once, under a name of its own.
    stored = [e["name"] for e in m.events if e["event"] == "fdstore" and e["kept"]]
    assert len(stored) == 2 and len(set(stored)) == 2, m.dump()
    # The watchdog keeps pinging, from the loop, at half WATCHDOG_USEC.
    for _ in range(2):
        i, _ = m.notified("WATCHDOG=1", "WATCHDOG", "1", after=i + 1, pid=first)
    phase("start")

    # SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC at the time, then READY=1 once the workers are replaced.
    before = monotonic_usec()
    os.kill(first, signal.SIGHUP)
    i, reloading = m.notified("RELOADING=1", "RELOADING", "1", after=i, pid=first)
    stamp = int(reloading["fields"]["MONOTONIC_USEC"])
    i, reloaded = m.notified("READY=1 after the reload", "READY", "1", after=i, pid=first)
    assert before <= stamp <= reloaded["t"], (before, stamp, reloaded)
    assert "last reload: done, 2 worker(s) replaced" in reloaded["fields"]["STATUS"], reloaded
    phase("reload")

    # SIGUSR2: the successor, our child, takes over: MAINPID=<it> from the old one, then READY=1 from it; the old
    # one drains and exits 0.
    sent = monotonic_usec()
    os.kill(first, signal.SIGUSR2)
    i, mainpid = m.wait("MAINPID", lambda e: e["event"] == "mainpid", after=i)
    second = mainpid["pid"]
    assert mainpid["old"] == first and second != first, mainpid
    i, ready2 = m.notified("READY=1 from the successor", "READY", "1", after=i, pid=second)
    figures["upgrade by SIGUSR2 (ms)"] = (ready2["t"] - sent) / 1000
    _, gone = m.wait("the old supervisor's exit", lambda e: e["event"] == "exit" and e["pid"] == first)
    assert gone["code"] == 0 and not gone["main"], gone
    assert not any(e["event"] == "notify" and e["pid"] == first and "STOPPING" in e["fields"] for e in m.events), \
        "the old supervisor said STOPPING=1 after handing over"
    phase("upgrade (SIGUSR2)")

    # `port-sharding upgrade`: the same through the control socket; the command says who serves now.
    sent = monotonic_usec()
    out = cli(control_dir, "upgrade", "--port", str(port))
    assert out.returncode == 0, out.stderr + m.dump()
    i, mainpid = m.wait("MAINPID", lambda e: e["event"] == "mainpid", after=i)
    third = mainpid["pid"]
    assert f"server pid {second}: upgraded to pid {third}" in out.stdout, out.stdout
    i, ready3 = m.notified("READY=1 from the successor", "READY", "1", after=i, pid=third)
    figures["upgrade by command (ms)"] = (ready3["t"] - sent) / 1000
    m.wait("the old supervisor's exit", lambda e: e["event"] == "exit" and e["pid"] == second and e["code"] == 0)
    phase("upgrade (command)")

    # kill -9 of the supervisor: the manager restarts it on the listeners it kept; nothing queued is lost.
    os.kill(third, signal.SIGKILL)
    i, restart = m.wait("restart", lambda e: e["event"] == "start" and e["pid"] != first, after=i)
    assert restart["fds"] and all(n.startswith("port-sharding.") for n in restart["fds"]), restart
    fourth = restart["pid"]
    i, ready4 = m.notified("READY=1 after the restart", "READY", "1", after=i, pid=fourth)
    assert any("fd store: adopting 2 listener(s)" in line for line in m.lines), m.dump()
    phase("crash (kill -9)")

    # SIGTERM: STOPPING=1, the drain, exit 0. The load stops when the drain begins (a balancer would stop
    # sending then); every connection begun before is answered.
    os.kill(fourth, signal.SIGTERM)
    m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=fourth)
    report = load.stop()
    phases["stop"] = failed(load)
    _, stopped = m.wait("stop", lambda e: e["event"] == "stopped")
    assert stopped["code"] == 0, m.dump()
    count, gap = watchdog_gaps(m)
    figures.update(connections=report["connections"], failed=report["failed"], wrong=report["wrong"],
                   watchdog_pings=count, longest_watchdog_gap_ms=gap / 1000)
    print(f"\nunder the stand-in manager: {figures}; failed after each phase: {phases}")
    assert report["failed"] == 0 and report["wrong"] == 0, (report, phases)
    assert all(n == 0 for n in phases.values()), phases
    # The watchdog kept time: systemd would have stopped a service silent for WATCHDOG_USEC.
    assert count >= 6 and 0 < gap < WATCHDOG_USEC, (count, gap)
    assert not alive(first) and not alive(second) and not alive(third)


@pytest.mark.timeout(120)
def test_a_crash_under_kill_mode_mixed_serves_what_queued_meanwhile(control_dir, managed):
    """KillMode=mixed kills the crashed supervisor's workers at once (what they were serving is cut: counted,
    not asserted); the connections that queue before the restart wait in the fd store's sockets and are
    answered by the restarted supervisor."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    m = Managed([str(BIN), "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
                "--fdstore", "16", "--kill-mode", "mixed", "--restart-sec", "1", control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, _ = m.notified("READY=1", "READY", "1", pid=start["pid"])
    port = m.port()
    load = ClientLoad(port, threads=4, max_seconds=60)
    load.wait_for(100)
    os.kill(start["pid"], signal.SIGKILL)
    i, killed = m.wait("the workers killed", lambda e: e["event"] == "killed", after=i)
    # Between the kill and the restart (RestartSec=1): nobody accepts, the kernel queues.
    queued = []
    for n in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        s.sendall(b"queued %d" % n)
        s.shutdown(socket.SHUT_WR)
        queued.append(s)
    assert not any(e["event"] == "start" and e["pid"] != start["pid"] for e in m.events), \
        "the restart came before the connections queued (RestartSec)"
    i, restart = m.wait("restart", lambda e: e["event"] == "start", after=i)
    m.notified("READY=1 after the restart", "READY", "1", after=i, pid=restart["pid"])
    for n, s in enumerate(queued):
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        s.close()
        assert reply == b"queued %d" % n, (n, reply)
    load.wait_for(100)
    report = load.stop()
    print(f"\ncrash under KillMode=mixed: 20/20 queued answered; load {report} "
          f"(what the {len(killed['pids'])} killed workers were serving is cut)")
    os.kill(restart["pid"], signal.SIGTERM)
    _, stopped = m.wait("stop", lambda e: e["event"] == "stopped")
    assert stopped["code"] == 0


@pytest.mark.timeout(120)
def test_socket_activation_serves_the_managers_sockets_one_worker_each(control_dir, managed):
    """A socket unit with ReusePort=yes and three ListenStream= lines: three workers, no socket of their own;
    after a crash the socket unit's sockets (held by the manager) serve what queued meanwhile."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    m = Managed([str(BIN), "serve"], "--sockets", "3", "--reuseport", "--kill-mode", "control-group",
                control_dir=control_dir)
    managed.append(m)
    _, listening = m.wait("the socket unit", lambda e: e["event"] == "listening")
    port = int(listening["addr"].rsplit(":", 1)[1])
    load = ClientLoad(port, threads=4, max_seconds=60)  # from before the service is up: queued
    _, start = m.wait("start", lambda e: e["event"] == "start")
    assert start["fds"] == ["app.socket"] * 3, start
    i, ready = m.notified("READY=1", "READY", "1", pid=start["pid"])
    assert "3/3 workers ready" in ready["fields"]["STATUS"], ready
    assert "serving 3 socket(s) the service manager passed" in m.log("socket activation:")
    # Three listening sockets on the port, all the manager's: the supervisor bound none.
    status = json.loads(cli(control_dir, "status", "--json", "--port", str(port)).stdout)
    assert len(status[0]["workers"]) == 3, status
    load.wait_for(100)
    os.kill(start["pid"], signal.SIGHUP)
    i, _ = m.notified("READY=1 after the reload", "READY", "1", after=i + 1, pid=start["pid"])
    load.wait_for(100)
    os.kill(start["pid"], signal.SIGKILL)
    i, restart = m.wait("restart", lambda e: e["event"] == "start" and e["pid"] != start["pid"], after=i)
    m.notified("READY=1 after the restart", "READY", "1", after=i, pid=restart["pid"])
    load.wait_for(100)
    os.kill(restart["pid"], signal.SIGTERM)
    m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=restart["pid"])
    report = load.stop()
    m.wait("stop", lambda e: e["event"] == "stopped")
    print(f"\nsocket activation, 3 ReusePort sockets, reload and crash: {report}")
    assert report["failed"] == 0 and report["wrong"] == 0, report


@pytest.mark.parametrize("sockets, reuseport, workers, expect", [
    (2, True, "3", "passed 2 socket(s)"),
    (1, False, "2", "ReusePort=yes"),
])
def test_socket_activation_refuses_workers_that_disagree_with_the_sockets(control_dir, managed, sockets, reuseport,
                                                                          workers, expect):
    if why := runtime_available("rust"):
        pytest.skip(why)
    flags = ["--sockets", str(sockets)] + (["--reuseport"] if reuseport else []) + ["--restart", "no"]
    m = Managed([str(BIN), "serve", "--workers", workers], *flags, control_dir=control_dir)
    managed.append(m)
    _, stopped = m.wait("stop", lambda e: e["event"] == "stopped")
    assert stopped["code"] == 2, m.dump()
    assert any(expect in line for line in m.lines), m.dump()
    assert not any(e["event"] == "notify" and "READY" in e["fields"] for e in m.events), m.dump()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_systemd_socket_activate_starts_it_on_the_first_connection_one_worker(control_dir):
    """Debian's systemd-socket-activate passes one plain socket (no SO_REUSEPORT): one worker serves it, the
    connection that started the server included; --workers 2 is refused, naming ReusePort=."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (make setup-system installs Debian's systemd)")
    if why := runtime_available("rust"):
        pytest.skip(why)
    env = dict(os.environ, PORT_SHARDING_CONTROL_DIR=str(control_dir))
    port = free_port()
    proc = subprocess.Popen(DEFAULT_SIGNALS + [tool, "-l", f"127.0.0.1:{port}", str(BIN), "serve"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(l.rstrip() for l in proc.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + PATIENCE
        while not any("Listening on" in l for l in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.01)
        # The first connection starts the server; it is served by it.
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as s:
            s.sendall(b"first")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(64) == b"first"
        load = ClientLoad(port, threads=4, max_seconds=60)
        load.wait_for(300)
        report = load.stop()
        assert report["failed"] == 0 and report["wrong"] == 0, report
        assert any("serving 1 socket(s) the service manager passed" in l and "one worker" in l for l in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0, lines
        print(f"\nsystemd-socket-activate: {report}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    # --workers 2 on one plain socket: refused before serving, naming ReusePort=.
    port = free_port()
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", str(BIN), "serve", "--workers", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                # The tool execs the server only once a connection came: exiting before, it could not listen.
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
                time.sleep(0.02)
        _, err = proc.communicate(timeout=PATIENCE)
        assert proc.returncode == 2, err
        assert "ReusePort=yes" in err, err
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("runtime", ["python", "ruby"])
def test_python_and_ruby_hosts_upgrade_under_a_manager(runtime, control_dir, managed):
    """The interpreter hosts speak the same protocol (it is the engine's): READY, and on SIGUSR2 a successor
    that is the interpreter again, with the same command line, MAINPID + READY from it, 0 lost."""
    if why := runtime_available(runtime):
        pytest.skip(why)
    command = serve_command(runtime) + ["--host", "127.0.0.1", "--port", "0", "--workers", "2"]
    m = Managed(command, "--watchdog-usec", str(WATCHDOG_USEC), "--fdstore", "8", control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, _ = m.notified("READY=1", "READY", "1", pid=start["pid"])
    load = ClientLoad(m.port(), threads=4, max_seconds=120)
    load.wait_for(100)
    sent = monotonic_usec()
    os.kill(start["pid"], signal.SIGUSR2)
    i, mainpid = m.wait("MAINPID", lambda e: e["event"] == "mainpid", after=i)
    _, ready = m.notified("READY=1 from the successor", "READY", "1", after=i, pid=mainpid["pid"])
    cmdline = Path(f"/proc/{mainpid['pid']}/cmdline").read_bytes().split(b"\0")
    assert runtime.encode() in Path(cmdline[0].decode()).name.encode() and b"serve" in cmdline, cmdline
    m.wait("the old supervisor's exit", lambda e: e["event"] == "exit" and e["pid"] == start["pid"] and e["code"] == 0)
    load.wait_for(100)
    os.kill(mainpid["pid"], signal.SIGTERM)
    m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=mainpid["pid"])
    report = load.stop()
    m.wait("stop", lambda e: e["event"] == "stopped")
    print(f"\n{runtime} host upgrade: {(ready['t'] - sent) / 1000:.0f} ms; {report}")
    assert report["failed"] == 0 and report["wrong"] == 0, report


def test_a_successor_that_fails_leaves_the_old_one_serving(control_dir, managed, tmp_path):
    """An upgrade whose successor cannot start (the program on disk is broken now): the old supervisor keeps
    serving, says why in STATUS= and the command's exit status, and no MAINPID= is sent."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    program = tmp_path / "port-sharding"
    shutil.copy(BIN, program)
    m = Managed([str(program), "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
                control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, _ = m.notified("READY=1", "READY", "1", pid=start["pid"])
    port = m.port()
    # A new build that is broken, installed as packages do: a new file renamed over the old one.
    broken = tmp_path / "port-sharding.new"
    broken.write_text("#!/bin/sh\necho 'broken build' >&2\nexit 3\n")
    broken.chmod(0o755)
    broken.rename(program)
    load = ClientLoad(port, threads=2, max_seconds=60)
    load.wait_for(50)
    out = cli(control_dir, "upgrade", "--port", str(port))
    assert out.returncode == 1, out
    assert "exited with status 3 before it was ready" in out.stderr and "keeps serving" in out.stderr, out.stderr
    m.wait("STATUS= saying why", lambda e: e["event"] == "notify" and "upgrade failed" in e["fields"].get("STATUS", ""))
    assert not any(e["event"] == "mainpid" for e in m.events), m.dump()
    load.wait_for(50)
    report = load.stop()
    assert report["failed"] == 0 and report["wrong"] == 0, report
    os.kill(start["pid"], signal.SIGTERM)
    _, stopped = m.wait("stop", lambda e: e["event"] == "stopped")
    assert stopped["code"] == 0


def environ(pid: int) -> dict[str, str]:
    """The environment `pid` was exec'd with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


SERVICE_ENV = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES", "PORT_SHARDING_UPGRADE_FROM"]


@pytest.mark.timeout(180)
def test_gunicorn_under_a_manager_reloads_and_upgrades_losing_nothing(control_dir, managed):
    """examples/systemd/gunicorn-port-sharding.service in small: gunicorn masters as command workers keep their
    private NOTIFY_SOCKET (their READY=1 never reaches the manager) and none of the manager's variables; the
    supervisor alone speaks to the manager; reload and upgrade under HTTP load lose nothing."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    if subprocess.run([sys.executable, "-c", "import gunicorn"], capture_output=True).returncode != 0:
        pytest.skip(f"gunicorn is not installed for {sys.executable} (make setup-python pip-installs it)")
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "1", "--no-control-socket", "--chdir", "examples/gunicorn",
                "app:app"]
    m = Managed([str(BIN), "serve", "--host", "127.0.0.1", "--port", "0", "-w", "2", "--ready", "notify", "--",
                 *gunicorn], "--watchdog-usec", str(WATCHDOG_USEC), "--fdstore", "8", control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, ready = m.notified("READY=1", "READY", "1", pid=start["pid"])
    assert "2/2 workers ready" in ready["fields"]["STATUS"], ready
    port = m.port()
    status = json.loads(cli(control_dir, "status", "--json", "--port", str(port)).stdout)
    for w in status[0]["workers"]:
        env = environ(w["pid"])
        assert env["NOTIFY_SOCKET"].startswith(str(control_dir)), env["NOTIFY_SOCKET"]
        assert env["LISTEN_FDS"] == "1" and env["LISTEN_FDNAMES"] == "port-sharding", env
        assert not {"WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE", "PORT_SHARDING_UPGRADE_FROM"} & set(env), env
    load = HttpLoad(port, threads=4, max_seconds=150)
    load.wait_for(200)
    phases = {"start": failed(load)}
    os.kill(start["pid"], signal.SIGHUP)
    i, _ = m.notified("RELOADING=1", "RELOADING", "1", after=i, pid=start["pid"])
    i, _ = m.notified("READY=1 after the reload", "READY", "1", after=i, pid=start["pid"])
    load.wait_for(200)
    phases["reload"] = failed(load)
    os.kill(start["pid"], signal.SIGUSR2)
    i, mainpid = m.wait("MAINPID", lambda e: e["event"] == "mainpid", after=i)
    i, _ = m.notified("READY=1 from the successor", "READY", "1", after=i, pid=mainpid["pid"])
    m.wait("the old supervisor's exit", lambda e: e["event"] == "exit" and e["pid"] == start["pid"] and e["code"] == 0)
    load.wait_for(200)
    phases["upgrade"] = failed(load)
    # gunicorn stops accepting at SIGTERM without serving what is queued (its own drain): the load ends first,
    # as a balancer would take the service out before stopping it.
    report = load.stop()
    os.kill(mainpid["pid"], signal.SIGTERM)
    m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=mainpid["pid"])
    m.wait("stop", lambda e: e["event"] == "stopped")
    # Only the supervisors spoke to the manager: gunicorn's READY=1 went to port-sharding.
    speakers = {e["pid"] for e in m.events if e["event"] == "notify"}
    assert speakers == {start["pid"], mainpid["pid"]}, (speakers, m.dump())
    print(f"\ngunicorn under the manager, reload and upgrade: {report} by {dict(load.by_who)}; failed after "
          f"each phase: {phases}")
    assert report["failed"] == 0 and report["wrong"] == 0, (report, phases)


APP = """
import ctypes, json, os, sys
import port_sharding

KEYS = {keys!r}
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p


def worker(listener):
    seen = {{k: [os.environ.get(k), libc.getenv(k.encode()) and libc.getenv(k.encode()).decode()] for k in KEYS}}
    with open(os.path.join(sys.argv[1], f"worker.{{os.getpid()}}"), "w") as f:
        json.dump(seen, f)
    for client, _ in listener:
        with client:
            client.sendall(client.recv(4096))


port_sharding.serve(0, host="127.0.0.1", workers=1, worker=worker)
"""


@pytest.mark.timeout(180)
def test_a_python_program_with_function_workers_upgrades_and_its_workers_see_no_service_environment(
        control_dir, managed, tmp_path):
    """A Python program (port_sharding.serve with a worker function) as the service: its function workers see
    none of the manager's variables, neither in os.environ nor in the C environment; SIGUSR2 re-executes the
    program (the interpreter with the same script and arguments) and it takes over, losing nothing."""
    if why := runtime_available("python"):
        pytest.skip(why)
    script = tmp_path / "app.py"
    script.write_text(APP.format(keys=SERVICE_ENV))
    out = tmp_path / "seen"
    out.mkdir()
    m = Managed([sys.executable, str(script), str(out)], "--watchdog-usec", str(WATCHDOG_USEC), "--fdstore", "4",
                control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, _ = m.notified("READY=1", "READY", "1", pid=start["pid"])
    load = ClientLoad(m.port(), threads=4, max_seconds=120)
    load.wait_for(100)
    os.kill(start["pid"], signal.SIGUSR2)
    i, mainpid = m.wait("MAINPID", lambda e: e["event"] == "mainpid", after=i)
    m.notified("READY=1 from the successor", "READY", "1", after=i, pid=mainpid["pid"])
    cmdline = Path(f"/proc/{mainpid['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
    assert cmdline[1:] == [str(script).encode(), str(out).encode()], cmdline
    load.wait_for(100)
    os.kill(mainpid["pid"], signal.SIGTERM)
    m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=mainpid["pid"])
    report = load.stop()
    m.wait("stop", lambda e: e["event"] == "stopped")
    seen = [json.loads(f.read_text()) for f in out.iterdir()]
    assert len(seen) >= 2, seen  # a worker of each supervisor
    for s in seen:
        assert all(v == [None, None] for v in s.values()), s
    print(f"\nPython program with function workers, upgrade: {report}")
    assert report["failed"] == 0 and report["wrong"] == 0, report


def unit(name: str) -> dict[str, list[str]]:
    """An example unit's settings: key → every value given (continuation lines joined)."""
    text = (ROOT / "examples" / "systemd" / name).read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_the_example_units_are_what_the_readme_and_these_tests_describe():
    """examples/systemd: what the stand-in manager above exercises is what the units configure."""
    for name in ["port-sharding.service", "port-sharding-activated.service", "gunicorn-port-sharding.service"]:
        u = unit(name)
        assert u["Type"] == ["notify-reload"] and u["NotifyAccess"] == ["main"], name
        assert u["KillMode"] == ["mixed"] and u["Restart"] == ["on-failure"] and "WatchdogSec" in u, name
        assert u["ExecStart"][0].split()[1] == "serve", name
    own = unit("port-sharding.service")
    assert int(own["FileDescriptorStoreMax"][0]) >= 4 + 1  # every worker's listener and a reload's new one
    assert own["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"] and "--port 80" in own["ExecStart"][0]
    activated = unit("port-sharding-activated.service")
    assert "--port" not in activated["ExecStart"][0] and "--workers" not in activated["ExecStart"][0]
    assert "FileDescriptorStoreMax" not in activated and "AmbientCapabilities" not in activated
    sockets = unit("port-sharding-activated.socket")
    assert sockets["ReusePort"] == ["yes"] and len(sockets["ListenStream"]) == 4 and len(set(sockets["ListenStream"])) == 1
    gunicorn = unit("gunicorn-port-sharding.service")
    assert "--ready notify" in gunicorn["ExecStart"][0] and "gunicorn" in gunicorn["ExecStart"][0]


@pytest.mark.timeout(120)
def test_a_drain_that_makes_progress_asks_for_more_time(control_dir, managed):
    """EXTEND_TIMEOUT_USEC= during a drain, once connections still finish (here: one of two held ones closes),
    so TimeoutStopSec= does not cut a drain that gets somewhere."""
    if why := runtime_available("rust"):
        pytest.skip(why)
    m = Managed([str(BIN), "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1", "--drain-timeout", "60s"],
                control_dir=control_dir)
    managed.append(m)
    _, start = m.wait("start", lambda e: e["event"] == "start")
    i, _ = m.notified("READY=1", "READY", "1", pid=start["pid"])
    port = m.port()
    held = [socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) for _ in range(2)]
    for s in held:  # echoed: both are being served
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    os.kill(start["pid"], signal.SIGTERM)
    i, stopping = m.notified("STOPPING=1", "STOPPING", "1", after=i, pid=start["pid"])
    assert "2 connection(s) open" in stopping["fields"]["STATUS"], stopping
    held.pop().close()  # progress
    _, extend = m.notified("EXTEND_TIMEOUT_USEC=", "EXTEND_TIMEOUT_USEC", after=i, pid=start["pid"])
    assert int(extend["fields"]["EXTEND_TIMEOUT_USEC"]) == 10_000_000, extend
    held.pop().close()
    _, stopped = m.wait("stop", lambda e: e["event"] == "stopped")
    assert stopped["code"] == 0, m.dump()
