# frozen_string_literal: true

require_relative "test_helper"

# PortSharding::Server runs the engine on a Rust thread of this process; Ruby keeps the main thread.
class TestServer < Minitest::Test
  include PortShardingTest

  def test_start_stats_status_stop
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 2, mode: :hello)
    refute_predicate server, :running?
    assert_operator server.port, :>, 0
    assert_same server, server.start
    assert_predicate server, :running?
    replies = Array.new(20) { exchange(server.port, "") }
    assert(replies.all? { |r| r.start_with?("Hello from ruby process ") }, replies.inspect)

    stats = server.stats
    assert_equal [0, 1], stats.map { |w| w[:index] }
    assert_equal 20, stats.sum { |w| w[:accepted] }
    assert(stats.all? { |w| w[:state] == "serving" })

    status = PortSharding.status(server.port, host: "127.0.0.1")
    assert_equal 1, status.size
    assert_equal "ruby", status.first[:runtime]
    assert_equal Process.pid, status.first[:pid]
    assert_equal "hello", status.first[:mode]
    assert_equal "127.0.0.1:#{server.port}", status.first[:addr]

    report = server.stop
    assert_equal :stop, report.reason
    refute report.forced
    assert_equal 20, report.served
    assert_kind_of Float, report.drain
    refute_predicate server, :running?
    assert_equal report, server.stop, "a second stop reports again"
    assert_gone stats.map { |w| w[:pid] }
  ensure
    server&.stop
  end

  def test_other_threads_use_the_server_while_it_stops
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1).start
    reader = Thread.new { Array.new(200) { [server.stats.size, server.running?, server.port] } }
    assert_equal :stop, server.stop.reason
    assert_equal 200, reader.join(PortShardingTest::PATIENCE).value.size
  ensure
    server&.stop
  end

  def test_stop_before_start_closes_the_listeners
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1)
    port = server.port
    assert_equal PortSharding::Report.new(:stop, false, 0, 0.0), server.stop
    assert_raises(Errno::ECONNREFUSED) { Socket.tcp("127.0.0.1", port, connect_timeout: 5) }
    assert_raises(PortSharding::InvalidStateError) { server.start }
  end

  def test_wait_returns_when_stopped_by_the_stop_command
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1).start
    assert_nil server.wait(timeout: 0.1), "still serving"
    PortSharding.stop(server.port)
    assert_equal :stop, server.wait(timeout: PortShardingTest::PATIENCE).reason
  ensure
    server&.stop
  end

  def test_phase_follows_the_lifecycle
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1)
    assert_equal "starting", server.phase
    assert_raises(PortSharding::InvalidStateError, "nothing to wait for before start") { server.wait(timeout: 0) }
    server.start(timeout: nil)
    assert_equal "serving", server.phase
    assert_match(/serving>\z/, server.inspect)
    assert_equal :stop, server.stop(timeout: Float::INFINITY).reason
    assert_equal "stopped", server.phase
  ensure
    server&.stop
  end

  def test_huge_and_infinite_timeouts_mean_no_limit
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1).start(timeout: 1e19)
    [1e19, Float::INFINITY, 10**30].each do |timeout|
      assert_nil server.wait(timeout: 0.05)
      waiter = Thread.new { server.wait(timeout: timeout) }
      PortShardingTest.eventually("the waiter to block") { waiter.status == "sleep" || !waiter.alive? }
      assert_predicate waiter, :alive?, "wait(timeout: #{timeout}) returned at once"
      waiter.kill.join # Thread#kill interrupts a wait; the server goes on
      assert_predicate server, :running?
    end
    stopper = Thread.new { PortSharding.stop(server.port, host: "127.0.0.1") }
    assert_equal :stop, server.wait(timeout: Float::INFINITY).reason
    stopper.join
  ensure
    server&.stop
  end

  def test_bad_timeouts_are_argument_errors
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1)
    assert_raises(ArgumentError) { server.start(timeout: -1) }
    assert_raises(ArgumentError) { server.wait(timeout: Float::NAN) }
    assert_raises(TypeError) { server.wait(timeout: "1") }
  ensure
    server&.stop
  end

  def test_thread_raise_interrupts_a_wait
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1).start
    waiter = Thread.new { Thread.current.report_on_exception = false; server.wait }
    PortShardingTest.eventually("the waiter to block") { waiter.status == "sleep" }
    waiter.raise(RuntimeError, "enough")
    error = assert_raises(RuntimeError) { waiter.join }
    assert_equal "enough", error.message
    assert_equal "serving", server.phase
  ensure
    server&.stop
  end

  def test_version_is_the_crate_version
    cargo = File.read(File.join(PortShardingTest::REPO, "Cargo.toml")) rescue nil
    assert_equal PortSharding::CORE_VERSION, PortSharding::VERSION
    if cargo
      assert_equal cargo[/\[workspace\.package\]\s*\nversion\s*=\s*"([^"]+)"/, 1], PortSharding::VERSION
    end
  end
end
