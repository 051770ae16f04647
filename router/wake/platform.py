"""What the waker asks of the platform, as a Protocol: aws.py answers it with AWS's APIs (ECS, Cloud Map,
CloudWatch). Failures of any kind arrive as `PlatformError`, whose text is for the logs only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

# The tag that opts a deployment in, on its Cloud Map service (read by the router) and its ECS service (read by
# IAM's condition on UpdateService): its value is the task count to wake to.
WAKE_TAG: Final = "whaleray:wake"


class PlatformError(Exception):
    """An AWS call failed or timed out (after the SDK's own retries)."""


@dataclass(frozen=True, slots=True)
class Instance:
    """A healthy registered task: its address, and its port where the registry names one (SRV namespaces)."""

    host: str
    port: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    """What one router process saw of a deployment during one report period."""

    requests: int  # requests that ended in the period
    inflight: int  # requests in flight when the period ended


class Platform(Protocol):
    async def list_deployments(self) -> dict[str, str]:
        """Every deployment of the namespace: its id and its Cloud Map service's ARN."""

    async def wake_count(self, service_arn: str) -> int:
        """The count a deployment wakes to (its WAKE_TAG), 0 when it has not opted in."""

    async def desired_count(self, service: str) -> int:
        """The ECS service's desired count."""

    async def set_desired_count(self, service: str, count: int) -> None: ...

    async def healthy_instances(self, deployment: str) -> tuple[Instance, ...]:
        """The deployment's healthy registered instances, from the registry (no DNS caching on the way)."""

    async def report_usage(self, usage: dict[str, Usage]) -> None:
        """Publish each deployment's usage for the idle signal."""

    async def close(self) -> None: ...


MAX_WAKE_COUNT: Final = 10


def wake_count_of(value: str | None) -> int:
    """WAKE_TAG's value as a count: a whole number from 1, else 0 (not opted in). Bounded: a typo must not start
    a fleet."""
    if value is None or not value.strip().isdigit():
        return 0
    return min(int(value), MAX_WAKE_COUNT)
