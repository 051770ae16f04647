"""How many workers `--workers auto` starts: the CPUs the task may use, within the memory it may use.

The CPUs, first found of:
1. the ECS task metadata endpoint (`$ECS_CONTAINER_METADATA_URI_V4/task`, `Limits.CPU` in vCPUs). On EC2 the
   agent puts the task's CPU limit on a parent cgroup the container cannot see (its own `cpu.max` reads
   `max`), so without this a 0.5 vCPU task on a 16-vCPU instance would start 16 workers;
2. the cgroup CPU quota: v2 `cpu.max` ("200000 100000" or "max 100000"), v1 `cpu/cpu.cfs_quota_us` and
   `cpu/cpu.cfs_period_us` (-1: no quota);
3. the CPUs this process may run on.
Then never more workers than the memory allows: `Limits.Memory` (MiB), else the cgroup's `memory.max`, at
WORKER_MIB a worker after SUPERVISOR_MIB for the supervisor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
# Measured (benchmarks/README.md): one router process holds 47 MiB through a 10-minute soak, and about 64 MiB
# a process with --workers auto; the rest of the budget is headroom for thousands of connections and bodies.
WORKER_MIB = 96
SUPERVISOR_MIB = 48

log = logging.getLogger("router.cpus")


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    reason: str  # where the CPU and memory figures came from, for the starting log line


def plan_workers(environ: Mapping[str, str], cgroup_root: Path = CGROUP_ROOT) -> WorkerPlan:
    limits = ecs_task_limits(environ)
    cpus, memory_mib = limits if limits is not None else (None, None)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus:
        count, source = min(allowed, math.ceil(cpus)), f"ECS task limit of {cpus:g} vCPU"
    else:
        count, source = available_cpus(cgroup_root), "cgroup CPU quota or CPU affinity"
    memory_mib = memory_mib or cgroup_memory_mib(cgroup_root)
    if memory_mib:
        fits = max(1, (int(memory_mib) - SUPERVISOR_MIB) // WORKER_MIB)
        if fits < count:
            count, source = fits, f"{source}, capped by {memory_mib:g} MiB at {WORKER_MIB} MiB a worker"
    return WorkerPlan(max(1, count), source)


def ecs_task_limits(environ: Mapping[str, str], timeout_s: float = 1.0) -> tuple[float | None, float | None] | None:
    """(vCPUs, MiB) of the task from the ECS metadata endpoint, each None when not set; None off ECS."""
    base = environ.get(METADATA_ENV)
    if not base:
        return None
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/task", timeout=timeout_s) as response:
            limits = json.load(response).get("Limits") or {}
    except (OSError, ValueError) as error:
        log.warning("ECS task metadata unreadable, sizing workers from cgroups", extra={"error": str(error)})
        return None
    cpu, memory = limits.get("CPU"), limits.get("Memory")
    return (float(cpu) if cpu else None, float(memory) if memory else None)


def cgroup_memory_mib(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    for limit_file in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        if limit_file.exists():
            text = limit_file.read_text().strip()
            if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
                return int(text) / (1 << 20)
            return None
    return None


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
