"""The namespace's deployments, as far as waking goes: `Catalogue`.

Only an id listed here may cost an AWS call: a request for any other id (a typo, a scan) stays a DNS question,
within the DNS budget, as without waking. The list comes from Cloud Map's ListServices, read at start and every
--wake-catalogue-refresh; while the API fails the last good list is kept (a deployment is rarely removed, and
one that was is answered by ECS, not woken). Whether a listed deployment opted in, and to what count, is its
Cloud Map service's tag, read when first needed and kept for TAG_TTL_S.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from router.wake.platform import Platform, PlatformError

log = logging.getLogger("router.wake")

TAG_TTL_S: Final = 600.0  # opting in or out takes effect within ten minutes, at one tag read a deployment


class Catalogue:
    def __init__(self, platform: Platform, refresh_s: float, clock: Callable[[], float]) -> None:
        self._platform = platform
        self._refresh_s = refresh_s
        self._clock = clock
        self._services: dict[str, str] = {}  # deployment id -> its Cloud Map service's ARN
        self._counts: dict[str, tuple[int, float]] = {}  # deployment id -> (wake count, read at)
        self.loaded_at: float | None = None  # when the list was last read whole
        self.failing = False  # the last read failed (the list is the previous one)

    def lists(self, deployment: str) -> bool:
        """Whether `deployment` is one of the namespace's: no I/O, safe on a request's path."""
        return deployment in self._services

    def __len__(self) -> int:
        return len(self._services)

    async def refresh(self) -> None:
        """Read the list once; on failure keep the last one and say so once per failing streak."""
        try:
            services = await self._platform.list_deployments()
        except PlatformError as error:
            if not self.failing:
                log.warning("deployment catalogue not read, keeping the last one", extra={"detail": str(error)})
            self.failing = True
            return
        if self.failing or self.loaded_at is None:
            log.info("deployment catalogue read", extra={"deployments": len(services)})
        self.failing = False
        self._services = services
        self.loaded_at = self._clock()
        for gone in set(self._counts) - set(services):
            del self._counts[gone]

    async def run(self) -> None:
        """Refresh forever, every refresh interval (cancelled at stop)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def wake_count(self, deployment: str) -> int:
        """The count `deployment` wakes to, 0 when it has not opted in or is not listed. Raises PlatformError
        when the tag cannot be read and no earlier reading is at hand."""
        arn = self._services.get(deployment)
        if arn is None:
            return 0
        now = self._clock()
        known = self._counts.get(deployment)
        if known is not None and now - known[1] < TAG_TTL_S:
            return known[0]
        try:
            count = await self._platform.wake_count(arn)
        except PlatformError:
            if known is None:
                raise
            return known[0]
        self._counts[deployment] = (count, now)
        return count
