"""Discovery on bad days: the query budget under a flood of random ids, refresh-ahead, address removal, SRV
records with ports, the cache bound. A real DNS server on loopback counts every query."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import aiohttp

from router.app import Router
from router.proxy.server import ServerState
from router.view import deployment_view, discovery_view
from tests.support import PROBE, Backend, BackendFactory, RouterFactory, fetch, free_port
from whaleray_demo.backend import start_backend
from whaleray_demo.dns import DemoDnsServer, SrvTarget


async def backends(session: aiohttp.ClientSession, router: Router, path: str, count: int) -> Counter[object]:
    """Which backend answered each of `count` sequential requests."""
    seen: Counter[object] = Counter()
    for _ in range(count):
        seen[(await fetch(router, path, session=session)).json()["backend"]] += 1
    return seen


async def test_refresh_ahead_keeps_a_busy_name_hot_without_a_request_waiting(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("busy", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2")
    assert router.state is not None
    discovery = router.state.discovery
    async with aiohttp.ClientSession() as session:
        assert (await fetch(router, "/services/busy/", session=session)).status == 200
        waits_before = discovery.stats.queries
        for _ in range(30):  # 3 s of steady traffic over a 1 s TTL
            await asyncio.sleep(0.1)
            entry = discovery.cache.fresh("busy", router.state.loop.time())
            assert entry is not None, "the entry expired: a request would have waited for DNS"
            assert (await fetch(router, "/services/busy/", session=session)).status == 200
    assert discovery.stats.queries - waits_before >= 2  # refreshed in the background, repeatedly
    assert dns.query_count("busy") == discovery.stats.queries


async def test_flood_of_random_ids_is_held_to_the_budget_while_a_known_deployment_answers(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-max-qps", "20", "--dns-min-ttl", "0.1", "--dns-queue-wait", "0.5")
    dns.set_a("real", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        assert (await fetch(router, "/services/real/", session=session)).status == 200
        started = loop.time()
        codes: Counter[object] = Counter()
        real_statuses: list[int] = []

        async def attacker() -> None:
            for _ in range(8):
                reply = await fetch(router, f"/services/r{secrets.token_hex(6)}/", session=session)
                codes[(reply.status, reply.json().get("code"))] += 1

        async def real_user() -> None:
            while loop.time() - started < 2.5:
                real_statuses.append((await fetch(router, "/services/real/", session=session)).status)
                await asyncio.sleep(0.05)

        # 60 at a time: more than the queue for new names holds (20/s x 0.5 s), so some are refused at once.
        await asyncio.gather(*(attacker() for _ in range(60)), real_user())
        elapsed = loop.time() - started
    random_queries = dns.query_count() - dns.query_count("real") - dns.query_count(PROBE)
    assert random_queries <= 20 * elapsed + 20  # the bucket: 20/s and a burst of one second's worth
    assert codes[(503, "resolver_busy")] > 0
    assert codes[(502, "deployment_not_found")] > 0  # the budget let some through: they were answered
    assert set(real_statuses) == {200}  # the known deployment never starved, its TTL expiring meanwhile
    assert dns.query_count("real") >= 2


async def all_at_once(
    router: Router, dns: DemoDnsServer, backend: BackendFactory, count: int
) -> list[tuple[int, object]]:
    """`count` deployments (dep-0 ...) on one backend, each requested once, all at the same time: (status,
    error code or None) of each."""
    for index in range(count):
        dns.set_a(f"dep-{index}", ["127.0.0.2"])
    await backend("127.0.0.2")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        answers = await asyncio.gather(*(fetch(router, f"/services/dep-{i}/", session=session) for i in range(count)))
    return [(answer.status, answer.json().get("code")) for answer in answers]


async def test_cold_start_queues_new_deployments_beyond_the_burst_instead_of_refusing_them(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    """A task started under load sees every deployment at once: 50 of them against a budget of 20 lookups a
    second are served within --dns-queue-wait, none refused."""
    router = await make_router("--dns-max-qps", "20", "--dns-queue-wait", "5")
    assert await all_at_once(router, dns, backend, 50) == [(200, None)] * 50
    # Each name queried once: waiting is not retrying.
    assert [dns.query_count(f"dep-{index}") for index in range(50)] == [1] * 50


async def test_new_deployment_refused_when_it_cannot_wait(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-max-qps", "5", "--dns-queue-wait", "0")
    statuses = Counter(await all_at_once(router, dns, backend, 20))
    assert set(statuses) == {(200, None), (503, "resolver_busy")}
    # The burst is one second's worth (5); once names are known, a sliver of it is kept for their refreshes.
    assert 1 <= statuses[(200, None)] <= 5
    assert statuses[(200, None)] + statuses[(503, "resolver_busy")] == 20


async def test_cache_holds_no_more_than_its_bound(make_router: RouterFactory, dns: DemoDnsServer) -> None:
    router = await make_router("--dns-cache-size", "50", "--dns-max-qps", "1000")
    async with aiohttp.ClientSession() as session:
        for index in range(120):
            await fetch(router, f"/services/scan-{index}/", session=session)
    assert router.state is not None
    assert len(router.state.discovery.cache) <= 100  # 50 known + 50 unknown at most
    view = discovery_view(router.state)  # what /discovery shows
    assert view["count"] == 50
    assert {listed["state"] for listed in view["deployments"]} == {"negative"}  # no scanned name is known


async def test_scan_cannot_evict_a_known_deployment(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-cache-size", "10", "--dns-max-qps", "1000")
    dns.set_a("real", ["127.0.0.2"])
    await backend("127.0.0.2")
    async with aiohttp.ClientSession() as session:
        assert (await fetch(router, "/services/real/", session=session)).status == 200
        for index in range(50):
            await fetch(router, f"/services/scan-{index}/", session=session)
        assert (await fetch(router, "/services/real/", session=session)).status == 200
    assert dns.query_count("real") == 1


async def test_removed_address_gets_no_new_requests_and_its_idle_connections_close(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-min-ttl", "0.1")
    dns.set_a("multi", ["127.0.0.2", "127.0.0.3"], ttl=1)
    old = await backend("127.0.0.2", name="old")
    await backend("127.0.0.3", name="kept")
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            assert (await fetch(router, "/services/multi/", session=session)).status == 200
        assert router.state is not None
        assert idle_of(router.state, old) == 1  # what /discovery/multi shows
        dns.set_a("multi", ["127.0.0.3"], ttl=1)
        await asyncio.sleep(1.2)
        requests_before = old.requests
        answered = await backends(session, router, "/services/multi/", 6)
    assert answered == {"kept": 6}
    assert old.requests == requests_before
    assert idle_of(router.state, old) is None  # the address left the answer, its connections closed
    assert router.state.connector.pool.idle_count((old.host, old.port)) == 0


def idle_of(state: ServerState, backend: Backend) -> object:
    """The idle connections /discovery/multi shows for `backend`'s address; None when it is not listed."""
    addresses = deployment_view(state, "multi")["addresses"]
    assert isinstance(addresses, list)
    return {item["address"]: item["idle_connections"] for item in addresses}.get(f"{backend.host}:{backend.port}")


async def test_srv_records_give_targets_and_ports(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    # Bridge networking: every task of a deployment on its own dynamic host port.
    ports = [free_port("127.0.0.2"), free_port("127.0.0.3")]
    runners = [
        await start_backend("task-a", "127.0.0.2", ports[0]),
        await start_backend("task-b", "127.0.0.3", ports[1]),
    ]
    try:
        router = await make_router("--discovery", "srv", "--srv-prefix", "_http._tcp.")
        dns.set_a("task-a.bridge", ["127.0.0.2"])
        dns.set_a("task-b.bridge", ["127.0.0.3"])
        dns.set_srv(
            "_http._tcp.bridge",
            [
                SrvTarget("task-a.bridge.whaleray.local", ports[0], priority=10, weight=30),
                SrvTarget("task-b.bridge.whaleray.local", ports[1], priority=10, weight=10),
            ],
        )
        async with aiohttp.ClientSession() as session:
            seen = await backends(session, router, "/services/bridge/", 40)
        assert seen["task-a"] == 30
        assert seen["task-b"] == 10
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_srv_without_glue_resolves_targets_and_prefers_the_lower_priority(
    make_router: RouterFactory, dns: DemoDnsServer
) -> None:
    ports = [free_port("127.0.0.2"), free_port("127.0.0.3")]
    runners = [
        await start_backend("primary", "127.0.0.2", ports[0]),
        await start_backend("standby", "127.0.0.3", ports[1]),
    ]
    try:
        router = await make_router("--discovery", "srv")
        dns.srv_glue = False
        dns.set_a("primary.svc", ["127.0.0.2"])
        dns.set_a("standby.svc", ["127.0.0.3"])
        dns.set_srv(
            "svc",
            [
                SrvTarget("primary.svc.whaleray.local", ports[0], priority=1, weight=1),
                SrvTarget("standby.svc.whaleray.local", ports[1], priority=2, weight=1),
            ],
        )
        async with aiohttp.ClientSession() as session:
            seen = await backends(session, router, "/services/svc/", 5)
            assert seen == {"primary": 5}
            await runners[0].cleanup()  # the preferred target dies: the backup priority takes over
            seen = await backends(session, router, "/services/svc/", 5)
        assert seen == {"standby": 5}
    finally:
        for runner in runners[1:]:
            await runner.cleanup()


async def test_srv_target_outside_the_allowed_networks_is_forbidden(
    make_router: RouterFactory, dns: DemoDnsServer
) -> None:
    router = await make_router("--discovery", "srv", "--upstream-allow-cidr", "127.0.0.0/30")
    dns.set_a("t.sneaky", ["127.0.0.5"])
    dns.set_srv("sneaky", [SrvTarget("t.sneaky.whaleray.local", 8080)])
    async with aiohttp.ClientSession() as session:
        reply = await fetch(router, "/services/sneaky/", session=session)
    assert (reply.status, reply.json()["code"]) == (502, "upstream_forbidden")


async def test_queued_lookup_answers_resolver_busy_when_its_wait_runs_out(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--dns-max-qps", "1", "--dns-queue-wait", "0.3")
    statuses = await all_at_once(router, dns, backend, 5)
    # One token: one answered; one queued (1/s x 0.3 s rounds up to one place) until its wait ran out; three
    # refused at once because the queue was full.
    assert Counter(statuses) == {(200, None): 1, (503, "resolver_busy"): 4}
    assert dns.query_count() - dns.query_count(PROBE) == 1
    assert router.state is not None
    assert discovery_view(router.state)["lookups"]["queued"] == 0  # the queued lookup left the queue
