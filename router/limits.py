"""Rate and concurrency limits. Sans-IO: time comes in as `now`, nothing here reads a clock or does I/O.

`TokenBucket` is the one rate limiter: the per-deployment request rate (`DeploymentLimits`) and the DNS query
budget (discovery/budget.py) both spend from one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final


class TokenBucket:
    """`rate` tokens a second, at most `capacity` held; starts full."""

    __slots__ = ("capacity", "rate", "tokens", "updated_at")

    def __init__(self, rate: float, capacity: float, now: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated_at = now

    def refill(self, now: float) -> None:
        if self.updated_at is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = now

    def try_take(self, now: float, floor: float = 1.0) -> bool:
        """Take one token when at least `floor` are there (a floor above 1 keeps a reserve)."""
        self.refill(now)
        if self.tokens >= floor:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float, floor: float = 1.0) -> float:
        """Seconds until `try_take(floor)` can succeed, if nothing else takes meanwhile."""
        self.refill(now)
        return max(0.0, (floor - self.tokens) / self.rate)

    def full_at(self, now: float) -> bool:
        """Whether the bucket has refilled by `now`: a full bucket is the same as no bucket."""
        return self.updated_at is None or self.tokens + (now - self.updated_at) * self.rate >= self.capacity


class Refusal(Enum):
    RATE = "rate"  # --deployment-rate: answered 429 with Retry-After
    INFLIGHT = "inflight"  # --deployment-max-inflight: answered 503


@dataclass(frozen=True, slots=True)
class Verdict:
    refusal: Refusal | None
    retry_after_s: float = 0.0


ADMITTED: Final = Verdict(None)


class DeploymentLimits:
    """`--deployment-rate` (a token bucket per deployment) and `--deployment-max-inflight` (a count per
    deployment). Both maps stay bounded: a count is removed at zero, a bucket once it has refilled."""

    def __init__(self, rate: float, burst: int, max_inflight: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1.0, rate))
        self.max_inflight = max_inflight
        self.enabled = bool(rate or max_inflight)
        self.buckets: dict[str, TokenBucket] = {}
        self.inflight: dict[str, int] = {}

    def admit(self, deployment: str, now: float) -> Verdict:
        """The rate first (a refused request holds no in-flight slot), then the cap; an admitted request holds
        a slot until `release`."""
        if self.rate:
            bucket = self.buckets.get(deployment)
            if bucket is None:
                bucket = self.buckets[deployment] = TokenBucket(self.rate, self.burst, now)
            if not bucket.try_take(now):
                return Verdict(Refusal.RATE, bucket.wait_s(now))
        if self.max_inflight:
            count = self.inflight.get(deployment, 0)
            if count >= self.max_inflight:
                return Verdict(Refusal.INFLIGHT)
            self.inflight[deployment] = count + 1
        return ADMITTED

    def release(self, deployment: str) -> None:
        remaining = self.inflight.get(deployment, 1) - 1
        if remaining > 0:
            self.inflight[deployment] = remaining
        else:
            self.inflight.pop(deployment, None)

    def prune(self, now: float) -> None:
        if self.buckets:
            self.buckets = {name: bucket for name, bucket in self.buckets.items() if not bucket.full_at(now)}
