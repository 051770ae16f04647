"""The DNS query budget: a token bucket with a reserve for names known to exist. Sans-IO.

The VPC resolver answers at most 1024 packets per second per network interface and drops the rest, for
every process behind that interface (in bridge mode, every task on the instance). The router therefore caps
its own lookups at `rate_qps`, with a burst of one second's worth. Lookups of never-seen names may only spend
tokens while more than `reserve_fraction` of the bucket is left; refreshes and re-lookups of known
deployments may spend it to the last token. A scan of random ids thus exhausts at most the unreserved part,
and real deployments keep being refreshed.
"""

from __future__ import annotations


class QueryBudget:
    def __init__(self, rate_qps: float, reserve_fraction: float = 0.5) -> None:
        self.rate_qps = rate_qps
        self.capacity = max(rate_qps, 1.0)
        self.reserve = self.capacity * reserve_fraction
        self._tokens = self.capacity
        self._updated_at: float | None = None
        self.refused = 0

    def try_spend(self, now: float, known: bool) -> bool:
        """Take one token for a query; False means: do not query now."""
        if self._updated_at is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated_at) * self.rate_qps)
        self._updated_at = now
        floor = 1.0 if known else self.reserve + 1.0
        if self._tokens >= floor:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False

    def __repr__(self) -> str:
        tokens = f"{self._tokens:.1f}/{self.capacity:.0f} tokens"
        return f"<QueryBudget [{tokens} | {self.rate_qps:g}/s | Refused: {self.refused}]>"
