# frozen_string_literal: true

# How a Ruby app consumes the gem through Bundler, offline (`make test-ruby-bundle`):
# - a path gem (`gem "port_sharding", path: "…/ruby"`) after `rake compile`;
# - the built .gem in the app's vendor/cache, `bundle install --local` (it compiles the extension).
# Each app lives in a temporary directory and installs into it (BUNDLE_PATH), never into the system's gems.
# Slow (each flow compiles), so not part of the test_*.rb suite.
require "minitest/autorun"
require "fileutils"
require "open3"
require "rbconfig"
require "tmpdir"

require_relative "test_helper" # for the per-test time limit and the private control directory

class TestBundleFlows < Minitest::Test
  prepend PortShardingTest::TimeLimit
  RUBY_DIR = File.expand_path("..", __dir__)
  BUNDLE = begin
    [RbConfig.ruby, Gem.bin_path("bundler", "bundle")]
  rescue Gem::Exception, LoadError # not installed
    nil
  end
  # A server started and stopped in the app, and the gem's executable.
  CHECK = 'require "port_sharding"; PortSharding.quiet = true; ' \
          'puts PortSharding::Server.new(0, host: "127.0.0.1", workers: 1).start.stop.reason'

  # Each flow compiles the extension: far slower than the other tests, but still bounded.
  def time_limit = 900

  def setup
    skip "Bundler is not installed (Debian: the ruby package ships it; else gem install bundler)" unless BUNDLE
    @app = Dir.mktmpdir("port-sharding-bundle-")
    @env = { "BUNDLE_GEMFILE" => File.join(@app, "Gemfile"), "BUNDLE_PATH" => File.join(@app, "bundle"),
             "BUNDLE_APP_CONFIG" => File.join(@app, ".bundle"), "BUNDLE_FROZEN" => nil, "RUBYOPT" => nil }
  end

  def teardown
    FileUtils.rm_rf(@app) if @app
  end

  def run!(*cmd, chdir: @app)
    out, status = Open3.capture2e(@env, *cmd, chdir: chdir)
    assert status.success?, "#{cmd.join(' ')} failed:\n#{out}"
    out
  end

  def test_path_gem_after_rake_compile
    run!("rake", "compile", chdir: RUBY_DIR)
    File.write(File.join(@app, "Gemfile"), %(gem "port_sharding", path: #{RUBY_DIR.inspect}\n))
    assert_equal "stop\n", run!(*BUNDLE, "exec", "ruby", "-e", CHECK)
    assert_match(/\Aport-sharding \d+\.\d+/, run!(*BUNDLE, "exec", "port-sharding", "--version"))
  end

  def test_vendor_cache_gem_with_bundle_install_local
    cache = File.join(@app, "vendor", "cache")
    FileUtils.mkdir_p(cache)
    run!("gem", "build", "-q", "port_sharding.gemspec", "-o", File.join(cache, "port_sharding.gem"), chdir: RUBY_DIR)
    version = File.read(File.join(RUBY_DIR, "..", "Cargo.toml"))[/^version\s*=\s*"([^"]+)"/, 1]
    File.rename(File.join(cache, "port_sharding.gem"), File.join(cache, "port_sharding-#{version}.gem"))
    File.write(File.join(@app, "Gemfile"), %(source "https://rubygems.org"\ngem "port_sharding"\n))
    run!(*BUNDLE, "install", "--local")
    assert_equal "stop\n", run!(*BUNDLE, "exec", "ruby", "-e", CHECK)
    assert_match(/\Aport-sharding \d+\.\d+/, run!(*BUNDLE, "exec", "port-sharding", "--version"))
  end
end
