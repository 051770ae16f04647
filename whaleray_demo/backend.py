"""A demo backend (aiohttp): answers every path with JSON saying who answered and what it received.

`/stream` sends server-sent events one by one; `/ws` echoes WebSocket messages. `python -m whaleray_demo.backend
--name NAME --host IP --port 3000` runs one on its own (the docker demo's backends do).
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import WSMsgType, web


def make_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.raw_path.split("?", 1)[0],
                "query": request.query_string,
                "body_bytes": len(body),
                "headers": {key: value for key, value in request.headers.items()},
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for number in range(int(request.query.get("count", "5"))):
            await response.write(f"data: {name} event {number}\n\n".encode())
            await asyncio.sleep(float(request.query.get("interval", "0.2")))
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(f"{name}: {message.data}")
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_backend(name: str, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description="WhaleRay demo backend")
    parser.add_argument("--name", default="demo")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    web.run_app(make_app(args.name), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
