"""Which usage on the box is runyard's own runs', and which is everyone else's.

Admission subtracts two things from the box: what runyard's runs *reserved* (their
envelopes) and what *others* really use. Counting a run's actual usage as "other" too
would charge it twice, so observed usage is split here by process tree.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import psutil

from engine.policy import BoxView, GpuView
from engine.probes.gpu import GpuSample
from engine.probes.host import HostSample


def run_process_trees(root_pids: Mapping[int, int]) -> dict[int, set[int]]:
    """The live processes of each run.

    A run's processes are its root and all its descendants, plus every process still in
    the session or the process group the root leads (the shim starts each command as
    the leader of its own process group). These catch workers orphaned when their
    parent exits: they are re-parented away from the tree but keep holding memory and
    GPUs. Linux does not reuse a pid while it names a live session or process group,
    so these matches cannot pick up strangers.

    Args:
        root_pids: ``run_id -> pid`` of each running run's top process. The caller must
            only pass pids it knows are still its runs' (pids are reused once a run ends).

    Returns:
        ``run_id -> pids``; a run whose processes have all gone maps to an empty set.
        Processes that vanish during the scan are skipped.
    """
    if not root_pids:
        return {}
    # One pass over the process table serves every run, instead of one psutil
    # children() walk (itself a full scan) per run.
    children: dict[int, list[int]] = defaultdict(list)
    sessions: dict[int, list[int]] = defaultdict(list)
    groups: dict[int, list[int]] = defaultdict(list)
    alive: set[int] = set()
    for proc in psutil.process_iter(["ppid"]):
        pid = proc.pid
        alive.add(pid)
        ppid = proc.info.get("ppid")
        if ppid is not None:
            children[ppid].append(pid)
        sid = _session_of(pid)
        if sid is not None:
            sessions[sid].append(pid)
        pgid = _group_of(pid)
        if pgid is not None and pgid != sid:
            groups[pgid].append(pid)
    trees: dict[int, set[int]] = {}
    for run_id, root in root_pids.items():
        seeds = ([root] if root in alive else []) + sessions.get(root, []) + groups.get(root, [])
        trees[run_id] = _descendants(seeds, children)
    return trees


def run_rss_bytes(trees: Mapping[int, set[int]]) -> dict[int, int]:
    """Resident memory of each run's processes, in bytes.

    Uses PSS (proportional set size) where the kernel offers it cheaply, RSS otherwise.
    Forked workers (DataLoader) share their parent's pages; RSS would count each
    shared page once per worker and make a run look several times its real size, both
    to the memory limit and to the split between runyard and foreign usage.

    Args:
        trees: As returned by :func:`run_process_trees`.

    Returns:
        ``run_id -> bytes``; processes that vanished in the meantime count as 0.
    """
    return {run_id: sum(_resident_bytes(pid) for pid in pids) for run_id, pids in trees.items()}


def box_view(
    host: HostSample,
    gpus: Sequence[GpuSample],
    trees: Mapping[int, set[int]],
    runyard_rss_bytes: int,
) -> BoxView:
    """The box as admission sees it: totals, and what is used by processes not in runyard's runs.

    Pure: no psutil, no NVML, so it is tested on plain values.

    Args:
        host: A host sample.
        gpus: GPU samples (NVML or simulated).
        trees: ``run_id -> pids`` of runyard's running runs.
        runyard_rss_bytes: Resident memory of all those runs together.

    Returns:
        A :class:`~engine.policy.BoxView`. A GPU process whose memory the driver does not
        report (``used_mem is None``) leaves its share counted as foreign even when it is
        runyard's: over-counting others only delays a start, under-counting risks an
        out-of-memory crash on the card.
    """
    runyard_pids: set[int] = set().union(*trees.values()) if trees else set()
    mem_used = host.mem_total - host.mem_available
    return BoxView(
        cpus=host.cpus,
        mem_total=host.mem_total,
        mem_foreign=max(0, mem_used - runyard_rss_bytes),
        disk_free=host.disk_free,
        gpus=tuple(_gpu_view(gpu, runyard_pids) for gpu in gpus),
    )


def _gpu_view(gpu: GpuSample, runyard_pids: set[int]) -> GpuView:
    ours = [proc for proc in gpu.processes if proc.pid in runyard_pids]
    ours_bytes = sum(proc.used_mem or 0 for proc in ours)
    return GpuView(
        index=gpu.index,
        mem_total=gpu.mem_total,
        mem_foreign=max(0, gpu.mem_used - ours_bytes),
        foreign_procs=len(gpu.processes) - len(ours),
        available=gpu.available,
        unavailable_reason=gpu.unavailable_reason,
    )


def _session_of(pid: int) -> int | None:
    if not hasattr(os, "getsid"):
        return None
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _descendants(seeds: Iterable[int], children: Mapping[int, list[int]]) -> set[int]:
    found: set[int] = set()
    stack = list(seeds)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


def _resident_bytes(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        try:
            pss = getattr(proc.memory_full_info(), "pss", None)
            if pss is not None:
                return int(pss)
        except (psutil.AccessDenied, NotImplementedError, OSError):
            pass
        return int(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return 0
