"""HTTP/1.1 proxying as users expect from Nginx: framing, streaming, HEAD/204/304, 100-continue,
pipelining, keep-alive, upgrades, server-sent events and the header rules."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json

import aiohttp
import pytest
from aiohttp import web

from router.app import Router
from tests.support import (
    BackendFactory,
    RawBackendFactory,
    RouterFactory,
    ScriptedFactory,
    open_client,
    raw_request,
    read_response,
    status_of,
    wait_for,
)
from whaleray_demo.dns import DemoDnsServer

MiB = 1 << 20


@pytest.fixture
def hello(dns: DemoDnsServer) -> str:
    dns.set_a("hello", ["127.0.0.2"])
    return "hello"


def url(router: Router, path: str) -> str:
    return f"http://127.0.0.1:{router.port}{path}"


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_all_methods_are_proxied(router: Router, hello: str, backend: BackendFactory) -> None:
    await backend("127.0.0.2")
    async with aiohttp.ClientSession() as session:
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"]:
            async with session.request(method, url(router, "/services/hello/m"), data=b"x") as response:
                assert response.status == 200
                assert (await response.json())["method"] == method


@pytest.mark.parametrize("chunked", [False, True])
async def test_upload_streams_intact_both_framings(
    router: Router, hello: str, backend: BackendFactory, chunked: bool
) -> None:
    async def digest(request: web.Request) -> web.Response:
        hasher, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            hasher.update(chunk)
            total += len(chunk)
        return web.json_response(
            {
                "bytes": total,
                "sha256": hasher.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            }
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", digest)
    await backend("127.0.0.2", app=app)
    payload = pattern(8 * MiB + 123)

    async def chunks() -> object:
        for start in range(0, len(payload), 256 * 1024):
            yield payload[start : start + 256 * 1024]

    async with (
        aiohttp.ClientSession() as session,
        session.post(url(router, "/services/hello/up"), data=chunks() if chunked else io.BytesIO(payload)) as response,
    ):
        answer = await response.json()
    assert response.status == 200
    assert answer == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "chunked": chunked}


@pytest.mark.parametrize("chunked", [False, True])
async def test_download_streams_intact_both_framings(
    router: Router, hello: str, backend: BackendFactory, chunked: bool
) -> None:
    payload = pattern(8 * MiB + 7)

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(payload)
        await response.prepare(request)
        for start in range(0, len(payload), 100_000):
            await response.write(payload[start : start + 100_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", download)
    await backend("127.0.0.2", app=app)
    async with aiohttp.ClientSession() as session, session.get(url(router, "/services/hello/f")) as response:
        body = await response.read()
        framing = response.headers.get("Transfer-Encoding"), response.headers.get("Content-Length")
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    assert framing == (("chunked", None) if chunked else (None, str(len(payload))))


async def test_head_204_304_have_no_body_and_keep_the_connection(
    router: Router, hello: str, backend: BackendFactory
) -> None:
    async def no_body(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code == 200:
            return web.Response(body=b"x" * 1234)  # HEAD of this announces Content-Length 1234
        return web.Response(status=code, headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_route("*", "/{code}", no_body)
    instance = await backend("127.0.0.2", app=app)
    reader, writer = await open_client(router.port)
    try:
        for method, code in [("HEAD", 200), ("GET", 204), ("GET", 304), ("HEAD", 200), ("GET", 200)]:
            writer.write(f"{method} /services/hello/{code} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert status_of(head) == code
            if method == "HEAD":
                assert b"Content-Length: 1234" in head
            elif code == 200:
                assert await reader.readexactly(1234) == b"x" * 1234
    finally:
        writer.close()
    # Nothing stray was read as a body: every request used the one client connection and one backend connection.
    assert instance.connection_count == 1


async def test_expect_100_continue(router: Router, hello: str, backend: BackendFactory) -> None:
    await backend("127.0.0.2")
    reader, writer = await open_client(router.port)
    try:
        writer.write(
            b"POST /services/hello/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 200
    answer = json.loads(body)
    assert answer["body_bytes"] == 5
    assert "Expect" not in answer["headers"]  # the router answered it; the backend never waits for a body


async def test_expect_100_continue_for_unknown_deployment_gets_the_error_not_continue(router: Router) -> None:
    response = await raw_request(
        router.port, b"POST /services/ghost/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 502 ")
    assert b"100 Continue" not in response


async def test_body_in_pieces_then_a_pipelined_request_in_the_same_packet(
    router: Router, hello: str, raw_backend: RawBackendFactory
) -> None:
    """A Content-Length body is relayed past the parser once its head is read; where it ends, the next request
    may follow in the same read, and must be parsed as one."""
    recorder = await raw_backend("127.0.0.2")
    body = bytes(range(256)) * 400  # 102,400 bytes
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"POST /services/hello/a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
        # Where the kernel splits these into reads is its choice: test_byte_splits.py tries every split.
        writer.write(body[:1000])
        writer.write(body[1000:50_000])
        writer.write(body[50_000:] + b"POST /services/hello/b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz")
        answers = [await asyncio.wait_for(read_response(reader), 5) for _ in range(2)]
    finally:
        writer.close()
    assert [(status, data) for status, _, data in answers] == [(200, b"ok"), (200, b"ok")]
    assert recorder.bodies == [body, b"xyz"]
    assert [recorder.request_line(i) for i in (0, 1)] == [b"POST /a HTTP/1.1", b"POST /b HTTP/1.1"]


async def test_pipelined_requests_are_answered_in_order(
    router: Router, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    async def slow_then_fast(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.Response(text=request.match_info["n"])

    app = web.Application()
    app.router.add_get("/{n}", slow_then_fast)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    batch = (
        b"".join(
            f"GET /services/hello/{n}?sleep={0.3 if n == 1 else 0} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
            for n in (1, 2, 3)
        )
        + b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\nGET /services/hello/5 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await open_client(router.port)
    try:
        writer.write(batch)
        answers = [await read_response(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [(status, body) for status, _, body in answers[:3]] == [(200, b"1"), (200, b"2"), (200, b"3")]
    assert answers[3][0] == 404
    assert answers[4][:1] == (200,) and answers[4][2] == b"5"


async def test_keep_alive_for_http_1_0_clients_on_request(router: Router, hello: str, backend: BackendFactory) -> None:
    await backend("127.0.0.2")
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"GET /services/hello/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive")
        writer.write(b"GET /services/hello/b HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await reader.read() == b""  # then the router closes
    finally:
        writer.close()


async def test_chunked_response_to_http_1_0_client_is_delimited_by_close(
    router: Router, hello: str, backend: BackendFactory
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part1-")
        await response.write(b"part2")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", chunked)
    await backend("127.0.0.2", app=app)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert body == b"part1-part2"


async def test_websocket_is_tunnelled(router: Router, hello: str, backend: BackendFactory) -> None:
    await backend("127.0.0.2", name="ws-backend")
    async with aiohttp.ClientSession() as session, session.ws_connect(url(router, "/services/hello/ws")) as socket:
        await socket.send_str("ping")
        assert await socket.receive_str(timeout=5) == "ws-backend: ping"
        await socket.send_bytes(b"\x00\x01binary")
        assert await socket.receive_bytes(timeout=5) == b"\x00\x01binary"


async def test_idle_websocket_is_closed_and_a_busy_one_kept(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--tunnel-idle-timeout", "0.5")
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", name="ws-backend")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url(router, "/services/hello/ws")) as busy:
            for _ in range(6):  # 1.2 s in all, never 0.5 s without a byte
                await busy.send_str("ping")
                assert await busy.receive_str(timeout=5) == "ws-backend: ping"
                await asyncio.sleep(0.2)
        async with session.ws_connect(url(router, "/services/hello/ws")) as idle:
            message = await idle.receive(timeout=5)  # nothing sent: the router closes it
            assert message.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}
    state = router.state
    assert state is not None
    await wait_for(lambda: state.connections == set(), seconds=5)  # both tunnels closed on the router's side


async def test_declined_upgrade_is_relayed_and_the_connection_closed(
    router: Router, hello: str, raw_backend: RawBackendFactory
) -> None:
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port, b"GET /services/hello/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"ok")
    assert b"Upgrade: websocket" in recorder.heads[0]


async def test_server_sent_events_arrive_as_they_are_produced(
    router: Router, hello: str, backend: BackendFactory
) -> None:
    proceed = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await proceed.wait()  # the second event is produced only after the client saw the first
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    await backend("127.0.0.2", app=app)
    async with aiohttp.ClientSession() as session, session.get(url(router, "/services/hello/events")) as response:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        proceed.set()
        assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5) == b"data: second\n\n"


async def test_request_header_rules(router: Router, hello: str, raw_backend: RawBackendFactory) -> None:
    recorder = await raw_backend("127.0.0.2")
    request = (
        b"GET /services/hello/h HTTP/1.1\r\n"
        b"Host: app.example.com\r\n"
        b"Connection: keep-alive, X-Secret\r\n"
        b"X-Secret: drop-me\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic abc\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Port: 443\r\n"
        b"X-Forwarded-Prefix: /spoofed\r\n"
        b"X-Amzn-Trace-Id: Root=1-abc-def\r\n"
        b"X-Custom: kept\r\n"
        b"\r\n"
    )
    reader, writer = await open_client(router.port)
    try:
        writer.write(request)
        status, headers, _ = await read_response(reader)
    finally:
        writer.close()
    assert status == 200
    lines = recorder.header_lines()
    names = [line.split(b":", 1)[0].lower() for line in lines]
    for hop in [
        b"connection",
        b"x-secret",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
    ]:
        assert hop not in names
    assert b"Host: app.example.com" in lines
    assert b"X-Forwarded-For: 203.0.113.7, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: https" in lines
    assert b"X-Forwarded-Port: 443" in lines
    assert b"X-Forwarded-Prefix: /services/hello" in lines
    assert b"X-Amzn-Trace-Id: Root=1-abc-def" in lines
    assert b"X-Custom: kept" in lines
    request_ids = [line for line in lines if line.lower().startswith(b"x-request-id:")]
    assert len(request_ids) == 1
    assert request_ids[0].split(b": ", 1)[1].decode() == headers["x-request-id"]
    assert names.count(b"x-forwarded-prefix") == 1


async def test_forwarded_defaults_without_an_alb(router: Router, hello: str, raw_backend: RawBackendFactory) -> None:
    recorder = await raw_backend("127.0.0.2")
    await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    lines = recorder.header_lines()
    assert b"X-Forwarded-For: 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert f"X-Forwarded-Port: {router.port}".encode() in lines


async def test_client_request_id_is_kept_and_returned(
    router: Router, hello: str, raw_backend: RawBackendFactory
) -> None:
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-42\r\nConnection: close\r\n\r\n"
    )
    assert b"\r\nX-Request-Id: req-42\r\n" in response
    assert b"X-Request-Id: req-42" in recorder.header_lines()


async def test_response_hop_by_hop_headers_are_dropped(
    router: Router, hello: str, scripted_backend: ScriptedFactory
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 201 Created Here\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Authenticate: Basic\r\nX-Request-Id: backend-made\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    await scripted_backend("127.0.0.2", answer)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 Created Here\r\n")
    assert body == b"ok"
    for dropped in [b"X-Internal", b"Keep-Alive", b"Proxy-Authenticate", b"backend-made"]:
        assert dropped not in head
    assert head.count(b"Set-Cookie:") == 2


async def test_response_framed_by_close_is_rechunked_for_http_1_1(
    router: Router, hello: str, scripted_backend: ScriptedFactory
) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"the body")
        await writer.drain()

    await scripted_backend("127.0.0.2", until_close)
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers.get("transfer-encoding"), body) == (200, "chunked", b"all of the body")
        writer.write(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")  # the client connection is still usable
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()


async def test_early_hints_are_relayed(router: Router, hello: str, scripted_backend: ScriptedFactory) -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    await scripted_backend("127.0.0.2", hints)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n")
