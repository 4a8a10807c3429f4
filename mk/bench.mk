# Benchmarks (issues 6 and 14): bench/harness (run as bench/run.py) drives target/release/port-sharding bench
# against every server, the minimal C epoll server (the floor) and uvloop included.
BENCH_DURATION ?= 3
BENCH_RUNS     ?= 5
# bench-bulk under cubic in a network namespace of its own, free and with the server held to 40 % of its core
# (needs root): steps of `make bench` after the matrix.
BENCH_BULK_CC_RUNS ?= 10
OUT            ?= bench-out
CC             ?= cc
C_SERVER       := target/bench/c_epoll_echo
C_UDP_SERVER   := target/bench/c_udp_echo
# What every bench measures, as server and as load generator: the release build bench-build makes. The
# Makefile exports PORT_SHARDING_BIN as the debug build for the tests; a bench must never run that one.
BENCH_BIN      := $(TARGET_DIR)/release/port-sharding
bench bench-quick bench-floor bench-bulk bench-udp bench-scaling bench-apps: export PORT_SHARDING_BIN := $(BENCH_BIN)

.PHONY: bench-apps bench bench-quick bench-scaling bench-floor bench-bulk bench-udp bench-build test-bench-harness

$(C_SERVER): bench/servers/c_epoll_echo.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -o $@ $<

$(C_UDP_SERVER): bench/servers/c_udp_echo.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -o $@ $<

# uvloop is a third-party baseline (pip, user-level); without it its row says "skipped".
bench-build: setup-rust $(C_SERVER)
	$(CARGO) build --release --locked -q --bin port-sharding
	@$(PYTHON) -c 'import uvloop' 2>/dev/null || $(PYTHON) -m pip install --user -q uvloop \
		|| echo "make bench: uvloop not installed (pip failed): its row will be skipped"

bench: bench-build $(C_UDP_SERVER) ## servers x workloads (pinned, medians of 5; stream/bulk of the engine, uvloop and C: 15, and 2 x 10 under cubic, server free / held to 40 %) + C floor, syscalls, memory, start-up, drain -> BENCHMARKS.md, bench/chart.svg; then UDP vs its C floor -> stdout
	BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py matrix
	OUT=$(OUT) BENCH_CC=cubic BENCH_RUNS=$(BENCH_BULK_CC_RUNS) $(PYTHON) bench/run.py bulk \
	  || echo "make bench: the bulk comparison under cubic did not run (see above); BENCHMARKS.md keeps the last one"
	OUT=$(OUT) BENCH_CC=cubic BENCH_SERVER_CPU_QUOTA=40 BENCH_RUNS=$(BENCH_BULK_CC_RUNS) $(PYTHON) bench/run.py bulk \
	  || echo "make bench: the bulk comparison with the server held to 40 % did not run (see above); BENCHMARKS.md keeps the last one"
	OUT=$(OUT) BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py udp

bench-quick: bench-build ## a fast smoke run of `make bench` (1 run of 1 s per cell; still rewrites BENCHMARKS.md)
	BENCH_DURATION=1 BENCH_RUNS=1 BENCH_BULK_RUNS=1 $(PYTHON) bench/run.py matrix

bench-floor: bench-build ## the engine vs the minimal C server only: CPU and system calls per op -> stdout, $(OUT)/floor-*.json
	OUT=$(OUT) BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py floor

bench-bulk: bench-build ## the engine vs uvloop and the C server on bulk streams (stream-4, bulk-4 = 4 x 256 MiB): MB/s, CPU per GB -> stdout, $(OUT)/bulk-*.json (BENCH_CC=cubic: in a network namespace with that congestion control, tables -> BENCHMARKS.md; BENCH_SERVER_CPU_QUOTA=40: the server held to 40 % of its core)
	OUT=$(OUT) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py bulk

bench-udp: bench-build $(C_UDP_SERVER) ## the engine's UDP workers vs a minimal C recvmmsg echo (the floor): datagrams/s, loss, CPU -> stdout, $(OUT)/udp-*.json
	OUT=$(OUT) BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py udp

bench-scaling: bench-build ## workers 1,2,4,8,16, engine and C server side by side -> $(OUT)/scaling-*.md/json + BENCHMARKS.md
	OUT=$(OUT) $(PYTHON) bench/run.py scaling

# Issue 23: gunicorn, Puma and uvicorn under their own master vs as command workers (needs make setup's
# gunicorn, uvicorn and the Debian puma; a server that is missing fails its cell loudly).
bench-apps: setup-rust setup-python-tools ## gunicorn sync/gthread, Puma, uvicorn: own master vs command workers vs one slot, 2 workers, uniform, mixed and keep-alive -> BENCHMARKS.md
	$(CARGO) build --release --locked -q --bin port-sharding
	BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_APPS_RUNS) \
	  $(PYTHON) bench/run.py apps

BENCH_APPS_RUNS ?= 3

test-bench-harness: setup-python-tools ## the bench harness: no side effects at import, parsers, report, the C server (pytest)
	$(PYTHON) -m pytest -q -p no:cacheprovider bench/harness_tests

TEST_SUITES += bench-harness
