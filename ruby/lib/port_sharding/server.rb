# frozen_string_literal: true

module PortSharding
  # A server that runs on the engine's own thread in this process, so Ruby keeps going:
  #
  #   server = PortSharding::Server.new(0, host: "127.0.0.1", mode: :hello)  # binds: connections queue
  #   server.start                                                          # returns once workers serve
  #   server.port   # => 41234
  #   server.phase  # => "serving" (starting, serving, handing over, draining, stopped)
  #   server.stats  # => [{index: 0, pid: 4242, state: "serving", accepted: 3, …}, …]
  #   server.stop   # drains and waits; => :shutdown
  #
  # Settings as for PortSharding.serve. Signals are left to Ruby (SIGINT raises Interrupt in the main
  # thread as usual); stop the server in an `ensure`. One left running when the process exits is told to
  # drain, and its workers also drain by themselves once this process is gone. Every `timeout:` is in
  # seconds; nil or Float::INFINITY is no limit.
  #
  # With a block, every worker runs it with its Listener (as PortSharding.serve does); the server then runs
  # on a Ruby Thread of this process, whose supervisor takes the GVL to fork each worker through Ruby.
  class Server
    def self.new(port = nil, **settings, &worker)
      server = _bind({ port: port, **settings }.compact, worker)
      server.instance_variable_set(:@worker, worker) if worker # keeps the block alive for the workers
      server
    end

    # Forks the workers; returns self once all serve. Raises (and stops) if they do not within `timeout`.
    def start(timeout: 30)
      return start_thread(timeout) if @worker

      _start(timeout)
      self
    end

    # Drains and waits until every worker has exited; returns why it stopped (:shutdown, or :stop /
    # :taken_over if that came first), nil if it never started, was already reported, or `timeout` passed.
    def stop(timeout: nil)
      return _stop(timeout) unless @worker

      _shutdown
      wait(timeout: timeout)
    end

    # Waits until the server stops by itself (the `stop` command, a takeover) and returns why, as `stop`
    # does; nil after `timeout`.
    def wait(timeout: nil)
      return _wait(timeout) unless @worker
      return nil if @thread.nil? || @reported || @thread.join(timeout).nil?

      @reported = true
      @thread.value
    end

    alias _native_running? running?

    # Whether it runs (started and not stopped yet).
    def running?
      @worker ? (@thread&.alive? || false) : _native_running?
    end

    # Each worker's counters: an Array of Hashes (:index, :pid, :state, :accepted, :active, …).
    def stats
      JSON.parse(_stats, symbolize_names: true)
    end

    # "host:port", with brackets for IPv6.
    def address
      host.include?(":") ? "[#{host}]:#{port}" : "#{host}:#{port}"
    end

    def inspect
      "#<#{self.class} #{address} #{phase}>"
    end

    private

    # A function-worker server: the supervisor on a Ruby Thread (so it can take the GVL and fork through
    # Ruby); returns self once every worker serves.
    def start_thread(timeout)
      raise Error, "the server on #{address} was already started or stopped" if @thread

      @thread = Thread.new { _run_here }
      @thread.report_on_exception = false
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      until _wait_ready(0.1)
        unless @thread.alive? && %w[starting serving].include?(phase)
          @thread.join(PortSharding::Server::GIVE_UP)&.value # raises what the run failed with
          raise Error, "the server on #{address} stopped before it was ready"
        end
        next if Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline

        stop
        raise Error, "the workers on #{address} were not serving in time"
      end
      self
    rescue Exception # rubocop:disable Lint/RescueException -- an interrupted start leaves nothing serving
      _shutdown
      raise
    end

    # How long a failed start waits for the server thread to report why.
    GIVE_UP = 30
  end
end
