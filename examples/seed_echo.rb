# The talk's Ruby loop as a supervised worker block: PortSharding forks `workers` processes, each runs the
# block on its own SO_REUSEPORT listener, restarts one that raises, drains them on Ctrl-C/SIGTERM and
# replaces them one at a time on `port-sharding reload --port 1234` without losing a connection.
# Run: (make setup-ruby) ruby examples/seed_echo.rb [PORT [HOST [WORKERS]]]     then: nc 127.0.0.1 1234
# The unsupervised variant (the loop on a plain socket from PortSharding.listen) is examples/seed_echo_listen.rb.
require "port_sharding"

port = Integer(ARGV[0] || 1234)
host = ARGV[1] || "0.0.0.0" # every server sharing a port must bind the same address
workers = ARGV[2] && Integer(ARGV[2])

begin
  PortSharding.serve(port, host: host, workers: workers) do |listener|
    listener.each do |client, addr| # ends once the server drains and this listener's queue is empty
      data = client.recv 1024
      # echo data back
      client.send data, 0
      client.close
    end
  end
rescue Interrupt
  nil
end
