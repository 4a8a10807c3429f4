"""Zero-loss rolling upgrades: takeovers in every direction between the Rust CLI, Python and Ruby, under
continuous load, and a takeover by an unprivileged user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile

import pytest

from .harness import BIN, ClientLoad, Server, assert_gone, runtime_available

# Six takeovers, each direction once: py→rb, rb→py, py→cli, cli→rb, rb→cli, cli→py.
CHAIN = ["python", "ruby", "python", "rust", "ruby", "rust", "python"]


@pytest.mark.parametrize("chain", [CHAIN], ids=["every-direction"])
def test_takeovers_across_runtimes_under_load_lose_nothing(chain, control_dir, servers, loads):
    for runtime in set(chain):
        if why := runtime_available(runtime):
            pytest.skip(why)
    first = Server(chain[0], 0, control_dir, "--workers", "2").ready()
    servers.append(first)
    port = first.port
    load = ClientLoad(port)
    loads.append(load)
    load.wait_for(200)
    generations = [first]
    for i, runtime in enumerate(chain[1:], start=1):
        workers = "3" if i % 2 else "1"  # more sockets than received, then fewer
        new = Server(runtime, port, control_dir, "--workers", workers, "--takeover")
        servers.append(new)
        new.ready()
        old = generations[-1]
        assert old.wait_exit() == 0, "\n".join(old.lines)
        assert any("stopped (taken over)" in line for line in old.lines), "\n".join(old.lines)
        assert any(f"from {old.runtime} server pid {old.pid}" in line for line in new.lines), "\n".join(new.lines)
        # The load ran across the hand-over, and the new generation alone now answers.
        load.wait_for(200)
        generations.append(new)
    report = load.stop()
    print(f"takeovers {'→'.join(chain)}: {report}")
    assert report["failed"] == 0 and report["wrong"] == 0, report
    last = generations[-1]
    last.proc.terminate()
    assert last.wait_exit() == 0
    assert_gone([pid for g in generations for pid in g.worker_pids()])


def test_takeover_without_privileges(servers, loads):
    """Two CLI servers run as uid 65534 (nobody): the second takes the first's sockets, with no privilege."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid 65534 needs root (as a normal user, every other test is unprivileged)")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    if why := runtime_available("rust"):
        pytest.skip(why)
    nobody = pwd.getpwuid(65534)
    # The binary may sit under a folder nobody cannot enter (e.g. /root): run a copy from a world-readable one.
    work = tempfile.mkdtemp(prefix="ps-nobody-")
    try:
        os.chmod(work, 0o755)
        binary = os.path.join(work, "port-sharding")
        shutil.copy(BIN, binary)
        control = os.path.join(work, "control")
        os.mkdir(control, 0o700)
        os.chown(control, nobody.pw_uid, nobody.pw_gid)
        drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all"]
        env = dict(os.environ, HOME=work)
        command = drop + [binary, "serve", "--workers", "1"]
        old = Server("rust", 0, control, command=command, env=env)
        servers.append(old)
        old.ready()
        load = ClientLoad(old.port, threads=2)
        loads.append(load)
        load.wait_for(50)
        new = Server("rust", old.port, control, "--takeover", command=command, env=env)
        servers.append(new)
        new.ready()
        assert old.wait_exit() == 0, "\n".join(old.lines)
        load.wait_for(50)
        report = load.stop()
        assert report["failed"] == 0 and report["wrong"] == 0, report
        assert os.stat(f"/proc/{new.pid}").st_uid == 65534
    finally:
        shutil.rmtree(work, ignore_errors=True)

