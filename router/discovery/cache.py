"""The DNS answer cache: TTL, negative, stale and refresh-ahead decisions. Sans-IO.

Nothing here awaits or reads a clock: every method takes `now`, so a test drives it with plain numbers.

- Positive answers live for their TTL clamped to [min_ttl, max_ttl]. A name used after 80 % of its TTL is due
  for a background refresh, so a busy deployment never waits for DNS on the request path.
- Negative answers (NXDOMAIN, no records, every address forbidden) live for `negative_ttl`, so a flood of
  unknown ids does not become a flood of queries.
- When the resolver fails, a positive answer keeps serving up to `stale_ttl` past its expiry (RFC 8767); it is
  retried at most every `stale_retry_s` meanwhile, so a dead resolver is not hammered by every request.
- Positive and negative answers live in two LRU maps of at most `max_entries` names each, so random ids
  cannot grow memory without bound, and a scan of unknown ids evicts only other unknown ids, never a real
  deployment.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from enum import Enum
from typing import Final

Address = tuple[str, int]

REFRESH_AHEAD_FRACTION: Final = 0.8
# How often a name in use moves to the recent end of the LRU order; the order is kept to this resolution.
TOUCH_INTERVAL_S: Final = 1.0


class EntryKind(Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    FORBIDDEN = "forbidden"


class Entry:
    """One cached answer. `stale` is True while it serves past its TTL because the resolver fails."""

    __slots__ = (
        "name",
        "kind",
        "addresses",
        "backup",
        "expires_at",
        "refresh_at",
        "stale_until",
        "stale",
        "touched_at",
        "refreshing",
        "cursor",
    )

    def __init__(self, name: str, kind: EntryKind, addresses: tuple[Address, ...], expires_at: float) -> None:
        self.name = name
        self.kind = kind
        self.addresses = addresses
        # SRV only: addresses of the less preferred priorities, tried when every one in `addresses` is ejected.
        self.backup: tuple[Address, ...] = ()
        self.expires_at = expires_at
        self.refresh_at = expires_at
        self.stale_until = expires_at
        self.stale = False
        self.refreshing = False
        self.cursor = 0  # round-robin position, used by the balancer
        self.touched_at = -TOUCH_INTERVAL_S  # when fresh() last moved it to the LRU's recent end

    def __repr__(self) -> str:
        addresses = ",".join(f"{host}:{port}" for host, port in self.addresses)
        flags = " stale" if self.stale else ""
        return f"<Entry {self.name} {self.kind.value} [{addresses}] expires_at={self.expires_at:.3f}{flags}>"


class DnsCache:
    def __init__(
        self,
        *,
        min_ttl_s: float,
        max_ttl_s: float,
        negative_ttl_s: float,
        stale_ttl_s: float,
        max_entries: int,
        stale_retry_s: float = 5.0,
    ) -> None:
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.stale_ttl_s = stale_ttl_s
        self.stale_retry_s = stale_retry_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # positive answers
        self._negative: OrderedDict[str, Entry] = OrderedDict()  # NXDOMAIN, no records, forbidden

    def __len__(self) -> int:
        return len(self._entries) + len(self._negative)

    def known_count(self) -> int:
        return len(self._entries)

    def fresh(self, name: str, now: float) -> Entry | None:
        """The entry for `name` if it may answer now without a query (positive, negative or stale-retrying)."""
        entry = self._entries.get(name)
        entries = self._entries
        if entry is None:
            entry = self._negative.get(name)
            entries = self._negative
        if entry is None or now >= entry.expires_at:
            return None
        if now - entry.touched_at >= TOUCH_INTERVAL_S:  # LRU order to the second: no reorder per request
            entry.touched_at = now
            entries.move_to_end(name)
        return entry

    def peek(self, name: str) -> Entry | None:
        """The entry for `name`, fresh or not, without touching the LRU order (introspection)."""
        return self._entries.get(name) or self._negative.get(name)

    def names(self, limit: int) -> list[str]:
        """Up to `limit` cached names, known deployments first, each group least recently used first."""
        known = list(itertools.islice(self._entries, limit))
        return known + list(itertools.islice(self._negative, limit - len(known)))

    def needs_refresh(self, entry: Entry, now: float) -> bool:
        """A positive entry in use past its refresh point, with no refresh under way."""
        return entry.kind is EntryKind.POSITIVE and now >= entry.refresh_at and not entry.refreshing

    def store(self, name: str, addresses: tuple[Address, ...], ttl_s: float, now: float) -> Entry:
        ttl = min(max(ttl_s, self.min_ttl_s), self.max_ttl_s)
        entry = Entry(name, EntryKind.POSITIVE, addresses, now + ttl)
        entry.refresh_at = now + ttl * REFRESH_AHEAD_FRACTION
        entry.stale_until = now + ttl + self.stale_ttl_s
        return self._put(entry)

    def store_negative(self, name: str, now: float, kind: EntryKind = EntryKind.NEGATIVE) -> Entry:
        entry = Entry(name, kind, (), now + self.negative_ttl_s)
        self._entries.pop(name, None)  # the deployment is gone (or now points where it may not)
        if self.negative_ttl_s <= 0:
            return entry
        self._negative[name] = entry
        self._negative.move_to_end(name)
        while len(self._negative) > self.max_entries:
            self._negative.popitem(last=False)
        return entry

    def serve_stale(self, name: str, now: float) -> Entry | None:
        """After a resolver failure: the last positive answer, if still within its stale window.

        It is made fresh again for `stale_retry_s` (bounded by the stale window), so the requests of the next
        few seconds use it without another query and one refresh retries the resolver after that.
        """
        entry = self._entries.get(name)
        if entry is None or entry.kind is not EntryKind.POSITIVE or now >= entry.stale_until:
            return None
        entry.stale = True
        entry.refreshing = False
        entry.expires_at = min(now + self.stale_retry_s, entry.stale_until)
        entry.refresh_at = entry.expires_at
        self._entries.move_to_end(name)
        return entry

    def known(self, name: str) -> bool:
        """Whether `name` has (or had, within the stale window) a positive answer: a real deployment."""
        entry = self._entries.get(name)
        return entry is not None and entry.kind is EntryKind.POSITIVE

    def previous_addresses(self, name: str) -> tuple[Address, ...]:
        entry = self._entries.get(name)
        return () if entry is None else entry.addresses + entry.backup

    def _put(self, entry: Entry) -> Entry:
        self._negative.pop(entry.name, None)
        self._entries[entry.name] = entry
        self._entries.move_to_end(entry.name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def __repr__(self) -> str:
        return (
            f"<DnsCache [Known: {len(self._entries)}/{self.max_entries} | "
            f"Unknown: {len(self._negative)}/{self.max_entries}]>"
        )
