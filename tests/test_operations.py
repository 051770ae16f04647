"""Operating the router: metrics, access log, readiness, graceful drain, per-deployment limits."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    PROBE,
    BackendFactory,
    RouterFactory,
    RouterProcess,
    admin_ready,
    fetch,
    free_port,
    read_response,
    slow_app,
    wait_for,
)
from whaleray_demo.dns import DemoDnsServer

StartRouter = Callable[..., Awaitable[RouterProcess]]


async def draining(port: int) -> bool:
    """The router has taken the first signal: its /health says so."""
    async with aiohttp.ClientSession() as session:
        return (await fetch(f"http://127.0.0.1:{port}/health", session=session))[0] == 503


async def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_metrics_count_what_happened(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    admin = free_port()
    router = await make_router("--admin-port", str(admin), "--admin-host", "127.0.0.1")
    dns.set_a("hello", ["127.0.0.2"])
    dns.set_a("down", ["127.0.0.9"])
    await backend("127.0.0.2")
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            assert (await fetch(f"{base}/services/hello/x", session=session))[0] == 200
        assert (await fetch(f"{base}/services/ghost/", session=session))[0] == 502
        assert (await fetch(f"{base}/services/down/", session=session))[0] == 502
        assert (await fetch(f"{base}/nope", session=session))[0] == 404
    samples = await scrape(admin)
    requests = samples["whaleray_requests_total"]
    assert requests[(("code", "200"), ("deployment", "hello"))] == 5
    assert requests[(("code", "502"), ("deployment", "_unknown"))] == 1  # ghost never resolved: no label
    assert requests[(("code", "502"), ("deployment", "down"))] == 1
    assert requests[(("code", "404"), ("deployment", "_unknown"))] == 1
    assert samples["whaleray_request_duration_seconds_count"][(("deployment", "hello"),)] == 5
    assert samples["whaleray_upstream_connections_reused_total"][()] == 4
    assert samples["whaleray_upstream_errors_total"][(("deployment", "down"), ("kind", "connect_refused"))] >= 1
    lookups = samples["whaleray_dns_lookups_total"]
    assert lookups[(("result", "miss"),)] == 2  # hello and down: queried, found
    assert lookups[(("result", "negative"),)] == 1  # ghost: queried, NXDOMAIN
    assert lookups[(("result", "hit"),)] == 4
    assert samples["whaleray_dns_query_duration_seconds_count"][()] >= 3
    assert samples["whaleray_upstream_connect_duration_seconds_count"][()] == 1
    assert samples["whaleray_upstream_connections"][(("state", "idle"),)] == 1
    assert samples["whaleray_upstream_connections"][(("state", "active"),)] == 0
    assert samples["whaleray_inflight_requests"][()] == 0
    assert samples["whaleray_dns_cache_entries"][()] == 3
    assert "whaleray_client_connections" in samples
    assert samples["whaleray_log_lines_dropped"] == {(("log", "access"),): 0, (("log", "application"),): 0}
    assert router.registry.get_sample_value("whaleray_requests_total", {"deployment": "hello", "code": "200"}) == 5


async def test_labels_stay_bounded_under_a_scan_of_random_ids(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await make_router("--metrics-max-deployments", "3", "--dns-max-qps", "2000")
    await backend("127.0.0.2")
    for index in range(5):
        dns.set_a(f"real-{index}", ["127.0.0.2"])
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        for index in range(5):
            assert (await fetch(f"{base}/services/real-{index}/", session=session))[0] == 200

        async def scan(count: int) -> None:
            for _ in range(count):
                await fetch(f"{base}/services/x{secrets.token_hex(8)}/", session=session)

        await asyncio.gather(*(scan(200) for _ in range(50)))  # 10,000 random ids
    labels = {
        labels["deployment"]
        for (labels,) in [
            (dict(sample.labels),)
            for family in router.registry.collect()
            if family.name == "whaleray_requests"
            for sample in family.samples
        ]
    }
    assert labels == {"real-0", "real-1", "real-2", "_other", "_unknown"}
    total = sum(
        sample.value
        for family in router.registry.collect()
        if family.name == "whaleray_requests"
        for sample in family.samples
        if sample.name == "whaleray_requests_total"
    )
    assert total == 10_005


async def test_access_log_lines_are_json_with_every_field(
    router_process: Callable[..., Awaitable[RouterProcess]], dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    router = await router_process()
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/services/hello/api?token=secret",
            data=b"12345",
            headers={"X-Request-Id": "req-1", "X-Amzn-Trace-Id": "Root=1-abc"},
        ) as response:
            assert response.status == 200
        assert (await fetch(f"{base}/services/ghost/", session=session))[0] == 502
    router.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(router.process.wait(), 15) == 0
    lines = await router.json_lines()
    access = [line for line in lines if line.get("type") == "access"]
    assert len(access) == 2
    first, second = access
    assert first["request_id"] == "req-1"
    assert first["trace_id"] == "Root=1-abc"
    assert first["client_ip"] == "127.0.0.1"
    assert (first["method"], first["deployment"], first["path"], first["status"]) == (
        "POST",
        "hello",
        "/services/hello/api",
        200,
    )
    assert "secret" not in json.dumps(first)  # no query string by default
    assert first["bytes_in"] == 5
    assert first["bytes_sent"] > 0
    assert first["duration_ms"] >= 0
    assert first["upstream_addr"] == f"127.0.0.2:{router.upstream_port}"
    assert first["upstream_reused"] is False
    assert first["dns"] == "miss"
    assert first["error"] is None
    assert (second["status"], second["error"], second["dns"]) == (502, "deployment_not_found", "negative")
    starting = [line for line in lines if line.get("message") == "starting"]
    assert starting
    assert starting[0]["settings"]["upstream_port"] == router.upstream_port


async def test_ready_waits_for_the_first_dns_answer(make_router: RouterFactory, dns: DemoDnsServer) -> None:
    dns.silent = True
    admin = free_port()
    await make_router("--admin-port", str(admin), "--admin-host", "127.0.0.1")
    async with aiohttp.ClientSession() as session:
        status, _, body = await fetch(f"http://127.0.0.1:{admin}/ready", session=session)
        assert status == 503
        assert json.loads(body) == {"status": "waiting for the resolver"}
        assert (await fetch(f"http://127.0.0.1:{admin}/health", session=session))[0] == 200  # liveness is not readiness
        dns.silent = False
        deadline = time.monotonic() + 5
        while (await fetch(f"http://127.0.0.1:{admin}/ready", session=session))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_ready_when_the_resolver_refuses_the_probe(make_router: RouterFactory, dns: DemoDnsServer) -> None:
    """A DNS server holding only its own records (dnsmasq with host records, as in the compose demo) answers
    REFUSED for the probe's name. An error answer is an answer: the resolver is reachable, so the router is ready."""
    dns.refused.add(f"{PROBE}.whaleray.local")
    admin = free_port()
    await make_router("--admin-port", str(admin), "--admin-host", "127.0.0.1")
    async with aiohttp.ClientSession() as session:
        await wait_for(lambda: dns.query_count(PROBE) >= 1)
        deadline = time.monotonic() + 5
        while (await fetch(f"http://127.0.0.1:{admin}/ready", session=session))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_a_silent_resolver_is_reported_once_then_its_first_answer(
    router_process: StartRouter, dns: DemoDnsServer
) -> None:
    dns.silent = True
    router = await router_process("--drain-delay", "0")
    await wait_for(lambda: dns.query_count(PROBE) >= 3)  # three probes, a second apart, went unanswered
    dns.silent = False
    await wait_for(lambda: admin_ready(router.admin_port))
    router.process.send_signal(signal.SIGTERM)
    messages = [line["message"] for line in await router.json_lines()]
    assert messages.count("resolver not answering yet, asking every second") == 1
    assert messages.count("resolver answering") == 1


async def test_drain_finishes_requests_in_flight_then_refuses_new_connections(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    arrivals: list[str] = []
    app = slow_app(1.2, "done", arrivals)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    router = await router_process("--drain-delay", "0.6", "--drain-timeout", "10")
    base = f"http://127.0.0.1:{router.port}"
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", router.port)
    idle_writer.write(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(idle_reader))[0] == 200  # now an idle keep-alive connection
    async with aiohttp.ClientSession() as session:
        slow_requests = [asyncio.create_task(fetch(f"{base}/services/hello/slow", session=session)) for _ in range(3)]
        await wait_for(lambda: len(arrivals) == 3)
        router.process.send_signal(signal.SIGTERM)
        await wait_for(lambda: draining(router.port))
        async with aiohttp.ClientSession() as fresh:  # during the drain delay: still accepted, health says 503
            status, _, body = await fetch(f"{base}/health", session=fresh)
            assert (status, json.loads(body)) == (503, {"status": "draining"})
            admin_status = (await fetch(f"http://127.0.0.1:{router.admin_port}/health", session=fresh)).status
            assert admin_status == 503
        results = await asyncio.gather(*slow_requests)
    assert [(status, body) for status, _, body in results] == [(200, b"done")] * 3
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle connection was closed
    idle_writer.close()
    try:
        await asyncio.open_connection("127.0.0.1", router.port)
        refused = False
    except OSError:
        refused = True
    assert refused or router.process.returncode is not None
    assert await asyncio.wait_for(router.process.wait(), 10) == 0


async def test_second_signal_exits_at_once(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await router_process("--drain-delay", "30")
    router.process.send_signal(signal.SIGTERM)
    await wait_for(lambda: draining(router.port))
    router.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(router.process.wait(), 5) == 1


async def test_in_flight_cap_answers_503_at_once(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    arrivals: list[str] = []
    app = slow_app(0.5, "ok", arrivals)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    router = await make_router("--deployment-max-inflight", "2")
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession() as session:
        first = [asyncio.create_task(fetch(f"{base}/services/hello/a", session=session)) for _ in range(2)]
        await wait_for(lambda: len(arrivals) == 2)
        status, _, body = await fetch(f"{base}/services/hello/b", session=session)
        assert not any(request.done() for request in first)  # answered at once, not queued behind them
        assert (status, json.loads(body)["code"]) == (503, "deployment_overloaded")
        assert [result[0] for result in await asyncio.gather(*first)] == [200, 200]
        assert (await fetch(f"{base}/services/hello/c", session=session))[0] == 200  # the slots came back
    assert (
        router.registry.get_sample_value(
            "whaleray_rejected_requests_total", {"deployment": "hello", "reason": "inflight"}
        )
        == 1
    )
    assert router.state is not None
    assert router.state.limits.inflight == {}


async def test_rate_limit_answers_429_with_retry_after(
    make_router: RouterFactory, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    dns.set_a("other", ["127.0.0.2"])
    await backend("127.0.0.2")
    router = await make_router("--deployment-rate", "1", "--deployment-burst", "2")
    base = f"http://127.0.0.1:{router.port}"
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(4):
            status, headers, body = await fetch(f"{base}/services/hello/", session=session)
            statuses.append(status)
        assert statuses == [200, 200, 429, 429]
        assert headers["Retry-After"] == "1"
        assert json.loads(body)["code"] == "rate_limited"
        assert (await fetch(f"{base}/services/other/", session=session))[0] == 200  # per deployment
        await asyncio.sleep(1.1)
        assert (await fetch(f"{base}/services/hello/", session=session))[0] == 200
    assert (
        router.registry.get_sample_value("whaleray_rejected_requests_total", {"deployment": "hello", "reason": "rate"})
        == 2
    )


async def test_log_lines_dropped_reach_metrics(make_router: RouterFactory) -> None:
    admin = free_port()
    router = await make_router("--admin-port", str(admin), "--admin-host", "127.0.0.1")
    assert router.access_log is not None
    router.access_log.dropped += 5  # what AccessLog.flush counts when stdout stalls (tests/test_units.py)
    samples = await scrape(admin)
    assert samples["whaleray_log_lines_dropped"][(("log", "access"),)] == 5
