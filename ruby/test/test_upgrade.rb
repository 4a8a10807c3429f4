# frozen_string_literal: true

require_relative "test_helper"
require "json"

# PortSharding.upgrade: a server run by the Ruby host (the gem's `port-sharding serve`) starts its successor —
# this interpreter again, with the same command line — which takes its sockets over; the old one drains and
# exits 0. (An in-process server is not upgraded here: its successor would be this test run again.)
class TestUpgrade < Minitest::Test
  include PortShardingTest

  EXE = File.join(PortShardingTest::REPO, "ruby", "exe", "port-sharding")
  ARGS = %w[serve --host 127.0.0.1 --port 0 --workers 2].freeze

  def test_upgrade_starts_the_ruby_host_again_and_hands_it_the_sockets
    old = spawn_ruby(EXE, *ARGS).ready
    port = old.port
    assert_equal "before", exchange(port, "before")
    report, = PortSharding.upgrade(port)
    assert_nil report[:failed]
    assert_equal [old.pid, "ruby"], [report[:pid], report[:runtime]]
    successor = report[:successor]
    refute_equal old.pid, successor
    # The same program again: this interpreter, the gem's executable and the same arguments.
    argv = File.binread("/proc/#{successor}/cmdline").split("\0")
    assert_equal RbConfig.ruby, argv.first
    assert_equal [EXE, *ARGS], argv.last(ARGS.size + 1)
    assert_equal 0, old.wait_exit.exitstatus, old.stderr
    assert_equal "after", exchange(port, "after")
    assert_equal [successor], PortSharding.status(port).map { |s| s[:pid] }
    assert_equal [successor], PortSharding.stop(port)
  ensure
    kill_group(old)
  end

  # The successor is in the old one's process group, which Child#kill leaves alone once the old one exited.
  def kill_group(child)
    Process.kill(:KILL, -child.pid) if child
  rescue Errno::ESRCH
    nil
  end

  def test_upgrade_names_a_server_that_is_not_there
    server = spawn_ruby(EXE, "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1").ready
    err = assert_raises(PortSharding::NotRunningError) { PortSharding.upgrade(server.port, pid: 1) }
    assert_match(/supervisor pid 1/, err.message)
  end
end
