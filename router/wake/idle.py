"""The idle signal: every --idle-report seconds, each router process publishes, for every opted-in deployment it
served, how many requests ended and how many were in flight (CloudWatch, aws.py). infra/modules/deployment turns
the fleet's sum into the decision: an alarm that sees no request and none in flight across every router for
the idle time scales the deployment's service to zero through Application Auto Scaling. No request path waits
on this: counting is one dict update when a request ends (telemetry.py).
"""

from __future__ import annotations

import asyncio
import logging

from router.proxy.server import ServerState
from router.wake.catalogue import Catalogue
from router.wake.platform import Platform, PlatformError, Usage

log = logging.getLogger("router.wake")


class IdleReport:
    def __init__(self, state: ServerState, platform: Platform, catalogue: Catalogue, interval_s: float) -> None:
        self._state = state
        self._platform = platform
        self._catalogue = catalogue
        self._interval_s = interval_s
        self.failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.report_once()

    async def report_once(self) -> None:
        state = self._state
        ended, state.usage = state.usage or {}, {}
        inflight = state.inflight_by_deployment()
        usage: dict[str, Usage] = {}
        for deployment in sorted(set(ended) | set(inflight)):
            if await self._opted_in(deployment):
                usage[deployment] = Usage(ended.get(deployment, 0), inflight.get(deployment, 0))
        if not usage:
            return
        try:
            await self._platform.report_usage(usage)
        except PlatformError as error:
            if not self.failing:
                log.warning("idle report not published, counting on", extra={"detail": str(error)})
            self.failing = True
            for deployment, seen in usage.items():  # the next report carries them: a lost count could let it sleep
                state.usage[deployment] = state.usage.get(deployment, 0) + seen.requests
            return
        self.failing = False

    async def _opted_in(self, deployment: str) -> bool:
        """Listed and tagged. When the tag cannot be read, reported anyway: a missed report of a deployment in use
        could put it to sleep, an extra one costs a metric."""
        if not self._catalogue.lists(deployment):
            return False
        try:
            return await self._catalogue.wake_count(deployment) > 0
        except PlatformError:
            return True
