"""The real `whaleray-router` process: --help, exit codes, SIGTERM, and memory bounded while streaming."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from router import __version__
from router.build import BUILD
from router.options import OPTIONS
from tests.support import BackendFactory, RouterProcess, read_response, run_cli, slow_app, wait_for
from whaleray_demo.dns import DemoDnsServer

MiB = 1 << 20
StartRouter = Callable[..., Awaitable[RouterProcess]]


def test_help_documents_every_option_with_its_variable_and_default() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
        if isinstance(option.default, str):
            assert f"default {option.default}" in text


def test_version_names_the_build_that_runs() -> None:
    """`make test` runs the suite once per build and says which in ROUTER_TEST_BUILD: the process must agree."""
    expected = os.environ.get("ROUTER_TEST_BUILD")
    if expected is None:
        pytest.skip("run through `make pytest`, which names the build under test")
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"whaleray-router {__version__} ({expected} build, Python ")


async def test_start_up_log_names_the_build(router_process: StartRouter) -> None:
    process = await router_process("--drain-delay", "0")
    process.process.send_signal(signal.SIGTERM)
    starting = [line for line in await process.json_lines() if line.get("message") == "starting"]
    assert [line["build"] for line in starting] == [BUILD]
    assert BUILD in {"compiled", "pure"}


def settings_problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Exit 2 and one JSON log line, "invalid settings", listing the problems; nothing else written."""
    assert result.returncode == 2
    assert result.stderr == ""
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    assert (line["level"], line["message"]) == ("error", "invalid settings")
    return [str(problem) for problem in line["problems"]]


def test_bad_value_exits_2_naming_the_setting() -> None:
    assert settings_problems(run_cli("--port", "99999")) == ["--port='99999': must be a port, 0-65535"]


def test_bad_environment_value_names_the_variable() -> None:
    problems = settings_problems(run_cli(env={"WHALERAY_UPSTREAM_CONNECT_TIMEOUT": "soon"}))
    assert [problem.split(":")[0] for problem in problems] == ["WHALERAY_UPSTREAM_CONNECT_TIMEOUT='soon'"]


def test_unknown_whaleray_variable_is_an_error() -> None:
    problems = settings_problems(run_cli(env={"WHALERAY_UPSTREAM_PRT": "3000"}))
    assert len(problems) == 1
    assert "WHALERAY_UPSTREAM_PRT" in problems[0]


def test_invalid_settings_follow_the_log_format_asked_for() -> None:
    result = run_cli("--log-format", "text", "--resolver", "not-an-address")
    assert result.returncode == 2
    assert result.stdout.count("\n") == 1
    assert " ERROR   router: invalid settings [problems=[" in result.stdout


async def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    arrivals: list[str] = []
    app = slow_app(1.0, "finished", arrivals)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    router = await router_process("--drain-delay", "0.2", "--drain-timeout", "5")
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"GET /services/hello/slow HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await wait_for(lambda: arrivals == ["/slow"])
    router.process.send_signal(signal.SIGTERM)
    status, headers, body = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (status, body) == (200, b"finished")
    assert headers["connection"] == "close"  # responses during drain end their connection
    assert await asyncio.wait_for(router.process.wait(), 10) == 0
    lines = await router.json_lines()
    assert any(line.get("message") == "drained" and line["unfinished_requests"] == 0 for line in lines)
    access = [line for line in lines if line.get("type") == "access"]
    assert [(line["path"], line["status"]) for line in access] == [("/services/hello/slow", 200)]


async def test_download_past_a_slow_client_keeps_memory_bounded(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    total = 128 * MiB
    block = b"\x00" * MiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        for _ in range(total // MiB):
            await response.write(block)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    router = await router_process()
    baseline = router.rss_bytes()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port, limit=MiB)
    writer.write(b"GET /services/hello/big HTTP/1.1\r\nHost: h\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    received = 0
    while received < total:
        chunk = await reader.read(MiB)
        assert chunk
        received += len(chunk)
        await asyncio.sleep(0.001)  # slower than the backend: the router must push back, not buffer
    writer.close()
    assert received == total
    assert router.peak_rss_bytes() - baseline < 32 * MiB


async def test_upload_to_a_slow_backend_keeps_memory_bounded(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    total = 128 * MiB

    async def slow_sink(request: web.Request) -> web.Response:
        received = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            received += len(chunk)
            await asyncio.sleep(0.001)
        return web.json_response({"received": received})

    app = web.Application(client_max_size=2 * total)
    app.router.add_post("/sink", slow_sink)
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", app=app)
    router = await router_process()
    baseline = router.rss_bytes()

    async def body() -> object:
        block = b"\x01" * MiB
        for _ in range(total // MiB):
            yield block

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}/services/hello/sink", data=body()) as response,
    ):
        answer = await response.json()
    assert answer == {"received": total}
    assert router.peak_rss_bytes() - baseline < 32 * MiB
