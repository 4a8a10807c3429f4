# frozen_string_literal: true

require_relative "test_helper"

# Ruby blocks as workers (PortSharding.serve { |listener| … }, Server.new { … }), in real subprocesses: the
# talk's loop supervised, exceptions, drains, reload under load, Ctrl-C, drain_timeout, host threads, forks.
class TestWorker < Minitest::Test
  include PortShardingTest

  # argv: block workers drain_timeout [port]. An at_exit block, a ticking thread, and the named worker block.
  CHILD = <<~'RUBY'
    require "port_sharding"
    require "timeout"
    at_exit { $stdout.puts "at_exit ran in #{Process.pid}"; $stdout.flush }
    $stdout.write("buffered before serve\n") # stdout is a file: this stays in Ruby's buffer across the forks
    WORKERS = {
      "talk" => proc do |listener|
        listener.each do |client, addr|
          data = client.recv 1024
          client.send data, 0
          client.close
        end
      end,
      "boom" => proc do |listener|
        listener.each do |client, _addr|
          data = client.recv 1024
          (client.close; raise ArgumentError, "boom requested") if data == "boom"
          client.write data
          client.close
        end
      end,
      "slow" => proc do |listener|
        listener.each do |client, _addr|
          data = client.recv 1024
          sleep 1
          client.write data
          client.close
        end
      end,
      "stuck" => proc { |listener| listener.ready; sleep 600 },
      "threads" => proc do |listener|
        begin
          Timeout.timeout(0.3) { listener.accept } # nothing comes: Timeout interrupts the GVL-free wait
        rescue Timeout::Error
          $stderr.puts "timeout interrupted accept"
        end
        2.times.map do
          Thread.new do
            listener.each do |client, _addr|
              data = client.recv 1024
              sleep 1
              client.write "#{data} #{Thread.current.object_id}"
              client.close
            end
          end
        end.each(&:join)
      end,
    }
    ticker = Thread.new { 10_000.times { |i| $stderr.puts "tick #{i}"; sleep 0.05 } }
    block = WORKERS.fetch(ARGV[0])
    begin
      report = PortSharding.serve(Integer(ARGV[3] || 0), host: "127.0.0.1", workers: Integer(ARGV[1]),
                                  drain_timeout: Float(ARGV[2]), &block)
      $stdout.puts "serve returned #{report.reason}"
    rescue Interrupt
      $stdout.puts "Interrupt"
    end
    ticker.kill
  RUBY

  def server(block, workers: 2, drain_timeout: 20, port: 0)
    spawn_ruby("-e", CHILD, block, workers.to_s, drain_timeout.to_s, port.to_s).ready
  end

  # The talk's protocol: send, then read until the server closes.
  def ask(port, data)
    Socket.tcp("127.0.0.1", port, connect_timeout: 5) do |sock|
      sock.write(data)
      read_all(sock)
    end
  end

  def function_pids(port)
    PortSharding.status(port).flat_map { |s| s[:workers] }.select { |w| w[:kind] == "function" }.map { |w| w[:pid] }
  end

  def assert_ran_once(child)
    assert_equal 1, child.stdout.scan("buffered before serve").size, child.stdout
    assert_equal ["at_exit ran in #{child.pid}"], child.stdout.lines(chomp: true).grep(/at_exit ran/), child.stdout
  end

  def test_the_talks_loop_as_a_block_shares_the_port_with_a_builtin_server
    child = server("talk")
    port = child.port
    hello = spawn_ruby("-e", "require 'port_sharding'; PortSharding.serve(#{port}, host: '127.0.0.1', workers: 2, mode: :hello)").ready
    answers = Array.new(200) { |i| ask(port, "ping #{i}") }
    echoed = answers.each_with_index.count { |a, i| a == "ping #{i}" }
    greeted = answers.count { |a| a.start_with?("Hello from") }
    assert_equal 200, echoed + greeted
    assert_operator echoed, :>, 0
    assert_operator greeted, :>, 0
    status = PortSharding.status(port).find { |s| s[:pid] == child.pid }
    assert_equal "function", status[:mode]
    assert_equal echoed, status[:workers].sum { |w| w[:accepted] }
    ticks = child.stderr.scan(/^tick /).size
    PortShardingTest.eventually("the host's thread to keep ticking") { child.stderr.scan(/^tick /).size > ticks + 2 }
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_includes child.stdout, "serve returned terminate"
    assert_ran_once child
    Process.kill(:TERM, hello.pid)
    hello.wait_exit
  end

  # A block server goes through the engine's lifecycle too: its supervisor runs on a Ruby Thread, and
  # start, wait and stop are the engine's (one start; an interrupted wait leaves it serving; one report).
  BLOCK_SERVER = <<~'RUBY'
    require "port_sharding"
    $stdout.sync = true
    ask = ->(port, data) { Socket.tcp("127.0.0.1", port, connect_timeout: 20) { |s| s.write(data); s.close_write; s.read } }
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 2) { |l| l.each { |c, _| c.write(c.recv(1024)); c.close } }
    begin
      server.wait(timeout: 0)
    rescue PortSharding::InvalidStateError => e
      puts "wait before start: #{e.class}"
    end
    server.start
    puts "answers: #{(1..3).map { |i| ask.(server.port, "hi #{i}") }.join(", ")}"
    begin
      server.start
    rescue PortSharding::InvalidStateError => e
      puts "second start: #{e.class}"
    end
    waiter = Thread.new { Thread.current.report_on_exception = false; server.wait }
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30 # bounded: only a bug waits that long
    sleep 0.01 until waiter.status == "sleep" || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    waiter.raise(RuntimeError, "enough")
    puts "waiter: #{(waiter.join rescue $!.message)}, still #{server.phase}, running? #{server.running?}"
    report = server.stop
    puts "stopped: #{report.reason} #{report.forced} #{report.served}, #{server.phase}, again #{server.wait == report}"
  RUBY

  def test_a_block_server_lives_the_engines_lifecycle
    child = spawn_ruby("-e", BLOCK_SERVER)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_equal ["wait before start: PortSharding::InvalidStateError", "answers: hi 1, hi 2, hi 3",
                  "second start: PortSharding::InvalidStateError", "waiter: enough, still serving, running? true",
                  "stopped: stop false 3, stopped, again true"], child.stdout.lines(chomp: true)
    assert_gone child.worker_pids
  end

  def test_an_exception_is_logged_and_the_worker_replaced_and_its_queue_answered
    child = server("boom", workers: 1)
    port = child.port
    first = Socket.tcp("127.0.0.1", port, connect_timeout: 5)
    first.write("boom")
    queued = Array.new(10) { |i| Socket.tcp("127.0.0.1", port, connect_timeout: 5).tap { |s| s.write("queued #{i}") } }
    queued.each_with_index do |s, i|
      assert_equal "queued #{i}", read_all(s)
      s.close
    end
    first.close
    pid = child.wait_log("the worker block raised")[/pid (\d+)/, 1]
    child.wait_log("boom requested (ArgumentError)")
    child.wait_log("worker 0 (pid #{pid}) exited with status 1")
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_ran_once child
  end

  def test_a_drain_finishes_slow_connections_in_flight
    child = server("slow")
    clients = Array.new(4) { |i| Socket.tcp("127.0.0.1", child.port, connect_timeout: 5).tap { |s| s.write("slow #{i}") } }
    sleep 0.3 # not a timing assertion: answered either way
    Process.kill(:TERM, child.pid)
    clients.each_with_index do |s, i|
      assert_equal "slow #{i}", read_all(s)
      s.close
    end
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_includes child.stdout, "serve returned terminate"
    refute_match(/SIGKILL/, child.stderr)
  end

  def test_reload_under_continuous_load_loses_nothing_and_replaces_every_worker
    child = server("talk")
    port = child.port
    before = function_pids(port)
    results = { ok: 0, failed: 0 }
    stop = false
    load = Thread.new do
      deadline = PortShardingTest.monotonic + 60
      100_000.times do |i| # bounded in count and time
        break if stop || PortShardingTest.monotonic > deadline

        ok = begin
          ask(port, "load #{i}") == "load #{i}"
        rescue SystemCallError, IOError
          false
        end
        results[ok ? :ok : :failed] += 1
      end
    end
    sleep 0.3
    2.times { assert_nil PortSharding.reload(port).first[:failed] }
    sleep 0.3
    stop = true
    load.join
    after = function_pids(port)
    assert_equal 0, results[:failed], results.inspect
    assert_operator results[:ok], :>, 0
    assert_equal 2, after.size
    assert_empty before & after
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_ran_once child
  end

  # A draining block worker hands out what is queued on its listener before it says drained: the drain is asked
  # for first (the worker is stopped meanwhile) and 10 connections queue after it; when the worker resumes its
  # accept sees the drain request, and must still hand out all 10 before it lets go of the listener (which would
  # reset them).
  def test_a_drain_serves_what_queues_after_it_began
    child = server("talk", workers: 1)
    port = child.port
    pid = function_pids(port).first
    Process.kill(:STOP, pid)
    wait_stopped(pid)
    Process.kill(:TERM, child.pid)
    child.wait_log("draining (SIGTERM)")
    # The supervisor writes the drain byte to the worker's pipe, then lets go of its copy of the listener.
    PortShardingTest.eventually("the supervisor to let go of the listener") { !holds_listener?(child.pid, port) }
    clients = Array.new(10) do |i|
      Socket.tcp("127.0.0.1", port, connect_timeout: 5).tap { |s| s.write("late #{i}"); s.close_write }
    end
    Process.kill(:CONT, pid)
    answered = clients.each_with_index.count do |s, i|
      read_all(s) == "late #{i}"
    rescue SystemCallError
      false # reset: the listener was closed with the connection still queued
    ensure
      s.close
    end
    assert_equal 10, answered, "#{answered} of 10 answered:\n#{child.stderr}"
    assert_predicate child.wait_exit, :success?, child.stderr
  end

  # A server whose block, once the file ARGV[0] exists, stays alive but never accepts nor calls ready: a new
  # release stuck in its start-up. Its replies name the worker's pid.
  HOLDING = <<~'RUBY'
    require "port_sharding"
    PortSharding.serve(0, host: "127.0.0.1", workers: 1, ready_timeout: 4) do |listener|
      if File.exist?(ARGV[0])
        $stderr.puts "holding #{Process.pid}"
        sleep 600
      end
      listener.each do |client, _addr|
        client.write("#{Process.pid} #{client.recv(1024)}")
        client.close
      end
    end
  RUBY

  # A reload must not promote a new block worker before it is ready (its first accept, or ready): until the
  # ready timeout every connection is answered by the OLD worker; then the reload reports the failure, the new
  # worker is gone and the old one still serves.
  def test_a_reload_keeps_the_old_worker_until_the_new_one_is_ready
    hold = File.join(@dir, "hold")
    child = spawn_ruby("-e", HOLDING, hold).ready
    port = child.port
    old = function_pids(port).first
    File.write(hold, "") # from now on a new worker holds
    reloading = Thread.new { PortSharding.reload(port) }
    new = Integer(child.wait_log("holding ")[/holding (\d+)/, 1])
    asked = 0
    while reloading.alive? && asked < 2000 # bounded by the ready timeout, and by count
      assert_equal "#{old} during #{asked}", ask(port, "during #{asked}"), "answered before the new worker was ready"
      asked += 1
    end
    report = reloading.value.first
    assert_empty report[:replaced], report.inspect
    assert_equal new, report[:failed]&.fetch(:pid), report.inspect
    assert_includes report[:failed][:reason], "was not ready within 4s"
    assert_operator asked, :>, 0, "the reload ended before a connection could be tried"
    assert_gone [new]
    # `status` names the old worker, still serving, and no process of the failed reload is left on its listener:
    seat = -> { PortSharding.status(port).first[:workers].first }
    assert_equal [old, "serving"], [seat.call[:pid], seat.call[:state]], seat.call.inspect
    PortShardingTest.eventually("the failed reload's worker to be reaped") { seat.call[:processes].size == 1 }
    assert_equal [[old, "serving"]], seat.call[:processes].map { |w| [w[:pid], w[:role]] }, seat.call.inspect
    20.times { |i| assert_equal "#{old} after #{i}", ask(port, "after #{i}") }
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
  end

  def test_ctrl_c_drains_the_block_workers
    child = server("slow")
    pids = function_pids(child.port)
    client = Socket.tcp("127.0.0.1", child.port, connect_timeout: 5)
    client.write("in flight")
    sleep 0.3
    Process.kill(:INT, -child.pid) # as a terminal's Ctrl-C: the whole process group
    assert_equal "in flight", read_all(client)
    client.close
    child.wait_exit
    assert_includes child.stdout, "Interrupt"
    pids.each { |pid| child.wait_log("(pid #{pid}) exited\n") }
    assert_gone pids
  end

  def test_a_block_that_never_accepts_is_killed_at_drain_timeout
    child = server("stuck", workers: 1, drain_timeout: 1)
    pid = function_pids(child.port).first
    Process.kill(:TERM, child.pid)
    child.wait_log("worker 0 (pid #{pid}) still running")
    child.wait_exit
    refute alive?(pid)
  end

  def test_accept_is_thread_friendly_and_interruptible
    child = server("threads", workers: 1)
    child.wait_log("timeout interrupted accept")
    clients = Array.new(2) { |i| Socket.tcp("127.0.0.1", child.port, connect_timeout: 5).tap { |s| s.write("t#{i}") } }
    replies = clients.map { |s| read_all(s).tap { s.close } }
    assert_equal %w[t0 t1], replies.map { |r| r.split.first }
    assert_equal 2, replies.map { |r| r.split.last }.uniq.size, "two threads of one worker accepted: #{replies}"
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_includes child.stdout, "serve returned terminate"
  end

  # Forks while other threads hold the GVL and allocate: from Server#start and from serve, many times.
  BUSY = <<~'RUBY'
    require "port_sharding"
    PortSharding.quiet = true
    stop = false
    churn = Array.new(3) { Thread.new { until stop; Array.new(200) { "x" * 512 }; end } }
    talk = proc { |l| l.each { |c, _| c.write(c.recv(1024)); c.close } }
    ask = ->(port, data) { Socket.tcp("127.0.0.1", port, connect_timeout: 20) { |s| s.write(data); s.close_write; s.read } }
    ok = 0
    8.times do |round|
      server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 2, &talk).start
      ok += 1 if (0...5).all? { |i| ask.(server.port, "start #{round} #{i}") == "start #{round} #{i}" }
      server.stop
    end
    8.times do |round|
      probe = PortSharding::Server.new(0, host: "127.0.0.1", workers: 1) # only to pick a free port
      port = probe.port
      probe.stop
      client = Thread.new do
        answers = []
        400.times do # bounded: 400 * 50 ms
          answers = (0...5).map { |i| ask.(port, "serve #{i}") }
          break
        rescue SystemCallError
          sleep 0.05
        end
        ok += 1 if answers == (0...5).map { |i| "serve #{i}" }
        PortSharding.stop(port)
      end
      PortSharding.serve(port, host: "127.0.0.1", workers: 2, &talk)
      client.join
    end
    stop = true
    churn.each(&:join)
    puts "rounds ok #{ok}"
  RUBY

  # The busy-forks test takes ~45 s on a loaded 2-core machine and waits up to 120 s for its child.
  def time_limit = name == "test_blocks_fork_and_serve_while_other_threads_are_busy" ? 300 : TEST_LIMIT

  def test_blocks_fork_and_serve_while_other_threads_are_busy
    child = spawn_ruby("-e", BUSY)
    assert_predicate child.wait_exit(timeout: 120), :success?, child.stderr
    assert_includes child.stdout, "rounds ok 16", child.stderr
  end
end
