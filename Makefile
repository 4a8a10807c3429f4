# port-sharding — `make help` lists the targets. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO  ?= cargo
PYTHON ?= python3
PORT   ?= 1234
export CARGO_TERM_COLOR ?= never

# Where cargo puts binaries (honours CARGO_TARGET_DIR and .cargo/config), for the tests that run the CLI.
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null \
                | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null)
TARGET_DIR := $(if $(TARGET_DIR),$(TARGET_DIR),$(CURDIR)/target)
export PORT_SHARDING_BIN ?= $(TARGET_DIR)/debug/port-sharding
# Each suite's output, and the skips the Rust tests report, for the summary `make test` ends with.
TEST_LOGS := $(TARGET_DIR)/test-logs
export PORT_SHARDING_SKIP_LOG := $(TEST_LOGS)/rust-skips.txt

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

# A private control directory for the whole run: the tests give each server its own, and this keeps one that
# forgets away from the default one (where a developer's servers live).
test-rust: setup-rust ## Rust unit, integration and doc tests (engine, CLI end to end, load generator)
	ctl=$$(mktemp -d) && trap 'rm -rf "$$ctl"' EXIT && PORT_SHARDING_CONTROL_DIR=$$ctl $(CARGO) test --workspace --locked

lint: setup-rust ## rustfmt and clippy (-D warnings)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# In this order: the Python fragment sets the headline server, which serve.mk defaults only if unset.
include mk/python.mk mk/ruby.mk mk/e2e.mk mk/bench.mk mk/lint.mk mk/serve.mk

# `serve` and `test` are completed by the fragments in mk/: the headline server and every suite.
serve: $(SERVE_DEPS) ## set up, then serve echo on :$(PORT) from every core
	$(SERVE_CMD)

SUITES := rust $(TEST_SUITES)

test: setup ## set up, then run every suite (each even if one fails), then a passed/failed/skipped summary
	@rm -rf $(TEST_LOGS) && mkdir -p $(TEST_LOGS)
	@failed=0; for suite in $(SUITES); do \
	  echo "=== make test-$$suite"; \
	  $(MAKE) --no-print-directory test-$$suite 2>&1 | tee $(TEST_LOGS)/$$suite.log; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || { failed=1; echo "$$suite: FAILED" >> $(TEST_LOGS)/failed-suites.txt; }; \
	done; \
	$(PYTHON) scripts/test_summary.py $(TEST_LOGS) $(SUITES) || failed=1; \
	exit $$failed
