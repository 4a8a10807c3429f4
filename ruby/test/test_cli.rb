# frozen_string_literal: true

require "open3"
require_relative "test_helper"
require "json"

# The gem's `port-sharding` executable is the engine's command line: same help, messages, tables and exit
# codes as the Rust binary; and the settings the engine knows are the ones Ruby documents.
class TestCli < Minitest::Test
  include PortShardingTest

  EXE = File.join(PortShardingTest::REPO, "ruby", "exe", "port-sharding")
  RUST = ENV.fetch("PORT_SHARDING_CLI", File.join(PortShardingTest::REPO, "target", "debug", "port-sharding"))

  # [stdout, stderr, exit status] of the gem's executable: the installed gem's, or this checkout's on
  # PORT_SHARDING_RUBY_LIB.
  def gem_cli(*args)
    exe = DEV_LIB ? ["-I", DEV_LIB, EXE] : [Gem.bin_path("port_sharding", "port-sharding")]
    out, err, status = Open3.capture3(RbConfig.ruby, *exe, *args, stdin_data: "")
    [out, err, status.exitstatus]
  end

  def rust_cli(*args)
    skip "#{RUST} is missing: cargo build -p port-sharding-cli (or set PORT_SHARDING_CLI)" unless File.executable?(RUST)
    out, err, status = Open3.capture3(RUST, *args, stdin_data: "")
    [out, err, status.exitstatus]
  end

  def test_help_and_errors_are_the_rust_clis
    free = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] } # nothing serves it
    [%w[--help], %w[serve --help], %w[status --help], %w[stop --help], %w[--version], %w[bogus],
     %w[serve --workers 0], %w[serve --port 80x], %w[serve --host not-an-ip --port 0],
     ["status", "--port", free.to_s]].each do |args|
      assert_equal rust_cli(*args), gem_cli(*args), "port-sharding #{args.join(' ')}"
    end
    assert_equal 0, gem_cli("--help").last
    assert_includes gem_cli("--help").first, "Usage: port-sharding <COMMAND>"
  end

  def test_serve_status_and_ctrl_c_through_the_gem
    include_dev = DEV_LIB ? ["-I", DEV_LIB] : []
    server = spawn_ruby(*include_dev, EXE, "serve", "--port", "0", "--host", "127.0.0.1", "--workers", "1",
                        "--mode", "hello").ready
    assert_match(/\AHello from ruby process \d+/, exchange(server.port, ""))
    out, err, code = gem_cli("status", "--port", server.port.to_s, "--json")
    assert_equal 0, code, err
    assert_equal "ruby", JSON.parse(out).first["runtime"]
    table = ->(text) { text.sub(/up \d+s/, "up Ns") }
    status = %w[status --port] + [server.port.to_s]
    assert_equal table.call(rust_cli(*status).first), table.call(gem_cli(*status).first)
    Process.kill(:INT, server.pid)
    assert_equal 130, server.wait_exit.exitstatus, server.stderr
    assert_gone server.worker_pids
  end

  def test_every_engine_setting_is_in_the_serve_docs
    file, line = PortSharding.method(:serve).source_location
    doc = File.readlines(file)[0...line - 1].reverse.take_while { |l| l.strip.start_with?("#") }.join
    names = PortSharding._settings.map(&:first)
    assert_includes names, "drain_timeout"
    missing = names.reject { |name| doc.match?(/^\s*#\s+#{name}:/) }
    assert_empty missing, "settings missing from the docs of PortSharding.serve (#{file}:#{line})"
  end
end
