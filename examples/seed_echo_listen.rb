# The talk's Ruby loop verbatim, on a socket from PortSharding.listen: it shares the port with any engine
# server (Ruby, Python, CLI) and with more copies of itself.
# Run: (make setup-ruby) ruby examples/seed_echo_listen.rb [PORT [HOST]]     then: nc 127.0.0.1 1234
# Supervised as a command (crash restarts, zero-loss reload):
#   port-sharding serve --port 1234 -w 4 -- ruby examples/seed_echo_listen.rb
# or as a worker block in one process: examples/seed_echo.rb.
# (PortSharding.listen then adopts the socket the supervisor passes as fd 3; PORT_SHARDING_PORT names its port.)
# The talk's own setup lines (Socket.new, SO_REUSEPORT, bind, listen 0) are replaced by one
# PortSharding.listen call with a real backlog; the loop below is unchanged. Ctrl-C stops it.
require "socket"
require "port_sharding"

port = Integer(ARGV[0] || ENV.fetch("PORT_SHARDING_PORT", 1234))
host = ARGV[1] || "0.0.0.0" # every server sharing a port must bind the same address

server = PortSharding.listen port, host: host
# SIGTERM (a supervisor's drain or reload) stops accepting: the connection in hand is answered, the next
# accept ends the loop. Queued connections stay in the socket, which the supervisor keeps open.
Signal.trap("TERM") { server.close }

begin
loop do
  client, addr = server.accept
  data = client.recv 1024
  # echo data back
  client.send data, 0
  client.close
end
rescue IOError
  raise unless server.closed? # not stopped by SIGTERM: a real error
end
