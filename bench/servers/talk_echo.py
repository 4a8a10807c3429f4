# The talk's Python loop ("Linux Port Sharding", Python edition), run as given. Two changes only, so it runs
# here: the bind takes a tuple (the slide's `server.bind(' ', port)` raises TypeError), and the port (and,
# for the benchmark's loopback-only rule, the host; default '' as on the slide) come from argv.
# listen(0) is kept: a backlog of 0 drops SYNs under load and clients retry after >= 1 s.
import sys
from socket import *

port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
host = sys.argv[2] if len(sys.argv) > 2 else ''

server = socket(AF_INET, SOCK_STREAM)
server.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)
server.bind((host, port))
server.listen(0)

while True:
  client, addr = server.accept()
  data = client.recv(1024)
  # echo data back
  client.send(data)
  client.close()
