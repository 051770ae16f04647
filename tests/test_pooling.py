"""Pooled keep-alive upstream connections: reuse, expiry, the stale-connection retry, spreading over addresses."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp

from router.app import Router
from tests.support import (
    BackendFactory,
    RouterFactory,
    ScriptedFactory,
    address_column,
    raw_request,
    status_of,
    wait_for,
)
from whaleray_demo.dns import DemoDnsServer


async def get_many(router: Router, path: str, count: int) -> list[tuple[int, bytes]]:
    results = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{router.port}{path}") as response:
                results.append((response.status, await response.read()))
    return results


async def test_sequential_requests_reuse_one_backend_connection(
    router: Router, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    instance = await backend("127.0.0.2")
    results = await get_many(router, "/services/hello/x", 25)
    assert [status for status, _ in results] == [200] * 25
    assert instance.requests == 25
    assert instance.connection_count == 1
    assert router.registry.get_sample_value("whaleray_upstream_connect_duration_seconds_count") == 1
    assert router.registry.get_sample_value("whaleray_upstream_connections_reused_total") == 24


async def test_separate_client_connections_share_pooled_backend_connections(
    router: Router, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    instance = await backend("127.0.0.2")
    for _ in range(10):  # a new client connection each time, as from different ALB nodes
        response = await raw_request(
            router.port, b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == 200
    assert instance.connection_count == 1


async def test_idle_pooled_connections_expire(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--upstream-idle-timeout", "0.2")
    dns.set_a("hello", ["127.0.0.2"])
    instance = await backend("127.0.0.2")
    await get_many(router, "/services/hello/x", 1)
    assert idle_connections(router) == 1
    await wait_for(lambda: idle_connections(router) == 0, seconds=3)
    await get_many(router, "/services/hello/x", 1)
    assert instance.connection_count == 2
    assert address_column(router, "hello", "idle_connections") == {f"127.0.0.2:{router.settings.upstream_port}": 1}


def idle_connections(router: Router) -> float | None:
    return router.registry.get_sample_value("whaleray_upstream_connections", {"state": "idle"})


async def test_concurrent_requests_open_parallel_connections_then_reuse_them(
    router: Router, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    instance = await backend("127.0.0.2")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

        async def one() -> int:
            async with session.get(f"http://127.0.0.1:{router.port}/services/hello/x") as response:
                await response.read()
                return response.status

        for _ in range(5):
            assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
    assert instance.requests == 40
    assert instance.connection_count <= 8


def closes_every_second_request(answered: list[int], hung_up: list[int] | None = None) -> object:
    """A backend that answers the first request of a connection, then closes as the next one arrives:
    what a pooled connection looks like when the backend's keep-alive timer fires as the router sends.
    `hung_up` counts the requests it hung up on: those the router sent on a pooled connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request: hang up without a byte
        if hung_up is not None:
            hung_up.append(1)

    return script


async def test_stale_pooled_connection_is_retried_on_a_fresh_one(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    answered: list[int] = []
    hung_up: list[int] = []
    await scripted_backend("127.0.0.2", closes_every_second_request(answered, hung_up))  # type: ignore[arg-type]
    results = await get_many(router, "/services/hello/x", 5)
    assert [status for status, _ in results] == [200] * 5  # never a spurious 502
    assert len(answered) == 5
    # Each request after the first went out on the pooled connection, was hung up on, and was retried on a
    # fresh one: without pooling, every request would have had a fresh connection and nothing to retry.
    assert len(hung_up) == 4


async def test_non_idempotent_request_is_not_replayed(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    answered: list[int] = []
    await scripted_backend("127.0.0.2", closes_every_second_request(answered))  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{router.port}/services/hello/a") as first:
            assert first.status == 200
        async with session.post(f"http://127.0.0.1:{router.port}/services/hello/a", data=b"pay once") as second:
            assert second.status == 502
            assert (await second.json())["code"] == "upstream_unavailable"
    assert len(answered) == 1  # the POST may have had effects: it is never sent twice


async def test_requests_spread_over_every_address(router: Router, dns: DemoDnsServer, backend: BackendFactory) -> None:
    dns.set_a("multi", ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]:
        await backend(host, name=host)
    results = await get_many(router, "/services/multi/", 30)
    spread = Counter(json.loads(body)["backend"] for _, body in results)
    assert spread == {"127.0.0.2": 10, "127.0.0.3": 10, "127.0.0.4": 10}


async def test_refused_address_is_skipped(router: Router, dns: DemoDnsServer, backend: BackendFactory) -> None:
    dns.set_a("multi", ["127.0.0.2", "127.0.0.9"])  # nothing listens on 127.0.0.9
    await backend("127.0.0.2", name="alive")
    results = await get_many(router, "/services/multi/", 10)
    assert [status for status, _ in results] == [200] * 10
    port = router.settings.upstream_port
    assert address_column(router, "multi", "ejected") == {f"127.0.0.2:{port}": False, f"127.0.0.9:{port}": True}


async def test_client_leaving_mid_response_closes_the_backend_connection(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    backend_saw_close = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            backend_saw_close.set()

    await scripted_backend("127.0.0.2", endless)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readexactly(100_000)
    writer.close()
    await asyncio.wait_for(backend_saw_close.wait(), 5)
    assert address_column(router, "hello", "idle_connections") == {f"127.0.0.2:{router.settings.upstream_port}": 0}


async def test_body_arriving_in_pieces_is_relayed_whole_and_the_connection_reused(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    """A Content-Length body that arrives after its head, in pieces, is relayed past the parser: it must still
    end where the length says and leave the connection ready for the next response."""
    dns.set_a("hello", ["127.0.0.2"])
    accepted = 0

    async def pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        for index in range(3):
            await reader.readuntil(b"\r\n\r\n")
            body = b"%d" % index * 30_000
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Index: %d\r\n\r\n" % (len(body), index))
            for start in range(0, len(body), 7_000):  # in pieces; test_byte_splits.py pins the read splits
                writer.write(body[start : start + 7_000])
                await writer.drain()
            await writer.drain()

    await scripted_backend("127.0.0.2", pieces)
    results = await get_many(router, "/services/hello/", 3)
    assert results == [(200, b"%d" % index * 30_000) for index in range(3)]
    assert accepted == 1


async def test_bytes_past_a_relayed_body_make_the_connection_unusable(
    router: Router, dns: DemoDnsServer, scripted_backend: ScriptedFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    accepted = 0

    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        writer.write(b"0123456789HTTP/1.1 200 OK\r\n\r\n")  # the body, then what no request asked for
        await writer.drain()
        await reader.read()

    async def exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted_exact
        accepted_exact += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            await writer.drain()
            writer.write(b"0123456789")
            await writer.drain()

    accepted_exact = 0
    dns.set_a("exact", ["127.0.0.3"])
    await scripted_backend("127.0.0.2", overlong)
    await scripted_backend("127.0.0.3", exact)
    results = await get_many(router, "/services/hello/", 2)
    assert results == [(200, b"0123456789")] * 2
    assert accepted == 2  # the first connection was not pooled after its extra bytes
    # The same response without the extra bytes, in the same two writes: pooled and used again.
    assert await get_many(router, "/services/exact/", 2) == [(200, b"0123456789")] * 2
    assert accepted_exact == 1
