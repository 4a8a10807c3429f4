"""A command worker for the tests, with nothing but the standard library: serves the socket it inherits as
fd 3 (systemd socket activation) and answers each connection with `<pid> <worker index> <what it read>`.

    --notify       send READY=1 to NOTIFY_SOCKET once serving
    --ignore-term  ignore SIGTERM (to see the supervisor's SIGKILL)
    --on-int       stop gracefully on SIGINT (as on SIGTERM), and say so on stderr
    --http         answer an HTTP request instead: `200 OK`, the same line as the body, Connection: close
    --nodelay      answer `<pid> <worker index> nodelay=<TCP_NODELAY of the accepted connection>` instead
    --hold-if PATH when PATH exists at start: stay alive without ever accepting or sending READY=1 (a new
                   release stuck in its start-up); SIGTERM then ends it at once
"""
import os
import signal
import socket
import sys

if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit(f"fd3_worker: not socket-activated (LISTEN_PID={os.environ.get('LISTEN_PID')})")
listener = socket.socket(fileno=3)
index = os.environ["PORT_SHARDING_WORKER"]
assert int(os.environ["PORT_SHARDING_PORT"]) == listener.getsockname()[1]


def stop(signum: int, frame: object) -> None:
    os.write(2, f"fd3_worker {os.getpid()}: stopping on {signal.Signals(signum).name}\n".encode())  # one write
    listener.close()


if "--hold-if" in sys.argv and os.path.exists(sys.argv[sys.argv.index("--hold-if") + 1]):
    os.write(2, f"fd3_worker {os.getpid()}: holding, never ready\n".encode())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        signal.pause()
signal.signal(signal.SIGTERM, signal.SIG_IGN if "--ignore-term" in sys.argv else stop)
if "--on-int" in sys.argv:
    signal.signal(signal.SIGINT, stop)
if "--notify" in sys.argv:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1\nSTATUS=fd3_worker serving", os.environ["NOTIFY_SOCKET"])
try:
    while True:
        client, _ = listener.accept()
        data = client.recv(1024)
        if "--http" in sys.argv:
            while b"\r\n\r\n" not in data and (more := client.recv(1024)):
                data += more
            body = f"{os.getpid()} {index} hello\n".encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            client.sendall(head.encode() + body)
        elif "--nodelay" in sys.argv:
            on = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(f"{os.getpid()} {index} nodelay={on}".encode())
        else:
            client.sendall(f"{os.getpid()} {index} ".encode() + data)
        client.close()
except OSError:
    if listener.fileno() != -1:
        raise
