"""Discovery: the cache, the resolver and the address rules, as the data plane sees them.

The request path calls `cached()` first: a dict lookup, no await. Only on a miss does it await `resolve()`,
where concurrent misses for one name share a single query. A name in use is refreshed in the background
before it expires. Every answer is checked against the allowed networks before it is cached: whatever DNS
says, the router never dials an address outside them (the instance metadata service among them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from router.discovery.cache import Address, DnsCache, Entry, EntryKind
from router.discovery.resolver import Answer, NameNotFound, ResolverFailure
from router.errors import ResolverUnavailable
from router.settings import Network, Settings

log = logging.getLogger("router.discovery")

Lookup = Callable[[str], Awaitable[Answer]]


@dataclass(slots=True)
class DiscoveryStats:
    queries: int = 0
    failures: int = 0
    stale_served: int = 0
    forbidden: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def address_allowed(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Discovery:
    def __init__(self, settings: Settings, lookup: Lookup, clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = DnsCache(
            min_ttl_s=settings.dns_min_ttl_s,
            max_ttl_s=settings.dns_max_ttl_s,
            negative_ttl_s=settings.dns_negative_ttl_s,
            stale_ttl_s=settings.dns_stale_ttl_s,
            max_entries=settings.dns_cache_size,
        )
        self.stats = DiscoveryStats()
        self._lookup = lookup
        self._clock = clock
        self._suffix = "." + settings.namespace
        self._port = settings.upstream_port
        self._allowed = settings.upstream_allow_cidrs
        self._inflight: dict[str, asyncio.Future[Entry | ResolverUnavailable]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered_once = False

    def cached(self, deployment: str, now: float) -> Entry | None:
        """The usable cached entry, or None (then await `resolve`). Starts a refresh when one is due."""
        entry = self.cache.fresh(deployment, now)
        if entry is not None and self.cache.needs_refresh(entry, now):
            entry.refreshing = True
            self._query(deployment)
        return entry

    async def resolve(self, deployment: str) -> Entry:
        """Look `deployment` up; raises ResolverUnavailable when there is no answer and nothing stale."""
        # A caller decides "miss" before its task runs; by then another query may have filled the cache.
        entry = self.cache.fresh(deployment, self._clock())
        if entry is not None:
            return entry
        future = self._inflight.get(deployment) or self._query(deployment)
        outcome = await asyncio.shield(future)
        if isinstance(outcome, ResolverUnavailable):
            raise outcome
        return outcome

    def _query(self, deployment: str) -> asyncio.Future[Entry | ResolverUnavailable]:
        future = self._inflight.get(deployment)
        if future is not None:
            return future
        future = asyncio.get_running_loop().create_future()
        self._inflight[deployment] = future
        task = asyncio.create_task(self._run_query(deployment, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _run_query(self, deployment: str, future: asyncio.Future[Entry | ResolverUnavailable]) -> None:
        outcome: Entry | ResolverUnavailable
        try:
            outcome = await self._answer(deployment)
        except ResolverUnavailable as error:
            outcome = error
        finally:
            self._inflight.pop(deployment, None)
        if not future.done():
            future.set_result(outcome)

    async def _answer(self, deployment: str) -> Entry:
        self.stats.queries += 1
        try:
            answer = await self._lookup(deployment + self._suffix)
        except NameNotFound:
            self.answered_once = True
            return self.cache.store_negative(deployment, self._clock())
        except ResolverFailure as error:
            return self._on_failure(deployment, str(error))
        self.answered_once = True
        now = self._clock()
        allowed = tuple((host, self._port) for host in answer.hosts if address_allowed(host, self._allowed))
        if not allowed:
            self.stats.forbidden += 1
            log.warning("dns answer outside allowed networks", extra={"deployment": deployment, "hosts": answer.hosts})
            return self.cache.store_negative(deployment, now, EntryKind.FORBIDDEN)
        return self.cache.store(deployment, allowed, answer.ttl_s, now)

    def _on_failure(self, deployment: str, detail: str) -> Entry:
        self.stats.failures += 1
        stale = self.cache.serve_stale(deployment, self._clock())
        if stale is None:
            log.warning("dns lookup failed", extra={"deployment": deployment, "detail": detail})
            raise ResolverUnavailable(detail)
        self.stats.stale_served += 1
        log.warning("dns lookup failed, serving stale answer", extra={"deployment": deployment, "detail": detail})
        return stale

    def addresses_in_use(self) -> set[Address]:
        return self.cache.addresses_in_use()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<Discovery {self.cache!r} [In flight: {len(self._inflight)}]>"
