# frozen_string_literal: true

require "json"
require "rbconfig"
require "socket"
require_relative "port_sharding/error"
require_relative "port_sharding/report"
# The native extension (Rust, Magnus): the one `rake compile` put next to this file, else the installed one.
native = File.join(__dir__, "port_sharding", "port_sharding.#{RbConfig::CONFIG['DLEXT']}")
begin
  File.file?(native) ? require(native) : require("port_sharding/port_sharding")
rescue LoadError => e
  raise LoadError, "#{e.message} (a Bundler path gem? run `rake compile` in #{File.dirname(__dir__)})"
end
# How an upgrade (SIGUSR2, PortSharding.upgrade) starts this program again: this interpreter with the command line
# it was started with, read now, before a process title ($0 =) may overwrite it.
begin
  argv = File.binread("/proc/self/cmdline").split("\0").drop(1).map { |a| a.dup.force_encoding(Encoding::UTF_8) }
  PortSharding._set_upgrade_command([RbConfig.ruby, *argv])
rescue StandardError
  nil # the engine falls back to the process's own argv
end
require_relative "port_sharding/server"
require_relative "port_sharding/listener"
require_relative "port_sharding/fork_hook"

# Many processes serving one TCP port with SO_REUSEPORT, on the port-sharding engine (Linux only).
#
#   require "port_sharding"
#   PortSharding.serve(1234) do |listener|  # your accept loop, in every worker process (one per CPU)
#     listener.each { |client, addr| data = client.recv(1024); client.send(data, 0); client.close }
#   end                                     # Ctrl-C drains, then raises Interrupt
#   PortSharding.serve(1234)                # the engine's own echo loop (Rust) instead
#
# A block worker runs in a process forked from this interpreter (Ruby's own fork) and leaves with _exit once
# the block returns (status 0) or raises (logged, status 1); it is restarted on the same listener either way
# while the server serves. This process's `at_exit` blocks do not run in workers. Without a block, workers run
# Rust only. Python and Ruby servers on the same port share it.
module PortSharding
  class << self
    # Serves `port` until drained, in this thread, with the GVL released (other Ruby threads keep running).
    # The settings are the engine's (`port-sharding serve --help` says the same; a nil one is the default):
    #   host:            address to bind, an IPv4/IPv6 literal or "localhost" (default "0.0.0.0")
    #   port:            the port, also the first argument; 0 picks a free one (default 1234)
    #   workers:         worker processes, each with its own listener (default: the CPUs this process may
    #                    use: its CPU affinity and its cgroup's CPU quota, rounded up)
    #   protocol:        :tcp, or :udp (a reuseport UDP socket per worker; reloads and takeovers lose no
    #                    datagram; built-in :echo and :hello, and command workers) (default :tcp)
    #   udp_flow_idle:   UDP: seconds a replaced worker keeps the flows it served once they are idle (eBPF,
    #                    where permitted), then they move to the new workers (default 3)
    #   mode:            :echo, :once (one read, echo, close: the talk's loop) or :hello (default :echo)
    #   backlog:         listen(2) backlog per listener (default 1024)
    #   drain_timeout:   longest a drain may take, in seconds (default 30)
    #   drain_delay:     after SIGTERM keep accepting this many seconds before draining, while load balancers
    #                    stop sending here (default 0)
    #   max_connections: open connections per worker (default 10_000)
    #   idle_timeout:    close connections idle this many seconds (default: never)
    #   command:         an Array of Strings: run this program as every worker, its listener as fd 3 with
    #                    LISTEN_FDS=1, LISTEN_PID, NOTIFY_SOCKET (systemd socket activation) (default: built-in)
    #   ready:           :delay (READY=1, or ready_delay alive) or :notify (only READY=1) (default :delay)
    #   ready_delay:     seconds a command worker without READY=1 must live to be ready (default 1)
    #   ready_timeout:   seconds a new worker may take to be ready before its start failed (default 30)
    #   stop_signal:     signal that stops a command worker gracefully, "TERM" (default); SIGKILL after drain_timeout
    #   takeover:        true: adopt the sockets of the server running on host:port (a rolling upgrade)
    #   migrate:         true: closing a listener moves its queue to the others (an eBPF program on the
    #                    group with CAP_BPF, else net.ipv4.tcp_migrate_req=1 with CAP_NET_ADMIN)
    #   steering:        false: leave new connections to the kernel's hash even while a worker is stalled
    #                    (default true)
    #   stall_after:     seconds a worker's accept queue may stay non-empty without draining before it
    #                    counts as stalled (default 0.1; every kind, block workers included)
    #   stall_restart_after: replace a worker stalled this many seconds (default: never)
    #   admin:           "HOST:PORT" (or ":PORT"): serve /livez, /readyz and /metrics (Prometheus) over HTTP
    #                    from the supervisor (default: off)
    # A bad value raises ConfigError (SettingTypeError for a wrong type) naming the keyword.
    #
    # Returns a Report (reason, forced, served, drain) once drained. On the main thread the engine owns
    # SIGINT/SIGTERM meanwhile (Ruby's handlers are back afterwards): Ctrl-C drains, then raises Interrupt;
    # SIGTERM drains, then returns (reason :terminate); a second signal stops at once. Thread#raise,
    # Timeout.timeout and Thread#kill drain, then raise/kill as usual. Otherwise the reason says why it
    # stopped: :stop (the `stop` command) or :taken_over (a newer server took over).
    #
    # With a block, every worker runs it with its Listener (see PortSharding::Listener) instead of `mode`.
    def serve(port = nil, **settings, &worker)
      _serve({ port: port, **settings }.compact, worker)
    end

    # A listening ::Socket on host:port in the port's SO_REUSEPORT group, made by the engine, for your own
    # accept loop next to engine servers (the talk's loop runs unchanged on it). Run as a command worker
    # (`port-sharding serve -- ruby loop.rb`), it adopts the socket the supervisor passed as fd 3
    # (LISTEN_FDS/LISTEN_PID name this process) after checking it is bound to `port` (AddressError otherwise).
    def listen(port = nil, host: nil, backlog: nil)
      Socket.for_fd(_listen({ port: port, host: host, backlog: backlog }.compact))
    end

    # What every server running on `port` (only those bound to `host`, when given) reports through its
    # control socket: an Array of Hashes (:pid, :runtime, :addr, :mode, :state, :workers => [Hash, …], …).
    # Raises NotRunningError when none answers.
    def status(port = nil, host: nil)
      JSON.parse(_status({ port: port }.compact, host), symbolize_names: true)
    end

    # Asks every server on `port` (and `host`) to drain and exit; returns their pids.
    def stop(port = nil, host: nil)
      _stop({ port: port }.compact, host)
    end

    # Replaces the workers of every server on `port` in place (only those bound to `host`, or the one whose
    # supervisor is `pid`), `batch` at a time (default 1): per listener a new worker starts, and the old one
    # is asked to stop once the new one is ready; nothing queued is lost. Returns one Hash per server
    # (:pid, :runtime, :replaced => [{index:, old_pid:, new_pid:, generation:}], :failed => nil or
    # {index:, pid:, reason:}); a failed one stops the reload and the servers after it are not reloaded.
    def reload(port = nil, host: nil, pid: nil, batch: nil)
      JSON.parse(_reload({ port: port }.compact, host, pid, batch), symbolize_names: true)
    end

    # Upgrades every server on `port` in place (only those bound to `host`, or the one whose supervisor is `pid`),
    # as SIGUSR2 does: each starts its successor — the same program again, from disk (a Ruby host re-executes its
    # interpreter with the same command line) — as its own child, and hands it its sockets; once the successor is
    # ready it is the main process (MAINPID= under systemd) and the old one drains and exits. Returns one Hash per
    # server (:pid, :runtime, :successor => its pid or nil, :failed => nil or why — the old one keeps serving —,
    # :seconds until the successor was ready); the servers after a failed one are not upgraded.
    def upgrade(port = nil, host: nil, pid: nil)
      JSON.parse(_upgrade({ port: port }.compact, host, pid), symbolize_names: true)
    end

    # true silences the engine's log lines (on stderr) in this process.
    def quiet=(quiet)
      _set_quiet(quiet ? true : false)
    end
  end
end
