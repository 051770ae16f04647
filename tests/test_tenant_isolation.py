"""A backend is a tenant: nothing it sends reaches another client, holds others' capacity or exhausts the router.

Each numbered rule of the threat model (README, "Threat model") against scripted raw backends on loopback. The
pattern of most tests: a hostile backend answers one client, then a *different* client asks the same deployment;
that second client must get exactly its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable

import pytest

from router.app import Router
from tests.support import (
    RawBackendFactory,
    RouterFactory,
    RouterProcess,
    ScriptedFactory,
    open_descriptors,
    raw_request,
    read_response,
    status_of,
    wait_for,
)
from whaleray_demo.dns import DemoDnsServer

GET = b"GET /services/tenant/%s HTTP/1.1\r\nHost: h\r\n\r\n"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request target of the next request head on a backend connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b" ", 2)[1]


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def ask(port: int, path: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a new client connection: each call is a different client."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(GET % path)
        return await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()


# --- 1. trailers ------------------------------------------------------------------------------------------


async def test_trailers_never_reach_the_next_client(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    connections = 0

    async def chunked_with_trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Secret\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Secret: a\r\nSet-Cookie: sid=a\r\n\r\n"
        )
        while True:
            target = await read_request(reader)
            writer.write(answer(target))

    await scripted_backend("127.0.0.2", chunked_with_trailers)
    first = await ask(router.port, b"first")
    assert (first[0], first[2]) == (200, b"ok")
    assert "x-secret" not in first[1]  # trailers are dropped: the head they belong to went out already
    status, headers, body = await ask(router.port, b"second")
    assert (status, body) == (200, b"/second")
    assert "x-secret" not in headers
    assert "set-cookie" not in headers
    assert connections == 1  # the clean connection was reused: the test did cross the pool


# --- 2. bytes after a complete response ---------------------------------------------------------------------

UNSOLICITED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Planted: 1\r\n\r\n"


async def ahead_in_one_write(writer: asyncio.StreamWriter) -> None:
    writer.write(answer(b"ok") + UNSOLICITED)


async def ahead_with_body_apart(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)  # the body arrives in a read of its own: relayed past the parser
    writer.write(b"ok" + UNSOLICITED)


async def ahead_while_idle(writer: asyncio.StreamWriter) -> None:
    writer.write(answer(b"ok"))
    await writer.drain()
    await asyncio.sleep(0.1)  # the connection is back in the pool by now
    writer.write(UNSOLICITED)


@pytest.mark.parametrize("send_first", [ahead_in_one_write, ahead_with_body_apart, ahead_while_idle])
async def test_bytes_after_a_complete_response_never_reach_another_client(
    router: Router,
    dns: DemoDnsServer,
    scripted_backend: ScriptedFactory,
    send_first: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    connections = 0

    async def planting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        target = await read_request(reader)
        if target == b"/first":
            await send_first(writer)
            await read_request(reader)
            writer.write(b"LEAKED")  # the planted head's body, as the "answer" to whoever comes next
            await reader.read()
        else:
            writer.write(answer(b"fresh"))
            await reader.read()

    await scripted_backend("127.0.0.2", planting)
    first = await ask(router.port, b"first")
    assert (first[0], first[2]) == (200, b"ok")
    await asyncio.sleep(0.15)
    status, headers, body = await ask(router.port, b"second")
    assert (status, body) == (200, b"fresh")
    assert "x-planted" not in headers
    assert connections == 2  # the first connection was closed, never pooled


# --- 3. response head limits ----------------------------------------------------------------------------


def endless(start: bytes, repeated: bytes) -> Script:
    """A backend answering `start`, then `repeated` for ever: it ends only when the router closes the connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(start)
        while True:
            writer.write(repeated)
            await writer.drain()

    script.__name__ = script.__qualname__ = f"endless {repeated[:12]!r}"
    return script


def watched(script: Script) -> tuple[Script, asyncio.Event]:
    """`script`, and an event set when it ends: an endless script ends only when the router closes on it."""
    ended = asyncio.Event()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            ended.set()

    return run, ended


endless_header_line = endless(b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 65536)
endless_header_lines = endless(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n" * 8192)
endless_informational_heads = endless(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 256)
endless_trailers = endless(
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: ", b"a" * 65536
)


@pytest.mark.parametrize(
    "script",
    [endless_header_line, endless_header_lines, endless_informational_heads],
    ids=["one_long_line", "many_lines", "informational_heads"],
)
async def test_response_head_over_the_limit_is_502_and_closes_the_backend(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory, script: Script
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    script, closed = watched(script)
    await scripted_backend("127.0.0.2", script)
    status, _, body = await ask(router.port, b"x")
    assert (status, json.loads(body)["code"]) == (502, "upstream_bad_response")
    await asyncio.wait_for(closed.wait(), 5)


async def test_endless_trailers_cut_the_response_and_close_the_backend(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    """The head went out before the trailers came: the client sees a truncated response, never a whole one."""
    dns.set_a("tenant", ["127.0.0.2"])
    script, closed = watched(endless_trailers)
    await scripted_backend("127.0.0.2", script)
    response = await raw_request(router.port, GET % b"x", wait_s=5)
    assert status_of(response) == 200
    assert not response.endswith(b"0\r\n\r\n")  # no final chunk: the client can tell it was cut
    await asyncio.wait_for(closed.wait(), 5)


async def test_response_heads_of_32_kib_pass(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    cookies = b"".join(b"Set-Cookie: c%d=%s\r\n" % (index, b"v" * 500) for index in range(32))
    policy = b"Content-Security-Policy: " + b"x" * 17000 + b"\r\n"

    async def big_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"big", cookies + policy))
        await reader.read()

    await scripted_backend("127.0.0.2", big_head)
    assert len(cookies + policy) > 32 * 1024
    status, headers, body = await ask(router.port, b"x")
    assert (status, body) == (200, b"big")
    assert len(headers["content-security-policy"]) == 17000


async def test_response_header_line_count_is_bounded(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    router = await make_router("--upstream-max-header-count", "50")
    dns.set_a("tenant", ["127.0.0.2"])

    async def many_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            target = await read_request(reader)
            lines = 49 if target == b"/fifty" else 50  # and Content-Length
            writer.write(answer(b"ok", b"X-A: b\r\n" * lines))

    await scripted_backend("127.0.0.2", many_lines)
    assert (await ask(router.port, b"fifty"))[0] == 200
    status, _, body = await ask(router.port, b"fifty-one")
    assert (status, json.loads(body)["code"]) == (502, "upstream_bad_response")


async def test_endless_response_head_leaves_the_router_memory_alone(
    router_process: Callable[..., Awaitable[RouterProcess]], dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    """Before the limit a single request grew the router by 1.6 GiB: the peak stays within 16 MiB of idle."""
    process = await router_process("--access-log", "off")
    dns.set_a("tenant", ["127.0.0.2"])
    await scripted_backend("127.0.0.2", endless_header_line)
    assert (await ask(process.port, b"warm"))[0] == 502  # imports, pools and caches of a first request
    baseline = process.peak_rss_bytes()
    results = await asyncio.gather(*(ask(process.port, b"x%d" % index) for index in range(20)))
    assert {status for status, _, _ in results} == {502}
    assert process.peak_rss_bytes() - baseline < 16 << 20


# --- 4. every rejected response closes its socket ---------------------------------------------------------

CUT = 0  # the head went out before the fault: the client's connection is closed mid-response
REJECTED = {
    "not_http": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 502),
    "bad_chunk_size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nok\r\n", CUT),
    "two_content_lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", 502),
    "garbage_after_204": (b"HTTP/1.1 204 No Content\r\n\r\ngarbage", 204),
}


async def status_or_cut(port: int) -> int:
    try:
        return (await ask(port, b"x"))[0]
    except asyncio.IncompleteReadError:
        return CUT


@pytest.mark.parametrize("name", sorted(REJECTED))
async def test_rejected_responses_leave_no_socket_open(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory, name: str
) -> None:
    """The backend keeps every connection open: only the router closing its end frees the descriptors."""
    router = await make_router("--access-log", "off")
    dns.set_a("tenant", ["127.0.0.2"])
    reply, expected = REJECTED[name]

    async def rejected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await reader.read()  # until the router closes its end

    await scripted_backend("127.0.0.2", rejected)
    baseline = open_descriptors()
    for _ in range(5):
        assert set(await asyncio.gather(*(status_or_cut(router.port) for _ in range(20)))) == {expected}

    async def released() -> bool:
        return open_descriptors() <= baseline

    await wait_for(released, seconds=5)


# --- 5. send timeouts -------------------------------------------------------------------------------------


async def test_a_client_that_stops_reading_frees_its_slot_after_the_send_timeout(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    router = await make_router("--client-send-timeout", "0.5", "--deployment-max-inflight", "1")
    dns.set_a("tenant", ["127.0.0.2"])
    backend_closed = asyncio.Event()

    async def download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = await read_request(reader)
        if target != b"/download":
            writer.write(answer(b"small"))
            await reader.read()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        finally:
            backend_closed.set()

    await scripted_backend("127.0.0.2", download)
    stalled = socket.create_connection(("127.0.0.1", router.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.sendall(GET % b"download")  # and never reads
        status, _, body = await ask(router.port, b"other")
        assert (status, json.loads(body)["code"]) == (503, "deployment_overloaded")  # the slot is held
        await asyncio.wait_for(backend_closed.wait(), 5)
        status, _, body = await ask(router.port, b"other")
        assert (status, body) == (200, b"small")
    finally:
        stalled.close()


async def test_a_backend_that_stops_reading_an_upload_gets_504_after_the_send_timeout(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    router = await make_router("--upstream-send-timeout", "0.5")
    dns.set_a("tenant", ["127.0.0.2"])

    async def never_reads_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    await scripted_backend("127.0.0.2", never_reads_the_body)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    size = 256 << 20

    async def upload() -> None:
        writer.write(b"POST /services/tenant/up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                writer.write(b"u" * 65536)
                await writer.drain()

    uploading = asyncio.create_task(upload())
    try:
        status, _, body = await asyncio.wait_for(read_response(reader), 10)
        assert (status, json.loads(body)["code"]) == (504, "upstream_timeout")
    finally:
        uploading.cancel()
        writer.close()


# --- 6. local answers respect back-pressure -----------------------------------------------------------------


async def test_pipelined_local_answers_stop_reading_when_the_client_does_not_read(
    router_process: Callable[..., Awaitable[RouterProcess]],
) -> None:
    """A client pipelines requests the router answers itself and never reads: the router must stop reading
    too, instead of buffering its answers (about 8x what the client sent)."""
    process = await router_process("--access-log", "off", "--client-send-timeout", "30")
    baseline = process.peak_rss_bytes()
    request = b"GET /nothing-here HTTP/1.1\r\nHost: h\r\n\r\n"
    _reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    sent = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            while sent < 64 << 20:
                writer.write(request * 1000)
                sent += len(request) * 1000
                await writer.drain()
    writer.transport.abort()
    assert sent < 32 << 20  # the router stopped reading: the client's writes stalled
    assert process.peak_rss_bytes() - baseline < 32 << 20


# --- 7. smaller rules -----------------------------------------------------------------------------------


async def test_upgrade_request_with_a_body_is_refused(router: Router, dns: DemoDnsServer) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    response = await raw_request(
        router.port,
        b"GET /services/tenant/ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    )
    assert status_of(response) == 400
    assert json.loads(response.partition(b"\r\n\r\n")[2])["code"] == "bad_request"


async def test_client_forwarded_and_forwarded_host_are_dropped(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port,
        b"GET /services/tenant/ HTTP/1.1\r\nHost: h\r\nForwarded: for=1.2.3.4;host=evil\r\n"
        b"X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    assert status_of(response) == 200
    names = {line.split(b":", 1)[0].lower() for line in recorder.header_lines()}
    assert b"forwarded" not in names
    assert b"x-forwarded-host" not in names
    assert b"host" in names


async def test_a_client_that_half_closes_still_gets_its_answer(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    await raw_backend("127.0.0.2")
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(GET % b"a" + GET % b"b")
        writer.write_eof()
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        assert (first[0], first[2], second[0], second[2]) == (200, b"ok", 200, b"ok")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the router closes
    finally:
        writer.close()


async def test_a_request_cut_short_by_a_half_close_is_400(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory
) -> None:
    dns.set_a("tenant", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(b"POST /services/tenant/ HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        writer.write_eof()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, json.loads(body)["code"]) == (400, "bad_request")
    finally:
        writer.close()
    assert recorder.bodies == []  # the backend never saw a request that looked whole
