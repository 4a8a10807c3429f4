# frozen_string_literal: true

module PortSharding
  # A block worker's listener: what `PortSharding.serve(port) { |listener| … }` gets, in a process of its own.
  #
  #   listener.each { |client, addr| data = client.recv(1024); client.send(data, 0); client.close }
  #
  # `each` (or `accept`) hands out connections until the server drains and this listener's queue has stayed
  # empty for a moment; then it ends and the block should return. The first `accept` tells the supervisor this
  # worker is ready; `ready` does so without accepting (for your own loop on `socket`). Blocking calls release
  # the GVL, so other threads of the worker run, and Thread#raise / Timeout interrupt them.
  class Listener
    include Enumerable

    # The listening ::Socket (a dup, nonblocking: the supervisor, and during a reload the successor, share it).
    def socket
      @socket ||= begin
        shared = Socket.for_fd(fileno)
        shared.autoclose = false # the engine's fd: closed by the engine
        shared.dup
      end
    end

    # The next connection and its peer address ([::Socket, Addrinfo], as Socket#accept gives them), or nil once
    # drained (`draining?` is then true) or when `timeout` seconds passed first.
    def accept(timeout: nil)
      fd = _accept(timeout)
      return nil unless fd

      client = Socket.for_fd(fd)
      addr = begin
        client.remote_address
      rescue SystemCallError # the client already reset: it reads as closed
        nil
      end
      [client, addr]
    end

    # UDP (`protocol: :udp`): the next datagram and its sender ([String, Addrinfo], as Socket#recvfrom gives
    # them), or nil once drained (the socket read empty; at once on a hand-over) or when `timeout` seconds
    # passed first. Reply with `listener.socket.send(data, 0, addr)`.
    def receive(timeout: nil)
      data, host, port = _receive(timeout)
      return nil unless data

      [data, Addrinfo.udp(host, port)]
    end

    # Yields |client, addr| for every connection until drained; over UDP |data, addr| for every datagram.
    def each
      return enum_for(:each) unless block_given?

      if udp?
        while (pair = receive)
          yield pair
        end
      else
        while (pair = accept)
          yield pair
        end
      end
      self
    end

    alias draining draining?

    def inspect
      "#<#{self.class} #{index}#{draining? ? ' draining' : ''}>"
    end
  end

  # In a forked worker: runs the block, reports how it ended, returns the exit status (the engine then leaves
  # with _exit, so this process's at_exit blocks do not run in workers).
  def self._run_worker(block, listener)
    block.call(listener)
    0
  rescue SystemExit => e
    e.status
  rescue Exception => e # rubocop:disable Lint/RescueException -- a worker reports whatever ended it
    $stderr.write("port-sharding: worker #{listener.index} (pid #{Process.pid}): the worker block raised:\n",
                  e.full_message(highlight: false, order: :top))
    1
  ensure
    [$stdout, $stderr].each do |io|
      io.flush
    rescue StandardError
      nil
    end
  end
end
