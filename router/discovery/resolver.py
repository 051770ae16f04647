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

from router.settings import Resolver

Address = tuple[str, int]

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


def _nameserver(resolver: Resolver) -> str:
    host = f"[{resolver.host}]" if ":" in resolver.host else resolver.host
    return f"{host}:{resolver.port}"


class DnsResolver:
    def __init__(self, resolvers: Sequence[Resolver], *, timeout_s: float, tries: int) -> None:
        self._nameservers = [_nameserver(resolver) for resolver in resolvers]
        self._timeout_s = timeout_s
        self._tries = tries
        self._open: set[aiodns.DNSResolver] = set()

    async def lookup_a(self, name: str) -> Answer:
        channel = aiodns.DNSResolver(
            nameservers=self._nameservers, timeout=self._timeout_s, tries=self._tries, rotate=False
        )
        self._open.add(channel)
        try:
            result = await channel.query_dns(name, "A")
        except aiodns.error.DNSError as error:
            status = error.args[0] if error.args else None
            if status in _NOT_FOUND_STATUSES:
                raise NameNotFound(name) from None
            raise ResolverFailure(f"{name}: {error.args[-1] if error.args else error}") from None
        finally:
            self._open.discard(channel)
            await channel.close()
        records = [record for record in result.answer if isinstance(record.data, pycares.ARecordData)]
        if not records:
            raise NameNotFound(name)
        hosts = tuple(sorted({record.data.addr for record in records if isinstance(record.data, pycares.ARecordData)}))
        return Answer(hosts, float(min(record.ttl for record in records)))

    async def close(self) -> None:
        for channel in list(self._open):
            await channel.close()
