# frozen_string_literal: true

require_relative "test_helper"

# Command workers from Ruby: Server.new(command: [...]) execs a program per listener from this process,
# PortSharding.reload replaces them in place, and bad command settings are named.
class TestCommand < Minitest::Test
  include PortShardingTest

  SEED = File.join(PortShardingTest::REPO, "examples", "seed_echo_listen.rb")

  def test_the_talks_loop_as_command_workers_reloads_in_place
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 2, command: [RbConfig.ruby, SEED],
                                         ready_delay: 0.5).start
    before = server.stats
    assert_equal [["command", 1]] * 2, before.map { |w| [w[:kind], w[:generation]] }
    assert_equal "one", exchange(server.port, "one")
    report, = PortSharding.reload(server.port)
    assert_nil report[:failed]
    assert_equal before.map { |w| w[:pid] }.sort, report[:replaced].map { |r| r[:old_pid] }.sort
    assert_equal [2, 2], server.stats.map { |w| w[:generation] }
    assert_equal "two", exchange(server.port, "two")
    status, = PortSharding.status(server.port)
    assert_equal "command", status[:mode]
  ensure
    server&.stop
  end

  def test_command_settings_are_checked_by_the_engine
    err = assert_raises(PortSharding::SettingTypeError) { PortSharding::Server.new(0, command: "puma") }
    assert_match(/command: expected a list of strings/, err.message)
    err = assert_raises(PortSharding::ConfigError) { PortSharding::Server.new(0, stop_signal: "NOPE") }
    assert_match(/stop_signal: "NOPE" is not a signal name/, err.message)
  end
end
