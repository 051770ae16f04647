"""The CPU, memory and descriptors of a process and its children, from /proc: what `benchmarks.run` charges to a
proxy (Nginx's master and workers, the router's supervisor and workers add up)."""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_split_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` and its children, in seconds: the proxy's own work, and the kernel's for it."""
    user = system = 0
    for one in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])  # fields 14 and 15 of stat
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (Nginx's master and workers add up)."""
    total = 0
    for one in [pid, *children_of(pid)]:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except FileNotFoundError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def process_tree_fds(pid: int) -> int:
    total = 0
    for one in [pid, *children_of(pid)]:
        with suppress(FileNotFoundError):
            total += len(os.listdir(f"/proc/{one}/fd"))
    return total


class PeakRss:
    """Samples the process tree's RSS every 50 ms while a run lasts: the peak of that run, not of the process's
    life (VmHWM would carry over from earlier scenarios and cannot add up Nginx's workers)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process_tree_rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = process_tree_rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
