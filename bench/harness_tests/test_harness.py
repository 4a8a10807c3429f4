"""The bench harness itself (bench/harness): importing it does nothing, its parsers read what strace and
perf print, `report` rewrites BENCHMARKS.md from saved results, and the minimal C server echoes. Real
processes and loopback sockets; no timing assertions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

from harness.context import Context  # noqa: E402
from harness.bulk import disturbance_table, paired_ratios, paired_table  # noqa: E402
from harness.markdown import BULK_CC_BEGIN, BULK_CC_END, SCALING_BEGIN, SCALING_END, merge_scaling, merge_section  # noqa: E402
from harness.measure import tcp_counters  # noqa: E402
from harness.netns import congestion_control, rerun_inside  # noqa: E402
from harness.quota import joiner, make_group, server_quota  # noqa: E402
from harness.matrix import cmd_report  # noqa: E402
from harness.servers import echo_once, free_port  # noqa: E402
from harness.syscalls import parse_perf_stat, parse_strace_c  # noqa: E402
from pytest_guards import DEFAULT_SIGNALS  # noqa: E402 (scripts/, put on the path by conftest.py)

MODULES = ["__main__", "chart", "context", "footprint", "format", "markdown", "matrix", "measure", "scaling", "servers",
           "syscalls", "targets", "udp"]


def test_importing_the_harness_creates_nothing(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = "import importlib\n" + "".join(f"importlib.import_module('harness.{m}')\n" for m in MODULES)
    r = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env={**os.environ, "TMPDIR": str(tmp)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")
    assert list(tmp.iterdir()) == [], "a module made temp files at import"


def test_no_module_keeps_global_state() -> None:
    for m in MODULES:
        assert "global " not in (BENCH / "harness" / f"{m}.py").read_text(), m


def test_strace_summary_is_parsed() -> None:
    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           2      2000       500 recvfrom
 30.00    0.003000           3      1000           sendto
  0.10    0.000010          10         1           epoll_ctl
------ ----------- ----------- --------- --------- ----------------
100.00    0.007010                  3001       500 total
"""
    assert parse_strace_c(text) == {"recvfrom": 2000, "sendto": 1000, "epoll_ctl": 1}


def test_perf_stat_is_parsed() -> None:
    text = """# started on Sun Nov 29 10:00:00 2026

394861,,raw_syscalls:sys_enter,2000000,100.00,,
94231,,syscalls:sys_enter_accept4,2000000,100.00,,
0,,syscalls:sys_enter_read,2000000,100.00,,
<not counted>,,syscalls:sys_enter_brk,0,0.00,,
"""
    assert parse_perf_stat(text) == {"total": 394861, "accept4": 94231, "read": 0}


def context(root: Path, tmp: Path) -> Context:
    ctx = Context.from_env(tmp / "control", tmp / "logs")
    return Context(**{**ctx.__dict__, "root": root})


def test_runs_are_compared_pair_by_pair_with_an_interval() -> None:
    # Run i of each server: the engine twice uvloop's MB/s in every pair, half its CPU per byte in two of three.
    engine = [{"mb_per_sec": 2000, "mb_per_server_cpu_s": 2500}, {"mb_per_sec": 1800, "mb_per_server_cpu_s": 2400},
              {"mb_per_sec": 1900, "mb_per_server_cpu_s": 2200}, {"mb_per_sec": 0, "mb_per_server_cpu_s": 0}]
    uvloop = [{"mb_per_sec": 1000, "mb_per_server_cpu_s": 2500}, {"mb_per_sec": 900, "mb_per_server_cpu_s": 1200},
              {"mb_per_sec": 950, "mb_per_server_cpu_s": 1100}, {"mb_per_sec": 1000, "mb_per_server_cpu_s": 2000}]
    p = paired_ratios(engine, uvloop)
    assert p["pairs"] == 3  # the failed fourth run is left out, not counted as a zero
    assert p["mb"] == (2.0, 2.0, 2.0) and p["mb_ahead"] == 3
    median, low, high = p["cpu"]
    assert median == 0.5 and low <= median <= high and high == 1.0 and p["cpu_ahead"] == 3
    assert paired_ratios(engine, uvloop) == p  # a fixed seed: the same runs give the same interval
    same = paired_ratios(uvloop, uvloop)
    assert same["mb"] == (1.0, 1.0, 1.0) and same["cpu"] == (1.0, 1.0, 1.0)
    table = paired_table({"engine-cli": {"bulk-4": engine}, "uvloop": {"bulk-4": uvloop}}, ["bulk-4"],
                         {"engine-cli": "engine (CLI)"}, ["engine-cli", "uvloop"])
    assert "| engine (CLI) | bulk-4 | 3 | 2.00× (2.00–2.00) | 3 | 0.50× (0.50–1.00) | 3 |" in table
    assert table.count("\n") == 3  # header, rule, one row: uvloop is not compared with itself


def test_tcp_counters_move_with_real_traffic() -> None:
    # A connection on loopback sends at least one segment: the counters are read, and they are deltas-ready ints.
    before = tcp_counters()
    assert set(before) >= {"RetransSegs", "TCPTimeouts"}, before
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()[:2], timeout=5):
        pass
    after = tcp_counters()
    assert all(after[n] >= before[n] for n in before)


def test_disturbance_table_counts_runs_with_a_timeout() -> None:
    runs = [{"tcp": {"RetransSegs": 10, "TCPSACKReorder": 4, "TCPTimeouts": 0}},
            {"tcp": {"RetransSegs": 300, "TCPSACKReorder": 40, "TCPTimeouts": 2}},
            {"tcp": {"RetransSegs": 20, "TCPSACKReorder": 6, "TCPTimeouts": 0}}, {}]  # the last saved before counters
    table = disturbance_table({"uvloop": {"bulk-4": runs}}, ["bulk-4", "stream-4"], {"uvloop": "uvloop"}, ["uvloop"])
    assert "| uvloop | bulk-4 | 3 | 20 (300) | 6 | 1 |" in table
    assert disturbance_table({"uvloop": {"bulk-4": [{}]}}, ["bulk-4"], {}, ["uvloop"]) == ""


def test_a_bench_under_another_congestion_control_gets_a_network_namespace_of_its_own(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root with CAP_SYS_ADMIN)")
    host = congestion_control()
    seen = tmp_path / "seen"
    code, why = rerun_inside("reno", ["sh", "-c", f"cat /proc/sys/net/ipv4/tcp_congestion_control > {seen}; "
                                                  f"echo $PS_BENCH_NETNS_CC >> {seen}; ip -o link show lo >> {seen}"])
    assert (code, why) == (0, "")
    cc, marker, lo = seen.read_text().splitlines()
    assert (cc, marker) == ("reno", "reno") and "UP" in lo
    assert congestion_control() == host  # the machine's own setting is untouched
    code, why = rerun_inside("no-such-algorithm", ["true"])
    assert code == 2 and "no-such-algorithm" in why


def test_a_server_held_to_a_cpu_quota_runs_in_a_cgroup_of_the_bench_and_the_group_goes_away() -> None:
    with pytest.raises(OSError, match="1 to 100"):
        make_group(0)
    try:
        with server_quota(40) as group:
            assert group is not None
            limit = (group / "cpu.max").read_text().split() if (group / "cpu.max").exists() else \
                [(group / "cpu.cfs_quota_us").read_text().strip(), (group / "cpu.cfs_period_us").read_text().strip()]
            assert limit == ["40000", "100000"]
            child = subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=joiner(group), capture_output=True, text=True,
                                   timeout=10)
            assert group.name in child.stdout
    except PermissionError as e:
        pytest.skip(f"cannot make a cgroup here (needs root): {e}")
    except OSError as e:
        if "no cgroup cpu controller" in str(e):
            pytest.skip(str(e))
        raise
    assert not group.exists()


def test_a_debug_build_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # The Makefile exports PORT_SHARDING_BIN as the debug build for the tests; a bench given it measured that
    # build as both server and load generator until 6 Dec 2026. Nothing is started: the refusal comes first.
    debug = tmp_path / "debug" / "port-sharding"
    env = {**os.environ, "PORT_SHARDING_BIN": str(debug), "OUT": str(tmp_path / "out")}
    env.pop("BENCH_ALLOW_DEBUG", None)
    r = subprocess.run([sys.executable, str(BENCH / "run.py"), "bulk"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"{debug} is a debug build" in r.stderr and "release" in r.stderr
    assert not (tmp_path / "out").exists()


def test_report_rewrites_benchmarks_from_saved_results(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "bench" / "results").mkdir(parents=True)
    shutil.copy(BENCH / "results" / "matrix.json", root / "bench" / "results" / "matrix.json")
    (root / "bench" / "NOTES.md").write_text("## Notes\n\nhand-written\n")
    ctx = context(root, tmp_path)
    assert cmd_report(ctx) == 0
    text = (root / "BENCHMARKS.md").read_text()
    saved = json.loads((root / "bench" / "results" / "matrix.json").read_text())
    for heading in ("## Throughput", "## Latency", "## Targets", "## Notes", "## Reproduce", SCALING_BEGIN):
        assert heading in text, heading
    assert ("## Against the C floor" in text) == ("c-epoll" in saved["summary"])
    assert (root / "bench" / "chart.svg").read_text().startswith("<svg")

    # The bulk tables under another congestion control land between their markers and outlive a rewrite.
    merge_section(ctx, BULK_CC_BEGIN, BULK_CC_END, "### under cubic\n")
    assert cmd_report(ctx) == 0
    text = (root / "BENCHMARKS.md").read_text()
    assert text.count("### under cubic") == 1 and text.index(BULK_CC_BEGIN) < text.index("### under cubic")

    # A scaling table measured elsewhere lands between the markers and replaces the same machine's one.
    merge_scaling(ctx, "### 16 × Test CPU\n\n| workers |\n|---|\n| 1 |\n", "16 × Test CPU")
    merge_scaling(ctx, "### 16 × Test CPU\n\n| workers |\n|---|\n| 2 |\n", "16 × Test CPU")
    text = (root / "BENCHMARKS.md").read_text()
    scaling = text[text.index(SCALING_BEGIN):text.index(SCALING_END)]
    assert text.count("### 16 × Test CPU") == 1 and "| 2 |" in scaling and "| 1 |\n" not in scaling


@pytest.fixture(scope="module")
def c_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("c") / "c_epoll_echo"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(BENCH / "servers" / "c_epoll_echo.c")],
                   check=True, timeout=120)
    return out


def start(binary: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    # SIGINT and SIGQUIT as a terminal would give them, even when this run inherited them ignored (nohup).
    proc = subprocess.Popen([*DEFAULT_SIGNALS, str(binary), "-p", str(port), *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    until = time.monotonic() + 10
    while not echo_once(port, timeout=0.5):  # bounded by `until`
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < until, "the C server did not answer"
        time.sleep(0.01)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_c_server_echoes_until_the_client_closes(c_server: Path) -> None:
    proc, port = start(c_server, "-w", "2", "-m", "echo")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            data = bytes(range(256)) * 2000  # 512 KB: more than the socket buffers, so backpressure is exercised
            s.sendall(data[:1000])
            got = b""
            while len(got) < 1000:
                got += s.recv(65536)
            s.sendall(data[1000:])
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                got += chunk
            assert got == data
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_c_server_once_replies_then_closes(c_server: Path) -> None:
    proc, port = start(c_server, "-m", "once")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ping")
            got = b""
            while chunk := s.recv(100):
                got += chunk
            assert got == b"ping"
    finally:
        stop(proc)


def test_c_server_refuses_bad_arguments(c_server: Path) -> None:
    for args in (["-p", "0"], ["-p", "80000"], ["-p", "9", "-w", "0"], ["-p", "9", "-m", "loud"], ["-p", "9", "-H", "::1"]):
        r = subprocess.run([str(c_server), *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip(), args


@pytest.fixture(scope="session")
def c_udp_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("c") / "c_udp_echo"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(BENCH / "servers" / "c_udp_echo.c")],
                   check=True, timeout=120)
    return out


def test_c_udp_server_echoes_each_datagram_to_its_sender(c_udp_server: Path) -> None:
    from harness.udp import udp_ready

    port = free_port()
    proc = subprocess.Popen([*DEFAULT_SIGNALS, str(c_udp_server), "-p", str(port), "-w", "2"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        udp_ready(port, timeout=10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            for data in (b"", b"x", bytes(range(256)) * 200):  # empty, one byte, 51,200 bytes
                s.sendto(data, ("127.0.0.1", port))
                assert s.recvfrom(65536) == (data, ("127.0.0.1", port))
    finally:
        stop(proc)
    for args in (["-p", "0"], ["-p", "9", "-w", "0"], ["-p", "9", "-H", "::1"]):
        r = subprocess.run([str(c_udp_server), *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2, (args, r.stderr)
