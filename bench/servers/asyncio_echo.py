# The baseline a Python user would write instead: an asyncio echo server with start_server(reuse_port=True),
# stdlib only, default backlog and buffer sizes. Usage: asyncio_echo.py PORT [HOST]
import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int, host: str) -> None:
    server = await asyncio.start_server(handle, host, port, reuse_port=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
