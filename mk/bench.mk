# Benchmarks (issue 6): bench/run.py drives target/release/port-sharding bench against every server.
BENCH_DURATION ?= 3
BENCH_RUNS     ?= 3
OUT            ?= bench-out

.PHONY: bench bench-quick bench-scaling bench-build

bench-build: setup-rust
	$(CARGO) build --release --locked -q --bin port-sharding

bench: bench-build ## servers x workloads (pinned, medians of 3) + memory, start-up, drain -> BENCHMARKS.md, bench/chart.svg
	BENCH_DURATION=$(BENCH_DURATION) BENCH_RUNS=$(BENCH_RUNS) $(PYTHON) bench/run.py matrix

bench-quick: bench-build ## a fast smoke run of `make bench` (1 run of 1 s per cell; still rewrites BENCHMARKS.md)
	BENCH_DURATION=1 BENCH_RUNS=1 $(PYTHON) bench/run.py matrix

bench-scaling: bench-build ## workers 1,2,4,8,16 vs one multi-threaded load generator -> $(OUT)/scaling-*.md/json + BENCHMARKS.md
	OUT=$(OUT) $(PYTHON) bench/run.py scaling
