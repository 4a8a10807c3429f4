# A WSGI app for gunicorn as command workers: port-sharding serve --host 127.0.0.1 --port 8000 -w 2 -- \
#   gunicorn -w 1 --no-control-socket --chdir examples/gunicorn app:app     (gunicorn: pip install gunicorn)
# Each slot is one gunicorn master with one worker on its own listener (fd 3, found via LISTEN_FDS); it sends
# READY=1 once booted and stops gracefully on SIGTERM. --no-control-socket: all masters would share one path.
# SLOW_EVERY=N makes every Nth request of a process sleep SLOW_MS milliseconds first (make bench-apps' mixed workload).
import itertools
import os
import time

SLOW_EVERY = int(os.environ.get("SLOW_EVERY", "0"))
SLOW_S = int(os.environ.get("SLOW_MS", "200")) / 1000
_count = itertools.count(1)


def app(environ, start_response):  # type: ignore[no-untyped-def]
    if SLOW_EVERY and next(_count) % SLOW_EVERY == 0:
        time.sleep(SLOW_S)
    body = f"Hello from gunicorn process {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
