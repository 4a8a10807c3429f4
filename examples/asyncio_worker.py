# An asyncio server as a supervised worker: each worker process runs the coroutine under asyncio.run, serves
# its own SO_REUSEPORT listener with asyncio.start_server, and on a drain (Ctrl-C, SIGTERM, a reload) stops
# once what was queued on its listener has been accepted, then lets open connections finish.
# Run: pip install ./python && python examples/asyncio_worker.py [PORT [HOST [WORKERS]]]   then: nc 127.0.0.1 1234
import asyncio
import sys

import port_sharding


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(1024)
    writer.write(data)
    await writer.drain()
    writer.close()


async def worker(listener: port_sharding.Listener) -> None:
    server = await asyncio.start_server(echo, sock=listener.socket)
    listener.ready()  # asyncio accepts on the socket itself: say we serve
    await listener.wait_draining()  # the drain began and this listener's queue stayed empty for a moment
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
    host = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else None
    try:
        port_sharding.serve(port, host=host, workers=workers, worker=worker)
    except KeyboardInterrupt:
        pass
