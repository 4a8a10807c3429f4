# The talk's Ruby loop ("Linux Port Sharding", Ruby edition), run as given; only the port (and, for the
# benchmark's loopback-only rule, the host; default "" as on the slide) come from ARGV.
# listen 0 is kept: a backlog of 0 drops SYNs under load and clients retry after >= 1 s.
require "socket"

port = (ARGV[0] || 1234).to_i
host = ARGV[1] || ""

server = Socket.new Socket::AF_INET,
                     Socket::SOCK_STREAM
server.setsockopt Socket::SOL_SOCKET,
                     Socket::SO_REUSEPORT, true
server.bind Addrinfo.tcp host, port
server.listen 0

loop do
  client, addr = server.accept
  data = client.recv 1024
  # echo data back
  client.send data, 0
  client.close
end
