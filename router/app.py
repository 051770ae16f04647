"""The running router: listener, discovery, shared state, the deadline tick, and graceful drain.

`Router` is what tests start in-process and what `serve()` runs under uvloop with signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

import uvloop
from prometheus_client import CollectorRegistry

from router import __version__
from router.access_log import AccessLog
from router.admin import AdminServer
from router.build import BUILD
from router.discovery.resolver import DnsResolver
from router.discovery.service import Discovery
from router.logs import DroppingQueueHandler, setup_logging
from router.metrics import Metrics, NullMetrics, register_process_metrics
from router.proxy.client import ClientConnection
from router.proxy.server import ServerState
from router.settings import Settings
from router.signals import handle_stop_signals
from router.view import deployment_view, discovery_view, worker_views
from router.wake.service import Waking
from router.worker_report import REPORT_INTERVAL_S, CountsReport, ViewsReport
from router.worker_report import encode as encode_report

if TYPE_CHECKING:
    from router.supervisor import WorkerIdentity

log = logging.getLogger("router")

# The tick that checks deadlines and expires pooled connections runs this often: a quarter of the shortest
# timeout keeps every timeout within 25 % of its setting, bounded so an idle router does not spin.
MIN_TICK_S = 0.05
MAX_TICK_S = 1.0
LISTEN_BACKLOG = 4096


def tick_interval(settings: Settings) -> float:
    shortest = min(
        settings.client_header_timeout_s,
        settings.client_body_timeout_s,
        settings.client_keepalive_timeout_s,
        settings.upstream_header_timeout_s,
        settings.upstream_read_timeout_s,
        settings.upstream_idle_timeout_s,
        settings.client_send_timeout_s,
        settings.upstream_send_timeout_s,
    )
    return min(max(shortest / 4, MIN_TICK_S), MAX_TICK_S)


class Router:
    """The router in one process. As a worker (`report_fd` set) it shares the port with SO_REUSEPORT and
    writes a JSON snapshot of its counts to the supervisor's pipe every REPORT_INTERVAL_S."""

    def __init__(self, settings: Settings, reuse_port: bool = False, report_fd: int | None = None) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self._report_fd = report_fd
        self._report: asyncio.WriteTransport | None = None
        self._parent_pid = os.getppid()
        self.port = settings.port
        self.state: ServerState | None = None
        self.admin: AdminServer | None = None
        self._server: asyncio.Server | None = None
        self._resolver: DnsResolver | None = None
        self._discovery: Discovery | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_s = tick_interval(settings)
        self.registry = CollectorRegistry()
        if settings.metrics:
            register_process_metrics(self.registry, __version__, BUILD)
        self.metrics = (
            Metrics(self.registry, settings.metrics_max_deployments) if settings.metrics else NullMetrics(self.registry)
        )
        self.access_log: AccessLog | None = None
        self._probe: asyncio.Task[None] | None = None
        self._waking: Waking | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        self._resolver = DnsResolver(settings.resolvers, timeout_s=settings.dns_timeout_s, tries=settings.dns_tries)
        self._discovery = Discovery(settings, self._resolver.lookup_a, self._resolver.lookup_srv, clock=loop.time)
        if settings.access_log:
            self.access_log = AccessLog(text=settings.log_format == "text")
        state = ServerState(settings, self._discovery, loop, self.metrics, self.access_log)
        self._discovery.on_removed = state.connector.retire
        self._discovery.on_query = self.metrics.dns_query_duration.observe
        self.metrics.gauges = {
            "inflight": lambda: state.inflight,
            "client_connections": lambda: len(state.connections),
            "upstream_active": state.upstream_active,
            "upstream_idle": state.connector.pool.idle_count,
            "dns_cache_entries": lambda: len(state.discovery.cache),
            "held": lambda: 0 if state.waker is None else state.waker.held,
            "access_lines_dropped": lambda: 0 if self.access_log is None else self.access_log.dropped,
            "application_lines_dropped": lambda: DroppingQueueHandler.dropped,
        }
        self.state = state
        self._waking = await Waking.start(settings, state)
        self._server = await loop.create_server(
            lambda: ClientConnection(state),
            settings.host,
            settings.port,
            family=socket.AF_INET6 if ":" in settings.host else socket.AF_INET,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        state.listen_port = str(self.port).encode()
        self._schedule_tick()
        self._probe = loop.create_task(self._probe_resolver())
        if settings.admin_port:
            discovery = self._discovery
            self.admin = AdminServer(
                settings, self.registry, lambda: state.draining, lambda: discovery.answered_once, self._view
            )
            await self.admin.start()
        if self._report_fd is not None:
            self._report, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(self._report_fd, "wb"))
            self.state.loop.call_later(REPORT_INTERVAL_S, self._send_report)
        log.info("router listening", extra={"port": self.port, "admin_port": settings.admin_port})

    async def _view(self, deployment: str | None) -> dict[str, object]:
        assert self.state is not None
        return discovery_view(self.state) if deployment is None else deployment_view(self.state, deployment)

    def send_views(self) -> None:
        """The supervisor asks (SIGUSR1) what this worker's cache and pool hold, for its /discovery."""
        self._send_report(views=True)

    async def _probe_resolver(self) -> None:
        """Until the resolver has answered once, ask it every second, so /ready needs no client traffic. Said
        once when it does not answer at first, and once when it does."""
        assert self._discovery is not None
        resolvers = [str(r) for r in self.settings.resolvers]
        silent = False
        while not self._discovery.answered_once and not await self._discovery.probe():
            if not silent:
                log.warning("resolver not answering yet, asking every second", extra={"resolvers": resolvers})
                silent = True
            await asyncio.sleep(1.0)
        if silent:
            log.info("resolver answering", extra={"resolvers": resolvers})

    def _send_report(self, views: bool = False) -> None:
        if self._report is None or self.state is None or self._discovery is None:
            return
        # The supervisor died (it was killed): its end of the pipe is closed and this process was re-parented.
        # Drain rather than outlive it, holding the port.
        if self._report.is_closing() or os.getppid() != self._parent_pid:
            if not self.state.draining:
                log.warning("supervisor gone, draining")
                os.kill(os.getpid(), signal.SIGTERM)
            return
        report: CountsReport | ViewsReport
        if views:  # on demand, between the periodic reports
            report = ViewsReport(worker_views(self.state))
        else:
            report = CountsReport(self.metrics.snapshot(), self._discovery.answered_once)
            self.state.loop.call_later(REPORT_INTERVAL_S, self._send_report)
        self._report.write(encode_report(report))

    def _schedule_tick(self) -> None:
        assert self.state is not None
        self.state.tick()
        self._ticker = self.state.loop.call_later(self._tick_s, self._schedule_tick)

    async def drain(self) -> None:
        """Graceful stop: /health says 503, keep serving for the drain delay, stop accepting, let requests finish."""
        assert self.state is not None
        assert self._server is not None
        state = self.state
        state.draining = True
        log.info("draining", extra={"delay_s": self.settings.drain_delay_s, "timeout_s": self.settings.drain_timeout_s})
        await asyncio.sleep(self.settings.drain_delay_s)
        self._server.close()
        state.close_idle_clients()
        deadline = state.loop.time() + self.settings.drain_timeout_s
        while (state.inflight > 0 or state.connections) and state.loop.time() < deadline:
            state.close_idle_clients()
            await asyncio.sleep(0.05)
        log.info("drained", extra={"unfinished_requests": state.inflight})

    async def stop(self) -> None:
        self._send_report()  # the final counts, so the supervisor's totals include this worker's last requests
        if self._report is not None:
            self._report.close()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._probe is not None:
            self._probe.cancel()
        if self._server is not None:
            self._server.close()
        if self.state is not None:
            for connection in list(self.state.connections):
                connection.abort()
            self.state.connector.close_idle()
        if self.admin is not None:
            await self.admin.stop()
        if self._waking is not None:
            await self._waking.stop()
        if self._discovery is not None:
            await self._discovery.close()
        if self._resolver is not None:
            await self._resolver.close()
        if self.access_log is not None:
            self.access_log.close()
        await asyncio.sleep(0)


async def run(settings: Settings, worker: WorkerIdentity | None = None) -> int:
    """Serve until a signal, then drain. `worker`: set when a supervisor started this process."""
    if worker is not None:
        # The supervisor serves the admin listener; each worker has its own DNS cache, so the query budget,
        # which protects the resolver shared by the whole task, is divided among the workers.
        settings = dataclasses.replace(settings, admin_port=0, dns_max_qps=settings.dns_max_qps / worker.count)
    loop = asyncio.get_running_loop()
    stop_requested = handle_stop_signals(
        loop, draining="signal received, draining", at_once="second signal, exiting at once"
    )
    router = Router(settings, reuse_port=worker is not None, report_fd=None if worker is None else worker.report_fd)
    if worker is not None:
        loop.add_signal_handler(signal.SIGUSR1, router.send_views)
    try:
        await router.start()
    except OSError as error:  # the port is taken, the address is not this host's...
        log.error(
            "start-up failed", extra={"error": str(error), "port": settings.port, "admin_port": settings.admin_port}
        )
        await router.stop()
        return 1
    # Everything allocated so far (modules, settings, the metric registry: ~40,000 objects) lives as long as
    # the process: frozen, it is out of the collector's sight, and a full collection under load scans only
    # what requests allocate (one took 32 ms, a stall for every request in flight, in a 30 s soak without).
    gc.collect()
    gc.freeze()
    await stop_requested.wait()
    drain = asyncio.create_task(router.drain())
    with contextlib.suppress(asyncio.CancelledError):
        await drain
    await router.stop()
    return 0


def serve(settings: Settings, worker: WorkerIdentity | None = None) -> int:
    setup_logging(settings.log_level, settings.log_format)
    if worker is None:
        log.info("starting", extra={"settings": settings.summary(), "version": __version__, "build": BUILD})
    else:
        log.info("worker starting", extra={"worker": worker.index, "of": worker.count})
    return uvloop.run(run(settings, worker))
