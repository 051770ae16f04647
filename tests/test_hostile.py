"""Smuggling attempts, size limits and every timeout: a defined status, nothing forwarded, connection closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest

from router.app import Router
from tests.support import RawBackendFactory, RouterFactory, ScriptedFactory, open_client, raw_request, status_of
from whaleray_demo.dns import DemoDnsServer

SMUGGLING = {
    "cl_te": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
    ),
    "te_cl": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
    ),
    "te_space_before_colon": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
    ),
    "te_xchunked": b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_chunked_then_identity": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"
    ),
    "te_obs_fold": b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te_on_http_1_0": b"POST /services/hello/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "duplicate_same_cl": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "cl_list": b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl_negative": b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "chunk_size_overflow": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nFFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n"
    ),
    "chunk_size_not_hex": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n"
    ),
    "bare_lf_request_line": b"GET /services/hello/ HTTP/1.1\nHost: h\n\n",
    "bare_lf_in_headers": b"GET /services/hello/ HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    "bare_lf_after_chunk_size": (
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
    ),
    "no_host_on_1_1": b"GET /services/hello/ HTTP/1.1\r\nX: y\r\n\r\n",
    "two_hosts": b"GET /services/hello/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "nul_in_header": b"GET /services/hello/ HTTP/1.1\r\nHost: h\x00x\r\n\r\n",
    "http_0_9": b"GET /services/hello/\r\n\r\n",
    "http_2_0_text": b"GET /services/hello/ HTTP/2.0\r\nHost: h\r\n\r\n",
    "space_in_header_name": b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nX Y: z\r\n\r\n",
    "unsupported_expect": b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_smuggling_attempts_are_refused_and_never_forwarded(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory, name: str
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(router.port, SMUGGLING[name])  # returns once the router closes the connection
    assert status_of(response) == 400
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body["code"] == "bad_request"
    assert b"Connection: close" in response
    assert recorder.heads == []


async def test_bad_chunk_mid_body_never_completes_the_request_upstream(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port,
        b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\nZZ\r\nmore\r\n0\r\n\r\n",
    )
    assert status_of(response) == 400
    assert recorder.bodies == []  # the backend never saw a complete request


async def test_smuggled_second_request_after_a_good_one_is_not_forwarded(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port,
        b"GET /services/hello/one HTTP/1.1\r\nHost: h\r\n\r\n" + SMUGGLING["cl_te"],
    )
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 400 Bad Request" in response
    assert len(recorder.heads) == 1


async def test_request_head_over_the_limit_is_431(make_router: RouterFactory) -> None:
    router = await make_router("--max-header-size", "4k")
    big = b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    response = await raw_request(router.port, big)
    assert status_of(response) == 431
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "headers_too_large"


async def test_request_line_over_the_limit_is_431(make_router: RouterFactory) -> None:
    router = await make_router("--max-header-size", "4k")
    response = await raw_request(router.port, b"GET /services/hello/" + b"a" * 8000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status_of(response) == 431


async def test_too_many_header_lines_is_431(make_router: RouterFactory) -> None:
    router = await make_router("--max-header-count", "20")
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(30))
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    assert status_of(response) == 431


async def test_declared_body_over_the_limit_is_413_without_contacting_the_backend(
    make_router: RouterFactory, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    router = await make_router("--max-body-size", "1k")
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port, b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    )
    assert status_of(response) == 413
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "body_too_large"
    assert recorder.heads == []


async def test_chunked_body_growing_over_the_limit_is_413(
    make_router: RouterFactory, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    router = await make_router("--max-body-size", "1k")
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    response = await raw_request(
        router.port, b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert status_of(response) == 413
    assert recorder.bodies == []  # the backend got a cut request, never a complete one


async def test_slow_request_head_gets_408(make_router: RouterFactory) -> None:
    router = await make_router("--client-header-timeout", "0.3")
    started = time.monotonic()
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"GET /services/hello/ HTTP/1.1\r\nHo")
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_of(response) == 408
    assert time.monotonic() - started < 2


async def test_silent_new_connection_is_closed_after_the_header_timeout(make_router: RouterFactory) -> None:
    router = await make_router("--client-header-timeout", "0.3")
    reader, writer = await open_client(router.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_idle_keep_alive_connection_is_closed_after_its_timeout(make_router: RouterFactory) -> None:
    router = await make_router("--client-keepalive-timeout", "0.3")
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b'healthy"}')
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.2 < time.monotonic() - started < 2
    finally:
        writer.close()


async def test_slow_request_body_gets_408(
    make_router: RouterFactory, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    router = await make_router("--client-body-timeout", "0.3")
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    reader, writer = await open_client(router.port)
    try:
        writer.write(b"POST /services/hello/ HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_of(response) == 408
    assert recorder.bodies == []


async def test_backend_that_never_answers_gets_504(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    router = await make_router("--upstream-header-timeout", "0.3")
    dns.set_a("hello", ["127.0.0.2"])

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    await scripted_backend("127.0.0.2", silent)
    started = time.monotonic()
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 504
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2


async def test_backend_stalling_mid_body_is_cut_after_the_read_timeout(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    router = await make_router("--upstream-read-timeout", "0.3")
    dns.set_a("hello", ["127.0.0.2"])

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        await writer.drain()
        await asyncio.sleep(30)

    await scripted_backend("127.0.0.2", stall)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Length: 100" in head
    assert body == b"only-part"  # a clean truncation: closed, never padded


async def test_connect_timeout_is_504(make_router: RouterFactory, dns: DemoDnsServer, upstream_port: int) -> None:
    router = await make_router("--upstream-connect-timeout", "0.3")
    # A listener that never accepts, with its accept queue filled: further SYNs are dropped and connects hang.
    listener = socket.socket()
    listener.bind(("127.0.0.2", upstream_port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.2", upstream_port))
        fillers.append(filler)
    await asyncio.sleep(0.1)
    dns.set_a("hello", ["127.0.0.2"])
    try:
        started = time.monotonic()
        response = await raw_request(
            router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == 504
        assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "upstream_timeout"
        assert time.monotonic() - started < 3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_backend_sending_garbage_is_502(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    await scripted_backend("127.0.0.2", garbage)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 502
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "upstream_bad_response"


async def test_backend_reset_before_answering_is_502(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    await scripted_backend("127.0.0.2", reset)
    response = await raw_request(router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 502
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "upstream_unavailable"


async def test_connect_method_is_refused(router: Router) -> None:
    response = await raw_request(router.port, b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n")
    assert status_of(response) == 405
