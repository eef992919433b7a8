"""What each running run really uses: CPU, resident memory, GPU memory and load, disk.

The envelope says what a run *asked* for; this says what it *takes*, for the UI, for
``runyard show ID --usage`` and for the usage history (:mod:`engine.store.history`).
A run's processes are found by :func:`~engine.probes.attribution.run_process_trees`,
the same split admission uses, so what is shown as a run's usage is what admission
treats as runyard's own.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.launcher import CREATE_TIME_TOLERANCE_S
from engine.probes.attribution import run_process_trees, run_rss_bytes
from engine.probes.gpu import GpuSample

DEFAULT_DISK_INTERVAL_S = 60.0

MIN_CPU_WINDOW_S = 0.2
"""Shortest window a CPU reading is taken over. CPU times advance in clock ticks
(10 ms), so a window of a few milliseconds would read as 0 % or several hundred %;
a call sooner than this repeats the previous reading instead."""


@dataclass(frozen=True)
class RunUsage:
    """One reading of one run's usage."""

    run_id: int
    at: float
    """When it was read (the caller's clock, Unix seconds)."""
    cpu_percent: float
    """CPU of all the run's processes together; 100 is one core busy."""
    rss_bytes: int
    """Resident memory of the process tree; PSS where the kernel offers it, so pages
    shared by forked workers count once."""
    gpu_mem_bytes: int
    """GPU memory of the run's processes, summed over every GPU (also ones it does not
    hold). Processes whose usage the driver does not report count as 0."""
    gpu_util_percent: float | None
    """Mean utilisation of the GPUs the run holds; ``None`` when it holds none or none
    reports utilisation. A card's utilisation is the card's, shared with whoever else
    uses it."""
    disk_bytes: int | None
    """Disk allocated under the run's folders, re-measured at most every
    ``disk_interval_s``; ``None`` when none of them could be read (not created yet)."""
    processes: int
    """Live processes in the run's tree."""


@dataclass
class _CpuBaseline:
    created_at: float
    cpu_s: float
    read_at_mono: float


@dataclass
class _DiskReading:
    folders: tuple[str, ...]
    measured_at: float
    disk_bytes: int | None


class UsageSampler:
    """Reads each running run's usage; keeps what it needs between calls.

    CPU is the growth of each process's CPU time since the previous call, over the real
    (monotonic) time between them. On a run's first call there is no previous reading,
    so each process reports its average since it started (CPU time over its age): a
    useful number at once instead of a 0 that looks like an idle run. A process that
    appears between calls counts all its CPU time, spread over the interval or its age,
    whichever is longer. A process that ends between calls loses its last interval.

    Not thread-safe; one instance belongs to the engine's loop.

    Args:
        disk_interval_s: How often a run's folders are walked again. Walking a checkpoint
            folder of thousands of files costs real I/O, so in between the last size is
            returned.
    """

    def __init__(self, disk_interval_s: float = DEFAULT_DISK_INTERVAL_S) -> None:
        self.disk_interval_s = float(disk_interval_s)
        self._baselines: dict[int, _CpuBaseline] = {}
        """By pid, for every process seen in the previous call."""
        self._last_read_mono: dict[int, float] = {}
        """By run id: when its CPU was last read."""
        self._last_cpu_percent: dict[int, float] = {}
        self._disk: dict[int, _DiskReading] = {}

    def sample(
        self,
        runs: Mapping[int, tuple[int | None, Sequence[Path]]],
        gpus: Sequence[GpuSample],
        held_gpus: Mapping[int, Sequence[int]],
        now: float,
        *,
        trees: Mapping[int, set[int]] | None = None,
        rss_bytes: Mapping[int, int] | None = None,
    ) -> dict[int, RunUsage]:
        """Read the usage of every running run.

        Pass every running run on each call: a run left out is forgotten (its CPU
        baseline and cached disk size go), as when it ends.

        Args:
            runs: ``run_id -> (root pid, folders)``. The root is the run's command
                (``Run.pid``; ``None`` while not known yet: only disk is read). The caller
                must only pass pids it knows are still its runs'. Folders are the run's
                directory and, if it has one, its checkpoint directory.
            gpus: The current GPU samples.
            held_gpus: ``run_id -> NVML indices`` the run holds (``Run.gpus``).
            now: The time stamped on each reading; also the clock of the disk cache.
            trees: The runs' process trees when the caller has just computed them (as
                the engine's box sample does); saves a second scan of the process table.
            rss_bytes: The runs' resident memory when the caller has just computed it.

        Returns:
            ``run_id -> RunUsage`` for every run passed. Never raises for processes
            that vanish meanwhile or folders that are missing or unreadable.
        """
        if trees is None:
            trees = run_process_trees({run_id: root for run_id, (root, _) in runs.items() if root})
        trees = {run_id: set(trees.get(run_id, ())) for run_id in runs}
        if rss_bytes is None:
            rss_bytes = run_rss_bytes(trees)
        now_mono = time.monotonic()
        now_wall = time.time()
        baselines: dict[int, _CpuBaseline] = {}
        usages: dict[int, RunUsage] = {}
        for run_id, (_, folders) in runs.items():
            cpu_percent, processes = self._cpu(run_id, trees[run_id], now_mono, now_wall, baselines)
            usages[run_id] = RunUsage(
                run_id=run_id,
                at=now,
                cpu_percent=cpu_percent,
                rss_bytes=int(rss_bytes.get(run_id, 0)),
                gpu_mem_bytes=_gpu_mem_bytes(trees[run_id], gpus),
                gpu_util_percent=_gpu_util_percent(held_gpus.get(run_id, ()), gpus),
                disk_bytes=self._disk_bytes(run_id, folders, now),
                processes=processes,
            )
        self._baselines = baselines
        for state in (self._last_read_mono, self._last_cpu_percent, self._disk):
            for run_id in set(state) - set(runs):
                del state[run_id]
        return usages

    def _cpu(
        self, run_id: int, pids: set[int], now_mono: float, now_wall: float, baselines: dict[int, _CpuBaseline]
    ) -> tuple[float, int]:
        """The run's CPU percent and live process count; records new baselines."""
        previous_mono = self._last_read_mono.get(run_id)
        too_soon = previous_mono is not None and now_mono - previous_mono < MIN_CPU_WINDOW_S
        rate = 0.0
        processes = 0
        for pid, created_at, cpu_s in _read_cpu(pids):
            processes += 1
            old = self._baselines.get(pid)
            known = old is not None and abs(old.created_at - created_at) <= CREATE_TIME_TOLERANCE_S
            if too_soon:
                # Keep the old window open rather than read a tiny one; a new process
                # stays unknown so that its CPU time so far is counted next time.
                if known:
                    baselines[pid] = old
                continue
            baselines[pid] = _CpuBaseline(created_at, cpu_s, now_mono)
            if known:
                rate += max(0.0, cpu_s - old.cpu_s) / max(now_mono - old.read_at_mono, MIN_CPU_WINDOW_S)
            else:
                age_s = max(now_wall - created_at, MIN_CPU_WINDOW_S)
                window_s = age_s if previous_mono is None else max(age_s, now_mono - previous_mono)
                rate += cpu_s / window_s
        if too_soon and processes:
            return self._last_cpu_percent.get(run_id, 0.0), processes
        percent = round(100.0 * rate, 1)
        self._last_read_mono[run_id] = now_mono
        self._last_cpu_percent[run_id] = percent
        return percent, processes

    def _disk_bytes(self, run_id: int, folders: Sequence[Path], now: float) -> int | None:
        key = tuple(str(folder) for folder in folders)
        cached = self._disk.get(run_id)
        # A clock that went backwards (now < measured_at) re-measures rather than
        # trusting a reading of unknown age.
        if cached is not None and cached.folders == key and 0 <= now - cached.measured_at < self.disk_interval_s:
            return cached.disk_bytes
        disk_bytes = folder_bytes(folders)
        self._disk[run_id] = _DiskReading(key, now, disk_bytes)
        return disk_bytes


def _read_cpu(pids: Iterable[int]) -> Iterable[tuple[int, float, float]]:
    """``(pid, created_at, cpu_s)`` of each live process; vanished ones and zombies are skipped."""
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                times = process.cpu_times()
                created_at = process.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        yield pid, created_at, float(times.user + times.system)


def _gpu_mem_bytes(pids: set[int], gpus: Sequence[GpuSample]) -> int:
    return sum(proc.used_mem or 0 for gpu in gpus for proc in gpu.processes if proc.pid in pids)


def _gpu_util_percent(held: Sequence[int], gpus: Sequence[GpuSample]) -> float | None:
    wanted = set(held)
    utils = [
        gpu.util_percent
        for gpu in gpus
        if gpu.index in wanted and gpu.available and gpu.util_percent is not None
    ]
    return round(sum(utils) / len(utils), 1) if utils else None


def folder_bytes(folders: Sequence[Path]) -> int | None:
    """Disk allocated under ``folders``, in bytes, as ``du`` counts it.

    Allocated blocks rather than apparent sizes, because what matters is the free space
    a run takes from the box (a sparse file takes little). Each file counts once even
    when hard-linked or reachable from two of the folders (a checkpoint directory
    inside the run directory). Symbolic links inside are not followed, and the walk
    stays on each folder's filesystem, so a link or mount to a dataset does not make the
    run look huge.

    Args:
        folders: Directories (or files); those given are followed if they are links.

    Returns:
        The total, or ``None`` when none of the folders exists or can be read.
        Entries that cannot be read (permissions, removed mid-walk) are skipped.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    readable = False
    stack: list[tuple[str, int]] = []
    for folder in folders:
        try:
            info = os.stat(folder)
        except OSError:
            continue
        readable = True
        if _first_time(info, seen):
            total += _allocated_bytes(info)
            if stat.S_ISDIR(info.st_mode):
                stack.append((os.fspath(folder), info.st_dev))
    while stack:
        directory, device = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if info.st_dev != device or not _first_time(info, seen):
                        continue
                    total += _allocated_bytes(info)
                    if stat.S_ISDIR(info.st_mode):
                        stack.append((entry.path, device))
        except OSError:
            continue
    return total if readable else None


def _first_time(info: os.stat_result, seen: set[tuple[int, int]]) -> bool:
    identity = (info.st_dev, info.st_ino)
    if identity in seen:
        return False
    # Remembering every inode would cost memory on big folders; only directories (two
    # folders may overlap) and hard-linked files can be met twice.
    if info.st_nlink > 1 or stat.S_ISDIR(info.st_mode):
        seen.add(identity)
    return True


def _allocated_bytes(info: os.stat_result) -> int:
    blocks = getattr(info, "st_blocks", None)
    return int(blocks) * 512 if blocks is not None else int(info.st_size)
