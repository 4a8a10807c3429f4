# The Python package (issue 3): `pip install ./python` builds it with maturin; `make serve` serves through it.
PIP        ?= $(PYTHON) -m pip
# Rebuild the package when any of these changed since the last install (else setup-python takes ~0.1 s):
# every crate the module links, the load generator included (the CLI's `bench` runs in-process).
PY_SOURCES  = $(shell find python/src python/port_sharding core/src cli/src bench/src -type f \
                ! -name '*.pyc' ! -name '*.so' 2>/dev/null) \
              python/Cargo.toml python/pyproject.toml core/Cargo.toml cli/Cargo.toml $(wildcard bench/Cargo.toml) \
              Cargo.toml Cargo.lock
PY_STAMP   := target/.python-package-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.PHONY: setup-python setup-python-tools test-python

# pytest-timeout: every Python suite runs each test under a time limit (scripts/pytest_guards.py).
# prometheus_client parses /metrics and PyYAML the Kubernetes manifests (tests/e2e/test_containers.py);
# uvicorn and hypercorn run as command workers (tests/e2e/test_apps.py, make bench-apps).
setup-python-tools: ## the Python tools the suites use (maturin, pytest, pytest-timeout, mypy, gunicorn, uvicorn, hypercorn, prometheus_client, PyYAML), when missing
	@$(PYTHON) -c 'import maturin, pytest, pytest_timeout, mypy, gunicorn, uvicorn, hypercorn, prometheus_client, yaml' 2>/dev/null \
	  || $(PIP) install -q maturin pytest pytest-timeout mypy gunicorn uvicorn hypercorn prometheus_client pyyaml

setup-python: setup-rust setup-python-tools ## build and install the Python package (pip install ./python) when its sources changed
	@if [ -f $(PY_STAMP) ] && [ -z "$$(find $(PY_SOURCES) -newer $(PY_STAMP) 2>/dev/null | head -1)" ] \
	    && $(PYTHON) -c 'import port_sharding' 2>/dev/null; then exit 0; fi; \
	  echo "setup-python: pip install ./python"; \
	  mkdir -p target && $(PIP) install -q --no-build-isolation ./python && touch $(PY_STAMP)

PY_TYPED    = python/port_sharding python/tests examples/echo.py examples/seed_echo_listen.py examples/seed_echo.py examples/asyncio_worker.py examples/hello.py examples/gunicorn/app.py
# Checked on its own: two examples are modules named `app`, which one mypy run cannot tell apart.
PY_TYPED_APART = examples/kubernetes/app.py

test-python: setup-python ## Python package tests (pytest python/tests), stubs vs module (mypy.stubtest), mypy --strict
	$(CARGO) build --locked -q -p port-sharding-cli  # the Rust CLI whose help and tables python -m must match
	$(PYTHON) -m pytest -q -rs -p no:cacheprovider python/tests
	cd target && $(PYTHON) -m mypy.stubtest port_sharding  # from target/: its .mypy_cache lands there
	MYPYPATH=scripts MYPY_CACHE_DIR=target/mypy-cache $(PYTHON) -m mypy --strict $(PY_TYPED)
	MYPY_CACHE_DIR=target/mypy-cache $(PYTHON) -m mypy --strict $(PY_TYPED_APART)

setup: setup-python
TEST_SUITES += python

# The headline server: `make serve` is `port_sharding.serve(1234)` from the installed package.
SERVE_DEPS = setup-python
# `python -m port_sharding serve` is the engine's command line (`port-sharding serve`) with a Python runtime.
SERVE_CMD  = $(PYTHON) -m port_sharding serve --port $(PORT)
