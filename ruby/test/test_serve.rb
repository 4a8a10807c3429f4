# frozen_string_literal: true

require_relative "test_helper"

# PortSharding.serve in a subprocess: it takes over the main thread until drained, like a real server.
class TestServe < Minitest::Test
  include PortShardingTest

  # A background thread prints ticks (bounded: 60 s at most) to show Ruby keeps running during serve.
  SERVE = <<~RUBY
    require "port_sharding"
    $stdout.sync = true
    Thread.new { 6000.times { |i| puts "tick \#{i}" if (i % 5).zero?; sleep 0.01 } }
    begin
      puts "returned \#{PortSharding.serve(0, host: "127.0.0.1", workers: 2).reason}"
    rescue Exception => e
      puts "raised \#{e.class}: \#{e.message}"
      raise
    end
  RUBY

  # Runs `body` in a thread once the server in this process is serving (found via the control directory).
  WHEN_SERVING = <<~RUBY
    def when_serving
      Thread.new do
        3000.times do
          sock = Dir.glob(File.join(ENV.fetch("PORT_SHARDING_CONTROL_DIR"), "*.sock")).first
          port = sock && Integer(File.basename(sock)[/_(\\d+)\\./, 1])
          break if port && PortSharding.status(port).all? { |s| s[:state] == "serving" && s[:workers].all? { |w| w[:state] == "serving" } }
        rescue PortSharding::Error
          nil
        ensure
          sleep 0.01
        end
        yield
      end
    end
  RUBY

  def test_serve_echoes_and_sigterm_drains_and_returns
    server = spawn_ruby("-e", SERVE).ready
    assert_equal "hello, engine\n", exchange(server.port, "hello, engine\n")
    assert_equal "x" * 100_000, exchange(server.port, "x" * 100_000)
    Socket.tcp("127.0.0.1", server.port, connect_timeout: 5) do |open|
      open.write("open at SIGTERM ")
      assert_equal "open at SIGTERM ", open.readpartial(100) # accepted before the signal
      Process.kill(:TERM, server.pid)
      server.wait_log("SIGTERM: draining")
      open.write("finished")
      open.close_write
      assert_equal "finished", read_all(open), "the drain lets an open connection finish"
    end
    assert_predicate server.wait_exit, :success?, server.stderr
    assert_includes server.stdout, "returned terminate"
    assert_match(/stopped \(SIGTERM\)/, server.stderr)
    assert_gone server.worker_pids
  end

  def test_ctrl_c_drains_open_connections_then_raises_interrupt
    server = spawn_ruby("-e", SERVE).ready
    port = server.port
    Socket.tcp("127.0.0.1", port, connect_timeout: 5) do |open|
      open.write("before ")
      assert_equal "before ", open.readpartial(100)
      Process.kill(:INT, -server.pid) # Ctrl-C reaches the whole foreground group; workers ignore it
      server.wait_log("SIGINT: draining")
      open.write("during the drain")
      open.close_write
      assert_equal "during the drain", read_all(open), "an open connection is served to its end"
    end
    status = server.wait_exit
    assert_includes server.stdout, "raised Interrupt"
    assert_equal Signal.list["INT"], status.termsig, "an uncaught Interrupt ends Ruby by SIGINT, as usual"
    assert_gone server.worker_pids
  end

  def test_second_ctrl_c_stops_at_once
    server = spawn_ruby("-e", SERVE).ready
    Socket.tcp("127.0.0.1", server.port, connect_timeout: 5) do |open|
      open.write("x")
      assert_equal "x", open.readpartial(10) # accepted: the drain waits for this connection
      Process.kill(:INT, -server.pid)
      server.wait_log("SIGINT: draining")
      Process.kill(:INT, -server.pid)
      server.wait_log("again: stopping now")
      assert_equal Signal.list["INT"], server.wait_exit.termsig
      assert_includes server.stdout, "raised Interrupt"
    end
    assert_gone server.worker_pids
  end

  def test_other_ruby_threads_run_during_serve
    server = spawn_ruby("-e", SERVE).ready
    ticks = -> { server.stdout.scan(/^tick/).size }
    before = ticks.call
    PortShardingTest.eventually("ticks while serving") { ticks.call >= before + 3 }
    assert_equal "still serving\n", exchange(server.port, "still serving\n")
  end

  def test_thread_raise_interrupts_serve_cleanly
    script = <<~RUBY
      #{WHEN_SERVING}
      main = Thread.current
      when_serving { main.raise(RuntimeError, "raised by another thread") }
      #{SERVE}
    RUBY
    server = spawn_ruby("-e", script)
    server.wait_stdout("raised RuntimeError: raised by another thread")
    refute_predicate server.wait_exit, :success?
    assert_match(/stopped \(stop request\): all workers exited/, server.stderr)
    assert_gone server.worker_pids
  end

  def test_timeout_interrupts_serve_cleanly
    script = <<~RUBY
      require "timeout"
      require "port_sharding"
      $stdout.sync = true
      begin
        Timeout.timeout(1) { PortSharding.serve(0, host: "127.0.0.1", workers: 2) }
      rescue Timeout::Error => e
        puts "raised \#{e.class}"
      end
      puts "after serve"
    RUBY
    server = spawn_ruby("-e", script)
    assert_predicate server.wait_exit, :success?, server.stderr
    assert_equal "raised Timeout::Error\nafter serve\n", server.stdout
    assert_match(/stopped \(stop request\): all workers exited/, server.stderr)
    assert_gone server.worker_pids
  end

  def test_thread_kill_of_a_serving_thread_drains
    script = <<~RUBY
      #{WHEN_SERVING}
      require "port_sharding"
      $stdout.sync = true
      server = Thread.new { PortSharding.serve(0, host: "127.0.0.1", workers: 2) }
      when_serving { server.kill }.join
      puts "joined: \#{server.join(30).inspect}, status \#{server.status.inspect}"
    RUBY
    server = spawn_ruby("-e", script)
    assert_predicate server.wait_exit, :success?, server.stderr
    assert_match(/joined: #<Thread.*, status false/, server.stdout)
    assert_match(/stopped \(stop request\): all workers exited/, server.stderr)
    assert_gone server.worker_pids
  end

  def test_stop_command_ends_serve_with_stop
    server = spawn_ruby("-e", SERVE).ready
    assert_equal [server.pid], PortSharding.stop(server.port, host: "127.0.0.1")
    assert_predicate server.wait_exit, :success?
    assert_includes server.stdout, "returned stop"
  end

  def test_a_takeover_ends_serve_and_server_wait_with_taken_over
    server = spawn_ruby("-e", SERVE).ready
    first = PortSharding::Server.new(server.port, host: "127.0.0.1", takeover: true).start
    assert_predicate server.wait_exit, :success?, server.stderr
    assert_includes server.stdout, "returned taken_over"
    second = PortSharding::Server.new(server.port, host: "127.0.0.1", takeover: true).start
    assert_equal :taken_over, first.wait(timeout: PortShardingTest::PATIENCE).reason
    assert_equal "echo me", exchange(second.port, "echo me")
  ensure
    first&.stop
    second&.stop
  end

  def test_workers_do_not_run_at_exit_blocks
    script = <<~RUBY
      require "port_sharding"
      $stdout.sync = true
      at_exit { puts "at_exit in pid \#{Process.pid}" }
      PortSharding.serve(0, host: "127.0.0.1", workers: 2)
    RUBY
    server = spawn_ruby("-e", script).ready
    Process.kill(:TERM, server.pid)
    assert_predicate server.wait_exit, :success?
    assert_equal ["at_exit in pid #{server.pid}"], server.stdout.lines.map(&:chomp), "only the supervisor runs it"
  end
end
