"""The DNS query budget: a token bucket with a reserve for names known to exist. Sans-IO.

The VPC resolver answers at most 1024 packets per second per network interface and drops the rest, for
every process behind that interface (in bridge mode, every task on the instance). The router therefore caps
its own lookups at `rate_qps`, with a burst of one second's worth. Lookups of never-seen names may only spend
tokens while more than the reserve is left; refreshes and re-lookups of known deployments may spend it to the
last token. A scan of random ids thus exhausts at most the unreserved part, and real deployments keep being
refreshed.

The reserve follows what the known names need: one second of their refreshes (each refreshes at most once per
shortest TTL), at most `reserve_fraction` of the bucket. A task that has just started knows no name and needs
no reserve: its first wave of traffic, every deployment at once, may use the whole budget.
"""

from __future__ import annotations

from router.limits import TokenBucket


class QueryBudget:
    def __init__(self, rate_qps: float, reserve_fraction: float = 0.5) -> None:
        self.rate_qps = rate_qps
        self.capacity = max(rate_qps, 1.0)
        self.max_reserve = self.capacity * reserve_fraction
        self.reserve = self.max_reserve
        self._bucket = TokenBucket(rate_qps, self.capacity)
        self.refused = 0

    def hold_for(self, known_names: int, refresh_interval_s: float) -> None:
        """Size the reserve for `known_names`, each refreshed at most once per `refresh_interval_s`."""
        self.reserve = min(self.max_reserve, known_names / max(refresh_interval_s, 1e-3))

    def try_spend(self, now: float, known: bool) -> bool:
        """Take one token for a query; False means: do not query now."""
        if self._bucket.try_take(now, self._floor(known)):
            return True
        self.refused += 1
        return False

    def wait_s(self, now: float, known: bool) -> float:
        """Seconds until `try_spend(known)` can succeed, if nothing else spends meanwhile."""
        return self._bucket.wait_s(now, self._floor(known))

    def _floor(self, known: bool) -> float:
        return 1.0 if known else self.reserve + 1.0

    def __repr__(self) -> str:
        tokens = f"{self._bucket.tokens:.1f}/{self.capacity:.0f} tokens"
        return f"<QueryBudget [{tokens} | Reserve: {self.reserve:.1f} | {self.rate_qps:g}/s | Refused: {self.refused}]>"
