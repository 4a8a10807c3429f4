"""In containers and Kubernetes (issue #21): the CLI as PID 1 of a pid namespace and as a child subreaper (no zombie
stays, SIGTERM drains to exit 0), the worker count from CPU affinity and cgroup CPU quotas, the admin endpoint
through each phase (its /metrics read by Prometheus' own parser), the drain delay (connections keep succeeding),
`probe`, `status` from outside the namespace, and the example's manifests.

Real processes, real namespaces and cgroups (as root, as CI runs); what the machine cannot do is skipped with the
reason. Servers run in their own process groups and are killed by pid; cgroups made here are removed here.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .harness import BIN, PATIENCE, ROOT, ClientLoad, Server, runtime_available

FD3_WORKER = ROOT / "cli" / "tests" / "programs" / "fd3_worker.py"
KUBE = ROOT / "examples" / "kubernetes"


@pytest.fixture(autouse=True)
def _cli_built() -> None:
    if why := runtime_available("rust"):
        pytest.skip(why)


def cli(*args: str, control_dir: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI on the servers of `control_dir` (the session's own by default)."""
    env = dict(os.environ, **({"PORT_SHARDING_CONTROL_DIR": str(control_dir)} if control_dir else {}))
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=PATIENCE, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def until(what: str, check, timeout: float = PATIENCE):
    """Polls `check` until it returns something true; fails naming `what` when it does not come."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def admin_port(server: Server) -> int:
    line = server.wait_log("admin: http://")
    m = re.search(r"http://[^/]*:(\d+)/", line)
    assert m, line
    return int(m.group(1))


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def metrics(port: int) -> dict[str, list]:
    """/metrics, parsed by prometheus_client: family name → its samples."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    name = sample.removesuffix("_total")
    [s] = [s for s in families[name] if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    return s.value


def echo(port: int, msg: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def zombies_under(pid: int) -> list[int]:
    return [c for c in children(pid) if proc_status(c).get("State", "").startswith("Z")]


# --- PID 1 and subreaper -----------------------------------------------------------------------------------------

def orphaning_worker(seconds: float) -> list[str]:
    """A command worker that leaves an orphan behind: `sleep` in a background subshell that exits at once."""
    return ["--", "sh", "-c", f"(sleep {seconds} &); exec {sys.executable} {FD3_WORKER}"]


def need_unshare() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a pid namespace needs root and unshare(1) (util-linux)")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid does not work here: {probe.stderr.strip()}")


def test_as_pid_1_no_zombie_remains_and_sigterm_drains_to_exit_0(control_dir: Path, servers: list[Server]) -> None:
    """The CLI as PID 1 of a pid namespace: command workers that leave orphans (at start, at each of two reloads —
    SIGHUP, then `reload` —, and when one is killed and restarted) leave no zombie; status from outside names the
    namespace's pids; SIGTERM from outside drains to exit 0."""
    need_unshare()
    unshare = ["unshare", "--pid", "--fork", "--mount-proc", str(BIN), "serve"]
    server = Server("rust", 0, control_dir, "-w", "2", "--admin", "127.0.0.1:0", *orphaning_worker(0.2),
                    command=unshare)
    servers.append(server)
    server.ready()
    assert "port-sharding[1]:" in server.wait_log("server starting on"), "the supervisor is PID 1 of its namespace"
    [supervisor] = until("the supervisor under unshare", lambda: children(server.pid))
    # status from outside the namespace: the pids are translated, and it says so.
    [st] = json.loads(cli("status", "--port", str(server.port), "--json", control_dir=control_dir).stdout)
    assert st["pid"] == supervisor and st["pid_namespace"]["pid"] == 1 and st["pid_namespace"]["translated"], st
    assert {w["pid"] for w in st["workers"]} <= set(children(supervisor)), st  # (its orphans are children too)
    table = cli("status", "--port", str(server.port), control_dir=control_dir).stdout
    assert f"server pid {supervisor} (pid 1 in its pid namespace)" in table, table
    # Two reloads: SIGHUP to PID 1 (handled as anywhere else), then the control socket's.
    os.kill(supervisor, signal.SIGHUP)
    server.wait_log("reload: done")
    cli("reload", "--port", str(server.port), control_dir=control_dir)
    [st] = json.loads(cli("status", "--port", str(server.port), "--json", control_dir=control_dir).stdout)
    os.kill(st["workers"][0]["pid"], signal.SIGKILL)  # a worker dies; its replacement leaves an orphan too
    server.wait_log("restarting in")
    port = admin_port(server)
    # 2 workers at start + 2 per reload + the replacement: 7 orphans, each reaped (never a zombie for good).
    until("every orphan reaped", lambda: value(metrics(port), "port_sharding_orphans_reaped_total") >= 7)
    until("no zombie under the supervisor", lambda: not zombies_under(supervisor))
    os.kill(supervisor, signal.SIGTERM)
    assert server.wait_exit() == 0, "\n".join(server.lines)
    assert any("reaped" in line and "reparented to PID 1" in line for line in server.lines)


def test_the_cli_is_a_subreaper_and_reaps_orphans_of_its_workers(control_dir: Path, servers: list[Server]) -> None:
    """Not PID 1: the CLI makes itself a child subreaper, so a worker's orphan is reparented to the supervisor (not to
    the machine's init) and reaped by it once it exits."""
    server = Server("rust", 0, control_dir, "-w", "1", *orphaning_worker(60)).ready()
    servers.append(server)
    orphans = until("the orphan reparented to the supervisor",
                    lambda: [c for c in children(server.pid) if c not in server.worker_pids()
                             and proc_status(c).get("Name") == "sleep"])
    os.kill(orphans[0], signal.SIGKILL)
    until("the orphan reaped", lambda: not proc_status(orphans[0]))
    server.wait_log("reaped 1 orphan(s)")
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait_exit() == 0


# --- Worker count ------------------------------------------------------------------------------------------------

def start_log(server: Server) -> str:
    return server.wait_log("server starting on")


def test_taskset_to_one_cpu_gives_one_worker(control_dir: Path, servers: list[Server]) -> None:
    if not shutil.which("taskset"):
        pytest.skip("taskset(1) (util-linux) is not installed")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process may run on one CPU only: nothing to narrow")
    cpu = min(os.sched_getaffinity(0))
    server = Server("rust", 0, control_dir, command=["taskset", "-c", str(cpu), str(BIN), "serve"])
    servers.append(server)
    line = start_log(server)
    assert re.search(r": 1 worker\(s\) \(CPU affinity: 1 of \d+ CPUs\)", line), line
    server.ready()
    assert len(server.worker_pids()) == 1


def cpu_cgroup() -> tuple[Path, str]:
    """A fresh cgroup under the hierarchy that has the cpu controller (v1 `cpu`, or v2 with cpu enabled below its
    root), and its version; skips with the reason where none can be made."""
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    name = f"port-sharding-test-{os.getpid()}-{time.monotonic_ns()}"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split(" ")[:3]
        mount = Path(left.split(" ")[4])
        if fstype == "cgroup" and "cpu" in options.split(","):
            try:
                (mount / name).mkdir()
            except OSError as e:
                pytest.skip(f"cannot make a cgroup under {mount}: {e}")
            return mount / name, "v1"
        if fstype == "cgroup2" and "cpu" in (mount / "cgroup.controllers").read_text().split():
            try:
                (mount / "cgroup.subtree_control").write_text("+cpu")
                (mount / name).mkdir()
            except OSError as e:
                pytest.skip(f"cannot make a cgroup with the cpu controller under {mount}: {e}")
            return mount / name, "v2"
    pytest.skip("no cgroup hierarchy with the cpu controller is mounted")


def remove_cgroup(group: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            group.rmdir()
            return
        except OSError:  # EBUSY while an exited member is not gone yet
            assert time.monotonic() < deadline, f"cgroup {group} still busy"
            time.sleep(0.05)


@pytest.mark.parametrize("cpus, workers", [(0.5, 1), (1.5, 2)])
def test_a_cgroup_cpu_quota_sets_the_worker_count_rounded_up(control_dir: Path, servers: list[Server], cpus: float,
                                                             workers: int) -> None:
    """0.5 CPUs gives 1 worker; 1.5 gives 2 (the standard library's count would give 1), on a machine that lets this
    process use at least 2."""
    if len(os.sched_getaffinity(0)) < workers:
        pytest.skip(f"this process may use {len(os.sched_getaffinity(0))} CPU(s): a quota of {cpus} cannot show "
                    f"{workers} workers")
    group, version = cpu_cgroup()
    try:
        period = 100_000
        if version == "v1":
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
        else:
            (group / "cpu.max").write_text(f"{int(cpus * period)} {period}")
        enter = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", str(BIN), "serve"]
        server = Server("rust", 0, control_dir, command=enter)
        servers.append(server)
        line = start_log(server)
        assert f": {workers} worker(s) (cgroup CPU quota {cpus:g})" in line, line
        server.ready()
        assert len(server.worker_pids()) == workers
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait_exit() == 0
    finally:
        for s in servers:
            s.kill()
        remove_cgroup(group)


# --- Admin endpoint, drain delay, probe -------------------------------------------------------------------------

def probe(port: int, control_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli("probe", "--port", str(port), control_dir=control_dir, check=False)


def check_phase(port: int, phase: str, ready: bool) -> None:
    """/readyz, /livez and /metrics agree on the phase."""
    status, body = get(port, "/readyz")
    assert (status, body.split(":")[0]) == ((200, "ready") if ready else (503, "not ready")), body
    assert phase in body, body
    assert get(port, "/livez")[0] == 200
    m = metrics(port)
    assert value(m, "port_sharding_ready") == (1 if ready else 0)
    assert value(m, "port_sharding_phase", phase=phase) == 1


def test_the_admin_endpoint_through_every_phase(control_dir: Path, servers: list[Server], tmp_path: Path) -> None:
    """starting (a worker that never says READY=1): live, not ready; serving: ready, metrics count the worker that
    failed to start; SIGTERM with a drain delay: still ready and accepting; a stop request cuts the delay short:
    draining, not ready, still live, until the last connection ends; exit 0."""
    hold = tmp_path / "hold"
    hold.touch()
    server = Server("rust", 0, control_dir, "-w", "1", "--admin", "127.0.0.1:0", "--ready", "notify",
                    "--ready-timeout", "2s", "--drain-delay", "1h",
                    "--", sys.executable, str(FD3_WORKER), "--notify", "--hold-if", str(hold))
    servers.append(server)
    port = admin_port(server)
    server.wait_log("holding, never ready")
    check_phase(port, "starting", ready=False)
    assert probe(server.port, control_dir).returncode == 1
    assert "is starting" in probe(server.port, control_dir).stderr

    hold.unlink()  # the held worker is killed at its ready timeout; its replacement says READY=1
    until("serving", lambda: get(port, "/readyz")[0] == 200)
    check_phase(port, "serving", ready=True)
    m = metrics(port)
    assert value(m, "port_sharding_worker_crashes_total") >= 1
    assert value(m, "port_sharding_worker_starts_total") >= 2
    assert value(m, "port_sharding_worker_ready", worker="0", kind="command") == 1
    [info] = m["port_sharding_worker_info"]
    assert info.labels["kind"] == "command" and int(info.labels["generation"]) >= 2
    assert probe(server.port, control_dir).returncode == 0

    os.kill(server.pid, signal.SIGTERM)
    server.wait_log("SIGTERM: draining in 3600s")
    check_phase(port, "serving", ready=True)
    assert "drain delay" in get(port, "/readyz")[1]
    for i in range(20):  # the listeners still accept
        assert echo(server.port, f"during the delay {i}".encode()).endswith(f"during the delay {i}".encode())
    assert probe(server.port, control_dir).returncode == 0
    [st] = json.loads(cli("status", "--port", str(server.port), "--json", control_dir=control_dir).stdout)
    assert st["state"] == "serving" and st["drain_in_secs"] > 0, st

    held = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # keeps the worker busy: a long drain
    cli("stop", "--port", str(server.port), control_dir=control_dir)
    server.wait_log("draining now")
    check_phase(port, "draining", ready=False)
    assert probe(server.port, control_dir).returncode == 1
    held.sendall(b"last")
    held.shutdown(socket.SHUT_WR)
    assert held.recv(4096).endswith(b"last")
    held.close()
    assert server.wait_exit() == 0, "\n".join(server.lines)


def test_connections_keep_succeeding_during_the_drain_delay(control_dir: Path, servers: list[Server]) -> None:
    """Under load, SIGTERM with a drain delay: every connection made during the delay is answered; a second SIGTERM
    then stops at once (exit 1: forced)."""
    server = Server("rust", 0, control_dir, "-w", "2", "--drain-delay", "1h").ready()
    servers.append(server)
    load = ClientLoad(server.port, threads=4, max_seconds=60)
    try:
        load.wait_for(200)
        os.kill(server.pid, signal.SIGTERM)
        server.wait_log("SIGTERM: draining in")
        load.wait_for(1000)  # answered after SIGTERM
    finally:
        summary = load.stop()
    assert summary["failed"] == 0 and summary["wrong"] == 0, summary
    os.kill(server.pid, signal.SIGTERM)
    server.wait_log("SIGTERM again: stopping now")
    assert server.wait_exit() == 1


def test_probe_without_a_server_says_why() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = probe(port)
    assert out.returncode == 1 and out.stderr.startswith("port-sharding probe: not serving: "), out
    assert len(out.stderr.strip().splitlines()) == 1


# --- The example --------------------------------------------------------------------------------------------------

def manifests() -> dict[str, dict]:
    docs = {}
    for f in ("deployment.yaml", "service.yaml"):
        for doc in yaml.safe_load_all((KUBE / f).read_text()):
            docs[doc["kind"]] = doc
    return docs


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    assert m, text
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def test_the_kubernetes_manifests_parse_and_add_up() -> None:
    docs = manifests()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    [c] = pod["spec"]["containers"]
    args = c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(flag(args, "--port"))
    assert flag(args, "--admin") == f":{ports['admin']}"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    # terminationGracePeriodSeconds >= drain delay + drain timeout + a few seconds.
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= seconds(flag(args, "--drain-delay")) + seconds(flag(args, "--drain-timeout")) + 3, grace
    assert seconds(flag(args, "--drain-delay")) > 0
    assert "preStop" not in json.dumps(c), "the drain delay replaces a preStop sleep"
    # The worker count follows the CPU limit: no --workers, and a limit whose ceiling the comment names.
    assert "--workers" not in args and "-w" not in args
    limit = c["resources"]["limits"]["cpu"]
    cpus = int(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
    assert f"{math.ceil(cpus)} worker(s) (cgroup CPU quota {cpus:g})" in (KUBE / "deployment.yaml").read_text()
    # The Service reaches these pods' http port.
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["targetPort"] in ports
    # The image has what the Deployment runs.
    dockerfile = (KUBE / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
        assert (ROOT / src).exists(), src
    assert "/app/app.py" in dockerfile and args[-1] == "/app/app.py"
    assert 'ENTRYPOINT ["port-sharding", "serve"]' in dockerfile


def test_the_example_app_serves_under_the_deployments_arguments(control_dir: Path, servers: list[Server]) -> None:
    """The Deployment's arguments (ports made ephemeral, the delay shortened), with the example app as workers:
    HTTP answers, the admin endpoint says ready, SIGTERM drains to exit 0."""
    [c] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = list(c["args"])
    args[args.index("--admin") + 1] = "127.0.0.1:0"
    args[args.index("--drain-delay") + 1] = "100ms"
    args[args.index("--") + 1:] = [sys.executable, str(KUBE / "app.py")]
    del args[args.index("--port"):args.index("--port") + 2]  # the harness passes --host and --port
    server = Server("rust", 0, control_dir, *args).ready()
    servers.append(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    r = conn.getresponse()
    assert r.status == 200 and r.read().decode().startswith("Hello from "), r.status
    conn.close()
    assert get(admin_port(server), "/readyz")[0] == 200
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait_exit() == 0, "\n".join(server.lines)
