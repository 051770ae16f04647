"""Shared fixtures: a real DNS server, real backends and the real router, all on 127.0.0.0/8.

Nothing is mocked that can run for real on loopback. Every address a test record points at is a loopback
address, even in tests of the allow-list (those use loopback addresses outside the allowed range).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

import router as router_package
from router.app import Router
from tests.support import (
    Backend,
    BackendFactory,
    ConnectionScript,
    RawBackend,
    RawBackendFactory,
    RouterFactory,
    RouterProcess,
    ScriptedFactory,
    children_of,
    environment_without_settings,
    free_port,
    router_command,
    router_flags,
    router_settings,
    wait_for_port,
)
from whaleray_demo.backend import make_app
from whaleray_demo.dns import DemoDnsServer


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs the suite against the installed wheel and names its venv in ROUTER_UNDER_TEST: refuse to
    run when `router` would be the source tree instead (pytest's import mode puts the repository last on the
    path for this, see the Makefile)."""
    under_test = os.environ.get("ROUTER_UNDER_TEST")
    installed = Path(router_package.__file__ or "").resolve()
    if under_test and not installed.is_relative_to(Path(under_test).resolve()):
        raise pytest.UsageError(f"router is imported from {installed}, not from the wheel in {under_test}")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
    """Every async test runs on uvloop, the loop the router runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def dns() -> AsyncIterator[DemoDnsServer]:
    server = DemoDnsServer("whaleray.local", ttl=30)
    await server.start("127.0.0.1", 0)
    yield server
    server.close()


@pytest.fixture
def upstream_port() -> int:
    """One port for every backend of a test, as in production (`--upstream-port`), free on 127.0.0.1."""
    return free_port()


@pytest.fixture
async def backend(upstream_port: int) -> AsyncIterator[BackendFactory]:
    """Start an aiohttp backend on `host:upstream_port` that counts the TCP connections it accepted."""
    started: list[Backend] = []

    async def start(host: str, app: web.Application | None = None, name: str | None = None) -> Backend:
        app = app if app is not None else make_app(name or host)
        holder: list[Backend] = []

        @web.middleware
        async def count(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            holder[0].connections.add(request.transport)
            holder[0].requests += 1
            return await handler(request)

        app.middlewares.append(count)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, host, upstream_port, reuse_address=True).start()
        instance = Backend(host, upstream_port, runner)
        holder.append(instance)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.stop()


@pytest.fixture
async def make_router(dns: DemoDnsServer, upstream_port: int) -> AsyncIterator[RouterFactory]:
    routers: list[Router] = []

    async def start(*extra: str, resolvers: list[str] | None = None) -> Router:
        router = Router(router_settings(dns, upstream_port, *extra, resolvers=resolvers))
        await router.start()
        routers.append(router)
        return router

    yield start
    for router in routers:
        await router.stop()


@pytest.fixture
async def router(make_router: RouterFactory) -> Router:
    return await make_router()


@pytest.fixture
async def raw_backend(upstream_port: int) -> AsyncIterator[RawBackendFactory]:
    started: list[RawBackend] = []

    async def start(host: str) -> RawBackend:
        instance = RawBackend()
        instance.server = await asyncio.start_server(instance.handle, host, upstream_port, reuse_address=True)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        assert instance.server is not None
        instance.server.close()


@pytest.fixture
async def scripted_backend(upstream_port: int) -> AsyncIterator[ScriptedFactory]:
    servers: list[asyncio.Server] = []

    async def start(host: str, script: ConnectionScript) -> asyncio.Server:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, host, upstream_port, reuse_address=True)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def router_process(
    dns: DemoDnsServer, upstream_port: int
) -> AsyncIterator[Callable[..., Awaitable[RouterProcess]]]:
    started: list[RouterProcess] = []

    async def start(*extra: str) -> RouterProcess:
        port, admin_port = free_port(), free_port()
        process = await asyncio.create_subprocess_exec(
            *router_command(),
            *router_flags(dns, upstream_port, *extra, port=port, admin_port=admin_port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=environment_without_settings(),
        )
        instance = RouterProcess(process, port, admin_port, upstream_port)
        instance.reader = asyncio.create_task(instance.collect())
        started.append(instance)
        await wait_for_port(port)
        return instance

    yield start
    for instance in started:
        if instance.process.returncode is None:
            workers = children_of(instance.process.pid)  # before the kill: then they would be re-parented
            instance.process.kill()
            for child in workers:  # workers live in their own sessions: no group kill reaches them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            await instance.process.wait()
        if instance.reader is not None:
            await instance.reader


@pytest.fixture(scope="module")
def fuzz_router() -> Iterator[tuple[Router, asyncio.AbstractEventLoop, list[dict[str, object]]]]:
    """One router (with its DNS server and a raw backend) for a whole hypothesis run, on its own loop: hypothesis
    drives examples synchronously. Short timeouts keep incomplete fuzzed requests from stalling the run. The
    list collects what reached the loop's exception handler: an exception in a protocol callback lands there,
    not in the test."""
    loop = uvloop.new_event_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    dns = DemoDnsServer("whaleray.local")
    loop.run_until_complete(dns.start("127.0.0.1", 0))
    upstream_port = free_port()
    recorder = RawBackend()
    recorder.server = loop.run_until_complete(
        asyncio.start_server(recorder.handle, "127.0.0.2", upstream_port, reuse_address=True)
    )
    dns.set_a("hello", ["127.0.0.2"])
    router = Router(
        router_settings(
            dns, upstream_port, "--client-header-timeout", "0.5", "--client-body-timeout", "0.5", "--access-log", "off"
        )
    )
    loop.run_until_complete(router.start())
    yield router, loop, errors
    loop.run_until_complete(router.stop())
    recorder.server.close()
    dns.close()
    loop.run_until_complete(asyncio.sleep(0.05))  # let the transports finish closing before the loop goes
    loop.close()
