"""Metrics: counted on the hot path in plain dicts and lists, exported as Prometheus families at scrape time.

prometheus-client's `labels(...).inc()` takes a lock and a dict lookup per call, a microsecond or more on a
path that costs the router ~30 us per request. `Metrics` therefore records with list indexing and dict
updates only, and registers itself as a collector on an explicit registry (never the global one), turning its
counts into families when /metrics is scraped. No I/O here.

`deployment` labels come from request paths, which clients control: only ids that resolved get their own
label, the rest count under `_unknown`, and at most `max_deployments` ids get one (then `_other`), so a scan
cannot grow memory or the scrape.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

UNKNOWN: Final = "_unknown"
OTHER: Final = "_other"
REQUEST_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
FAST_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# A wake may wait for ECS to start an instance, then a task: minutes, not milliseconds.
WAKE_BUCKETS: Final[tuple[float, ...]] = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DNS_RESULTS: Final[tuple[str, ...]] = ("hit", "miss", "negative", "stale", "error", "busy")


class Histogram:
    """Bucket counts and a sum. `observe` walks the bounds: with a dozen of them, a compiled loop costs less than
    a call of bisect (a C function the compiled build reaches through Python's calling convention)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


# The gauges, in one table: each is read at scrape time from the live state (nothing on the hot path keeps them
# up to date); with --workers each worker reports its values and the supervisor adds them up.
# (name, metric family, label and value, help)
_DROPPED_HELP: Final = "Log lines dropped since start because stdout did not keep up."
GAUGES: Final[tuple[tuple[str, str, tuple[str, ...], str], ...]] = (
    ("inflight", "whaleray_inflight_requests", (), "Requests being answered."),
    ("client_connections", "whaleray_client_connections", (), "Open client connections."),
    ("upstream_active", "whaleray_upstream_connections", ("state", "active"), "Backend connections."),
    ("upstream_idle", "whaleray_upstream_connections", ("state", "idle"), "Backend connections."),
    ("dns_cache_entries", "whaleray_dns_cache_entries", (), "Names in the DNS cache, known and unknown."),
    ("held", "whaleray_held_requests", (), "Requests held while their deployment wakes."),
    ("access_lines_dropped", "whaleray_log_lines_dropped", ("log", "access"), _DROPPED_HELP),
    ("application_lines_dropped", "whaleray_log_lines_dropped", ("log", "application"), _DROPPED_HELP),
)
Gauges = dict[str, Callable[[], int]]  # a reader for every name of GAUGES


class Metrics(Collector):
    def __init__(self, registry: CollectorRegistry, max_deployments: int, gauges: Gauges | None = None) -> None:
        self.max_deployments = max_deployments
        self.gauges = gauges
        self._labels: set[str] = set()
        self.requests: dict[tuple[str, int], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.rejections: dict[tuple[str, str], int] = {}
        self.dns_lookups = dict.fromkeys(DNS_RESULTS, 0)
        self.dns_query_duration = Histogram(FAST_BUCKETS)
        self.connect_duration = Histogram(FAST_BUCKETS)
        self.reused = 0
        self.wakes: dict[str, int] = {}  # wakes ended, by result (router/wake/waker.py)
        self.wake_duration = Histogram(WAKE_BUCKETS)
        self.wake_updates = 0  # UpdateService calls that raised a desired count from 0
        self.wake_overflows = 0  # requests refused wake_queue_full
        registry.register(self)

    # --- recording (hot path) ----------------------------------------------------------------------------

    def label(self, deployment: str, resolved: bool) -> str:
        if not resolved or not deployment:
            return UNKNOWN
        if deployment in self._labels:
            return deployment
        if len(self._labels) < self.max_deployments:
            self._labels.add(deployment)
            return deployment
        return OTHER

    def request(self, label: str, status: int, duration_s: float) -> None:
        key = (label, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(label)
        if histogram is None:
            histogram = self.durations[label] = Histogram(REQUEST_BUCKETS)
        histogram.observe(duration_s)

    def upstream_error(self, label: str, kind: str) -> None:
        key = (label, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def rejection(self, label: str, reason: str) -> None:
        key = (label, reason)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    def woke(self, result: str, duration_s: float) -> None:
        """A wake ended with `result` (woken, woken_elsewhere, already_awake, timeout, failed, ...)."""
        self.wakes[result] = self.wakes.get(result, 0) + 1
        self.wake_duration.observe(duration_s)

    # --- exporting (scrape time) ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "whaleray_requests", "Requests answered, by deployment and HTTP status.", labels=["deployment", "code"]
        )
        for (label, status), count in sorted(self.requests.items()):
            requests.add_metric([label, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "whaleray_request_duration_seconds", "Time from request head to last response byte.", labels=["deployment"]
        )
        for label, histogram in sorted(self.durations.items()):
            durations.add_metric([label], histogram.cumulative(), histogram.total)
        yield durations
        yield self._histogram(
            "whaleray_upstream_connect_duration_seconds", "Time to open a backend connection.", self.connect_duration
        )
        yield self._histogram("whaleray_dns_query_duration_seconds", "Time of one DNS lookup.", self.dns_query_duration)
        yield self._histogram(
            "whaleray_wake_duration_seconds", "Time from a wake's start to its end, by any result.", self.wake_duration
        )
        yield from self._counters()
        yield from self._wake_counters()
        if self.gauges is not None:
            yield from self._gauges(self.gauges)

    def _counters(self) -> Iterable[Metric]:
        reused = CounterMetricFamily("whaleray_upstream_connections_reused", "Requests sent on a pooled connection.")
        reused.add_metric([], self.reused)
        yield reused
        errors = CounterMetricFamily(
            "whaleray_upstream_errors", "Backend failures, by deployment and kind.", labels=["deployment", "kind"]
        )
        for (label, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric([label, kind], count)
        yield errors
        rejected = CounterMetricFamily(
            "whaleray_rejected_requests", "Requests refused by a per-deployment limit.", labels=["deployment", "reason"]
        )
        for (label, reason), count in sorted(self.rejections.items()):
            rejected.add_metric([label, reason], count)
        yield rejected
        lookups = CounterMetricFamily("whaleray_dns_lookups", "Deployment lookups by outcome.", labels=["result"])
        for result, count in self.dns_lookups.items():
            lookups.add_metric([result], count)
        yield lookups

    def _wake_counters(self) -> Iterable[Metric]:
        wakes = CounterMetricFamily("whaleray_wakes", "Wakes of sleeping deployments, by result.", labels=["result"])
        for result, count in sorted(self.wakes.items()):
            wakes.add_metric([result], count)
        yield wakes
        updates = CounterMetricFamily(
            "whaleray_wake_updates", "UpdateService calls that raised a desired count from 0."
        )
        updates.add_metric([], self.wake_updates)
        yield updates
        overflows = CounterMetricFamily("whaleray_wake_overflows", "Requests refused because the wake queue was full.")
        overflows.add_metric([], self.wake_overflows)
        yield overflows

    @staticmethod
    def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation)
        family.add_metric([], histogram.cumulative(), histogram.total)
        return family

    @staticmethod
    def _gauges(gauges: Gauges) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, family_name, label, documentation in GAUGES:
            family = families.get(family_name)
            if family is None:
                family = families[family_name] = GaugeMetricFamily(family_name, documentation, labels=label[:1])
            family.add_metric(list(label[1:]), gauges[name]())
        yield from families.values()

    # --- workers: snapshots and their merge ------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Every count as plain JSON, for the supervisor to add up across workers."""
        gauges = self.gauges
        return {
            "requests": [[label, status, count] for (label, status), count in self.requests.items()],
            "durations": {label: [*h.counts, h.total] for label, h in self.durations.items()},
            "upstream_errors": [[label, kind, count] for (label, kind), count in self.upstream_errors.items()],
            "rejections": [[label, reason, count] for (label, reason), count in self.rejections.items()],
            "dns_lookups": self.dns_lookups,
            "dns_query_duration": [*self.dns_query_duration.counts, self.dns_query_duration.total],
            "connect_duration": [*self.connect_duration.counts, self.connect_duration.total],
            "reused": self.reused,
            "wakes": self.wakes,
            "wake_duration": [*self.wake_duration.counts, self.wake_duration.total],
            "wake_updates": self.wake_updates,
            "wake_overflows": self.wake_overflows,
            "gauges": {} if gauges is None else {name: read() for name, read in gauges.items()},
        }

    def add_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Add a worker's counts to these (labels are capped here again: the union of workers' labels)."""
        for label, status, count in snapshot["requests"]:
            request_key = (self._merge_label(label), int(status))
            self.requests[request_key] = self.requests.get(request_key, 0) + int(count)
        for label, values in snapshot["durations"].items():
            target = self.durations.setdefault(self._merge_label(label), Histogram(REQUEST_BUCKETS))
            _add_histogram(target, values)
        for label, kind, count in snapshot["upstream_errors"]:
            key = (self._merge_label(label), kind)
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + int(count)
        for label, reason, count in snapshot["rejections"]:
            key = (self._merge_label(label), reason)
            self.rejections[key] = self.rejections.get(key, 0) + int(count)
        for result, count in snapshot["dns_lookups"].items():
            self.dns_lookups[result] = self.dns_lookups.get(result, 0) + int(count)
        _add_histogram(self.dns_query_duration, snapshot["dns_query_duration"])
        _add_histogram(self.connect_duration, snapshot["connect_duration"])
        self.reused += int(snapshot["reused"])
        for result, count in snapshot["wakes"].items():
            self.wakes[result] = self.wakes.get(result, 0) + int(count)
        _add_histogram(self.wake_duration, snapshot["wake_duration"])
        self.wake_updates += int(snapshot["wake_updates"])
        self.wake_overflows += int(snapshot["wake_overflows"])

    def _merge_label(self, label: str) -> str:
        if label in (UNKNOWN, OTHER):
            return label
        return self.label(label, resolved=True)

    def __repr__(self) -> str:
        return f"<Metrics [Deployment labels: {len(self._labels)}/{self.max_deployments}]>"


def _add_histogram(target: Histogram, values: list[float]) -> None:
    for index, count in enumerate(values[:-1]):
        target.counts[index] += int(count)
    target.total += float(values[-1])


class WorkerMetrics(Collector):
    """The supervisor's view: the sum of every worker's latest snapshot, plus the final snapshots of workers
    that died (folded into `retired`), so that counters never go backwards when a worker is replaced."""

    def __init__(self, registry: CollectorRegistry, max_deployments: int) -> None:
        self.max_deployments = max_deployments
        self.latest: dict[int, dict[str, Any]] = {}
        self.retired = Metrics(CollectorRegistry(), max_deployments)
        registry.register(self)

    def update(self, worker: int, snapshot: dict[str, Any]) -> None:
        self.latest[worker] = snapshot

    def retire(self, worker: int) -> None:
        snapshot = self.latest.pop(worker, None)
        if snapshot is not None:
            self.retired.add_snapshot(snapshot)

    def collect(self) -> Iterable[Metric]:
        total = Metrics(CollectorRegistry(), self.max_deployments)
        total.add_snapshot(self.retired.snapshot())
        sums = dict.fromkeys((name for name, *_ in GAUGES), 0)
        for snapshot in self.latest.values():
            total.add_snapshot(snapshot)
            for name, value in snapshot["gauges"].items():
                sums[name] += int(value)
        total.gauges = {name: functools.partial(int, value) for name, value in sums.items()}
        return total.collect()


class NullMetrics(Metrics):
    """`--metrics off`: the same interface, recording nothing (the benchmark measures what metrics cost)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(CollectorRegistry(), 0)  # registered nowhere that is scraped

    def label(self, deployment: str, resolved: bool) -> str:
        return UNKNOWN

    def request(self, label: str, status: int, duration_s: float) -> None:
        return

    def upstream_error(self, label: str, kind: str) -> None:
        return

    def rejection(self, label: str, reason: str) -> None:
        return


class BuildInfo(Collector):
    """whaleray_build_info{version,python,build} 1: which router answers, for dashboards and incident notes."""

    def __init__(self, registry: CollectorRegistry, version: str, build: str) -> None:
        self.labels = [version, platform.python_version(), build]
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "whaleray_build_info",
            "The router's version, Python and build (compiled or pure).",
            labels=["version", "python", "build"],
        )
        info.add_metric(self.labels, 1)
        yield info


def register_process_metrics(registry: CollectorRegistry, version: str, build: str) -> None:
    """process_* (CPU, memory, descriptors of this process: with --workers, the supervisor's own) and the build."""
    ProcessCollector(registry=registry)
    BuildInfo(registry, version, build)
