"""What the tests share: servers and clients on loopback, the router as a process, waiting on conditions.

Test files import from here; conftest.py holds the fixtures built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from router.app import Router
from router.settings import Settings, load_settings
from router.view import deployment_view
from whaleray_demo.dns import DemoDnsServer

ROOT = Path(__file__).resolve().parent.parent

# The name the router asks about on start to learn that its resolver answers (for /ready).
PROBE = "_whaleray-probe"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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


RouterFactory = Callable[..., Awaitable[Router]]


def router_flags(
    dns: DemoDnsServer,
    upstream_port: int,
    *extra: str,
    resolvers: list[str] | None = None,
    port: int = 0,
    admin_port: int = 0,
) -> list[str]:
    """The one command line of a router under test, in this process or as one: the test's DNS server (never
    this machine's), loopback backends on `upstream_port`, short DNS timeouts, no drain delay; `extra` last,
    so a test's own flags win."""
    resolver_flags: list[str] = []
    for resolver in resolvers or [f"127.0.0.1:{dns.port}"]:
        resolver_flags += ["--resolver", resolver]
    # Loopback is allowed for tests unless a test sets its own (narrower) list.
    allow = [] if "--upstream-allow-cidr" in extra else ["--upstream-allow-cidr", "127.0.0.0/8"]
    listen = ["--host", "127.0.0.1", "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin_port)]
    timeouts = ["--dns-timeout", "0.3", "--dns-tries", "1", "--drain-delay", "0"]
    return [*listen, *resolver_flags, *allow, "--upstream-port", str(upstream_port), *timeouts, *extra]


def router_settings(
    dns: DemoDnsServer, upstream_port: int, *extra: str, resolvers: list[str] | None = None
) -> Settings:
    return load_settings(router_flags(dns, upstream_port, *extra, resolvers=resolvers), environ={})


class Reply(NamedTuple):
    """An HTTP answer as the tests read it: headers stay case-insensitive, as HTTP says they are."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(
    where: Router | str,
    path: str = "",
    method: str = "GET",
    *,
    session: aiohttp.ClientSession | None = None,
    **kwargs: Any,
) -> Reply:
    """The one way the tests send a request through aiohttp's client: to a router in this process (`where` a
    Router) or any URL (`where` its start). The path goes as written (no normalising), redirects are not
    followed. A `session` keeps its connections between calls."""
    base = f"http://127.0.0.1:{where.port}" if isinstance(where, Router) else where
    url = URL(base + path, encoded=True)
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await fetch(where, path, method, session=own, **kwargs)
    async with session.request(method, url, allow_redirects=False, **kwargs) as response:
        return Reply(response.status, CIMultiDict(response.headers), await response.read())


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


ConnectionScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


ScriptedFactory = Callable[[str, ConnectionScript], Awaitable[asyncio.Server]]


async def open_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


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


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10) -> None:
    """Poll `condition` (a plain or an async function) until it holds; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        met = condition()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def view_of(router: Router, deployment: str) -> dict[str, Any]:
    """The router's view of one deployment, as GET /discovery/<id> on the admin port shows it."""
    assert router.state is not None
    return deployment_view(router.state, deployment)


def address_column(router: Router, deployment: str, column: str) -> dict[str, object]:
    """One column of /discovery/<id>'s address table: address -> value."""
    return {entry["address"]: entry[column] for entry in view_of(router, deployment)["addresses"]}


async def admin_ready(admin_port: int) -> bool:
    """/ready answers 200: with --workers, every worker has started listening and reported a resolver answer."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin_port}/ready") as response:
        return response.status == 200


async def workers_serving(router: RouterProcess, count: int) -> bool:
    return len(children_of(router.process.pid)) == count and await admin_ready(router.admin_port)


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port` (a loopback connect: answered at once either way)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


async def wait_for_port(port: int, deadline_s: float = 10.0) -> None:
    """Until something listens on `port` (the one way the tests wait for a port; moto_server's loop, which runs
    before any event loop, asks `port_accepts` the same way)."""
    await wait_for(lambda: port_accepts(port), deadline_s)


def slow_app(delay_s: float, text: str = "done", arrivals: list[str] | None = None) -> web.Application:
    """A backend that answers every GET after `delay_s`: a request that stays in flight. The path of every
    request that reached it goes to `arrivals`, as it arrives."""

    async def slow(request: web.Request) -> web.Response:
        if arrivals is not None:
            arrivals.append(request.path)
        await asyncio.sleep(delay_s)
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    return app


def open_descriptors() -> int:
    """This process's open file descriptors (a leak shows here)."""
    return len(os.listdir("/proc/self/fd"))


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc: the router's workers under its supervisor."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def router_command() -> list[str]:
    """How a test starts `whaleray-router` as a process. `make test` names the console script of the installed
    wheel (in a venv with the runtime dependencies only) in ROUTER_EXECUTABLE, so the process tests run what users
    install; without it, this interpreter's `-m router` (the development loop)."""
    executable = os.environ.get("ROUTER_EXECUTABLE")
    return [executable] if executable else [sys.executable, "-m", "router"]


def environment_without_settings() -> dict[str, str]:
    """This process's environment less every WHALERAY_* and AWS_* variable: a router under test takes only its
    flags, and no AWS credentials or configuration file from this machine (its SDK reads none outside the test)."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith(("WHALERAY_", "AWS_"))}
    return kept | {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`whaleray-router ARGS` as a process, with none of this machine's WHALERAY_* variables."""
    base = environment_without_settings()
    command = [*router_command(), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30, env={**base, **(env or {})})


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """moto's server (tests/moto_gaps.py) on a free loopback port, for as long as the block runs: its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_gaps", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_accepts(port):
            assert time.monotonic() < deadline, "moto's server did not start"
            assert server.poll() is None, "moto's server exited"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
