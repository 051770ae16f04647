"""The tenant rule in general: whatever one backend sends, the next client gets its own answer or the router's.

A hostile backend answers the first request with a byte stream built from valid and hostile pieces (extra
bytes, trailers, 1xx heads, wrong or duplicate lengths, truncation, over-long heads), written in pieces split at
random points. Then a different client asks the same deployment. Invariants:
- the second client gets exactly its own response, or a 502/504 of the router: never a byte of the first;
- nothing raised inside the router's callbacks;
- the router's descriptors return to where they started once idle connections expire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvloop
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from router.app import Router
from tests.support import free_port, open_descriptors, read_response, router_settings
from whaleray_demo.dns import DemoDnsServer

# Every hostile piece carries this marker, in its headers or its body: it must never reach the second client.
MARK = b"leak"

PIECES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nleak",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-leak: 1\r\n\r\n",  # a head whose body comes later
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nleak\r\n0\r\nX-leak: 1\r\nSet-Cookie: leak\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;leak=1\r\nleak\r\n",  # unfinished chunked body
        b"HTTP/1.1 103 Early Hints\r\nLink: <leak>\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nleak",  # promises more than it sends
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nleak!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nleak",
        b"HTTP/1.1 204 No Content\r\nX-leak: 1\r\n\r\nleak",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nleak",  # framed by close
        b"HTTP/1.1 200 OK\r\nX-leak: " + b"l" * 5000 + b"\r\nContent-Length: 0\r\n\r\n",  # over the 4k limit
        b"HTTP/1.1 200 OK\r\n" + b"X-leak: 1\r\n" * 40 + b"Content-Length: 0\r\n\r\n",  # over the line limit
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: leak\r\nConnection: upgrade\r\n\r\nleak",
        b"leak",
        b"\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\nleak",
        b"\x00\xffleak",
    ]
)


@dataclass
class HostileBackend:
    """Answers `/first...` with the current script, anything else properly (its body: the request target)."""

    pieces: list[bytes] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)
    close_after: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/first"):
                    await self._play(writer)
                    if self.close_after:
                        return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _play(self, writer: asyncio.StreamWriter) -> None:
        stream = b"".join(self.pieces)
        cuts = sorted({min(cut, len(stream)) for cut in self.splits} | {len(stream)})
        start = 0
        for cut in cuts:
            writer.write(stream[start:cut])
            await writer.drain()
            await asyncio.sleep(0.002)  # a read of its own, most of the time
            start = cut


@dataclass
class Harness:
    router: Router
    loop: asyncio.AbstractEventLoop
    backend: HostileBackend
    errors: list[dict[str, object]]
    baseline_descriptors: int
    examples: int = 0


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    loop = uvloop.new_event_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    dns = DemoDnsServer("whaleray.local")
    loop.run_until_complete(dns.start("127.0.0.1", 0))
    upstream_port = free_port("127.0.0.3")
    backend = HostileBackend()
    server = loop.run_until_complete(asyncio.start_server(backend.handle, "127.0.0.3", upstream_port))
    dns.set_a("tenant", ["127.0.0.3"])
    router = Router(
        router_settings(
            dns,
            upstream_port,
            *("--upstream-header-timeout", "0.3", "--upstream-read-timeout", "0.3"),
            *("--upstream-idle-timeout", "0.2", "--access-log", "off"),
            *("--upstream-max-header-size", "4k", "--upstream-max-header-count", "32"),
        )
    )
    loop.run_until_complete(router.start())
    baseline = loop.run_until_complete(standing_descriptors(router.port))
    yield Harness(router, loop, backend, errors, baseline)
    loop.run_until_complete(router.stop())
    server.close()
    dns.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()


async def standing_descriptors(port: int) -> int:
    """What the process holds once the router has answered a request: its listener, its resolver's channel, and
    (as in every later check) what the running event loop holds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /services/nobody/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 502 ")
    writer.close()
    await writer.wait_closed()
    return open_descriptors()


async def exchange(port: int, target: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """One request from a new client; its final response, or None when the router cut the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /services/tenant" + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        async with asyncio.timeout(3):
            return await read_response(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    finally:
        writer.close()


# No shrink phase: every example costs real I/O, and a failing one is already a handful of pieces.
@pytest.mark.timeout(180)
@settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pieces=st.lists(PIECES, min_size=1, max_size=4),
    splits=st.lists(st.integers(min_value=1, max_value=200), max_size=4),
    close_after=st.booleans(),
)
def test_whatever_a_backend_sends_the_next_client_gets_only_its_own_answer(
    harness: Harness, *, pieces: list[bytes], splits: list[int], close_after: bool
) -> None:
    harness.backend.pieces, harness.backend.splits, harness.backend.close_after = pieces, splits, close_after
    harness.examples += 1
    port = harness.router.port
    own = b"/second-%d" % harness.examples

    async def run() -> None:
        await exchange(port, b"/first-%d" % harness.examples)  # anything: a response, an error, a cut
        second = await exchange(port, own)
        assert second is not None, "the second client's connection was cut"
        status, headers, body = second
        if status == 200:
            assert body == own, body[:80]
        else:
            assert status in {502, 504}, (status, body[:80])
            assert json.loads(body)["code"] in {"upstream_bad_response", "upstream_unavailable", "upstream_timeout"}
        assert MARK not in body.lower()
        assert not any(MARK in (name + value).encode().lower() for name, value in headers.items()), headers

    harness.loop.run_until_complete(run())
    assert harness.errors == [], harness.errors

    async def settled() -> bool:
        """Pooled connections expire after 0.2 s and closed ones reach both ends: then nothing is left over."""
        for _ in range(40):
            if open_descriptors() <= harness.baseline_descriptors and harness.router.state is not None:
                return harness.router.state.inflight == 0
            await asyncio.sleep(0.05)
        return False

    assert harness.loop.run_until_complete(settled()), (open_descriptors(), harness.baseline_descriptors)
