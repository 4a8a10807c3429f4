# The talk's Python loop as a supervised worker function: port_sharding forks `workers` processes, each runs
# worker() on its own SO_REUSEPORT listener, restarts one that raises, drains them on Ctrl-C/SIGTERM and
# replaces them one at a time on `port-sharding reload --port 1234` without losing a connection.
# Run: pip install ./python && python examples/seed_echo.py [PORT [HOST [WORKERS]]]     then: nc 127.0.0.1 1234
# The unsupervised variant (the loop on a plain socket from listen()) is examples/seed_echo_listen.py.
import sys

import port_sharding


def worker(listener: port_sharding.Listener) -> None:
    for client, addr in listener:  # ends once the server drains and this listener's queue is empty
        data = client.recv(1024)
        # echo data back
        client.send(data)
        client.close()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
    host = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"  # every server sharing a port must bind the same address
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else None
    try:
        port_sharding.serve(port, host=host, workers=workers, worker=worker)
    except KeyboardInterrupt:
        pass
