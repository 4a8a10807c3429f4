# frozen_string_literal: true

module PortSharding
  # A child this process forks (`fork`, `Process.fork`, anything built on them) lets go of the engine's
  # listeners, pipes and control sockets at once, so it neither keeps a server's port in its reuseport group
  # nor delays its drain. Workers the engine forks itself close what they do not serve on their own.
  # `Process._fork` (Ruby >= 3.1) is the hook every Ruby-level fork goes through.
  module ForkHook
    def _fork
      pid = super
      PortSharding._close_in_forked_child if pid.zero?
      pid
    end
  end

  Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)
end
