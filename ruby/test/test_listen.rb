# frozen_string_literal: true

require_relative "test_helper"

# PortSharding.listen gives the talk's own accept loop a socket in the port's reuseport group.
class TestListen < Minitest::Test
  include PortShardingTest

  SEED = File.join(PortShardingTest::REPO, "examples", "seed_echo_listen.rb")

  def test_listen_returns_a_reuseport_socket
    sock = PortSharding.listen(0, host: "127.0.0.1")
    assert_kind_of Socket, sock
    assert sock.getsockopt(Socket::SOL_SOCKET, Socket::SO_REUSEPORT).bool
    port = sock.local_address.ip_port
    other = PortSharding.listen(port, host: "127.0.0.1") # a second member of the same group
    assert_equal port, other.local_address.ip_port
  ensure
    sock&.close
    other&.close
  end

  def test_talks_loop_shares_a_port_with_an_engine_server
    skip "#{SEED} is missing" unless File.file?(SEED)
    engine = spawn_ruby("-e", <<~RUBY).ready
      require "port_sharding"
      PortSharding.serve(0, host: "127.0.0.1", workers: 1, mode: :hello)
    RUBY
    port = engine.port
    seed = spawn_ruby(SEED, port.to_s, "127.0.0.1")
    PortShardingTest.eventually("the seed loop to listen: #{seed.stderr}") { listeners(port) == 2 }
    seen = Hash.new(0)
    300.times do
      reply = exchange(port, "ping\n")
      seen[reply.start_with?("Hello from ruby process") ? :engine : reply] += 1
      break if seen.size == 2 && seen.values.min >= 5
    end
    assert_operator seen[:engine], :>=, 1, seen.inspect
    assert_operator seen["ping\n"], :>=, 1, "the talk's loop echoed nothing: #{seen.inspect}"
    assert_equal 2, seen.size, "unexpected replies: #{seen.inspect}"
  end
end
