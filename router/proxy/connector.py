"""Backend connections for one worker: borrowed from the pool or opened, given back by the pool's reuse rule.

The I/O half of pool.py: this opens sockets (with the connect timeout), closes what the pool gives up on, and
on a refused connect tries the deployment's next address (the balancer ejects the one that refused).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from router.discovery.balancer import Balancer
from router.discovery.cache import Address, Entry
from router.errors import RouterError
from router.metrics import Metrics
from router.proxy.pool import ConnectionPool
from router.proxy.upstream import UpstreamConnection
from router.settings import Settings

log = logging.getLogger("router.proxy")

MAX_CONNECT_ATTEMPTS: Final = 3


class Connector:
    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
        self.settings = settings
        self.loop = loop
        self.clock: Callable[[], float] = loop.time  # see ServerState.clock
        self.metrics = metrics
        self.balancer = Balancer()
        self.pool: ConnectionPool[UpstreamConnection] = ConnectionPool(
            idle_timeout_s=settings.upstream_idle_timeout_s,
            max_idle_per_address=settings.upstream_max_idle_per_address,
        )
        self.connects = 0
        self.reuses = 0

    def take_idle(self, address: Address, now: float) -> UpstreamConnection | None:
        upstream = self.pool.acquire(address, now)
        if upstream is not None:
            self.reuses += 1
            self.metrics.reused += 1
        return upstream

    async def borrow(
        self, entry: Entry, address: Address | None, deployment: str, *, fresh_only: bool = False
    ) -> tuple[UpstreamConnection, Address, bool]:
        """A connection to one of `entry`'s addresses (`address` first when given): (connection, its address,
        whether it was pooled). Tries up to MAX_CONNECT_ATTEMPTS addresses while connects are refused."""
        label = self.metrics.label(deployment, True)
        avoid: Address | None = None
        for _ in range(min(MAX_CONNECT_ATTEMPTS, len(set(entry.addresses)) + len(entry.backup))):
            now = self.clock()
            if address is None:
                address = self.balancer.pick(entry, now, avoid)
            pooled = None if fresh_only else self.take_idle(address, now)
            if pooled is not None:
                return pooled, address, True
            try:
                return await self.connect(address), address, False
            except TimeoutError:
                self.balancer.failed(address, self.clock())
                self.metrics.upstream_error(label, "connect_timeout")
                raise RouterError("upstream_timeout") from None
            except OSError as error:
                self.metrics.upstream_error(label, "connect_refused")
                ejected_s = self.balancer.failed(address, self.clock())
                upstream = f"{address[0]}:{address[1]}"
                extra = {"deployment": deployment, "upstream": upstream, "detail": str(error), "ejected_s": ejected_s}
                log.warning("upstream connect failed", extra=extra)
                avoid, address = address, None
        raise RouterError("upstream_unavailable")

    async def connect(self, address: Address) -> UpstreamConnection:
        """A new backend connection. `create_connection(host, port)`, never `sock=`: uvloop before 0.23 closed
        a recycled descriptor when a connect on a pre-made socket was cancelled by a timeout."""
        started = time.perf_counter()  # the histogram's buckets start below a millisecond, uvloop's clock's tick
        settings = self.settings

        def protocol() -> UpstreamConnection:
            return UpstreamConnection(
                address,
                self.forget_idle,
                max_head_bytes=settings.upstream_max_header_bytes,
                max_head_lines=settings.upstream_max_header_count,
            )

        async with asyncio.timeout(settings.upstream_connect_timeout_s):
            _, upstream = await self.loop.create_connection(protocol, address[0], address[1])
        self.connects += 1
        upstream.connect_s = time.perf_counter() - started
        self.metrics.connect_duration.observe(upstream.connect_s)
        return upstream

    def give_back(self, upstream: UpstreamConnection, *, request_whole: bool, framed_response: bool) -> None:
        """A response ended: pool the connection if the reuse rule allows, else close it."""
        if self.pool.may_reuse(
            upstream.address, upstream, request_whole=request_whole, framed_response=framed_response
        ):
            self._release(upstream)
        else:
            upstream.close()

    def keep(self, upstream: UpstreamConnection) -> None:
        """Pool a fresh connection the requester no longer needs, unless DNS has dropped its address."""
        if self.pool.retired and upstream.address in self.pool.retired:
            upstream.close()
        else:
            self._release(upstream)

    def _release(self, upstream: UpstreamConnection) -> None:
        surplus = self.pool.release(upstream.address, upstream, self.clock())
        if surplus is not None:
            surplus.close()

    def forget_idle(self, upstream: UpstreamConnection) -> None:
        self.pool.discard(upstream.address, upstream)

    def retire(self, removed: set[Address]) -> None:
        """DNS no longer lists `removed`: close their idle connections now, and the busy ones when done."""
        for upstream in self.pool.retire(removed, self.clock()):
            upstream.close()

    def expire(self, now: float) -> None:
        for upstream in self.pool.expire(now):
            upstream.close()
        horizon = self.settings.upstream_header_timeout_s + self.settings.upstream_read_timeout_s
        self.pool.forget_retired(now - horizon)  # past the longest a response may take

    def close_idle(self) -> None:
        for upstream in self.pool.drain_addresses():
            upstream.close()
