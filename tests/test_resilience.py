"""First tests of issue #7: a backend dying mid-response, and a bounded fuzz of the request path."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import Router
from router.demo.dns import DemoDnsServer
from tests.conftest import BackendFactory, RouterFactory, ScriptedFactory, raw_request

KNOWN_STATUSES = {200, 308, 400, 404, 405, 408, 413, 431, 502, 503, 504}


async def test_backend_dying_mid_response_truncates_cleanly_and_others_carry_on(
    make_router: RouterFactory, dns: DemoDnsServer, scripted_backend: ScriptedFactory, backend: BackendFactory
) -> None:
    router = await make_router()
    dns.set_a("dying", ["127.0.0.2"])
    dns.set_a("healthy", ["127.0.0.3"])
    await backend("127.0.0.3", name="healthy")

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        writer.transport.close()  # the process died: FIN after 1000 of 100000 bytes

    await scripted_backend("127.0.0.2", dies)
    response = await raw_request(router.port, b"GET /services/dying/ HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Length: 100000" in head
    assert body == b"a" * 1000  # the connection closed: never padded, never completed with other bytes
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{router.port}/services/healthy/") as r,
    ):
        assert r.status == 200
        assert json.loads(await r.read())["backend"] == "healthy"
    assert (
        router.registry.get_sample_value("whaleray_upstream_errors_total", {"deployment": "dying", "kind": "truncated"})
        == 1
    )


METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"CONNECT", b"G\x00T", b""])
TARGETS = st.one_of(
    st.just(b"/services/hello/"),
    st.builds(lambda rest: b"/services/hello/" + rest, st.binary(max_size=40)),
    st.builds(lambda raw_id: b"/services/" + raw_id + b"/x", st.binary(max_size=70)),
    st.binary(max_size=60),
)
HEADER_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Host: h",
                b"Content-Length: 3",
                b"Content-Length: -1",
                b"Transfer-Encoding: chunked",
                b"Transfer-Encoding: gzip",
                b"Expect: 100-continue",
                b"Connection: close",
                b"Connection: upgrade",
                b"Upgrade: websocket",
                b"X-Request-Id: fuzz",
                b"Host: a\x00b",
                b" folded",
            ]
        ),
        st.binary(max_size=30),
    ),
    max_size=6,
)
BODIES = st.one_of(st.just(b""), st.just(b"abc"), st.just(b"3\r\nabc\r\n0\r\n\r\n"), st.binary(max_size=40))
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\n", b""])


# Bounded for CI: incomplete fuzzed requests each wait out a 0.5 s client timeout.
@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, target=TARGETS, version=VERSIONS, headers=HEADER_LINES, body=BODIES)
def test_fuzzed_requests_get_a_defined_answer_and_the_router_keeps_serving(
    fuzz_router: tuple[Router, asyncio.AbstractEventLoop, list[dict[str, object]]],
    *,
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[bytes],
    body: bytes,
) -> None:
    router, loop, errors = fuzz_router
    request = (
        method + b" " + target + b" " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    )

    async def exchange() -> None:
        response = await raw_request(router.port, request, wait_s=3)
        if response:  # an answer, or a silent close (an incomplete request the header timeout ended)
            assert response.startswith(b"HTTP/1.1 "), response[:80]
            assert int(response[9:12]) in KNOWN_STATUSES, response[:80]
        health = await raw_request(router.port, b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200 "), health[:80]

    loop.run_until_complete(exchange())
    assert errors == [], errors  # nothing raised inside the router's callbacks


async def test_rolling_replacement_under_steady_load_fails_no_request(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    """A deployment's tasks replaced one by one while clients keep sending: ECS registers the new task, the old
    one leaves Cloud Map, then stops. No idempotent request may fail."""
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("rolling", ["127.0.0.2", "127.0.0.3"], ttl=1)
    old = [await backend("127.0.0.2", name="old-a"), await backend("127.0.0.3", name="old-b")]
    statuses: list[int] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(f"http://127.0.0.1:{router.port}/services/rolling/") as response:
                    statuses.append(response.status)
                    if response.status == 200:
                        seen.add(json.loads(await response.read())["backend"])

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.5)
    for new_host, name, retiring, kept in [
        ("127.0.0.4", "new-a", old[0], "127.0.0.3"),
        ("127.0.0.5", "new-b", old[1], "127.0.0.4"),
    ]:
        await backend(new_host, name=name)  # the new task starts and registers
        dns.set_a("rolling", [kept, new_host], ttl=1)  # the old one is deregistered
        await asyncio.sleep(1.5)  # longer than the TTL: the router has moved on
        await retiring.stop()  # then ECS stops it (its idle keep-alive connections close)
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    assert statuses
    assert set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} of {len(statuses)} requests failed"
    assert {"new-a", "new-b"} <= seen
