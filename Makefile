# port-sharding — `make help` lists the targets. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO  ?= cargo
PYTHON ?= python3
PORT   ?= 1234
export CARGO_TERM_COLOR ?= never

.PHONY: help setup setup-system setup-rust serve serve-cli test test-rust lint

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

setup: setup-system setup-rust ## install everything the project needs (system packages, crates, Python and Ruby tools)

setup-system: ## apt packages the bindings and tests need (only what is missing)
	@./scripts/setup-system.sh

setup-rust: ## check the Rust toolchain and fetch crates
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	$(CARGO) fetch --locked -q

serve-cli: setup-rust ## serve echo on :$(PORT) with the CLI
	$(CARGO) run --release -q --bin port-sharding -- serve --port $(PORT)

test-rust: setup-rust ## Rust unit, integration and doc tests
	$(CARGO) test --workspace --locked

lint: setup-rust ## rustfmt and clippy (-D warnings)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

-include mk/*.mk

# `serve` and `test` are completed by the fragments in mk/: the headline server and every suite.
serve: $(SERVE_DEPS) ## set up, then serve echo on :$(PORT) from every core
	$(SERVE_CMD)

test: setup test-rust $(TEST_TARGETS) ## set up, then run every test
	@echo "make test: all suites passed"
