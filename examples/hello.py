# Each connection gets "Hello from python process <pid>" and is closed, so you can see the kernel spread
# connections over the workers — and over Ruby or CLI servers started on the same port.
# Run: pip install ./python && python examples/hello.py [PORT [HOST]]
#      then, a few times: nc 127.0.0.1 1234      (and: python -m port_sharding status --port 1234)
import sys

import port_sharding

port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
host = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"  # every server sharing a port must bind the same address

try:
    port_sharding.serve(port, host=host, mode="hello")
except KeyboardInterrupt:
    pass
