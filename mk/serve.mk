# Which server `make serve` runs; the Python fragment overrides this once the package exists.
SERVE_DEPS ?= setup-rust
SERVE_CMD  ?= $(CARGO) run --release -q --bin port-sharding -- serve --port $(PORT)
