"""Shared fixtures: a real DNS server, real backends and the real router, all on 127.0.0.0/8.

Nothing is mocked that can run for real on loopback. Every address a test record points at is a loopback
address, even in tests of the allow-list (those use loopback addresses outside the allowed range).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvloop
from aiohttp import web

from benchmarks.proctree import children_of
from router.app import Router
from router.demo.backend import make_app
from router.demo.dns import DemoDnsServer
from router.settings import Settings, load_settings


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
    """Every async test runs on uvloop, the loop the router runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


# The name the router asks about on start to learn that its resolver answers (for /ready).
PROBE = "_whaleray-probe"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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


@dataclass
class Backend:
    host: str
    port: int
    runner: web.AppRunner
    connections: set[object] = field(default_factory=set)
    requests: int = 0

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    async def stop(self) -> None:
        await self.runner.cleanup()


BackendFactory = Callable[..., Awaitable[Backend]]


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


RouterFactory = Callable[..., Awaitable[Router]]


def router_settings(
    dns: DemoDnsServer, upstream_port: int, *extra: str, resolvers: list[str] | None = None
) -> Settings:
    resolver_flags: list[str] = []
    for resolver in resolvers or [f"127.0.0.1:{dns.port}"]:
        resolver_flags += ["--resolver", resolver]
    # Loopback is allowed for tests unless a test sets its own (narrower) list.
    allow = [] if "--upstream-allow-cidr" in extra else ["--upstream-allow-cidr", "127.0.0.0/8"]
    return load_settings(
        [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-port",
            "0",
            *resolver_flags,
            *allow,
            "--upstream-port",
            str(upstream_port),
            "--dns-timeout",
            "0.3",
            "--dns-tries",
            "1",
            "--drain-delay",
            "0",
            *extra,
        ],
        environ={},
    )


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


# --- raw HTTP over a socket: for what an HTTP client library would refuse to send ------------------------


async def raw_request(port: int, data: bytes, *, wait_s: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send `data` and read until the router closes the connection (or `wait_s` passes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read the next final response from a raw connection, as a client would: 1xx heads are skipped, 204 and
    304 have no body whatever their head says, and a body framed by neither length nor chunks ends at close."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if status in {204, 304}:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(part[:-2] for part in parts)
    elif headers.get("connection") == "close":
        body = await reader.read()
    else:
        body = b""
    return status, headers, body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# --- a raw backend: records request heads byte for byte (aiohttp would normalise what it shows) ----------


@dataclass
class RawBackend:
    """Answers every request `200 ok` with keep-alive, and keeps each request head exactly as received."""

    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                lower = head.lower()
                body = b""
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        body += (await reader.readexactly(size + 2))[:-2]
                        if size == 0:
                            break
                self.bodies.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def request_line(self, index: int = -1) -> bytes:
        return self.heads[index].split(b"\r\n", 1)[0]

    def header_lines(self, index: int = -1) -> list[bytes]:
        return self.heads[index].split(b"\r\n")[1:-2]


RawBackendFactory = Callable[[str], Awaitable[RawBackend]]


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


# --- scripted backends: a coroutine per connection, for responses no framework would send ----------------

ConnectionScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ScriptedFactory = Callable[[str, ConnectionScript], Awaitable[asyncio.Server]]


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


async def open_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


# --- the real `whaleray-router` process ----------------------------------------------------------------------


@dataclass
class RouterProcess:
    """A `whaleray-router` process whose output is read continuously (an unread pipe would fill and stall
    it) and kept for assertions."""

    process: asyncio.subprocess.Process
    port: int
    admin_port: int
    upstream_port: int
    output: bytearray = field(default_factory=bytearray)
    reader: asyncio.Task[None] | None = None

    async def collect(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.read(65536):
            self.output += chunk

    async def json_lines(self) -> list[dict[str, object]]:
        """Every JSON line the process wrote, once it has exited."""
        await self.process.wait()
        if self.reader is not None:
            await self.reader
        return [json.loads(line) for line in self.output.decode().splitlines() if line.startswith("{")]

    def peak_rss_bytes(self) -> int:
        """VmHWM: the most resident memory the process ever had."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


async def wait_for(condition: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def wait_for_port(port: int, deadline_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


@pytest.fixture
async def router_process(
    dns: DemoDnsServer, upstream_port: int
) -> AsyncIterator[Callable[..., Awaitable[RouterProcess]]]:
    started: list[RouterProcess] = []

    async def start(*extra: str) -> RouterProcess:
        port, admin_port = free_port(), free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-host",
            "127.0.0.1",
            "--admin-port",
            str(admin_port),
            "--resolver",
            f"127.0.0.1:{dns.port}",
            "--upstream-allow-cidr",
            "127.0.0.0/8",
            "--upstream-port",
            str(upstream_port),
            "--dns-timeout",
            "0.3",
            "--dns-tries",
            "1",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={key: value for key, value in os.environ.items() if not key.startswith("WHALERAY_")},
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


def slow_app(delay_s: float, text: str = "done") -> web.Application:
    """A backend that answers every GET after `delay_s`: a request that stays in flight."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    return app


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
