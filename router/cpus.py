"""How many CPUs this process may use: the cgroup CPU quota, not the host's core count. Reads files only.

An ECS task on a 16-core instance with `cpu = 2048` has a quota of two CPUs; sixteen workers there would
only fight over them. cgroup v2 says it in `cpu.max` ("200000 100000" or "max 100000"); v1 in
`cpu/cpu.cfs_quota_us` and `cpu/cpu.cfs_period_us` (-1: no quota). Without a quota: the CPUs this process
is allowed to run on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is None:
        return max(1, allowed)
    return max(1, min(allowed, math.ceil(quota)))


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs of quota (e.g. 1.5), or None when there is no quota."""
    v2 = cgroup_root / "cpu.max"
    if v2.exists():
        fields = v2.read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    quota_file, period_file = cgroup_root / "cpu" / "cpu.cfs_quota_us", cgroup_root / "cpu" / "cpu.cfs_period_us"
    if quota_file.exists() and period_file.exists():
        quota, period = int(quota_file.read_text()), int(period_file.read_text())
        if quota > 0 and period > 0:
            return quota / period
    return None
