# `make lint` also proves the engine's dependency list stays small (issue 9): the load generator and its
# clap/hdrhistogram/indicatif live in the port-sharding-bench crate. The CLI crate links it (for `port-sharding
# bench`), and so do the Python and Ruby extensions, which link the CLI so that `python -m port_sharding` and
# the gem's `port-sharding` run the same command line in-process; the engine crate (port-sharding) links none.
.PHONY: lint-deps

lint: lint-deps

lint-deps: setup-rust ## the engine links no clap, hdrhistogram or indicatif (cargo tree)
	./scripts/check-engine-deps.sh port-sharding
