# An ASGI app for uvicorn and hypercorn as command workers (pip install uvicorn hypercorn):
#   port-sharding serve --host 127.0.0.1 --port 8000 -w 2 -- uvicorn --fd 3 --app-dir examples/asgi app:app
#   port-sharding serve --host 127.0.0.1 --port 8000 -w 2 -- hypercorn --bind fd://3 --root-path '' examples.asgi.app:app
# It answers `Hello from <server> process <pid>`. SLOW_EVERY=N makes every Nth request of a process sleep
# SLOW_MS milliseconds first (the mixed workload of `make bench-apps`).
import asyncio
import os
import sys

SERVER = "uvicorn" if "uvicorn" in sys.modules else "hypercorn" if "hypercorn" in sys.modules else "asgi"
SLOW_EVERY = int(os.environ.get("SLOW_EVERY", "0"))
SLOW_S = int(os.environ.get("SLOW_MS", "200")) / 1000
_count = 0


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    global _count
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    _count += 1
    if SLOW_EVERY and _count % SLOW_EVERY == 0:
        await asyncio.sleep(SLOW_S)
    body = f"Hello from {SERVER} process {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
