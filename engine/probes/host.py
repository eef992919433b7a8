"""What the host shows: CPUs this process may use, memory, disk, load (via psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class HostSample:
    """One reading of the host. Sizes are bytes."""

    cpus: float
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    cpu_percent: float
    """Busy share of all CPUs since the previous sample, 0-100."""
    mem_total: int
    mem_available: int
    """``MemAvailable``: free plus cache the kernel can reclaim without swapping."""
    disk_total: int
    disk_free: int
    """Free bytes an unprivileged user may write (root's reserve excluded)."""
    load1: float


class HostProbe:
    """Samples the host; cheap and non-blocking, meant to be called every few seconds.

    Args:
        disk_path: A path on the filesystem whose free space matters (runyard's home).
            It need not exist yet: its nearest existing parent is measured.
    """

    def __init__(self, disk_path: Path) -> None:
        self._disk_path = Path(disk_path)
        # psutil.cpu_percent(interval=None) keeps its baseline in module state shared by
        # every caller in the process, so two callers would each see half-intervals.
        # A per-probe baseline keeps the reading independent of anyone else.
        self._last_cpu_times = psutil.cpu_times()

    def sample(self) -> HostSample:
        """Read the host now."""
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(_existing_ancestor(self._disk_path)))
        return HostSample(
            cpus=float(_usable_cpus()),
            cpu_percent=self._cpu_percent_since_last(),
            mem_total=int(memory.total),
            mem_available=int(memory.available),
            disk_total=int(disk.total),
            disk_free=int(disk.free),
            load1=float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0,
        )

    def _cpu_percent_since_last(self) -> float:
        now = psutil.cpu_times()
        before, self._last_cpu_times = self._last_cpu_times, now
        total = _total_cpu_time(now) - _total_cpu_time(before)
        idle = _idle_cpu_time(now) - _idle_cpu_time(before)
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, 100.0 * (total - idle) / total)), 1)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return psutil.cpu_count() or 1


def _total_cpu_time(times) -> float:
    total = sum(times)
    # On Linux guest time is already counted inside user/nice; counting it twice would
    # make a box running VMs look idler than it is.
    for name in ("guest", "guest_nice"):
        total -= getattr(times, name, 0.0)
    return total


def _idle_cpu_time(times) -> float:
    # Waiting on I/O leaves the CPU free for another run, so it counts as idle.
    return times.idle + getattr(times, "iowait", 0.0)


def _existing_ancestor(path: Path) -> Path:
    candidate = path.absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate
