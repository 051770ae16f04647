"""The protocol pinned byte by byte: the real `ClientConnection` and `UpstreamConnection`, the code the server
runs, driven in memory with exact splits of what each peer sends. A socket test cannot choose where one read
ends and the next begins (the kernel may merge two writes); these choose every split point.

Each case is compared with the same exchange sent in one piece: the backend must receive the same bytes, and
the client the same answer (request ids aside, which differ per request).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from router.discovery.resolver import Answer
from router.discovery.service import Discovery
from router.metrics import Metrics
from router.proxy.client import ClientConnection
from router.proxy.server import ServerState
from router.proxy.upstream import UpstreamConnection
from router.settings import build_parser, settings_from

ADDRESS = ("127.0.0.2", 3000)  # never dialled: the transports are in memory
GET = b"GET /services/hello/items?id=7 HTTP/1.1\r\nHost: router.example\r\nAccept: */*\r\n\r\n"
POST = b"POST /services/hello/items HTTP/1.1\r\nHost: router.example\r\nContent-Length: 11\r\n\r\nhello world"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfirst"
CHUNKED_RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


class RecordingTransport:
    """What the router uses of a transport, keeping every byte written."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.written += part

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


async def _never_asked(name: str) -> Answer:
    raise AssertionError(f"{name} was resolved: its answer is cached")


class Wire:
    """One client connection and one pooled backend connection, in memory, around a real ServerState."""

    def __init__(self, *flags: str) -> None:
        arguments = ["--access-log", "off", "--resolver", "127.0.0.1", *flags]
        settings = settings_from(build_parser().parse_args(arguments), {})
        loop = asyncio.get_running_loop()
        discovery = Discovery(settings, _never_asked, clock=loop.time)
        discovery.cache.store("hello", (ADDRESS,), 3600.0, loop.time())
        self.state = ServerState(settings, discovery, loop, Metrics(CollectorRegistry(), 10))
        self.backend = RecordingTransport(ADDRESS)
        self.upstream = UpstreamConnection(ADDRESS, self.state.connector.forget_idle)
        self.upstream.connection_made(self.backend)  # type: ignore[arg-type]
        self.state.connector.pool.release(ADDRESS, self.upstream, loop.time())
        self.client = RecordingTransport(("127.0.0.1", 40000))
        self.connection = ClientConnection(self.state)
        self.connection.connection_made(self.client)  # type: ignore[arg-type]

    def from_client(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.connection.data_received(piece)

    def from_backend(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.upstream.data_received(piece)


def without_request_ids(data: bytes) -> bytes:
    return re.sub(rb"(X-Request-Id: )[0-9a-f]+", rb"\1-", bytes(data))


async def reference(request: bytes, response: bytes) -> tuple[bytes, bytes]:
    """What the backend and the client receive when each side sends in one piece."""
    wire = Wire()
    wire.from_client(request)
    wire.from_backend(response)
    return without_request_ids(wire.backend.written), without_request_ids(wire.client.written)


def as_read(response: bytes) -> tuple[bytes, bytes]:
    """A response as a client reads it: its head, and its body with any chunked framing taken off (the router
    chunks each piece of body as it comes, so the chunk sizes follow the backend's reads)."""
    head, _, body = response.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" not in head:
        return head, body
    decoded = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", "nothing after the last chunk"
            return head, decoded
        decoded, body = decoded + body[:size], body[size + 2 :]


def splits(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(data[:point], data[point:]) for point in range(1, len(data))]


@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["get", "post-with-body"])
async def test_a_request_split_at_every_point_reaches_the_backend_unchanged(request_bytes: bytes) -> None:
    to_backend, to_client = await reference(request_bytes, RESPONSE)
    assert to_backend.startswith(request_bytes.split(b" ", 1)[0] + b" /items")
    assert to_client.startswith(b"HTTP/1.1 200 OK\r\n") and to_client.endswith(b"\r\n\r\nfirst")
    for first, second in splits(request_bytes):
        wire = Wire()
        wire.from_client(first, second)
        wire.from_backend(RESPONSE)
        assert without_request_ids(wire.backend.written) == to_backend, (first, second)
        assert without_request_ids(wire.client.written) == to_client, (first, second)
        assert wire.state.inflight == 0


@pytest.mark.parametrize("response", [RESPONSE, CHUNKED_RESPONSE], ids=["content-length", "chunked"])
async def test_a_response_split_at_every_point_reaches_the_client_unchanged(response: bytes) -> None:
    to_backend, to_client = await reference(GET, response)
    assert as_read(to_client)[1] == (b"first" if response is RESPONSE else b"abcde")
    for first, second in splits(response):
        wire = Wire()
        wire.from_client(GET)
        wire.from_backend(first, second)
        assert as_read(without_request_ids(wire.client.written)) == as_read(to_client), (first, second)
        assert without_request_ids(wire.backend.written) == to_backend
        assert wire.state.connector.pool.idle_count(ADDRESS) == 1  # whole and nothing after it: pooled again


async def test_a_head_split_inside_a_header_name_is_one_header() -> None:
    _, to_client = await reference(GET, RESPONSE)
    wire = Wire()
    cut = GET.index(b"Host") + 2  # "Ho" | "st: router.example"
    wire.from_client(GET[:cut], GET[cut:])
    wire.from_backend(RESPONSE)
    assert b"\r\nHost: router.example\r\n" in wire.backend.written
    assert without_request_ids(wire.client.written) == to_client
    response_cut = RESPONSE.index(b"Content-Type") + 7
    wire = Wire()
    wire.from_client(GET)
    wire.from_backend(RESPONSE[:response_cut], RESPONSE[response_cut:])
    assert without_request_ids(wire.client.written) == to_client


async def test_pipelined_requests_split_at_every_point_are_answered_in_order() -> None:
    pair = GET + GET.replace(b"id=7", b"id=8")
    for first, second in splits(pair):
        wire = Wire()
        wire.from_client(first, second)
        # One request at a time reaches the backend: the second waits for the first's response.
        assert wire.backend.written.count(b"GET /items?id=") == 1, (first, second)
        wire.from_backend(RESPONSE)
        await asyncio.sleep(0)  # the next pipelined request starts on the loop's next turn
        assert wire.backend.written.count(b"GET /items?id=") == 2, (first, second)
        wire.from_backend(RESPONSE.replace(b"first", b"again"))
        answers = bytes(wire.client.written)
        assert answers.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert answers.index(b"first") < answers.index(b"again")
        assert wire.backend.written.index(b"id=7") < wire.backend.written.index(b"id=8")
        assert wire.state.inflight == 0


async def test_a_pipelined_http_1_0_request_after_an_http_1_1_one_is_answered_as_http_1_0() -> None:
    """The second request's line is not the first line of the read: its version comes from the parser."""
    wire = Wire()
    wire.from_client(GET + GET.replace(b"HTTP/1.1", b"HTTP/1.0"))
    wire.from_backend(RESPONSE)
    await asyncio.sleep(0)
    wire.from_backend(RESPONSE)
    first, second = bytes(wire.client.written).split(b"first", 1)
    assert b"Connection: close" not in first
    assert b"Connection: close\r\n" in second  # HTTP/1.0 without keep-alive: the connection ends
    assert wire.client.closed


async def test_a_relayed_body_with_the_next_request_in_its_last_read_is_split_anywhere() -> None:
    """A Content-Length body goes past the parser once its head is read; wherever the reads split it, the next
    pipelined request, arriving in the same read as the body's end, is parsed as one."""
    second = POST.replace(b"/items", b"/next").replace(b"hello world", b"other bytes")
    pair = POST + second
    for first_piece, second_piece in splits(pair):
        wire = Wire()
        wire.from_client(first_piece, second_piece)
        wire.from_backend(RESPONSE)
        await asyncio.sleep(0)  # the next pipelined request starts on the loop's next turn
        wire.from_backend(RESPONSE)
        sent = bytes(wire.backend.written)
        assert sent.count(b"POST /") == 2, (first_piece, second_piece)
        assert sent.index(b"\r\n\r\nhello world") < sent.index(b"POST /next")
        assert sent.endswith(b"\r\n\r\nother bytes")
        assert bytes(wire.client.written).count(b"HTTP/1.1 200 OK\r\n") == 2
        assert wire.state.inflight == 0


async def test_a_head_that_grows_over_many_reads_is_bounded() -> None:
    """One header value arriving a kilobyte a read, never finished, is refused at --max-header-size."""
    wire = Wire("--max-header-size", "4k")
    wire.from_client(b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nX-Big: ")
    for _ in range(10):
        wire.from_client(b"b" * 1000)
    await asyncio.sleep(0)
    assert bytes(wire.client.written).startswith(b"HTTP/1.1 431 ")
    assert wire.backend.written == bytearray()  # nothing of it reached a backend


async def test_bytes_past_a_body_split_off_from_its_head_make_the_connection_unusable() -> None:
    """The head in one read, then the body and bytes no request asked for in the next: the client gets exactly
    the body, and the backend connection is not pooled again."""
    wire = Wire()
    wire.from_client(GET)
    wire.from_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"0123456789HTTP/1.1 200 OK\r\n\r\n")
    head, body = as_read(bytes(wire.client.written))
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"0123456789"
    assert wire.state.connector.pool.idle_count(ADDRESS) == 0


async def test_a_body_ended_by_the_backends_close_is_whole_wherever_its_reads_split() -> None:
    """HTTP/1.0 without a length: the backend's close ends the body. Split anywhere, the client gets all of it,
    chunked for HTTP/1.1, and the connection is not pooled again."""
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of the body"
    for first, second in splits(response):
        wire = Wire()
        wire.from_client(GET)
        wire.from_backend(first, second)
        wire.upstream.connection_lost(None)
        head, body = as_read(bytes(wire.client.written))
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head, (first, second)
        assert body == b"all of the body", (first, second)
        assert wire.state.connector.pool.idle_count(ADDRESS) == 0
        assert wire.state.inflight == 0
