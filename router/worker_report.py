"""What a worker tells its supervisor: one JSON line per report, on the pipe the supervisor handed it.

A worker reports its counts and readiness every `REPORT_INTERVAL_S` (and once more as it exits, so the totals
keep its last requests); when the supervisor asks with SIGUSR1, it reports its view of discovery instead, for
the supervisor's /discovery. Both ends read and write through this module only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

# /metrics is at most this stale with --workers.
REPORT_INTERVAL_S: Final = 1.0
# Bounds one report line; a full label set of histograms fits easily.
MAX_REPORT_BYTES: Final = 16 << 20


@dataclass(frozen=True, slots=True)
class CountsReport:
    metrics: dict[str, Any]  # Metrics.snapshot()
    ready: bool


@dataclass(frozen=True, slots=True)
class ViewsReport:
    views: dict[str, Any]  # view.worker_views()


def encode(report: CountsReport | ViewsReport) -> bytes:
    if isinstance(report, ViewsReport):
        fields: dict[str, object] = {"views": report.views}
    else:
        fields = {"metrics": report.metrics, "ready": report.ready}
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> CountsReport | ViewsReport:
    """Raises ValueError for a line that is not a report."""
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("a report is a JSON object")
    if isinstance(fields.get("views"), dict):
        return ViewsReport(fields["views"])
    if isinstance(fields.get("metrics"), dict) and isinstance(fields.get("ready"), bool):
        return CountsReport(fields["metrics"], fields["ready"])
    raise ValueError(f"not a worker report: {sorted(fields)}")
