# The talk's Python loop verbatim, on a socket from port_sharding.listen(): it shares the port with any
# engine server (Python, Ruby, CLI) and with more copies of itself.
# Run: pip install ./python && python examples/seed_echo_listen.py [PORT [HOST]]     then: nc 127.0.0.1 1234
# Supervised as a command (crash restarts, zero-loss reload):
#   port-sharding serve --port 1234 -w 4 -- python3 examples/seed_echo_listen.py
# or as a worker function in one process: examples/seed_echo.py.
# (listen() then adopts the socket the supervisor passes as fd 3; PORT_SHARDING_PORT names its port.)
# The talk's own setup lines (socket, SO_REUSEPORT, bind(' ', port) — a TypeError — and listen(0)) are
# replaced by one listen() call with a real backlog; the loop below is unchanged. Ctrl-C stops it.
import os
import signal
import sys

import port_sharding

port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT_SHARDING_PORT", "1234"))
host = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"  # every server sharing a port must bind the same address

server = port_sharding.listen(port, host)
# SIGTERM (a supervisor's drain or reload) stops accepting: the connection in hand is answered, the next
# accept() ends the loop. Queued connections stay in the socket, which the supervisor keeps open.
signal.signal(signal.SIGTERM, lambda signum, frame: server.close())

try:
 while True:
  client, addr = server.accept()
  data = client.recv(1024)
  # echo data back
  client.send(data)
  client.close()
except OSError:
  if server.fileno() != -1:  # not stopped by SIGTERM: a real error
    raise
