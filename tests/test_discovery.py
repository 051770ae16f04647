"""Discovery against a real DNS server on loopback that counts its queries."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from router.app import Router
from router.discovery.resolver import DnsResolver, NameNotFound
from router.options import Resolver
from tests.support import BackendFactory, RouterFactory, fetch, free_port, view_of
from whaleray_demo.dns import DemoDnsServer


async def test_answer_is_cached_for_its_ttl(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("hello", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2")
    for _ in range(5):
        assert (await fetch(router, "/services/hello/")).status == 200
    assert dns.query_count("hello") == 1
    await asyncio.sleep(1.2)
    assert (await fetch(router, "/services/hello/")).status == 200
    assert dns.query_count("hello") == 2


async def test_long_ttl_is_clamped_to_the_maximum(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1", "--dns-max-ttl", "0.4")
    dns.set_a("hello", ["127.0.0.2"], ttl=3600)
    await backend("127.0.0.2")
    assert (await fetch(router, "/services/hello/")).status == 200
    await asyncio.sleep(0.6)
    assert (await fetch(router, "/services/hello/")).status == 200
    assert dns.query_count("hello") == 2


async def test_concurrent_misses_share_one_query(router: Router, dns: DemoDnsServer, backend: BackendFactory) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> int:
            async with session.get(f"http://127.0.0.1:{router.port}/services/hello/") as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(500)))
    assert statuses == [200] * 500
    assert dns.query_count("hello") == 1


async def test_unknown_deployment_is_remembered(router: Router, dns: DemoDnsServer) -> None:
    for _ in range(5):
        reply = await fetch(router, "/services/ghost/")
        assert (reply.status, reply.json()["code"]) == (502, "deployment_not_found")
    assert dns.query_count("ghost") == 1


async def test_stale_answer_serves_while_the_resolver_is_silent_and_fresh_answers_return(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("hello", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2", name="before")
    await backend("127.0.0.3", name="after")
    assert (await fetch(router, "/services/hello/")).json()["backend"] == "before"
    dns.silent = True
    await asyncio.sleep(1.5)  # longer than the TTL
    assert (await fetch(router, "/services/hello/")).json()["backend"] == "before"  # served stale
    reply = await fetch(router, "/services/never-seen/")
    assert (reply.status, reply.json()["code"]) == (503, "resolver_unavailable")
    assert view_of(router, "hello")["state"] == "stale"
    dns.set_a("hello", ["127.0.0.3"], ttl=1)  # the deployment moved while DNS was down
    dns.silent = False
    await asyncio.sleep(0.5)  # the stale answer is retried every --dns-min-ttl
    assert (await fetch(router, "/services/hello/")).json()["backend"] == "after"
    assert view_of(router, "hello")["state"] == "fresh"


async def test_second_resolver_answers_when_the_first_is_dead(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dead = free_port(kind=2)
    router = await make_router(resolvers=[f"127.0.0.1:{dead}", f"127.0.0.1:{dns.port}"])
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    assert (await fetch(router, "/services/hello/")).status == 200


async def test_servfail_from_the_first_resolver_moves_to_the_second(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    failing = DemoDnsServer()
    await failing.start("127.0.0.1", 0)
    try:
        failing.servfail.add("hello.whaleray.local")
        router = await make_router(resolvers=[f"127.0.0.1:{failing.port}", f"127.0.0.1:{dns.port}"])
        dns.set_a("hello", ["127.0.0.2"])
        await backend("127.0.0.2")
        assert (await fetch(router, "/services/hello/")).status == 200
        assert failing.query_count("hello") == 1
    finally:
        failing.close()


async def test_new_address_takes_over_after_the_ttl(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("hello", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2", name="old")
    await backend("127.0.0.3", name="new")
    assert (await fetch(router, "/services/hello/")).json()["backend"] == "old"
    dns.set_a("hello", ["127.0.0.3"], ttl=1)
    await asyncio.sleep(1.2)
    assert (await fetch(router, "/services/hello/")).json()["backend"] == "new"


async def test_new_deployment_is_found_once_the_negative_ttl_passes(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    # Regression: c-ares caches NXDOMAIN in its channel for the SOA's TTL, whatever --dns-negative-ttl says.
    router = await make_router("--dns-negative-ttl", "0.2")
    await backend("127.0.0.2")
    assert (await fetch(router, "/services/fresh/")).status == 502
    dns.set_a("fresh", ["127.0.0.2"], ttl=3600)
    await asyncio.sleep(0.4)
    assert (await fetch(router, "/services/fresh/")).status == 200
    assert dns.query_count("fresh") == 2


async def test_resolver_asks_the_server_every_time_and_never_answers_from_a_cache(dns: DemoDnsServer) -> None:
    # c-ares caches answers in its channel for their TTL (NXDOMAIN: the SOA's); the router's cache is the one cache.
    resolver = DnsResolver([Resolver(dns.host, dns.port)], timeout_s=1.0, tries=1)
    try:
        dns.set_a("moved", ["127.0.0.2"], ttl=3600)
        assert (await resolver.lookup_a("moved.whaleray.local")).hosts == ("127.0.0.2",)
        dns.set_a("moved", ["127.0.0.3"], ttl=3600)
        assert (await resolver.lookup_a("moved.whaleray.local")).hosts == ("127.0.0.3",)
        with pytest.raises(NameNotFound):
            await resolver.lookup_a("born.whaleray.local")
        dns.set_a("born", ["127.0.0.4"], ttl=3600)
        assert (await resolver.lookup_a("born.whaleray.local")).hosts == ("127.0.0.4",)
        both = await asyncio.gather(*(resolver.lookup_a(name) for name in ("moved.whaleray.local",) * 2))
        assert [answer.hosts for answer in both] == [("127.0.0.3",)] * 2
        assert (dns.query_count("moved"), dns.query_count("born")) == (4, 2)
    finally:
        await resolver.close()
