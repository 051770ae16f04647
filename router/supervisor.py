"""`--workers N|auto`: N router processes sharing the port (SO_REUSEPORT) under one supervisor.

The supervisor serves no traffic. It starts the workers (the same command line, plus `_WHALERAY_WORKER` =
"<index>:<fd>:<count>" naming the pipe each one reports on), restarts one that dies (backing off when one keeps
dying), serves the admin listener (/health, /ready, /metrics adding up every worker), forwards SIGTERM so
each worker drains itself, and exits 0 once they all have. A second signal kills the workers and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from router import __version__
from router.admin import AdminServer
from router.build import BUILD
from router.cpus import WorkerPlan, plan_workers
from router.logs import setup_logging
from router.metrics import WorkerMetrics, register_process_metrics
from router.settings import Settings
from router.signals import handle_stop_signals
from router.view import merge_deployment, merge_lists
from router.worker_processes import WorkerProcesses
from router.worker_report import MAX_REPORT_BYTES, ViewsReport
from router.worker_report import decode as decode_report

log = logging.getLogger("router.supervisor")

WORKER_ENV = "_WHALERAY_WORKER"  # not WHALERAY_*: no option reads it, and the settings check ignores it
VIEW_WAIT_S = 2.0  # how long /discovery waits for the workers' answers
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after starting backs off further


def worker_count(settings: Settings) -> WorkerPlan:
    if settings.workers:
        return WorkerPlan(settings.workers, "--workers")
    return plan_workers(os.environ)


@dataclass(frozen=True)
class WorkerIdentity:
    index: int
    report_fd: int
    count: int


def worker_identity(environ: dict[str, str] | os._Environ[str]) -> WorkerIdentity | None:
    value = environ.get(WORKER_ENV)
    if not value:
        return None
    index, fd, count = value.split(":")
    return WorkerIdentity(int(index), int(fd), int(count))


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0
    ready: bool = False
    reader: asyncio.Task[None] | None = field(default=None, repr=False)
    views: dict[str, Any] | None = field(default=None, repr=False)  # its answer to the last SIGUSR1
    views_arrived: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def running(self) -> asyncio.subprocess.Process | None:
        """Its process while it runs, else None."""
        return self.process if self.process is not None and self.process.returncode is None else None


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str], count: int) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.workers = [Worker(index) for index in range(count)]
        self.registry = CollectorRegistry()
        if settings.metrics:
            register_process_metrics(self.registry, __version__, BUILD)
            WorkerProcesses(self.registry, self._running_pids)
        self.metrics = WorkerMetrics(self.registry, settings.metrics_max_deployments)
        self.draining = False
        self._admin: AdminServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def ready(self) -> bool:
        return all(worker.ready for worker in self.workers)

    def _running_pids(self) -> dict[int, int]:
        return {worker.index: process.pid for worker in self.workers if (process := worker.running()) is not None}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.settings.admin_port:
            self._admin = AdminServer(self.settings, self.registry, lambda: self.draining, self.ready, self.view)
            await self._admin.start()
        stop = handle_stop_signals(
            loop,
            draining="signal received, draining the workers",
            at_once="second signal, killing the workers",
            before_exit=self._kill_workers,
        )
        for worker in self.workers:
            self._spawn_later(worker, 0.0)
        await stop.wait()
        return await self._drain()

    def _kill_workers(self) -> None:
        for worker in self.workers:
            if (process := worker.running()) is not None:
                process.kill()

    def _spawn_later(self, worker: Worker, delay_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self._run_worker(worker, delay_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_worker(self, worker: Worker, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.draining:
            return
        read_fd, write_fd = os.pipe()
        env = {**os.environ, WORKER_ENV: f"{worker.index}:{write_fd}:{len(self.workers)}"}
        # A session of its own: a terminal's Ctrl-C or a group-wide signal reaches the supervisor only, which
        # forwards one SIGTERM; a worker signalled twice would take it as "exit at once".
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", *self.argv, env=env, pass_fds=(write_fd,), start_new_session=True
        )
        os.close(write_fd)
        loop = asyncio.get_running_loop()
        worker.started_at = loop.time()
        worker.reader = loop.create_task(self._read_reports(worker, read_fd))
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})
        code = await worker.process.wait()
        await asyncio.wait_for(worker.reader, 5)  # its final report, written before it exited
        worker.ready = False
        self.metrics.retire(worker.index)
        if self.draining:
            return
        lived_s = loop.time() - worker.started_at
        worker.failures = worker.failures + 1 if lived_s < QUICK_DEATH_S else 0
        backoff = RESTART_BACKOFF_S[min(worker.failures, len(RESTART_BACKOFF_S) - 1)]
        log.warning("worker exited, restarting", extra={"worker": worker.index, "code": code, "in_s": backoff})
        self._spawn_later(worker, backoff)

    async def _read_reports(self, worker: Worker, read_fd: int) -> None:
        reader = asyncio.StreamReader(limit=MAX_REPORT_BYTES)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            while line := await reader.readline():
                report = decode_report(line)
                if isinstance(report, ViewsReport):
                    worker.views = report.views
                    worker.views_arrived.set()
                    continue
                self.metrics.update(worker.index, report.metrics)
                worker.ready = report.ready
        except (ValueError, asyncio.LimitOverrunError):
            log.exception("unreadable report from a worker", extra={"worker": worker.index})
        finally:
            transport.close()

    async def view(self, deployment: str | None) -> dict[str, object]:
        """/discovery for the whole task: each worker is asked (SIGUSR1) and answers on its report pipe."""
        asked = [(worker, process) for worker in self.workers if (process := worker.running()) is not None]
        for worker, process in asked:
            worker.views_arrived.clear()
            process.send_signal(signal.SIGUSR1)
        waits = [asyncio.create_task(worker.views_arrived.wait()) for worker, _ in asked]
        if waits:
            _, late = await asyncio.wait(waits, timeout=VIEW_WAIT_S)
            for task in late:
                task.cancel()  # a worker that did not answer in time (restarting, stuck) is left out
        views = [worker.views for worker, _ in asked if worker.views_arrived.is_set() and worker.views is not None]
        if deployment is None:
            return merge_lists([view["list"] for view in views])
        return merge_deployment(
            [view["deployments"].get(deployment, {"state": "missing"}) for view in views], deployment
        )

    async def _drain(self) -> int:
        self.draining = True
        for worker in self.workers:
            if (process := worker.running()) is not None:
                process.send_signal(signal.SIGTERM)
        deadline = self.settings.drain_delay_s + self.settings.drain_timeout_s + 5.0
        codes = []
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                codes.append(await asyncio.wait_for(worker.process.wait(), deadline))
            except TimeoutError:
                worker.process.kill()
                codes.append(await worker.process.wait())
        if self._admin is not None:
            await self._admin.stop()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("workers drained", extra={"exit_codes": codes})
        # -SIGTERM: a worker still starting up (its handlers go in before its listener opens, so it had
        # accepted nothing): as clean as a drained one.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    setup_logging(settings.log_level, settings.log_format)
    plan = worker_count(settings)
    extra = {"settings": settings.summary(), "version": __version__, "build": BUILD}
    log.info("starting", extra={**extra, "workers": plan.count, "workers_from": plan.reason})
    return uvloop.run(Supervisor(settings, argv, plan.count).run())
