# frozen_string_literal: true

module PortSharding
  # How a server's run ended: what PortSharding.serve, Server#stop and Server#wait return (the same report
  # as in Rust and Python):
  #   reason  why it drained: :interrupt (SIGINT), :terminate (SIGTERM or SIGQUIT), :stop (a stop request:
  #           Server#stop, PortSharding.stop, `port-sharding stop`) or :taken_over
  #   forced  true when a second signal or the drain's time limit cut it short (connections may have been cut)
  #   served  connections the workers accepted over the whole run (restarts and reloads included)
  #   drain   how long the drain took, in seconds (a Float)
  # A server stopped before it ran reports Report.new(:stop, false, 0, 0.0).
  Report = Struct.new(:reason, :forced, :served, :drain)
end
