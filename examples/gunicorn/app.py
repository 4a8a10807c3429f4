# port-sharding serve --host 127.0.0.1 --port 8000 -w 2 -- gunicorn -w 1 --no-control-socket --chdir examples/gunicorn app:app
import os
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"Hello from gunicorn process {os.getpid()}\n".encode()]
