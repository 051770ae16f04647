"""Waking sleeping deployments (router/wake), against AWS's APIs on loopback (moto's server) and a platform
stand-in (whaleray_demo/platform.py) that starts a loopback backend when a service's desired count rises.

Every deployment here is asleep at first: its name answers NXDOMAIN from the test's DNS server, which never
learns its address (the stand-in is given no DNS server), so whatever is served was found in the registry.
moto counts the calls it served by action (tests/moto_gaps.py), which is how "one UpdateService" is checked.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session

from router.app import Router
from router.inspector import deployment_table
from router.view import discovery_view
from router.wake.waker import MIN_UPDATE_INTERVAL_S, Waker
from tests.support import BackendFactory, RouterFactory, fetch, free_port, moto_server, slow_app, view_of, wait_for
from whaleray_demo.platform import PlatformStandIn, SleepingDeployment

REGION = "eu-west-1"
ACTIONS = "/_whaleray/actions"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from the environment, as a developer's shell has them; no file outside the repository."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


StandInFactory = Callable[..., Awaitable[PlatformStandIn]]


@pytest.fixture
async def stand_in(moto_url: str, backend: BackendFactory) -> AsyncIterator[StandInFactory]:
    """A platform stand-in on its own cluster (one a test), starting demo backends named after their host."""
    started: list[PlatformStandIn] = []

    async def start(*, delay_s: float = 0.3, url: str = moto_url, app: Any = None) -> PlatformStandIn:
        async def start_backend(host: str) -> Callable[[], Awaitable[None]]:
            return (await backend(host, app)).stop

        platform = PlatformStandIn(
            url,
            cluster=f"cluster-{uuid.uuid4().hex[:8]}",
            namespace="whaleray.local",
            start_backend=start_backend,
            start_delay_s=delay_s,
            region=REGION,
        )
        await platform.open()
        started.append(platform)
        return platform

    yield start
    for platform in started:
        await platform.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def waking_router(make_router: RouterFactory, platform: PlatformStandIn, *extra: str) -> Router:
    """A router that wakes `platform`'s deployments, once its catalogue lists them all."""
    router = await make_router(
        "--wake-cluster", platform.cluster, "--aws-endpoint-url", platform.endpoint, "--aws-region", REGION,
        "--wake-poll", "0.05", "--idle-report", "0", *extra,
    )  # fmt: skip
    catalogue = waker_of(router).catalogue
    await wait_for(lambda: all(catalogue.lists(name) for name in platform.deployments))
    return router


def waker_of(router: Router) -> Waker:
    assert router.state is not None
    assert router.state.waker is not None
    return router.state.waker


async def actions(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(url + ACTIONS) as response:
        counts: dict[str, int] = await response.json()
        return counts


async def test_a_burst_to_a_sleeping_deployment_wakes_it_once_and_every_request_is_served(
    make_router: RouterFactory, stand_in: StandInFactory
) -> None:
    platform = await stand_in(delay_s=0.5)
    sleepy = await platform.add(SleepingDeployment(unique("sleepy"), "127.0.0.21"))
    router = await waking_router(make_router, platform)
    before = await actions(platform.endpoint)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(index: int) -> tuple[int, str, str]:
            url = f"http://127.0.0.1:{router.port}/services/{sleepy.deployment}/n/{index}"
            async with session.get(url) as response:
                body = await response.json()
                return response.status, body["backend"], response.headers.get("X-WhaleRay-Cold-Start", "")

        answers = await asyncio.gather(*(one(index) for index in range(1000)))
    assert [status for status, _, _ in answers] == [200] * 1000
    assert {backend for _, backend, _ in answers} == {"127.0.0.21"}
    assert all(float(cold_start) > 0 for _, _, cold_start in answers)
    after = await actions(platform.endpoint)
    assert after.get("UpdateService", 0) - before.get("UpdateService", 0) == 1
    assert sleepy.starts == 1 and await platform.desired_count(sleepy.deployment) == 1
    view = view_of(router, sleepy.deployment)
    assert view["wake"]["state"] == "awake" and view["wake"]["held"] == 0
    assert view["addresses"][0]["address"].startswith("127.0.0.21:")
    assert router.metrics.wakes == {"woken": 1} and router.metrics.wake_updates == 1
    # Awake now: the next request is not held and carries no cold start.
    status, headers, _ = await fetch(router, f"/services/{sleepy.deployment}/again")
    assert status == 200 and "X-WhaleRay-Cold-Start" not in headers


async def test_held_requests_keep_their_bodies_unread_until_sent(
    make_router: RouterFactory, stand_in: StandInFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    platform = await stand_in(delay_s=0.5)
    sleepy = await platform.add(SleepingDeployment(unique("ordered"), "127.0.0.22"))
    router = await waking_router(make_router, platform)
    waker = waker_of(router)
    requests = []
    for index in range(5):  # each one held before the next is sent
        body = bytes([index]) * (index * 200_000)
        requests.append(asyncio.ensure_future(post(router, f"/services/{sleepy.deployment}/{index}", body)))
        await wait_for(lambda count=index + 1: waker.held == count)
    answers = await asyncio.gather(*requests)
    assert [answer["path"] for answer in answers] == [f"/{index}" for index in range(5)]
    assert [answer["body_bytes"] for answer in answers] == [index * 200_000 for index in range(5)]
    # The access log marks every one of them as held, and for how long.
    await asyncio.sleep(0.3)  # the access log's writer flushes every 0.1 s
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    held = [line["held_ms"] for line in lines if line.get("deployment") == sleepy.deployment]
    assert len(held) == 5 and all(value > 0 for value in held)


async def post(router: Router, path: str, body: bytes) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}{path}", data=body) as response,
    ):
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def test_the_queue_cap_answers_503_with_retry_after_and_loses_nothing_else(
    make_router: RouterFactory, stand_in: StandInFactory
) -> None:
    platform = await stand_in(delay_s=1.0)
    sleepy = await platform.add(SleepingDeployment(unique("capped"), "127.0.0.24"))
    router = await waking_router(make_router, platform, "--wake-queue", "5")
    answers = await asyncio.gather(*(fetch(router, f"/services/{sleepy.deployment}/{i}") for i in range(8)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 5 + [503] * 3
    for status, headers, body in answers:
        if status == 503:
            error = json.loads(body)
            assert error["code"] == "wake_queue_full" and error["deployment"] == sleepy.deployment
            assert int(headers["Retry-After"]) >= 1 and error["request_id"] == headers["X-Request-Id"]
    assert router.metrics.wake_overflows == 3


async def test_a_wake_past_its_deadline_answers_504(make_router: RouterFactory, stand_in: StandInFactory) -> None:
    platform = await stand_in(delay_s=3.0)
    sleepy = await platform.add(SleepingDeployment(unique("slow-start"), "127.0.0.25"))
    router = await waking_router(make_router, platform, "--wake-timeout", "0.5")
    status, headers, body = await fetch(router, f"/services/{sleepy.deployment}/")
    error = json.loads(body)
    assert status == 504 and error["code"] == "wake_timeout"
    assert error["request_id"] == headers["X-Request-Id"]


async def test_an_id_outside_the_catalogue_makes_no_aws_call(
    make_router: RouterFactory, stand_in: StandInFactory
) -> None:
    platform = await stand_in()
    await platform.add(SleepingDeployment(unique("listed"), "127.0.0.26"))
    router = await waking_router(make_router, platform, "--wake-catalogue-refresh", "600")
    before = await actions(platform.endpoint)
    for name in ("ghost", "nobody-here", "x1"):
        status, _, body = await fetch(router, f"/services/{name}/")
        assert status == 502 and json.loads(body)["code"] == "deployment_not_found"
    assert await actions(platform.endpoint) == before


async def test_a_deployment_that_did_not_opt_in_is_not_woken(
    make_router: RouterFactory, stand_in: StandInFactory
) -> None:
    platform = await stand_in()
    plain = await platform.add(SleepingDeployment(unique("plain"), "127.0.0.27", opted_in=False))
    router = await waking_router(make_router, platform)
    before = await actions(platform.endpoint)
    status, _, body = await fetch(router, f"/services/{plain.deployment}/")
    assert status == 502 and json.loads(body)["code"] == "deployment_not_found"
    after = await actions(platform.endpoint)
    assert after.get("UpdateService", 0) == before.get("UpdateService", 0)
    assert after.get("DescribeServices", 0) == before.get("DescribeServices", 0)
    assert await platform.desired_count(plain.deployment) == 0


async def test_a_running_deployment_that_dns_calls_nxdomain_is_served_and_never_lowered(
    make_router: RouterFactory, stand_in: StandInFactory
) -> None:
    """Awake at two tasks (the registry has it; the resolver still caches its NXDOMAIN): served from the
    registry's address, its desired count untouched."""
    platform = await stand_in(delay_s=0.0)
    awake = await platform.add(SleepingDeployment(unique("awake"), "127.0.0.28"), desired_count=2)
    await asyncio.wait_for(awake.started.wait(), 10)
    router = await waking_router(make_router, platform)
    before = await actions(platform.endpoint)
    status, _, body = await fetch(router, f"/services/{awake.deployment}/")
    assert status == 200 and json.loads(body)["backend"] == "127.0.0.28"
    after = await actions(platform.endpoint)
    assert after.get("UpdateService", 0) == before.get("UpdateService", 0)
    assert await platform.desired_count(awake.deployment) == 2
    assert router.metrics.wakes == {"already_awake": 1}
    # The DNS refresh's NXDOMAIN does not take the registry's address away while it is recent.
    for _ in range(3):
        assert (await fetch(router, f"/services/{awake.deployment}/"))[0] == 200


@pytest.mark.parametrize("leaves_by", ["close", "half-close"])
async def test_a_client_that_leaves_while_held_is_dropped_from_the_queue(
    make_router: RouterFactory, stand_in: StandInFactory, leaves_by: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Dropped at once, while the wake goes on: its place in the queue and its in-flight count are given back,
    the connection is closed without an answer, and the access log has 499."""
    platform = await stand_in(delay_s=60.0)  # still waking when the test ends: only the client's leaving frees it
    sleepy = await platform.add(SleepingDeployment(unique("leaver"), "127.0.0.29"))
    router = await waking_router(make_router, platform)
    waker = waker_of(router)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(f"GET /services/{sleepy.deployment}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await wait_for(lambda: waker.held == 1)
    assert view_of(router, sleepy.deployment)["wake"] | {"age_s": 0} == {
        "state": "waking", "age_s": 0, "held": 1, "addresses": []
    }  # fmt: skip
    assert "wake: waking, wake started" in "\n".join(deployment_table(view_of(router, sleepy.deployment)))
    if leaves_by == "close":
        writer.close()
    else:
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the router, nothing answered
        writer.close()
    await wait_for(lambda: waker.held == 0)
    assert view_of(router, sleepy.deployment)["wake"]["state"] == "waking"
    assert router.state is not None
    await wait_for(lambda: router.state is not None and router.state.inflight == 0)
    assert {status: count for (_, status), count in router.metrics.requests.items()} == {499: 1}
    await asyncio.sleep(0.3)  # the access log's writer flushes every 0.1 s
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    [logged] = [line for line in lines if line.get("deployment") == sleepy.deployment]
    assert logged["status"] == 499 and logged["held_ms"] > 0


async def test_a_dead_aws_endpoint_answers_503_while_other_deployments_serve(
    make_router: RouterFactory, stand_in: StandInFactory, backend: BackendFactory, dns: Any
) -> None:
    with moto_server() as url:
        platform = await stand_in(url=url)
        sleepy = await platform.add(SleepingDeployment(unique("stranded"), "127.0.0.30"))
        router = await waking_router(make_router, platform, "--wake-catalogue-refresh", "600")
        await platform.close()
    dns.set_a("steady", ["127.0.0.31"])
    await backend("127.0.0.31")
    status, headers, body = await fetch(router, f"/services/{sleepy.deployment}/")
    error = json.loads(body)
    assert status == 503 and error["code"] == "wake_unavailable" and error["request_id"] == headers["X-Request-Id"]
    assert (await fetch(router, "/services/steady/"))[0] == 200
    assert (await fetch(router, "/health"))[0] == 200
    assert router.metrics.wakes == {"failed": 1}


async def test_the_idle_report_counts_requests_and_those_in_flight(
    make_router: RouterFactory, stand_in: StandInFactory, moto_url: str
) -> None:
    """The signal infra/modules/deployment's alarm reads: a request in flight keeps a deployment awake."""
    platform = await stand_in(delay_s=0.0, app=slow_app(3.0))
    busy = await platform.add(SleepingDeployment(unique("busy"), "127.0.0.32"), desired_count=1)
    await asyncio.wait_for(busy.started.wait(), 10)
    router = await waking_router(make_router, platform, "--idle-report", "0.5")
    assert (await fetch(router, f"/services/{busy.deployment}/first"))[0] == 200
    in_flight = asyncio.ensure_future(fetch(router, f"/services/{busy.deployment}/long"))
    statistics = await wait_for_statistics(moto_url, busy.deployment)
    assert statistics["Requests"] >= 1 and statistics["InFlight"] >= 1
    assert (await in_flight)[0] == 200


async def wait_for_statistics(
    url: str, deployment: str, metrics: tuple[str, ...] = ("Requests", "InFlight")
) -> dict[str, float]:
    """The largest value each of the router's `metrics` reached for `deployment`, once each reached 1."""
    found: dict[str, float] = {}
    async with get_session().create_client("cloudwatch", endpoint_url=url, region_name=REGION) as cloudwatch:

        async def all_seen() -> bool:
            for metric in metrics:
                answer = await cloudwatch.get_metric_statistics(
                    Namespace="WhaleRay/Router", MetricName=metric,
                    Dimensions=[{"Name": "DeploymentId", "Value": deployment}],
                    StartTime=0, EndTime=2**31, Period=60, Statistics=["Maximum"],
                )  # fmt: skip
                points = [point["Maximum"] for point in answer["Datapoints"]]
                if points:
                    found[metric] = max(points)
            return all(found.get(metric, 0) >= 1 for metric in metrics)

        await wait_for(all_seen, 10)
    return found


async def test_a_wake_lowered_to_zero_before_its_task_started_is_raised_again(
    make_router: RouterFactory, stand_in: StandInFactory, moto_url: str
) -> None:
    """While a deployment sleeps its idle alarm is in ALARM, and Application Auto Scaling invokes the alarm's policy
    every minute until a report of the wake reaches it: it may set the count back to 0 before the task started.
    The router reports the held request in flight as it wakes, and raises the count again when it fell back."""
    platform = await stand_in(delay_s=1.0)
    sleepy = await platform.add(SleepingDeployment(unique("lowered"), "127.0.0.33"))
    router = await waking_router(make_router, platform, "--idle-report", "600")  # no periodic report in the test
    answer = asyncio.ensure_future(fetch(router, f"/services/{sleepy.deployment}/"))
    await wait_for(lambda: router.metrics.wake_updates == 1)
    assert (await wait_for_statistics(moto_url, sleepy.deployment, ("InFlight",)))["InFlight"] == 1
    await platform.set_desired_count(sleepy.deployment, 0)  # the alarm's policy, within the task's start delay
    status, headers, body = await asyncio.wait_for(answer, 30)
    assert status == 200 and json.loads(body)["backend"] == "127.0.0.33"
    assert float(headers["X-WhaleRay-Cold-Start"]) >= MIN_UPDATE_INTERVAL_S  # raised again after the interval
    assert router.metrics.wake_updates == 2 and router.metrics.wakes == {"woken": 1}
    assert sleepy.starts == 1 and await platform.desired_count(sleepy.deployment) == 1


async def test_without_credentials_waking_is_off_and_said_once(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    port = free_port()  # nothing listens: were any call made, it would fail, not reach AWS
    router = await make_router("--wake-cluster", "c", "--aws-endpoint-url", f"http://127.0.0.1:{port}")
    assert router.state is not None and router.state.waker is None
    assert "wake" not in discovery_view(router.state)
    said = [record for record in caplog.records if record.getMessage() == "waking sleeping deployments is off"]
    assert len(said) == 1 and "no AWS credentials" in said[0].__dict__["reason"]
