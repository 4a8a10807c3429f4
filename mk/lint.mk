# `make lint` also proves the engine's dependency list stays small (issue 9): the load generator and its
# clap/hdrhistogram/indicatif live in the port-sharding-bench crate, linked by the CLI only.
.PHONY: lint-deps

lint: lint-deps

lint-deps: setup-rust ## the engine links no clap, hdrhistogram or indicatif (cargo tree)
	./scripts/check-engine-deps.sh port-sharding
