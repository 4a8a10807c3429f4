# The talk's Python echo server, on the engine: one worker process per CPU, a real backlog, Ctrl-C drains.
# Run: pip install ./python && python examples/echo.py [PORT [HOST]]      then: nc 127.0.0.1 1234
import sys

import port_sharding

port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
host = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"  # every server sharing a port must bind the same address

try:
    port_sharding.serve(port, host=host, mode="once")  # "once" is the talk's loop: one read, echo it, close
except KeyboardInterrupt:
    print("drained, bye")
