# End-to-end across runtimes (issue 5): takeovers Python → Ruby → CLI under load, plain restarts in a
# throwaway network namespace, and the rolling-upgrade demo.
.PHONY: test-e2e demo build-cli

build-cli: setup-rust ## build the CLI (debug for tests, release for the demo)
	$(CARGO) build --locked -q --bin port-sharding
	$(CARGO) build --release --locked -q --bin port-sharding

test-e2e: build-cli setup-python setup-ruby ## end-to-end: takeovers in every direction under load, plain restarts (netns), the examples, gunicorn/Puma/uvicorn/hypercorn/unicorn/node/talk-loop command workers, systemd (stand-in manager, systemd-socket-activate)
	$(PYTHON) -m pytest -q -rs -p no:cacheprovider -s tests/e2e/test_takeover.py tests/e2e/test_restart.py tests/e2e/test_examples.py \
	  tests/e2e/test_apps.py tests/e2e/test_functions.py tests/e2e/test_containers.py tests/e2e/test_systemd.py

demo: build-cli setup-python setup-ruby ## rolling upgrade Python → Ruby → CLI under load on :$(PORT); prints 0 failed
	examples/rolling_upgrade.sh $(PORT)

TEST_SUITES += e2e
