"""Idle keep-alive connections to backends, per address, and the one rule that says whether a connection may
be reused. Sans-IO: it decides, the caller does the I/O.

No method here awaits, reads a clock or closes a socket: time comes in as `now`, and connections the pool
gives up on are returned to the caller to close. That keeps the bookkeeping testable with plain values.

Reuse is LIFO (the most recently used connection first: the one least likely to have been closed by the
backend), expiry takes the oldest first. Idle connections expire `idle_timeout_s` after their last use, which
defaults below the common backend keep-alive timeouts (Node.js: 5 s) so the backend never closes a socket the
router is about to reuse.

Addresses DNS stopped listing are retired: their idle connections are handed back to close at once, and a
busy one is closed when its response ends instead of returning here.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

from router.discovery.cache import Address


class Poolable(Protocol):
    def is_usable(self) -> bool: ...

    def response_keeps_alive(self) -> bool: ...


C = TypeVar("C", bound=Poolable)


class ConnectionPool(Generic[C]):
    def __init__(self, *, idle_timeout_s: float, max_idle_per_address: int) -> None:
        self.idle_timeout_s = idle_timeout_s
        # Bounds the sockets (and backend resources) one address can pin while idle.
        self.max_idle_per_address = max_idle_per_address
        self._idle: dict[Address, deque[tuple[float, C]]] = {}
        # Addresses a DNS answer dropped, with when: their connections are closed instead of pooled.
        self.retired: dict[Address, float] = {}

    def may_reuse(self, address: Address, connection: C, *, request_whole: bool, framed_response: bool) -> bool:
        """The one reuse rule: the request went out whole, the response ended by its framing (a length or the
        last chunk, not the backend's close) with nothing after it, the backend did not ask to close, and
        DNS still lists the address."""
        return (
            request_whole
            and framed_response
            and connection.response_keeps_alive()
            and not (self.retired and address in self.retired)
        )

    def retire(self, addresses: set[Address], now: float) -> list[C]:
        """DNS no longer lists `addresses`: their idle connections, for the caller to close now."""
        for address in addresses:
            self.retired[address] = now
        return self.drain_addresses(only=addresses)

    def forget_retired(self, before: float) -> None:
        """Retired addresses whose last response must have ended by now."""
        if self.retired:
            self.retired = {address: at for address, at in self.retired.items() if at > before}

    def acquire(self, address: Address, now: float) -> C | None:
        """The most recently released usable connection to `address`, or None: then open a new one."""
        idle = self._idle.get(address)
        while idle:  # an emptied deque stays until expire(): no churn for an address in steady use
            released_at, connection = idle.pop()
            if now - released_at < self.idle_timeout_s and connection.is_usable():
                return connection
        return None

    def release(self, address: Address, connection: C, now: float) -> C | None:
        """Keep `connection` for reuse; returns a connection to close when the address is at its cap."""
        idle = self._idle.get(address)
        if idle is None:
            idle = self._idle[address] = deque()
        idle.append((now, connection))
        if len(idle) > self.max_idle_per_address:
            return idle.popleft()[1]
        return None

    def discard(self, address: Address, connection: C) -> None:
        """Forget a connection that closed while idle (the backend hung up)."""
        idle = self._idle.get(address)
        if not idle:
            return
        for index, (_, candidate) in enumerate(idle):
            if candidate is connection:
                del idle[index]
                break

    def expire(self, now: float) -> list[C]:
        """Connections idle for `idle_timeout_s` or more, removed from the pool, for the caller to close."""
        expired: list[C] = []
        for address in list(self._idle):
            idle = self._idle[address]
            while idle and now - idle[0][0] >= self.idle_timeout_s:
                expired.append(idle.popleft()[1])
            if not idle:
                del self._idle[address]
        return expired

    def drain_addresses(self, keep: set[Address] | None = None, only: set[Address] | None = None) -> list[C]:
        """Remove idle connections, for the caller to close: all of them, those to addresses not in `keep`,
        or those to addresses in `only`."""
        removed: list[C] = []
        for address in list(only if only is not None else self._idle):
            if address in self._idle and (keep is None or address not in keep):
                removed.extend(connection for _, connection in self._idle.pop(address))
        return removed

    def idle_count(self, address: Address | None = None) -> int:
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(idle) for idle in self._idle.values())

    def __repr__(self) -> str:
        addresses = sum(1 for idle in self._idle.values() if idle)
        return f"<ConnectionPool [Idle: {self.idle_count()} on {addresses} addresses]>"
