"""With --workers, what each worker process uses: the supervisor's own `process_*` metrics cover only itself.

Read from /proc at scrape time, one series per worker (label `worker`, its index): CPU seconds, resident memory
and open descriptors, the figures prometheus_client's process collector gives for one process. A restarted
worker starts its CPU counter again, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class WorkerProcesses(Collector):
    def __init__(self, registry: CollectorRegistry, pids: Callable[[], dict[int, int]], proc: Path = Path("/proc")):
        """`pids`: the running workers, index -> pid."""
        self._pids = pids
        self._proc = proc
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        cpu = CounterMetricFamily(
            "whaleray_worker_cpu_seconds", "CPU (user + system) of each worker.", labels=["worker"]
        )
        memory = GaugeMetricFamily(
            "whaleray_worker_resident_memory_bytes", "Resident memory of each worker.", labels=["worker"]
        )
        descriptors = GaugeMetricFamily(
            "whaleray_worker_open_fds", "Open descriptors of each worker.", labels=["worker"]
        )
        for index, pid in sorted(self._pids().items()):
            try:
                # Fields after the command name (which may hold spaces): utime and stime are the 12th and
                # 13th, rss (in pages) the 22nd.
                fields = (self._proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
                open_fds = len(os.listdir(self._proc / str(pid) / "fd"))
            except OSError:  # it exited between the list and the read
                continue
            label = [str(index)]
            cpu.add_metric(label, (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND)
            memory.add_metric(label, int(fields[21]) * _PAGE_BYTES)
            descriptors.add_metric(label, open_fds)
        yield from (cpu, memory, descriptors)
