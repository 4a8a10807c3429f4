"""A command worker that forks a child which ignores SIGTERM and serves HTTP on the inherited listener (fd 3),
then waits; on SIGTERM the parent exits at once and leaves the child behind (issue 23: escalation must reach
the worker's whole process group). Answers `Hello from stubborn process <pid>`."""

import os
import signal
import socket
import sys

listener = socket.socket(fileno=3)
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            body = f"Hello from stubborn process {os.getpid()}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
listener.close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
