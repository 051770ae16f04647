"""NOT A PRODUCT: the bare relay, the floor that `benchmarks.run` measures any Python proxy against.

The least a uvloop + httptools proxy of `/services/<id>/<path>` can do per request: parse the request, look the
deployment up in a dictionary (resolved once with aiodns, its TTL ignored), write the request with the prefix
cut and the client's own headers to a pooled keep-alive connection, and hand the response's bytes to the client
as they come, parsing them only to see where the response ends. No header rules, no limits, no timeouts, no
errors worth the name, no metrics, no logs: everything the router does beyond this is what the gap between the
two costs. Never run it for anything but a benchmark.

    python -m benchmarks.relay --port 8081 --resolver 127.0.0.1:5353 --upstream-port 3000
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import cast

import aiodns
import httptools
import pycares
import uvloop

PREFIX = b"/services/"


class Relay:
    """What every connection shares: resolved addresses and idle backend connections by address."""

    def __init__(self, resolver: aiodns.DNSResolver, upstream_port: int) -> None:
        self.resolver = resolver
        self.upstream_port = upstream_port
        self.addresses: dict[bytes, str] = {}
        self.idle: dict[str, list[Upstream]] = {}

    async def address_of(self, deployment: bytes) -> str:
        address = self.addresses.get(deployment)
        if address is None:
            result = await self.resolver.query_dns(deployment.decode() + ".whaleray.local", "A")
            data = result.answer[0].data
            assert isinstance(data, pycares.ARecordData)
            address = self.addresses[deployment] = data.addr
        return address

    async def upstream_for(self, address: str) -> Upstream:
        idle = self.idle.get(address)
        if idle:
            return idle.pop()
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self, address), address, self.upstream_port)
        return upstream


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend, relaying one response at a time to its client."""

    def __init__(self, relay: Relay, address: str) -> None:
        self.relay = relay
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's, with TCP_NODELAY already set

    def send(self, request: bytes, client: Client) -> None:
        assert self.transport is not None
        self.client, self.complete = client, False
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        client = self.client
        assert client is not None
        assert client.transport is not None
        client.transport.write(data)
        self.parser.feed_data(data)
        if self.complete:
            self.client = None
            self.relay.idle.setdefault(self.address, []).append(self)
            client.done()

    def on_message_complete(self) -> None:
        self.complete = True

    def connection_lost(self, exc: Exception | None) -> None:
        idle = self.relay.idle.get(self.address, [])
        if self in idle:
            idle.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    """One client connection: requests are parsed, rewritten and relayed one after another."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head: list[bytes] = []
        self.waiting: deque[tuple[bytes, bytes]] = deque()  # (deployment, request) not yet sent
        self.busy = False
        self.tasks: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        url, head = self.url, self.head
        self.url, self.head = b"", []
        if not url.startswith(PREFIX):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        deployment, _, rest = url[len(PREFIX) :].partition(b"/")
        request = b"".join((b"GET /", rest, b" HTTP/1.1\r\n", *head, b"\r\n"))
        self.waiting.append((deployment, request))
        if not self.busy:
            self.next()

    def next(self) -> None:
        if not self.waiting:
            return
        self.busy = True
        deployment, request = self.waiting.popleft()
        address = self.relay.addresses.get(deployment)
        idle = self.relay.idle.get(address) if address is not None else None
        if idle:  # the common request: no task, no await
            idle.pop().send(request, self)
        else:
            task = asyncio.ensure_future(self.relay_slowly(deployment, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def relay_slowly(self, deployment: bytes, request: bytes) -> None:
        address = await self.relay.address_of(deployment)
        upstream = await self.relay.upstream_for(address)
        upstream.send(request, self)

    def done(self) -> None:
        self.busy = False
        self.next()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--resolver", required=True, help="HOST:PORT of the DNS server")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.install()
    loop = asyncio.new_event_loop()
    relay = Relay(aiodns.DNSResolver(nameservers=[args.resolver], loop=loop), args.upstream_port)
    loop.run_until_complete(loop.create_server(lambda: Client(relay), args.host, args.port, reuse_address=True))
    loop.run_forever()


if __name__ == "__main__":
    main()
