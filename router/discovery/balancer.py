"""Choosing one address of a deployment, and keeping away from addresses that refuse. Sans-IO.

Round robin over the answer's addresses, skipping ejected ones. An address whose connects fail is ejected for
`base_ejection_s`, doubling with each further failure up to `max_ejection_s`, and comes back on its own when
that time has passed; one success forgets its failures. When every address is ejected the least recently
ejected one is tried anyway: better a chance than a certain 502.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from router.discovery.cache import Address

# Bounds the ejection table: past this many entries, expired ones are pruned on the next failure.
_PRUNE_ABOVE: Final = 1024
_MAX_DOUBLINGS: Final = 64  # failures counted at most: 2 ** 63 times the base is past any sensible cap


class Candidates(Protocol):
    """A cache entry: its addresses, less preferred backup addresses (SRV priorities), and the round-robin
    cursor it carries (so the cursor dies with it)."""

    addresses: tuple[Address, ...]
    backup: tuple[Address, ...]
    cursor: int


@dataclass(slots=True)
class Ejection:
    until: float
    failures: int


class Balancer:
    def __init__(self, *, base_ejection_s: float = 1.0, max_ejection_s: float = 30.0) -> None:
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self._ejected: dict[Address, Ejection] = {}

    def pick(self, candidates: Candidates, now: float, avoid: Address | None = None) -> Address:
        addresses = candidates.addresses
        count = len(addresses)
        if count == 1 and not self._ejected:
            return addresses[0]
        start = candidates.cursor
        candidates.cursor = start + 1
        fallback: Address | None = None
        for offset in range(count):
            address = addresses[(start + offset) % count]
            ejection = self._ejected.get(address)
            if address == avoid:
                continue
            if ejection is None or now >= ejection.until:
                return address
            if fallback is None or ejection.until < self._ejected[fallback].until:
                fallback = address
        for address in candidates.backup:  # every preferred address is ejected: a less preferred one
            if address != avoid and not self.is_ejected(address, now):
                return address
        return fallback if fallback is not None else addresses[start % count]

    def failed(self, address: Address, now: float) -> float:
        """Eject `address`; returns for how many seconds."""
        previous = self._ejected.get(address)
        # Counting stops once the back-off reaches its cap: a dead address is dialled by every request that
        # finds nothing better, and 2.0 ** 1024 overflows (a 500 for each, until this was bounded).
        failures = 1 if previous is None else min(previous.failures + 1, _MAX_DOUBLINGS)
        duration = min(self.base_ejection_s * 2.0 ** (failures - 1), self.max_ejection_s)
        if len(self._ejected) > _PRUNE_ABOVE:
            self._ejected = {key: value for key, value in self._ejected.items() if value.until > now}
        self._ejected[address] = Ejection(now + duration, failures)
        return duration

    def succeeded(self, address: Address) -> None:
        if self._ejected:
            self._ejected.pop(address, None)

    def is_ejected(self, address: Address, now: float) -> bool:
        ejection = self._ejected.get(address)
        return ejection is not None and now < ejection.until

    def __repr__(self) -> str:
        return f"<Balancer [Ejected: {len(self._ejected)}]>"
