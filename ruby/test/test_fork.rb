# frozen_string_literal: true

require_relative "test_helper"

# A child the host forks lets go of the engine's descriptors (the Process._fork hook): it neither keeps a
# stopped server's port in its reuseport group nor delays the drain.
class TestFork < Minitest::Test
  include PortShardingTest

  def test_a_forked_child_neither_delays_stop_nor_keeps_the_port
    server = PortSharding::Server.new(0, host: "127.0.0.1", workers: 2, drain_timeout: 20).start
    child = fork { sleep 30 }
    # Without the hook the child holds the workers' drain pipes and the listeners: the drain would wait for
    # it (up to drain_timeout) and the port would still take connections into its queues.
    assert_equal :stop, server.stop(timeout: 10)&.reason, "stop waited for the forked child"
    assert alive?(child)
    assert_raises(Errno::ECONNREFUSED) { TCPSocket.new("127.0.0.1", server.port).close }
  ensure
    if child
      Process.kill(:KILL, child)
      Process.wait(child)
    end
    server&.stop
  end
end
