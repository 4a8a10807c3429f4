# frozen_string_literal: true

# Shared helpers: real processes and sockets on 127.0.0.1 only, ephemeral ports, a private control
# directory per test (and one for the whole run, so that a test that forgets its own never reaches the
# default one); every server subprocess runs in its own process group and is killed by its pid in
# teardown. Every wait is bounded by PATIENCE, reached only when something is broken; every test by
# TEST_LIMIT.
require "minitest/autorun"
require "fileutils"
require "io/wait"
require "rbconfig"
require "socket"
require "tmpdir"

# PORT_SHARDING_RUBY_LIB=ruby/lib tests a development build there instead of the installed gem.
DEV_LIB = ENV["PORT_SHARDING_RUBY_LIB"].to_s.empty? ? nil : File.expand_path(ENV["PORT_SHARDING_RUBY_LIB"])
$LOAD_PATH.unshift(DEV_LIB) if DEV_LIB
begin
  require "port_sharding"
  GEM_MISSING = nil
  PortSharding.quiet = true # servers started in this process; subprocesses log to their own files
rescue LoadError => e
  GEM_MISSING = "the port_sharding gem is not installed (make setup-ruby): #{e.message}"
end

module PortShardingTest
  REPO = File.expand_path("../..", __dir__) # the repository root (ruby/test/../..)
  PATIENCE = 30.0
  # Seconds a test may run (setup and teardown included): generous, reached only when something hangs.
  TEST_LIMIT = Float(ENV.fetch("PORT_SHARDING_TEST_LIMIT_SECS", 120))
  # Then, if the test could not be interrupted (stuck where Thread#raise cannot reach it), the run ends.
  BACKSTOP = 30.0
  # Before every server command: SIGINT and SIGQUIT as a terminal would give them. A job started with them
  # ignored (`nohup make test &`) passes that on across exec, and Ruby keeps an inherited ignore: a server
  # would then ignore the Ctrl-C a test sends it. `env --default-signal` (GNU coreutils) resets them in the
  # child only.
  DEFAULT_SIGNALS = %w[env --default-signal=INT,QUIT].freeze

  SESSION_CONTROL_DIR = Dir.mktmpdir("port-sharding-tests-") # 0700
  ENV["PORT_SHARDING_CONTROL_DIR"] = SESSION_CONTROL_DIR
  Minitest.after_run { FileUtils.rm_rf(SESSION_CONTROL_DIR) }

  # A per-test time limit (issue #19): past its limit the test's thread gets a failure raised in it, naming
  # the test (its teardown then kills what it started); past BACKSTOP more, the run ends with every thread's
  # backtrace. minitest has no time limit of its own, and RubyGems (for a gem that adds one) is out of reach.
  # Prepended to every class that includes PortShardingTest; a class whose tests need longer defines
  # `time_limit`.
  module TimeLimit
    def run
      test = Thread.current
      name = "#{self.class}##{self.name}"
      limit = respond_to?(:time_limit) ? time_limit : TEST_LIMIT
      watchdog = Thread.new do
        sleep limit
        test.raise(Minitest::Assertion, "TEST TIME LIMIT: #{name} still running after #{limit} s")
        sleep BACKSTOP
        $stderr.puts "\nTEST TIME LIMIT: #{name} could not be interrupted #{BACKSTOP} s after its limit; " \
                     "ending the run (ruby/test/test_helper.rb). Threads:"
        Thread.list.each { |t| $stderr.puts "#{t.inspect}\n  #{(t.backtrace || []).join("\n  ")}" }
        exit!(1)
      end
      super
    ensure
      watchdog&.kill
    end
  end

  def self.monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Waits (bounded) until the block returns something truthy, and returns it.
  def self.eventually(what, timeout: PATIENCE, step: 0.02)
    deadline = monotonic + timeout
    loop do
      result = yield
      return result if result
      raise Minitest::Assertion, "timed out after #{timeout}s waiting for #{what}" if monotonic > deadline

      sleep step
    end
  end

  # A `ruby` subprocess (a script file or `-e` code) in its own process group, logs captured in files.
  class Child
    attr_reader :pid

    def initialize(dir, env, *args)
      @out = File.join(dir, "stdout.#{object_id}")
      @err = File.join(dir, "stderr.#{object_id}")
      include_dev = DEV_LIB ? ["-I", DEV_LIB] : []
      @pid = Process.spawn(env, *DEFAULT_SIGNALS, RbConfig.ruby, *include_dev, *args,
                           in: File::NULL, out: @out, err: @err, pgroup: true)
      @status = nil
    end

    def stdout = File.exist?(@out) ? File.read(@out) : ""
    def stderr = File.exist?(@err) ? File.read(@err) : ""

    def wait_log(needle, timeout: PATIENCE)
      PortShardingTest.eventually("#{needle.inspect} in the log:\n#{stderr}", timeout: timeout) do
        line = stderr.lines.find { |l| l.include?(needle) }
        raise Minitest::Assertion, "exited (#{@status.inspect}) before #{needle.inspect}:\n#{stderr}" if !line && exited?

        line
      end
    end

    def wait_stdout(needle, timeout: PATIENCE)
      PortShardingTest.eventually("#{needle.inspect} on stdout:\n#{stdout}\n#{stderr}", timeout: timeout) do
        stdout.include?(needle)
      end
    end

    # The port the engine logged ("… server starting on 127.0.0.1:PORT: …").
    def port
      port = Integer(wait_log("server starting on")[/starting on [^ ]*:(\d+):/, 1])
      raise Minitest::Assertion, "a test server on the default port 1234: pass port 0" if port == 1234 # ephemeral only

      port
    end

    def ready = wait_log("ready:") && self

    def worker_pids = stderr.scan(/started: pid (\d+)/).flatten.map(&:to_i)

    def exited?
      @status ||= Process.wait2(@pid, Process::WNOHANG)&.last
      !@status.nil?
    rescue Errno::ECHILD
      true
    end

    def wait_exit(timeout: PATIENCE)
      PortShardingTest.eventually("pid #{@pid} to exit; log:\n#{stderr}", timeout: timeout) { exited? }
      @status
    end

    # Its whole group (the supervisor and any worker), by pid.
    def kill
      return if exited?

      Process.kill(:KILL, -@pid)
      wait_exit
    rescue Errno::ESRCH
      nil
    end
  end

  def self.included(test_class)
    test_class.prepend(TimeLimit)
  end

  def setup
    skip GEM_MISSING if GEM_MISSING
    @dir = Dir.mktmpdir("port-sharding-test-")
    @control_dir = File.join(@dir, "control")
    Dir.mkdir(@control_dir, 0o700)
    @children = []
    @saved_control_dir = ENV["PORT_SHARDING_CONTROL_DIR"]
    ENV["PORT_SHARDING_CONTROL_DIR"] = @control_dir # for servers started in this process
  end

  def teardown
    @children&.each(&:kill)
    ENV["PORT_SHARDING_CONTROL_DIR"] = @saved_control_dir
    FileUtils.rm_rf(@dir) if @dir
  end

  # Starts `ruby -e code` (or a script path with args) with the test's control directory.
  def spawn_ruby(*args, env: {})
    child = Child.new(@dir, { "PORT_SHARDING_CONTROL_DIR" => @control_dir }.merge(env), *args)
    @children << child
    child
  end

  # One connection: send `data`, half-close, read everything until the server closes.
  def exchange(port, data)
    Socket.tcp("127.0.0.1", port, connect_timeout: 5) do |sock|
      sock.write(data)
      sock.close_write
      read_all(sock)
    end
  end

  def read_all(sock, timeout: 10)
    out = +""
    deadline = PortShardingTest.monotonic + timeout
    while PortShardingTest.monotonic < deadline
      next unless sock.wait_readable(0.1)

      chunk = sock.read_nonblock(4096, exception: false)
      return out if chunk.nil?

      out << chunk unless chunk == :wait_readable
    end
    flunk "no EOF within #{timeout}s (got #{out.inspect})"
  end

  # Listening TCP sockets on `port` (IPv4), from /proc/net/tcp: one per member of its reuseport group.
  def listeners(port)
    File.readlines("/proc/net/tcp").drop(1).count do |line|
      local, _remote, state = line.split[1, 3]
      state == "0A" && local.split(":").last.to_i(16) == port
    end
  end

  # Whether process `pid` holds a descriptor of a listening TCP socket on `port` (from /proc).
  def holds_listener?(pid, port)
    inodes = %w[/proc/net/tcp /proc/net/tcp6].flat_map do |table|
      File.readlines(table).drop(1).map(&:split).select do |f|
        f[3] == "0A" && f[1].split(":").last.to_i(16) == port # 0A: LISTEN
      end.map { |f| "socket:[#{f[9]}]" }
    end
    Dir.children("/proc/#{pid}/fd").any? do |fd|
      inodes.include?(File.readlink("/proc/#{pid}/fd/#{fd}"))
    rescue SystemCallError
      false
    end
  rescue SystemCallError
    false
  end

  # Waits until SIGSTOP took effect on `pid` (state T in /proc/<pid>/stat).
  def wait_stopped(pid)
    PortShardingTest.eventually("pid #{pid} to be stopped") do
      File.read("/proc/#{pid}/stat").rpartition(")").last.lstrip.start_with?("T")
    end
  end

  def alive?(pid)
    !File.read("/proc/#{pid}/stat").rpartition(")").last.lstrip.start_with?("Z")
  rescue SystemCallError
    false
  end

  def assert_gone(pids)
    PortShardingTest.eventually("workers #{pids} to exit") { pids.none? { |pid| alive?(pid) } }
  end
end
