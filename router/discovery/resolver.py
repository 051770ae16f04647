"""The one module that imports aiodns: A-record lookups against the configured resolvers.

aiodns 4 deprecates `query()` for `query_dns()` (pycares 5 results); that churn stays in this file. c-ares
tries the resolvers in the configured order, moving to the next one on a timeout, SERVFAIL or REFUSED, and
makes at most `tries` rounds, each query waiting `timeout_s`.

Each lookup uses a channel of its own. Since 1.31 c-ares caches every answer in its channel for up to an
hour (NXDOMAIN included, and it hands cached answers back with their original TTL), and pycares 5 offers no
way to turn that off (`qcache_max_ttl`). A long-lived channel would override `--dns-max-ttl` and
`--dns-negative-ttl`: a replaced backend or a new deployment would stay invisible for as long as c-ares
liked. The router's own cache (discovery/cache.py) is the only cache; a channel costs about 0.25 ms of CPU
per query, and queries happen only on misses and refreshes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiodns
import pycares

from router.options import Resolver

# c-ares status codes that mean "the name has no A records", as opposed to "could not get an answer".
_NOT_FOUND_STATUSES = frozenset({pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA})


class NameNotFound(Exception):
    """NXDOMAIN, or the name exists without A records: the deployment does not exist (now)."""


class ResolverFailure(Exception):
    """No usable answer: timeouts, SERVFAIL, REFUSED, unreachable resolvers."""


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


class DnsResolver:
    def __init__(self, resolvers: Sequence[Resolver], *, timeout_s: float, tries: int) -> None:
        self._nameservers = [_nameserver(resolver) for resolver in resolvers]
        self._timeout_s = timeout_s
        self._tries = tries
        self._open: set[aiodns.DNSResolver] = set()

    async def _query(self, name: str, qtype: str) -> pycares.DNSResult:
        channel = aiodns.DNSResolver(
            nameservers=self._nameservers, timeout=self._timeout_s, tries=self._tries, rotate=False
        )
        self._open.add(channel)
        try:
            return await channel.query_dns(name, qtype)
        except aiodns.error.DNSError as error:
            status = error.args[0] if error.args else None
            if status in _NOT_FOUND_STATUSES:
                raise NameNotFound(name) from None
            raise ResolverFailure(f"{name}: {error.args[-1] if error.args else error}") from None
        finally:
            self._open.discard(channel)
            await channel.close()

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
        for channel in list(self._open):
            await channel.close()


def _a_records(records: list[pycares.DNSRecord]) -> list[tuple[str, float]]:
    return [(record.data.addr, float(record.ttl)) for record in records if isinstance(record.data, pycares.ARecordData)]
