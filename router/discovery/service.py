"""Discovery: the cache, the resolver and the address rules, as the data plane sees them.

The request path calls `cached()` first: a dict lookup, no await. Only on a miss does it await `resolve()`,
where concurrent misses for one name share a single query. A name in use is refreshed in the background
before it expires. Every lookup spends from the query budget (budget.py). A lookup of a new name the budget
refuses waits in a bounded FIFO queue for at most `--dns-queue-wait` (a task starting under load sees every
deployment at once); when the queue is full or the wait runs out, it answers `resolver_busy`. Every answer is
checked against the allowed networks before it is cached: whatever DNS says, the router never dials an
address outside them (the instance metadata service among them). When an answer drops addresses,
`on_removed` is told, so pooled connections to them are closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from router.discovery.budget import QueryBudget
from router.discovery.cache import Address, DnsCache, Entry, EntryKind
from router.discovery.resolver import Answer, NameNotFound, ResolverFailure, SrvAnswer, SrvTarget
from router.errors import RouterError
from router.options import Network
from router.settings import Settings

log = logging.getLogger("router.discovery")

Lookup = Callable[[str], Awaitable[Answer]]
SrvLookup = Callable[[str], Awaitable[SrvAnswer]]
# Bounds how many slots one SRV answer's weights expand to in the round robin.
MAX_WEIGHT_SLOTS: Final = 64


@dataclass(slots=True)
class DiscoveryStats:
    queries: int = 0
    failures: int = 0
    stale_served: int = 0
    forbidden: int = 0
    busy: int = 0


def plan_srv(targets: tuple[SrvTarget, ...]) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
    """The round-robin slots of the preferred (lowest) priority, each target as often as its weight asks
    (RFC 2782; weights reduced by their gcd, at most MAX_WEIGHT_SLOTS slots), ordered by smooth weighted round
    robin so consecutive picks spread; and the other priorities' addresses in order, as a backup."""
    best = min(target.priority for target in targets)
    preferred = [target for target in targets if target.priority == best]
    weights = [target.weight for target in preferred]
    if not any(weights):
        weights = [1] * len(preferred)
    divisor = math.gcd(*weights)
    weights = [weight // divisor for weight in weights]
    if sum(weights) > MAX_WEIGHT_SLOTS:
        weights = [max(1, round(weight * MAX_WEIGHT_SLOTS / sum(weights))) if weight else 0 for weight in weights]
    slots = _smooth_weighted_order([(target.host, target.port) for target in preferred], weights)
    others = sorted((target for target in targets if target.priority != best), key=lambda target: target.priority)
    return slots, tuple((target.host, target.port) for target in others)


def _smooth_weighted_order(addresses: list[Address], weights: list[int]) -> tuple[Address, ...]:
    total = sum(weights)
    current = [0] * len(addresses)
    order: list[Address] = []
    for _ in range(total):
        for index, weight in enumerate(weights):
            current[index] += weight
        chosen = max(range(len(addresses)), key=current.__getitem__)
        current[chosen] -= total
        order.append(addresses[chosen])
    return tuple(order)


def address_allowed(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Discovery:
    def __init__(
        self,
        settings: Settings,
        lookup: Lookup,
        srv_lookup: SrvLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_removed: Callable[[set[Address]], None] = lambda removed: None,
    ) -> None:
        self.cache = DnsCache(
            min_ttl_s=settings.dns_min_ttl_s,
            max_ttl_s=settings.dns_max_ttl_s,
            negative_ttl_s=settings.dns_negative_ttl_s,
            stale_ttl_s=settings.dns_stale_ttl_s,
            max_entries=settings.dns_cache_size,
            stale_retry_s=settings.dns_min_ttl_s,  # a failing resolver is retried no more often than a TTL
        )
        self.budget = QueryBudget(settings.dns_max_qps)
        self._queue_wait_s = settings.dns_queue_wait_s
        # No more than the budget can serve within the wait: the rest would only time out.
        self._queue_limit = math.ceil(settings.dns_max_qps * settings.dns_queue_wait_s)
        self._waiting: OrderedDict[str, float] = OrderedDict()  # new names waiting for a token -> deadline
        self._pump: asyncio.TimerHandle | None = None
        self._refresh_interval_s = settings.dns_min_ttl_s
        self.stats = DiscoveryStats()
        self.on_removed = on_removed
        self.on_query: Callable[[float], None] = lambda duration_s: None  # metrics hook
        # Addresses another source (the waker's registry answer) vouches for: they outvote an NXDOMAIN.
        self.vouch: Callable[[str], tuple[Address, ...]] = lambda deployment: ()
        self._lookup = lookup
        self._srv_lookup = srv_lookup if settings.discovery == "srv" else None
        self._clock = clock
        self._prefix = settings.srv_prefix if settings.discovery == "srv" else ""
        self._suffix = "." + settings.namespace
        self._port = settings.upstream_port
        self._allowed = settings.upstream_allow_cidrs
        self._inflight: dict[str, asyncio.Future[Entry | RouterError]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered_once = False

    @property
    def queued(self) -> int:
        """Lookups of new names waiting for the budget now (/discovery shows it)."""
        return len(self._waiting)

    def cached(self, deployment: str, now: float) -> Entry | None:
        """The usable cached entry, or None (then await `resolve`). Starts a refresh when one is due."""
        entry = self.cache.fresh(deployment, now)
        # The first test spares every request before the refresh point a call (this runs for every request).
        if entry is not None and now >= entry.refresh_at and self.cache.needs_refresh(entry, now):
            entry.refreshing = self._query(deployment, now) is not None  # refused by the budget: next request
        return entry

    async def resolve(self, deployment: str) -> Entry:
        """Look `deployment` up. Raises RouterError resolver_unavailable (no answer, nothing stale) or resolver_busy."""
        now = self._clock()
        # A caller decides "miss" before its task runs; by then another query may have filled the cache.
        entry = self.cache.fresh(deployment, now)
        if entry is not None:
            return entry
        future = self._inflight.get(deployment) or self._query(deployment, now, may_wait=True)
        if future is None:  # the budget refused: a known deployment serves stale if it can
            stale = self.cache.serve_stale(deployment, now)
            if stale is not None:
                self.stats.stale_served += 1
                return stale
            raise RouterError("resolver_busy")
        outcome = await asyncio.shield(future)
        if isinstance(outcome, RouterError):
            raise outcome
        return outcome

    def _query(self, deployment: str, now: float, may_wait: bool = False) -> asyncio.Future[Entry | RouterError] | None:
        future = self._inflight.get(deployment)
        if future is not None:
            return future
        known = self.cache.known(deployment)
        spent = self.budget.try_spend(now, known=True) if known else self._spend_for_new_name(now)
        if spent:
            future = asyncio.get_running_loop().create_future()
            self._start(deployment, future)
            return future
        if may_wait and not known and len(self._waiting) < self._queue_limit:
            future = asyncio.get_running_loop().create_future()
            self._inflight[deployment] = future  # later requests for the name join the queued lookup
            self._waiting[deployment] = now + self._queue_wait_s
            self._schedule_pump(now)
            return future
        self.stats.busy += 1
        return None

    def _spend_for_new_name(self, now: float) -> bool:
        """A token for a never-seen name, leaving the reserve the known names need by now."""
        self.budget.hold_for(self.cache.known_count(), self._refresh_interval_s)
        return self.budget.try_spend(now, known=False)

    def _start(self, deployment: str, future: asyncio.Future[Entry | RouterError]) -> None:
        self._inflight[deployment] = future
        task = asyncio.create_task(self._run_query(deployment, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_pump(self, now: float) -> None:
        if self._pump is None and self._waiting:
            first_deadline = next(iter(self._waiting.values()))
            delay = min(self.budget.wait_s(now, known=False), first_deadline - now)
            self._pump = asyncio.get_running_loop().call_later(max(delay, 0.0), self._run_pump)

    def _run_pump(self) -> None:
        """Start queued lookups, oldest first, as far as the budget allows; refuse those whose wait ran out."""
        self._pump = None
        now = self._clock()
        while self._waiting:
            deployment, deadline = next(iter(self._waiting.items()))
            if now >= deadline:
                del self._waiting[deployment]
                self.stats.busy += 1
                future = self._inflight.pop(deployment)
                if not future.done():
                    future.set_result(RouterError("resolver_busy"))
                continue
            if not self._spend_for_new_name(now):
                break
            del self._waiting[deployment]
            self._start(deployment, self._inflight[deployment])
        self._schedule_pump(now)

    async def _run_query(self, deployment: str, future: asyncio.Future[Entry | RouterError]) -> None:
        outcome: Entry | RouterError
        try:
            outcome = await self._answer(deployment)
        except RouterError as error:
            outcome = error
        finally:
            self._inflight.pop(deployment, None)
        if not future.done():
            future.set_result(outcome)

    async def _answer(self, deployment: str) -> Entry:
        self.stats.queries += 1
        name = self._prefix + deployment + self._suffix
        started = time.perf_counter()  # the histogram's buckets start below a millisecond, uvloop's clock's tick
        try:
            if self._srv_lookup is not None:
                srv = await self._srv_lookup(name)
                found, ttl_s = tuple((t.host, t.port) for t in srv.targets), srv.ttl_s
            else:
                answer = await self._lookup(name)
                found, ttl_s = tuple((host, self._port) for host in answer.hosts), answer.ttl_s
        except NameNotFound:
            self.answered_once = True
            self.on_query(time.perf_counter() - started)
            vouched = self.vouch(deployment)
            if vouched:  # a deployment just woken: the resolver may cache its NXDOMAIN for a while yet
                return self.adopt(deployment, vouched)
            self._forget(deployment, ())
            return self.cache.store_negative(deployment, self._clock())
        except ResolverFailure as error:
            self.answered_once = self.answered_once or error.answered
            self.on_query(time.perf_counter() - started)
            return self._on_failure(deployment, str(error))
        self.answered_once = True
        self.on_query(time.perf_counter() - started)
        now = self._clock()
        allowed = tuple(address for address in found if address_allowed(address[0], self._allowed))
        if not allowed:
            self.stats.forbidden += 1
            log.warning("dns answer outside allowed networks", extra={"deployment": deployment, "hosts": found})
            self._forget(deployment, ())
            return self.cache.store_negative(deployment, now, EntryKind.FORBIDDEN)
        if self._srv_lookup is not None:
            allowed_targets = tuple(t for t in srv.targets if (t.host, t.port) in allowed)
            addresses, backup = plan_srv(allowed_targets)
        else:
            addresses, backup = allowed, ()
        self._forget(deployment, addresses + backup)
        entry = self.cache.store(deployment, addresses, ttl_s, now)
        entry.backup = backup
        return entry

    def adopt(self, deployment: str, addresses: tuple[Address, ...]) -> Entry:
        """Cache `addresses` (already checked against the allowed networks) for `deployment`, replacing whatever
        DNS said, its NXDOMAIN included, for the shortest TTL: DNS takes over again as soon as it knows them."""
        self._forget(deployment, addresses)
        return self.cache.store(deployment, addresses, 0.0, self._clock())

    def _forget(self, deployment: str, kept: tuple[Address, ...]) -> None:
        """Tell the pool about addresses the new answer no longer has (new requests already avoid them)."""
        removed = set(self.cache.previous_addresses(deployment)) - set(kept)
        if removed:
            log.info("addresses left the answer", extra={"deployment": deployment, "removed": sorted(removed)})
            self.on_removed(removed)

    async def probe(self) -> bool:
        """Ask the resolver about a name that need not exist: any answer proves it reachable, NXDOMAIN and error
        answers (a server that REFUSES names it does not hold) included; only silence does not."""
        try:
            await self._lookup("_whaleray-probe" + self._suffix)
        except NameNotFound:
            pass
        except ResolverFailure as failure:
            if not failure.answered:
                return False
        self.answered_once = True
        return True

    def _on_failure(self, deployment: str, detail: str) -> Entry:
        self.stats.failures += 1
        stale = self.cache.serve_stale(deployment, self._clock())
        if stale is None:
            log.warning("dns lookup failed", extra={"deployment": deployment, "detail": detail})
            raise RouterError("resolver_unavailable")
        self.stats.stale_served += 1
        log.warning("dns lookup failed, serving stale answer", extra={"deployment": deployment, "detail": detail})
        return stale

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        for deployment in self._waiting:
            future = self._inflight.pop(deployment)
            if not future.done():
                future.set_result(RouterError("resolver_busy"))
        self._waiting.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __repr__(self) -> str:
        queue = f"In flight: {len(self._inflight)} | Waiting: {len(self._waiting)}"
        return f"<Discovery {self.cache!r} [{queue}] {self.budget!r}>"
