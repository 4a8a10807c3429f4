# frozen_string_literal: true

require_relative "test_helper"

# UDP block workers (`protocol: :udp`): `listener.each { |data, addr| … }` gets datagrams, replies go out on
# `listener.socket`, and a reload replaces both workers without losing a datagram sent meanwhile.
class TestUdp < Minitest::Test
  include PortShardingTest

  CHILD = <<~'RUBY'
    require "port_sharding"
    report = PortSharding.serve(0, host: "127.0.0.1", workers: 2, protocol: :udp, drain_timeout: 2) do |listener|
      listener.each { |data, addr| listener.socket.send(data, 0, addr) }
    end
    $stdout.puts "serve returned #{report.reason}"
  RUBY

  # Sends `n` numbered datagrams from one socket and returns the echoes that came back (each waited for).
  def round_trips(port, n, tag)
    sock = UDPSocket.new
    sock.connect("127.0.0.1", port)
    n.times.map do |i|
      sock.send("#{tag} #{i}", 0)
      sock.wait_readable(PATIENCE) ? sock.recv(64) : nil
    end
  ensure
    sock&.close
  end

  def test_block_workers_echo_datagrams_and_a_reload_loses_none
    child = spawn_ruby("-e", CHILD).ready
    port = child.port
    assert_equal 20.times.map { |i| "before #{i}" }, round_trips(port, 20, "before")
    sender = Thread.new { round_trips(port, 300, "during") }
    report, = PortSharding.reload(port)
    assert_nil report[:failed]
    assert_equal 2, report[:replaced].size
    assert_equal 300.times.map { |i| "during #{i}" }, sender.value
    status, = PortSharding.status(port)
    assert_equal "udp function", status[:mode]
    assert(status[:workers].all? { |w| w[:generation] == 2 }, status.inspect)
    assert_operator status[:workers].sum { |w| w[:datagrams_in] }, :>=, 320
    Process.kill(:TERM, child.pid)
    assert_predicate child.wait_exit, :success?, child.stderr
    assert_includes child.stdout, "serve returned terminate"
  end
end
