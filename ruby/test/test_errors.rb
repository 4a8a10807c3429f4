# frozen_string_literal: true

require_relative "test_helper"

# Error mapping, in this process: these fail before any worker is forked.
class TestErrors < Minitest::Test
  include PortShardingTest

  # keyword => bad values; each must raise an ArgumentError (ConfigError) naming the keyword. nil is not
  # bad: it means the engine's default. Every call passes port 0 and 127.0.0.1 (and a wrongly accepted "0"
  # would still be port 0): an engine that wrongly accepted a value binds an ephemeral port on loopback,
  # never the default port 1234.
  BAD = {
    port: [70_000, -1, "0", 2**70],
    workers: [0, 10_000, -2, 2.5, "4"],
    mode: [:bogus, "ECHO", 1],
    protocol: [:sctp, "UDP", 17],
    udp_flow_idle: [0, -1, "3s"],
    backlog: [0, -5, 1.5],
    drain_timeout: [0, -1, "30", Float::NAN],
    max_connections: [0, -1, "10"],
    idle_timeout: [0, -3, "60"],
    takeover: ["yes", 1, [true]],
    migrate: ["no", 0],
    steering: ["off", 1],
    stall_after: [0, -1, "100ms"],
    stall_restart_after: [0, "5"]
  }.freeze

  def test_each_bad_keyword_raises_argument_error_naming_it
    BAD.each do |keyword, values|
      values.each do |value|
        args = keyword == :port ? [value] : [0]
        opts = keyword == :port ? {} : { keyword => value }
        opts[:host] = "127.0.0.1"
        [-> { PortSharding::Server.new(*args, **opts) }, -> { PortSharding.serve(*args, **opts) }].each do |call|
          error = assert_raises(ArgumentError, "#{keyword}: #{value.inspect}") { call.call }
          assert_kind_of PortSharding::ConfigError, error
          assert_equal keyword, error.keyword, "#{keyword}: #{value.inspect} → #{error.message}"
          assert_includes error.message, "#{keyword}:"
        end
      end
    end
  end

  def test_a_wrong_type_is_a_setting_type_error
    { port: "0", mode: 1, takeover: "yes", host: [1], drain_timeout: Object.new }.each do |keyword, value|
      opts = { host: "127.0.0.1", keyword => value }
      error = assert_raises(PortSharding::SettingTypeError) { PortSharding::Server.new(0, **opts) }
      assert_equal keyword, error.keyword
      assert_match(/\binvalid #{keyword}:.*expected/, error.message)
    end
  end

  def test_symbols_rationals_and_nil_are_settings_too
    server = PortSharding::Server.new(nil, port: 0, host: :"127.0.0.1", workers: 1, mode: :once,
                                           drain_timeout: 3/2r, idle_timeout: nil)
    assert_operator server.port, :>, 0
  ensure
    server&.stop
  end

  def test_unknown_keyword_is_the_engines_config_error
    error = assert_raises(PortSharding::ConfigError) { PortSharding.serve(0, host: "127.0.0.1", wrokers: 2) }
    assert_match(/invalid wrokers: not a setting \(known: host:, port:/, error.message)
  end

  def test_bad_host_is_an_address_error
    error = assert_raises(PortSharding::AddressError) { PortSharding::Server.new(0, host: "not-an-ip") }
    assert_kind_of PortSharding::Error, error
    assert_includes error.message, "not-an-ip"
    assert_raises(PortSharding::AddressError) { PortSharding.listen(0, host: "example.com") }
  end

  def test_taken_port_is_errno_eaddrinuse
    # A plain socket without SO_REUSEPORT holds the port: the engine may not join it.
    TCPServer.open("127.0.0.1", 0) do |holder|
      port = holder.addr[1]
      error = assert_raises(Errno::EADDRINUSE) { PortSharding::Server.new(port, host: "127.0.0.1", workers: 1) }
      assert_kind_of SystemCallError, error
      assert_equal Errno::EADDRINUSE::Errno, error.errno
      assert_includes error.message, "127.0.0.1:#{port}"
      assert_raises(Errno::EADDRINUSE) { PortSharding.serve(port, host: "127.0.0.1", workers: 1) }
      assert_raises(Errno::EADDRINUSE) { PortSharding.listen(port, host: "127.0.0.1") }
    end
  end

  def test_status_and_stop_without_a_server_raise_not_running
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] } # free a moment ago; nothing serves it
    assert_raises(PortSharding::NotRunningError) { PortSharding.status(port) }
    error = assert_raises(PortSharding::NotRunningError) { PortSharding.stop(port, host: "127.0.0.1") }
    assert_includes error.message, @control_dir
  end

  def test_exception_hierarchy
    %i[AddressError NotRunningError TakeoverError ControlError InvalidStateError].each do |name|
      assert_operator PortSharding.const_get(name), :<, PortSharding::Error
    end
    assert_operator PortSharding::Error, :<, StandardError
    assert_operator PortSharding::ConfigError, :<, ArgumentError
    assert_operator PortSharding::SettingTypeError, :<, PortSharding::ConfigError
  end
end
