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
  class Server
    def self.new(port = nil, **settings)
      _bind({ port: port, **settings }.compact)
    end

    # Forks the workers; returns self once all serve. Raises (and stops) if they do not within `timeout`.
    def start(timeout: 30)
      _start(timeout)
      self
    end

    # Drains and waits until every worker has exited; returns why it stopped (:shutdown, or :stop /
    # :taken_over if that came first), nil if it never started, was already reported, or `timeout` passed.
    def stop(timeout: nil)
      _stop(timeout)
    end

    # Waits until the server stops by itself (the `stop` command, a takeover) and returns why, as `stop`
    # does; nil after `timeout`.
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
