"""--workers: processes sharing the port under a supervisor; restart, aggregated metrics, drain, auto."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.cpus import SUPERVISOR_MIB, WORKER_MIB, available_cpus, cgroup_cpu_quota, plan_workers
from tests.support import BackendFactory, RouterProcess, slow_app, wait_for, workers_serving
from tests.support import children_of as children
from whaleray_demo.dns import DemoDnsServer

MiB = 1 << 20
StartRouter = Callable[..., Awaitable[RouterProcess]]


async def request_ids(port: int, count: int) -> list[tuple[int, str]]:
    """`count` requests, each on a new connection (so the kernel spreads them over the workers)."""
    results = []
    for _ in range(count):
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/services/hello/") as r:
            await r.read()
            results.append((r.status, r.headers["X-Request-Id"]))
    return results


async def total_requests(admin_port: int) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "whaleray_requests_total"
    )


async def test_two_workers_share_the_port_and_metrics_add_up(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    router = await router_process("--workers", "2")
    await wait_for(lambda: workers_serving(router, 2))
    results = await request_ids(router.port, 40)
    assert {status for status, _ in results} == {200}
    prefixes = {request_id[:12] for _, request_id in results}  # each worker has its own request-id prefix
    assert len(prefixes) == 2

    async def all_counted() -> bool:
        return await total_requests(router.admin_port) == 40

    await wait_for(all_counted)  # workers report every second

    # What each worker uses, beside the supervisor's own process_* metrics.
    samples = await worker_process_samples(router.admin_port)
    workers = {labels["worker"] for name, labels, _ in samples}
    assert workers == {"0", "1"}
    values = {(name, labels["worker"]): value for name, labels, value in samples}
    for worker in workers:
        assert 10 * MiB < values[("whaleray_worker_resident_memory_bytes", worker)] < 1024 * MiB
        assert values[("whaleray_worker_open_fds", worker)] >= 4  # at least stdio and the shared listener
        assert values[("whaleray_worker_cpu_seconds_total", worker)] > 0


async def worker_process_samples(admin_port: int) -> list[tuple[str, dict[str, str], float]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        text = await r.text()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("whaleray_worker_")
    ]


def has_exited(pid: int) -> bool:
    """Gone, or a zombie (exited, its sockets closed, not yet reaped by the supervisor)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or while, it was read
        return True


async def test_killed_worker_is_restarted_while_the_other_keeps_serving(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2")
    router = await router_process("--workers", "2")
    await wait_for(lambda: workers_serving(router, 2))
    assert {status for status, _ in await request_ids(router.port, 10)} == {200}

    async def reported(count: int) -> bool:
        return await total_requests(router.admin_port) >= count

    await wait_for(lambda: reported(10))  # the victim's counts reach the supervisor before it dies
    before = await total_requests(router.admin_port)
    victim, survivor = sorted(children(router.process.pid))
    os.kill(victim, signal.SIGKILL)
    # Until the kernel has torn the victim down, SO_REUSEPORT may still hash a new connection to its socket,
    # which the exit then resets: that is the kill's own loss. From its exit on, the survivor takes every one.
    await wait_for(lambda: has_exited(victim))
    assert {status for status, _ in await request_ids(router.port, 20)} == {200}  # the survivor serves
    await wait_for(lambda: len(children(router.process.pid)) == 2)
    workers = children(router.process.pid)
    assert survivor in workers
    assert victim not in workers
    await wait_for(lambda: workers_serving(router, 2))  # the new worker listens
    assert {status for status, _ in await request_ids(router.port, 10)} == {200}
    await wait_for(lambda: reported(before + 30))  # the dead worker's counts are kept


async def test_sigterm_drains_every_worker_and_exits_0(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    """Requests in flight when SIGTERM arrives are answered in full, then every worker exits and so does the
    supervisor, with 0."""
    arrivals: list[str] = []
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=slow_app(1.0, "done", arrivals))
    router = await router_process("--workers", "2", "--drain-delay", "0.2", "--drain-timeout", "10")
    await wait_for(lambda: workers_serving(router, 2))
    workers = children(router.process.pid)
    async with aiohttp.ClientSession() as session:

        async def slow() -> tuple[int, str]:
            async with session.get(f"http://127.0.0.1:{router.port}/services/hello/slow") as response:
                return response.status, await response.text()

        in_flight = [asyncio.create_task(slow()) for _ in range(4)]
        await wait_for(lambda: len(arrivals) == 4)
        router.process.send_signal(signal.SIGTERM)
        assert await asyncio.gather(*in_flight) == [(200, "done")] * 4
    assert await asyncio.wait_for(router.process.wait(), 15) == 0
    assert not set(workers) & set(children(router.process.pid))


def test_auto_reads_the_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))


def test_auto_reads_the_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0
    assert available_cpus(tmp_path) == 1


@pytest.mark.parametrize("content", ["max 100000\n", None])
def test_auto_without_a_quota_uses_the_allowed_cpus(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "cpu.max").write_text(content)
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


async def test_workers_drain_when_the_supervisor_is_killed(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    router = await router_process("--workers", "2", "--drain-delay", "0.2")
    await wait_for(lambda: workers_serving(router, 2))  # both have reported at least once
    workers = children(router.process.pid)
    router.process.kill()  # SIGKILL: no chance to stop them

    await wait_for(lambda: not any(running(pid) for pid in workers), seconds=10)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- --workers auto on ECS: the task metadata endpoint first ---------------------------------------------------


@contextlib.contextmanager
def metadata_server(task: dict[str, object]) -> Iterator[str]:
    """The ECS agent's task metadata endpoint, on loopback: GET <uri>/task answers `task`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(task).encode() if self.path == "/v4/abc/task" else b"{}"
            self.send_response(200 if self.path == "/v4/abc/task" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v4/abc"
    finally:
        server.shutdown()
        server.server_close()


def test_auto_takes_the_ecs_task_cpu_limit_over_an_unlimited_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")  # what a container of an EC2 task sees
    with metadata_server({"Limits": {"CPU": 0.5, "Memory": 512}}) as uri:
        plan = plan_workers({"ECS_CONTAINER_METADATA_URI_V4": uri}, tmp_path)
    assert plan.count == 1
    assert "ECS task limit of 0.5 vCPU" in plan.reason


def test_auto_never_starts_more_workers_than_the_task_memory_holds(tmp_path: Path) -> None:
    memory = SUPERVISOR_MIB + WORKER_MIB + WORKER_MIB // 2  # one worker fits, not two
    with metadata_server({"Limits": {"CPU": 16, "Memory": memory}}) as uri:
        plan = plan_workers({"ECS_CONTAINER_METADATA_URI_V4": uri}, tmp_path)
    assert plan.count == 1
    assert f"capped by {memory} MiB" in plan.reason


def test_auto_falls_back_to_cgroups_when_the_endpoint_fails(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "memory.max").write_text(str(4 << 30) + "\n")
    with metadata_server({}) as uri:
        plan = plan_workers({"ECS_CONTAINER_METADATA_URI_V4": uri + "/missing"}, tmp_path)
    assert plan.count == 1
    assert plan.reason.startswith("cgroup")


def test_auto_caps_by_the_cgroup_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(str(100 << 20) + "\n")  # 100 MiB: room for the supervisor and one
    plan = plan_workers({}, tmp_path)
    assert plan.count == 1


async def test_the_supervisor_logs_how_many_workers_and_why(
    router_process: StartRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with metadata_server({"Limits": {"CPU": 0.25, "Memory": 512}}) as uri:
        monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", uri)
        router = await router_process("--workers", "auto", "--drain-delay", "0")
        await wait_for(lambda: len(children(router.process.pid)) == 1)
        router.process.send_signal(signal.SIGTERM)
        lines = await router.json_lines()
    [starting] = [line for line in lines if line.get("message") == "starting"]
    assert starting["workers"] == 1
    assert "ECS task limit of 0.25 vCPU" in str(starting["workers_from"])
