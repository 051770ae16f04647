"""Issue #7 under load, against the real `whaleray-router` process: SIGTERM and a killed worker while clients keep
sending, and a scan of 100,000 random deployment ids."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import httptools
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import BackendFactory, RouterProcess, children_of, read_response, wait_for
from whaleray_demo.dns import DemoDnsServer

MiB = 1 << 20
StartRouter = Callable[..., Awaitable[RouterProcess]]


def jittery_app() -> web.Application:
    """Answers after 0-300 ms, so that requests are always in flight when the router changes state."""

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(random.uniform(0, 0.3))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


@dataclass
class LoadTally:
    """What the clients saw. `lost`: requests written in full that got no complete response."""

    answered: list[tuple[float, int, str]] = field(default_factory=list)  # (loop time, status, request id)
    lost: list[tuple[float, str]] = field(default_factory=list)
    refused: int = 0


async def connect(port: int, tally: LoadTally) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A new connection, or None (counted, after a pause) when nothing accepts it: no request started."""
    try:
        return await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.refused += 1
        await asyncio.sleep(0.01)
        return None


async def keep_alive_client(port: int, tally: LoadTally, may_connect: asyncio.Event, stop: asyncio.Event) -> None:
    """Requests back to back on a keep-alive connection; a new connection when the router asks to close, as long as
    the load balancer would still send new connections here (`may_connect`)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set() and may_connect.is_set():
        connection = await connect(port, tally)
        if connection is None:
            continue
        reader, writer = connection
        try:
            while not stop.is_set():
                writer.write(b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\n\r\n")
                try:
                    status, headers, _ = await asyncio.wait_for(read_response(reader), 10)
                except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
                    tally.lost.append((loop.time(), repr(error)))
                    break
                tally.answered.append((loop.time(), status, headers["x-request-id"]))
                if headers.get("connection") == "close":
                    break
        finally:
            writer.close()


async def test_sigterm_under_load_answers_every_request_that_started(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=jittery_app())
    router = await router_process("--drain-delay", "1.0", "--drain-timeout", "10")
    tally = LoadTally()
    may_connect, stop = asyncio.Event(), asyncio.Event()
    may_connect.set()
    clients = [asyncio.create_task(keep_alive_client(router.port, tally, may_connect, stop)) for _ in range(32)]
    await wait_for(lambda: len(tally.answered) >= 200)  # under load: every client has requests in flight
    loop = asyncio.get_running_loop()
    signalled_at = loop.time()
    router.process.send_signal(signal.SIGTERM)
    # The ALB notices the failing health check and stops opening connections within the drain delay (ECS
    # deregisters the task before the SIGTERM; --drain-delay covers the rest).
    await asyncio.sleep(0.5)
    may_connect.clear()
    assert await asyncio.wait_for(router.process.wait(), 20) == 0
    stop.set()
    await asyncio.gather(*clients)

    assert tally.lost == [], f"{len(tally.lost)} requests written but never answered: {tally.lost[:3]}"
    assert {status for _, status, _ in tally.answered} == {200}
    after_signal = [when for when, _, _ in tally.answered if when > signalled_at]
    assert len(after_signal) > 32  # clients kept being served through the drain, in-flight requests finished
    lines = await router.json_lines()
    assert [line["unfinished_requests"] for line in lines if line.get("message") == "drained"] == [0]


async def new_connection_client(port: int, tally: LoadTally, stop: asyncio.Event) -> None:
    """A request per connection, so that the kernel spreads connections over the workers (SO_REUSEPORT)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        connection = await connect(port, tally)
        if connection is None:
            continue
        reader, writer = connection
        try:
            writer.write(b"GET /services/hello/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            status, headers, _ = await asyncio.wait_for(read_response(reader), 10)
            tally.answered.append((loop.time(), status, headers["x-request-id"]))
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
            tally.lost.append((loop.time(), repr(error)))
            # A client backs off before it retries, as the ALB does: reconnecting at once, while the kernel
            # still tears the killed worker down, SO_REUSEPORT may hash the new connection to its socket too.
            await asyncio.sleep(0.05)
        finally:
            writer.close()


async def test_worker_killed_under_load_is_restarted_while_the_other_keeps_serving(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    router = await router_process("--workers", "2", "--access-log", "off")
    await wait_for(lambda: len(children_of(router.process.pid)) == 2)
    await asyncio.sleep(0.5)  # both workers listening
    tally, stop = LoadTally(), asyncio.Event()
    concurrency = 8
    clients = [asyncio.create_task(new_connection_client(router.port, tally, stop)) for _ in range(concurrency)]
    loop = asyncio.get_running_loop()
    # A second of load before the kill, as fixed time on purpose: waiting for a condition instead (both
    # workers answering, even after 500 requests) let the kill find more connections in the victim's accept
    # queue than the bound below allows, 2 runs in 6.
    await asyncio.sleep(1.0)
    before_kill = {request_id[:12] for _, _, request_id in tally.answered}  # each worker has its own id prefix
    assert len(before_kill) == 2
    victim, survivor = sorted(children_of(router.process.pid))
    killed_at = loop.time()
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        workers = children_of(router.process.pid)  # one reading: the victim may be reaped between two
        return len(workers) == 2 and victim not in workers

    await wait_for(replaced)
    restarted_at = loop.time()
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*clients)

    # Only what the killed worker held can be lost: at most one connection per client, all at the kill.
    assert len(tally.lost) <= concurrency, tally.lost
    assert all(killed_at <= when < killed_at + 1.0 for when, _ in tally.lost), tally.lost
    assert {status for _, status, _ in tally.answered} == {200}
    while_down = [rid for when, _, rid in tally.answered if killed_at + 0.1 < when < restarted_at]
    assert while_down, "the surviving worker answered nothing while the other was down"
    after_restart = {rid[:12] for when, _, rid in tally.answered if when > restarted_at + 0.5}
    assert len(after_restart) == 2  # the restarted worker serves its share again
    assert survivor in children_of(router.process.pid)


# --- a scan of random ids ------------------------------------------------------------------------------------


class StatusCounter:
    """httptools callbacks: the status of every response in a pipelined stream."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


async def pipelined_scan(port: int, ids: list[str], batch: int = 100) -> list[int]:
    """Every id requested once on one keep-alive connection, `batch` requests written at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    counter = StatusCounter()
    try:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            writer.write(b"".join(b"GET /services/%s/ HTTP/1.1\r\nHost: h\r\n\r\n" % i.encode() for i in chunk))
            while len(counter.statuses) < start + len(chunk):
                data = await asyncio.wait_for(reader.read(MiB), 10)
                assert data, "the router closed the scanning connection"
                counter.parser.feed_data(data)
    finally:
        writer.close()
    return counter.statuses


async def metric_labels(admin_port: int) -> set[str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    return {
        sample.labels["deployment"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "deployment" in sample.labels
    }


async def test_scan_of_100000_random_ids_stays_within_its_bounds(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    """Memory, DNS queries per second and metric labels stay bounded by settings, and the real deployment keeps
    being answered from its cache entry, never waiting for the resolver the scan is hammering."""
    dns.set_a("hello", ["127.0.0.2"], ttl=1)
    await backend("127.0.0.2")
    max_qps, cache_size = 200, 100
    router = await router_process(
        "--access-log", "off", "--dns-max-qps", str(max_qps), "--dns-cache-size", str(cache_size),
        "--dns-min-ttl", "1", "--metrics-max-deployments", "50",
        # Refused at once rather than queued: with a queue, the scanner's requests wait their turn (a tarpit)
        # and 100,000 ids take minutes. The bounds under test are the same.
        "--dns-queue-wait", "0",
    )  # fmt: skip
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits

    def random_ids(count: int) -> list[str]:
        return ["".join(rng.choices(alphabet, k=20)) for _ in range(count)]

    probe: list[int] = []
    stop = asyncio.Event()

    async def real_deployment() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(f"http://127.0.0.1:{router.port}/services/hello/") as response:
                    probe.append(response.status)
                await asyncio.sleep(0.01)

    prober = asyncio.create_task(real_deployment())
    loop = asyncio.get_running_loop()
    # 20,000 ids first: the caches fill to their bounds (100 unknown ids take a second of the budget); then the
    # rest must not grow memory.
    warm = await asyncio.gather(*(pipelined_scan(router.port, random_ids(5_000)) for _ in range(4)))
    rss_warm = router.rss_bytes()
    queries_before = dns.query_count()
    started = loop.time()
    scans = await asyncio.gather(*(pipelined_scan(router.port, random_ids(20_000)) for _ in range(4)))
    elapsed = loop.time() - started
    scan_queries = dns.query_count() - queries_before
    stop.set()
    await prober

    statuses = [status for batch in [*warm, *scans] for status in batch]
    assert len(statuses) == 100_000
    assert set(statuses) <= {502, 503}  # deployment_not_found, or resolver_busy when over budget
    # The budget: a burst of one second's worth, then max_qps; the real deployment's refreshes are among these.
    assert scan_queries <= max_qps * (elapsed + 1) + 10, (scan_queries, elapsed)
    assert router.rss_bytes() - rss_warm < 8 * MiB
    assert await metric_labels(router.admin_port) <= {"hello", "_unknown", "_other"}
    assert probe
    assert set(probe) == {200}  # never resolver_busy, never evicted by the scan
    # The access log is off: the scan must not flood the application log either (a line per unknown id would).
    assert len(router.output.splitlines()) < 100
