"""The admin listener (aiohttp): /health, /ready, /metrics, /config and /discovery. Never behind the ALB rule.

It runs on its own port so probes and scrapes never compete with proxied traffic for the data plane's
listener, and so nothing on it is reachable through `/services/*`. With `--workers`, the supervisor serves it
and /metrics adds up every worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.settings import Settings

# The router's view of one deployment, or (None) of every cached name: router/view.py, asked of the worker(s).
DiscoveryView = Callable[[str | None], Awaitable[dict[str, object]]]


@web.middleware
async def _no_server_header(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp names itself and its version in `Server`: nothing a probe needs, something a scanner wants."""
    response = await handler(request)
    response.headers["Server"] = "whaleray-router"
    return response


class AdminServer:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        draining: Callable[[], bool],
        ready: Callable[[], bool],
        discovery: DiscoveryView,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._draining = draining
        self._ready = ready
        self._discovery = discovery
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[_no_server_header])
        app.router.add_get("/health", self._health_page)
        app.router.add_get("/ready", self._ready_page)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/config", self._config_page)
        app.router.add_get("/discovery", self._discovery_page)
        app.router.add_get("/discovery/{deployment}", self._deployment_page)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.admin_host, self._settings.admin_port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health_page(self, request: web.Request) -> web.Response:
        if self._draining():
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "healthy"})

    async def _ready_page(self, request: web.Request) -> web.Response:
        """Ready once the resolver has answered (any answer, NXDOMAIN included) and not draining."""
        if self._draining():
            return web.json_response({"status": "draining"}, status=503)
        if not self._ready():
            return web.json_response({"status": "waiting for the resolver"}, status=503)
        return web.json_response({"status": "ready"})

    async def _config_page(self, request: web.Request) -> web.Response:
        """The effective settings (flags over variables over defaults), as the start-up log line has them."""
        return web.json_response(self._settings.summary())

    async def _discovery_page(self, request: web.Request) -> web.Response:
        return web.json_response(await self._discovery(None))

    async def _deployment_page(self, request: web.Request) -> web.Response:
        return web.json_response(await self._discovery(request.match_info["deployment"].lower()))

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
