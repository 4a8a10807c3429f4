# A WSGI app for gunicorn as command workers: port-sharding serve --host 127.0.0.1 --port 8000 -w 2 -- \
#   gunicorn -w 1 --no-control-socket --chdir examples/gunicorn app:app     (gunicorn: pip install gunicorn)
# Each slot is one gunicorn master with one worker on its own listener (fd 3, found via LISTEN_FDS); it sends
# READY=1 once booted and stops gracefully on SIGTERM. --no-control-socket: all masters would share one path.
import os


def app(environ, start_response):  # type: ignore[no-untyped-def]
    body = f"Hello from gunicorn process {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
