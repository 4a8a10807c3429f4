# frozen_string_literal: true

module PortSharding
  # A server that runs in the background of this process, so Ruby keeps going:
  #
  #   server = PortSharding::Server.new(0, host: "127.0.0.1", mode: :hello)  # binds: connections queue
  #   server.start                                                          # returns once workers serve
  #   server.port   # => 41234
  #   server.phase  # => "serving" (starting, serving, handing over, draining, stopped)
  #   server.stats  # => [{index: 0, pid: 4242, state: "serving", accepted: 3, …}, …]
  #   server.stop   # drains and waits; => #<struct PortSharding::Report reason=:stop, forced=false, …>
  #
  # Settings as for PortSharding.serve. Signals are left to Ruby (SIGINT raises Interrupt in the main
  # thread as usual); stop the server in an `ensure`. One left running when the process exits is told to
  # drain, and its workers also drain by themselves once this process is gone. Every `timeout:` is in
  # seconds; nil or Float::INFINITY is no limit. The lifecycle is the engine's: a server starts once.
  #
  # Without a block the supervisor runs on the engine's own thread. With a block, every worker runs it with
  # its Listener (as PortSharding.serve does), and the supervisor runs on a Ruby Thread of this process, so
  # that it can take the GVL to fork each worker through Ruby.
  class Server
    def self.new(port = nil, **settings, &worker)
      server = _bind({ port: port, **settings }.compact, worker)
      server.instance_variable_set(:@worker, worker) if worker # keeps the block alive for the workers
      server
    end

    # Forks the workers; returns self once all serve. Raises (and stops the server) if they do not within
    # `timeout`; InvalidStateError if it already started or stopped.
    def start(timeout: 30)
      _start(timeout)
      self
    end

    # Drains and waits until every worker has exited; returns the Report (reason :stop, or
    # :taken_over / :terminate if that came first), or nil if `timeout` passed first. A server never started closes its
    # listeners (reason :stop, nothing served); one already stopped returns its report again.
    def stop(timeout: nil)
      _stop(timeout)
    end

    # Waits until the server stops by itself (the `stop` command, a takeover) and returns its Report, as
    # `stop` does; nil after `timeout`. InvalidStateError if it was never started.
    def wait(timeout: nil)
      _wait(timeout)
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
  end
end
