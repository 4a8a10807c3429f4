"""An event-loop command worker for the tests (asyncio, standard library only), like uvicorn or hypercorn on
`--fd 3`: it makes the inherited socket nonblocking, serves it from its loop, answers each connection with
`<pid> <worker index> <what it read>`, sends READY=1 once serving, and on SIGTERM stops accepting, finishes
and exits 0.
"""
import asyncio
import os
import signal
import socket


async def main() -> None:
    listener = socket.socket(fileno=3)
    listener.setblocking(False)
    index = os.environ["PORT_SHARDING_WORKER"]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(f"{os.getpid()} {index} ".encode() + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, sock=listener)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    await stop.wait()
    server.close()
    await server.wait_closed()


asyncio.run(main())
