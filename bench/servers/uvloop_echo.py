# What a Python user picks for speed: a protocol-based echo server on uvloop with reuse_port=True (issue 14).
# Flow control: when the transport's write buffer is full, stop reading until it drains, so a client that
# does not read cannot make the server buffer without bound.
# Usage: uvloop_echo.py PORT [HOST] [--once]   (--once: echo the first read, then close)
import asyncio
import sys

import uvloop


class Echo(asyncio.Protocol):
    once = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if self.once:
            self.transport.close()  # after the buffered reply is written

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def main(port: int, host: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, reuse_port=True, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--once"]
    Echo.once = "--once" in sys.argv[1:]
    uvloop.run(main(int(args[0]), args[1] if len(args) > 1 else "127.0.0.1"))
