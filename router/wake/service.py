"""Waking, as one router process runs it: `Waking` opens the AWS clients, reads the catalogue, puts the waker
on the request path and the idle report on its timer, and stops them together.

On with --wake-cluster and AWS credentials; with --wake-cluster but no credentials it is off, said once here
(and by `--check`). Until the first catalogue read lands, nothing wakes: an NXDOMAIN is answered as without
waking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from router.proxy.server import ServerState
from router.settings import Settings
from router.wake.aws import AwsPlatform, credentials_found
from router.wake.catalogue import Catalogue
from router.wake.idle import IdleReport
from router.wake.waker import Waker

log = logging.getLogger("router.wake")

FINAL_REPORT_S: Final = 2.0  # the last idle report at stop may not hold up the drain longer than this


def off_reason(settings: Settings, has_credentials: bool) -> str | None:
    """Why waking is off, or None when it is on."""
    if not settings.wake_cluster:
        return "no --wake-cluster"
    if not has_credentials:
        return "--wake-cluster is set but no AWS credentials were found (environment, profile or ECS task role)"
    return None


class Waking:
    def __init__(self, platform: AwsPlatform, catalogue: Catalogue, waker: Waker, idle: IdleReport | None) -> None:
        self.platform = platform
        self.catalogue = catalogue
        self.waker = waker
        self.idle = idle
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, settings: Settings, state: ServerState) -> Waking | None:
        """Start waking for `state`'s worker, or None (off, said once) when the settings do not ask for it or no
        credentials are at hand."""
        if not settings.wake_cluster:
            return None
        reason = off_reason(settings, await credentials_found(settings))
        if reason is not None:
            log.warning("waking sleeping deployments is off", extra={"reason": reason})
            return None
        platform = AwsPlatform(settings)
        await platform.open()
        catalogue = Catalogue(platform, settings.wake_catalogue_refresh_s, state.clock)
        waker = Waker(
            settings,
            platform=platform,
            catalogue=catalogue,
            discovery=state.discovery,
            metrics=state.metrics,
            clock=state.clock,
        )
        idle = IdleReport(state, platform, catalogue, settings.idle_report_s) if settings.idle_report_s else None
        waking = cls(platform, catalogue, waker, idle)
        state.waker = waker
        state.discovery.vouch = waker.vouch
        if idle is not None:
            state.usage = {}
            waking._tasks.append(asyncio.create_task(idle.run()))
        waking._tasks.append(asyncio.create_task(catalogue.run()))
        log.info(
            "waking sleeping deployments is on",
            extra={"cluster": settings.wake_cluster, "timeout_s": settings.wake_timeout_s,
                   "endpoint": settings.aws_endpoint_url or "aws"},
        )  # fmt: skip
        return waking

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.waker.close()
        if self.idle is not None:  # the last counts, so a draining router does not let a deployment sleep
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.report_once(), FINAL_REPORT_S)
        await self.platform.close()
