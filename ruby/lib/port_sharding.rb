# frozen_string_literal: true

require "socket"
require_relative "port_sharding/version"
require_relative "port_sharding/error"
require_relative "port_sharding/options"
require "port_sharding/port_sharding" # the native extension (Rust, Magnus)
require_relative "port_sharding/server"

# Many processes serving one TCP port with SO_REUSEPORT, on the port-sharding engine (Linux only).
#
#   require "port_sharding"
#   PortSharding.serve(1234)   # echo on :1234, one worker process per CPU; Ctrl-C drains, then raises Interrupt
#
# The engine forks worker processes that run Rust only and leave with _exit: no `at_exit` block, finalizer
# or Ruby code runs in them. Python and Ruby servers on the same port share it.
module PortSharding
  unless CORE_VERSION == VERSION
    warn "port_sharding: the native extension is #{CORE_VERSION} but the Ruby code is #{VERSION}; reinstall the gem"
  end

  class << self
    # Serves `port` until drained, in this thread, with the GVL released (other Ruby threads keep running).
    # Keywords: host: "0.0.0.0", workers: one per CPU, mode: :echo (:once, :hello), backlog: 1024,
    # drain_timeout: 30.0 (s), max_connections: 10_000 (per worker), idle_timeout: nil (s),
    # takeover: false (adopt the running server's sockets), migrate: false (set tcp_migrate_req, root).
    #
    # On the main thread the engine owns SIGINT/SIGTERM meanwhile (Ruby's handlers are back afterwards):
    # Ctrl-C drains, then raises Interrupt; SIGTERM drains, then returns :terminate; a second signal stops
    # at once. Thread#raise, Timeout.timeout and Thread#kill drain, then raise/kill as usual. Otherwise
    # returns why it stopped: :stop (the `stop` command) or :taken_over (a newer server took over).
    def serve(port = Options::DEFAULT_PORT, **options)
      _serve(Options.build(port, **options))
    end

    # A listening ::Socket on host:port in the port's SO_REUSEPORT group, made by the engine, for your own
    # accept loop next to engine servers (the talk's loop runs unchanged on it).
    def listen(port = Options::DEFAULT_PORT, host: "0.0.0.0", backlog: 1024)
      opts = Options.build(port, host: host, backlog: backlog)
      Socket.for_fd(_listen(opts[:host], opts[:port], opts[:backlog]))
    end

    # What every server running on `port` (only those bound to `host`, when given) reports through its
    # control socket: an Array of Hashes (:pid, :runtime, :addr, :mode, :state, :workers => [Hash, …], …).
    # Raises NotRunningError when none answers.
    def status(port = Options::DEFAULT_PORT, host: nil)
      _status(host && Options.build(port, host: host)[:host], Options.build(port)[:port])
    end

    # Asks every server on `port` (and `host`) to drain and exit; returns their pids.
    def stop(port = Options::DEFAULT_PORT, host: nil)
      _stop(host && Options.build(port, host: host)[:host], Options.build(port)[:port])
    end

    # true silences the engine's log lines (on stderr) in this process.
    def quiet=(quiet)
      _set_quiet(quiet ? true : false)
    end
  end
end
