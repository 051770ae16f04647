"""First tests of issue #7: a backend dying mid-response, and a bounded fuzz of the request path."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import Router
from router.proxy.client import ClientConnection
from router.proxy.exchange import Exchange
from router.proxy.upstream import UpstreamConnection
from tests.support import (
    BackendFactory,
    ConnectionScript,
    RouterFactory,
    ScriptedFactory,
    open_descriptors,
    raw_request,
    read_response,
    wait_for,
)
from whaleray_demo.dns import DemoDnsServer

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
    await wait_for(lambda: len(statuses) >= 20)  # every client is sending
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
    assert len(statuses) > 100  # the clients kept sending through both replacements
    assert set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} of {len(statuses)} requests failed"
    assert {"new-a", "new-b"} <= seen


# --- faulty backends at volume: each request its defined status, and nothing left behind -------------------


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()  # never answers; hangs up only when the router does


async def trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":  # a byte every 50 ms: never a whole head in time
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20)
    await writer.drain()


async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def live_router_objects() -> int:
    gc.collect()
    return sum(isinstance(obj, (Exchange, ClientConnection, UpstreamConnection)) for obj in gc.get_objects())


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        (silent, 504, "upstream_timeout"),
        (trickling, 504, "upstream_timeout"),
        (garbage, 502, "upstream_bad_response"),
        (resetting, 502, "upstream_unavailable"),
    ],
    ids=["silent", "trickling", "garbage", "resetting"],
)
async def test_faulty_backend_at_volume_gets_its_status_and_leaves_nothing_behind(
    make_router: RouterFactory,
    dns: DemoDnsServer,
    scripted_backend: ScriptedFactory,
    *,
    script: ConnectionScript,
    status: int,
    code: str,
) -> None:
    """200 requests, 50 at a time, against a backend with one fault: every one gets the fault's status and code
    within its timeout, and afterwards no request, connection or descriptor of the router is left over (what
    would make memory grow under a long-lived fault)."""
    router = await make_router("--upstream-header-timeout", "0.3", "--access-log", "off")
    dns.set_a("faulty", ["127.0.0.2"])
    await scripted_backend("127.0.0.2", script)
    objects_before, descriptors_before = live_router_objects(), open_descriptors()
    request = b"GET /services/faulty/ HTTP/1.1\r\nHost: h\r\n\r\n"

    async def one() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        try:
            writer.write(request)
            answer_status, _, body = await asyncio.wait_for(read_response(reader), 2)  # timeout 0.3 s, and slack
            return answer_status, json.loads(body)["code"]
        finally:
            writer.close()

    for _ in range(4):
        answers = await asyncio.gather(*(one() for _ in range(50)))
        assert set(answers) == {(status, code)}
    state = router.state
    assert state is not None
    await wait_for(lambda: (state.inflight, len(state.connections)) == (0, 0), seconds=5)  # the last closes arrive
    assert live_router_objects() == objects_before

    # The test's own backend closes its ends once it notices.
    await wait_for(lambda: open_descriptors() <= descriptors_before, seconds=5)


async def test_backend_restarting_on_a_new_address_fails_only_while_its_old_address_is_dead(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    """The task dies, ECS starts a new one on another address and Cloud Map follows. Requests meanwhile can
    only fail with 502 upstream_unavailable (the old address refuses: no retry could help), never with a
    stale pooled connection's error; once the TTL has passed, every request reaches the new task."""
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("restarts", ["127.0.0.2"], ttl=1)
    old = await backend("127.0.0.2", name="old")
    outcomes: list[tuple[float, int, str]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(f"http://127.0.0.1:{router.port}/services/restarts/") as response:
                    payload = json.loads(await response.read())
                    outcomes.append((loop.time(), response.status, payload.get("backend") or payload.get("code")))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await wait_for(lambda: len(outcomes) >= 20)  # every client has reached the old task
    await old.stop()  # the task dies: its pooled connections close, its address refuses
    await backend("127.0.0.3", name="new")
    dns.set_a("restarts", ["127.0.0.3"], ttl=1)
    moved_at = loop.time() + 1.2  # the TTL and a little
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*clients)

    failures = {(status, detail) for _, status, detail in outcomes if status != 200}
    assert failures <= {(502, "upstream_unavailable")}
    assert {detail for when, status, detail in outcomes if when > moved_at} == {"new"}
    assert any(detail == "old" for _, _, detail in outcomes)
