# A WSGI app for bench/steering_apps.py: every 50th request a process serves sleeps 2 s (a slow request that
# holds a gunicorn sync worker), the others answer at once.
import os
import time

SLOW_EVERY = int(os.environ.get("SLOW_EVERY", "50"))
SLOW_SECS = float(os.environ.get("SLOW_SECS", "2"))
served = 0


def app(environ, start_response):  # type: ignore[no-untyped-def]
    global served
    served += 1
    if served % SLOW_EVERY == 0:
        time.sleep(SLOW_SECS)
    body = b"hello\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
