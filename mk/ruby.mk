# The Ruby gem (issue 4): `gem build` + `gem install --local` compile it with cargo; minitest suites; the
# Bundler flows (path gem + `rake compile`, vendor/cache); the end-to-end test of Python and Ruby servers on one port.
RUBY       ?= ruby
GEM        ?= gem
# Reinstall the gem when any of these changed since the last install (else setup-ruby takes ~0.1 s).
RB_SOURCES  = $(shell find ruby/lib ruby/exe ruby/ext/port_sharding/src core/src cli/src bench/src -type f \
                ! -name '*.so' 2>/dev/null) \
              ruby/port_sharding.gemspec ruby/ext/port_sharding/extconf.rb ruby/ext/port_sharding/stage.rb \
              ruby/ext/port_sharding/Cargo.toml core/Cargo.toml cli/Cargo.toml $(wildcard bench/Cargo.toml) \
              Cargo.toml Cargo.lock
RB_STAMP   := target/.ruby-gem-installed
RB_GEM     := target/port_sharding.gem
# Kept between installs so a reinstall recompiles only what changed (a fresh `gem install` takes ~1 min).
RB_TARGET  := $(CURDIR)/target/ruby-gem

.PHONY: setup-ruby test-ruby test-ruby-bundle test-mixed

setup-ruby: setup-system setup-rust ## build and install the Ruby gem (gem build + gem install --local) when its sources changed
	@if [ -f $(RB_STAMP) ] && [ -z "$$(find $(RB_SOURCES) -newer $(RB_STAMP) 2>/dev/null | head -1)" ] \
	    && (cd / && $(RUBY) -e 'require "port_sharding"') 2>/dev/null; then exit 0; fi; \
	  echo "setup-ruby: gem build + gem install --local (compiles the extension with cargo)"; \
	  mkdir -p target && (cd ruby && $(GEM) build -q port_sharding.gemspec -o ../$(RB_GEM)) \
	  && CARGO_TARGET_DIR=$(RB_TARGET) $(GEM) install -q --local --no-document $(RB_GEM) \
	  && touch $(RB_STAMP)

test-ruby: setup-ruby ## Ruby gem tests (minitest: ruby/test), against the installed gem; then the Bundler flows
	$(CARGO) build --locked -q -p port-sharding-cli # test_cli.rb compares the gem's port-sharding with it
	$(RUBY) -e 'Dir.glob("ruby/test/test_*.rb").sort.each { |f| require File.expand_path(f) }'
	$(MAKE) --no-print-directory test-ruby-bundle

# Both compile the extension (into the shared $(RB_TARGET), so mostly incrementally); skipped without Bundler.
test-ruby-bundle: setup-system setup-rust ## a Gemfile path gem after `rake compile`, and vendor/cache + bundle install --local
	CARGO_TARGET_DIR=$(RB_TARGET) $(RUBY) ruby/test/bundle_flows.rb

test-mixed: setup-ruby setup-python ## end-to-end: Python and Ruby servers share one port (tests/e2e/test_mixed.py)
	$(PYTHON) -m pytest -q -rs -p no:cacheprovider tests/e2e/test_mixed.py

setup: setup-ruby
TEST_SUITES += ruby mixed
