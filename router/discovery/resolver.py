"""The one module that imports aiodns: A-record lookups against the configured resolvers.

aiodns 4 deprecates `query()` for `query_dns()` (pycares 5 results); that churn stays in this file. c-ares
tries the resolvers in the configured order, moving to the next one on a timeout, SERVFAIL or REFUSED, and
makes at most `tries` rounds, each query waiting `timeout_s`; an open channel tries the resolvers that failed
lately last.

Since 1.31 c-ares caches every answer in its channel, for the record's TTL or (NXDOMAIN) the SOA's, and
pycares 5 offers no way to turn that off (`qcache_max_ttl`). Answered from that cache, a refresh would
override `--dns-max-ttl` and `--dns-negative-ttl`: a replaced backend or a new deployment would stay
invisible for as long as c-ares liked. The router's own cache (discovery/cache.py) must be the only cache.
A channel's cache can only answer a question the channel has been asked before, so no channel is asked the
same question twice: a repeated question (a refresh, a retry after NXDOMAIN) opens a new channel and the old
one closes once its queries are done. A lookup on an open channel costs about 0.15 ms of CPU; opening a channel
(c-ares reads the system configuration and starts its event thread) about as much again, once per refresh
round over all names rather than once per query (`python -m benchmarks.dns_lookups`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiodns
import pycares

from router.options import Resolver

# c-ares status codes that mean "the name has no A records", as opposed to "could not get an answer".
_NOT_FOUND_STATUSES = frozenset({pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA})
# Error answers: a resolver replied (it is reachable), but with no records to use.
_ANSWERED_STATUSES = frozenset(
    {pycares.errno.ARES_EREFUSED, pycares.errno.ARES_ESERVFAIL, pycares.errno.ARES_EFORMERR, pycares.errno.ARES_ENOTIMP}
)


class NameNotFound(Exception):
    """NXDOMAIN, or the name exists without A records: the deployment does not exist (now)."""


class ResolverFailure(Exception):
    """No usable answer: timeouts, SERVFAIL, REFUSED, unreachable resolvers. `answered` says a resolver did
    reply, with an error (REFUSED, SERVFAIL, ...): it is reachable, which is what readiness asks."""

    def __init__(self, detail: str, *, answered: bool = False) -> None:
        super().__init__(detail)
        self.answered = answered


@dataclass(frozen=True, slots=True)
class Answer:
    hosts: tuple[str, ...]
    ttl_s: float


@dataclass(frozen=True, slots=True)
class SrvTarget:
    host: str  # an address: SRV targets are resolved to their A records here
    port: int
    priority: int
    weight: int


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    targets: tuple[SrvTarget, ...]
    ttl_s: float


def _nameserver(resolver: Resolver) -> str:
    host = f"[{resolver.host}]" if ":" in resolver.host else resolver.host
    return f"{host}:{resolver.port}"


# Bounds what one channel's cache can hold: a stream of never-seen names moves to a new channel this often.
MAX_QUESTIONS_PER_CHANNEL: Final = 4096


class _Channel:
    """One c-ares channel and the questions it has been asked."""

    __slots__ = ("resolver", "asked", "pending")

    def __init__(self, resolver: aiodns.DNSResolver) -> None:
        self.resolver = resolver
        self.asked: set[tuple[str, str]] = set()
        self.pending = 0

    def may_ask(self, question: tuple[str, str]) -> bool:
        return question not in self.asked and len(self.asked) < MAX_QUESTIONS_PER_CHANNEL


class DnsResolver:
    def __init__(self, resolvers: Sequence[Resolver], *, timeout_s: float, tries: int) -> None:
        self._nameservers = [_nameserver(resolver) for resolver in resolvers]
        self._timeout_s = timeout_s
        self._tries = tries
        self._current: _Channel | None = None
        self._retired: set[_Channel] = set()  # still answering queries asked before a newer channel opened
        self._closing: set[asyncio.Task[None]] = set()

    def _channel_for(self, question: tuple[str, str]) -> _Channel:
        channel = self._current
        if channel is None or not channel.may_ask(question):
            if channel is not None:
                self._retire(channel)
            channel = self._current = _Channel(
                aiodns.DNSResolver(
                    nameservers=self._nameservers, timeout=self._timeout_s, tries=self._tries, rotate=False
                )
            )
        channel.asked.add(question)
        return channel

    def _retire(self, channel: _Channel) -> None:
        if channel.pending:
            self._retired.add(channel)
        else:
            self._close_later(channel)

    def _close_later(self, channel: _Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.resolver.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _query(self, name: str, qtype: str) -> pycares.DNSResult:
        channel = self._channel_for((name.lower().rstrip("."), qtype))
        channel.pending += 1
        try:
            return await channel.resolver.query_dns(name, qtype)
        except aiodns.error.DNSError as error:
            status = error.args[0] if error.args else None
            if status in _NOT_FOUND_STATUSES:
                raise NameNotFound(name) from None
            detail = f"{name}: {error.args[-1] if error.args else error}"
            raise ResolverFailure(detail, answered=status in _ANSWERED_STATUSES) from None
        finally:
            channel.pending -= 1
            if not channel.pending and channel in self._retired:
                self._retired.discard(channel)
                self._close_later(channel)

    async def lookup_a(self, name: str) -> Answer:
        result = await self._query(name, "A")
        addresses = _a_records(result.answer)
        if not addresses:
            raise NameNotFound(name)
        return Answer(tuple(sorted({host for host, _ in addresses})), min(ttl for _, ttl in addresses))

    async def lookup_srv(self, name: str) -> SrvAnswer:
        """SRV records with their targets' addresses: from the additional section when the server sent them
        (Cloud Map does), otherwise by an A lookup of each target."""
        result = await self._query(name, "SRV")
        records = [
            (record.data, record.ttl) for record in result.answer if isinstance(record.data, pycares.SRVRecordData)
        ]
        if not records:
            raise NameNotFound(name)
        glue: dict[str, list[str]] = {}
        for record in result.additional:
            if isinstance(record.data, pycares.ARecordData):
                glue.setdefault(record.name.lower().rstrip("."), []).append(record.data.addr)
        targets: list[SrvTarget] = []
        ttl = float(min(ttl for _, ttl in records))
        for data, _ in records:
            target = data.target.lower().rstrip(".")
            hosts = glue.get(target)
            if hosts is None:
                try:
                    answer = await self.lookup_a(target)
                except NameNotFound:
                    continue
                hosts, ttl = list(answer.hosts), min(ttl, answer.ttl_s)
            targets += [SrvTarget(host, data.port, data.priority, data.weight) for host in hosts]
        if not targets:
            raise NameNotFound(name)
        return SrvAnswer(tuple(targets), float(ttl))

    async def close(self) -> None:
        channels = [*self._retired, *([self._current] if self._current is not None else [])]
        self._current = None
        self._retired.clear()
        for channel in channels:
            await channel.resolver.close()
        await asyncio.gather(*self._closing)


def _a_records(records: list[pycares.DNSRecord]) -> list[tuple[str, float]]:
    return [(record.data.addr, float(record.ttl)) for record in records if isinstance(record.data, pycares.ARecordData)]
