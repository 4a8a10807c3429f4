"""The example app of examples/kubernetes: a small HTTP server, standard library only, run as a command worker
(`port-sharding serve ... -- python3 app.py`). It serves the socket the supervisor passes as fd 3 (systemd socket
activation: LISTEN_FDS=1, LISTEN_PID), says READY=1 on NOTIFY_SOCKET once it serves, and on SIGTERM stops
accepting, finishes the requests under way and exits 0.

    GET /          200 "Hello from <pod> worker <index> pid <pid>"
"""
import http.server
import os
import signal
import socket
import threading

if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    raise SystemExit("app.py: run me under port-sharding serve (no socket on fd 3)")

WHO = f"{socket.gethostname()} worker {os.environ.get('PORT_SHARDING_WORKER', '?')} pid {os.getpid()}"


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"Hello from {WHO}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # one line per request is too many here
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests under way
    block_on_close = True


server = Server(("", 0), Hello, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)  # the listener the supervisor holds: already bound and listening


def stop(signum: int, frame: object) -> None:
    # shutdown() waits for serve_forever() to return: from another thread, not from this handler.
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
if notify := os.environ.get("NOTIFY_SOCKET"):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1", notify)
server.serve_forever()
server.server_close()
