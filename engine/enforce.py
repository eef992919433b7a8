"""Keeping a run inside its envelope: which cores it gets, when it has outgrown its
memory, and how an OOM kill is told apart from a crash.

Pure functions: the engine feeds them what it sampled and what the launcher observed,
and acts on the answer. Nothing here touches processes or files.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from engine.envelope import Envelope
from engine.model import ON_OVERRUN_CHOICES
from engine.units import format_size

OnOverrun = Literal["default", "warn", "kill"]
"""``default``: memory over the envelope kills, GPU memory over it warns (a GPU overrun
usually fails the run's own allocation first, while host memory pressure takes down
neighbours). ``warn``: both only warn. ``kill``: both kill."""

Action = Literal["kill", "warn"]
Resource = Literal["mem", "gpu_mem"]

_ACTIONS: dict[str, dict[Resource, Action]] = {
    "default": {"mem": "kill", "gpu_mem": "warn"},
    "warn": {"mem": "warn", "gpu_mem": "warn"},
    "kill": {"mem": "kill", "gpu_mem": "kill"},
}

BOX_OOM_REASON = "probably killed by the kernel's OOM killer (the box's oom_kill count rose)"


@dataclass(frozen=True)
class Verdict:
    """What to do about a run that has outgrown its envelope."""

    action: Action
    reason: str
    """One line for the user: ``exceeded memory envelope 16G (peak 17.2G)``."""
    resources: tuple[Resource, ...]
    """Which limits the reason names, so a caller can warn once per resource."""


def assign_cores(cpus: float, available: Sequence[int], taken: Collection[int]) -> tuple[int, ...] | None:
    """The cores to pin a run to: ``cpus`` of ``available`` that no other run holds.

    Only whole-number requests are pinned: a fractional share (``0.5``) has no cores of
    its own to be given. The lowest-numbered free cores are chosen, so runs fill the box
    from one end and a large request later still finds a contiguous block more often.

    Args:
        cpus: the run's ``--cpus``.
        available: cores the engine may hand out (its own ``os.sched_getaffinity(0)``).
        taken: cores pinned to runyard runs that are still running.

    Returns:
        Sorted core numbers, or ``None`` when the run is not to be pinned: ``cpus`` is
        not whole, or fewer than ``cpus`` cores are free (admission counts fractional,
        unpinned runs too, so this can happen; such a run shares every core).
    """
    if cpus < 1 or cpus != int(cpus):
        return None
    wanted = int(cpus)
    held = set(taken)
    free = sorted(core for core in set(available) if core not in held)
    if len(free) < wanted:
        return None
    return tuple(free[:wanted])


def gpu_mem_envelope_bytes(envelope: Envelope) -> int | None:
    """GPU memory the run may use over all its GPUs; ``None`` when it holds whole cards
    (there is no smaller limit to overrun)."""
    if envelope.gpu_mem_bytes is None or envelope.gpus == 0:
        return None
    return envelope.gpu_mem_bytes * envelope.gpus


def check_overrun(
    envelope: Envelope,
    on_overrun: str,
    usage_rss_bytes: int,
    usage_gpu_mem_bytes: int,
    peak_rss_bytes: int,
    peak_gpu_mem_bytes: int,
) -> Verdict | None:
    """Whether the run's sampled usage is over its envelope, and what to do about it.

    Decided on current usage: a spike that has passed is reported by its peak but does
    not condemn a run that came back inside. ``--mem 0`` sets no memory limit.

    Args:
        envelope: the run's envelope.
        on_overrun: one of :data:`ON_OVERRUN_CHOICES`.
        usage_rss_bytes: resident memory of the run's process tree now.
        usage_gpu_mem_bytes: GPU memory of the run's processes now, over all its GPUs.
        peak_rss_bytes: the highest resident memory seen for the run.
        peak_gpu_mem_bytes: the highest GPU memory seen for the run.

    Returns:
        ``None`` when the run is inside its envelope. Otherwise a kill verdict if any
        overrun kills (its reason names only the killing overruns, since that is why the
        run ends), else a warning naming every overrun.

    Raises:
        ValueError: ``on_overrun`` is not a known choice.
    """
    actions = _ACTIONS.get(on_overrun)
    if actions is None:
        raise ValueError(f"on-overrun must be one of {', '.join(ON_OVERRUN_CHOICES)}; got {on_overrun!r}")
    found: list[tuple[Action, Resource, str]] = []
    if envelope.mem_bytes > 0 and usage_rss_bytes > envelope.mem_bytes:
        peak = max(peak_rss_bytes, usage_rss_bytes)
        found.append(
            (
                actions["mem"],
                "mem",
                f"exceeded memory envelope {format_size(envelope.mem_bytes)} (peak {format_size(peak)})",
            )
        )
    gpu_limit = gpu_mem_envelope_bytes(envelope)
    if gpu_limit is not None and usage_gpu_mem_bytes > gpu_limit:
        peak = max(peak_gpu_mem_bytes, usage_gpu_mem_bytes)
        found.append(
            (
                actions["gpu_mem"],
                "gpu_mem",
                f"exceeded GPU memory envelope {format_size(gpu_limit)} (peak {format_size(peak)})",
            )
        )
    if not found:
        return None
    action: Action = "kill" if any(item[0] == "kill" for item in found) else "warn"
    chosen = [item for item in found if item[0] == action]
    return Verdict(action, "; ".join(item[2] for item in chosen), tuple(item[1] for item in chosen))


def oom_count_rose(before: int | None, after: int | None) -> bool | None:
    """Whether the box's ``oom_kill`` count (``/proc/vmstat``) rose between a run's launch
    and its end; ``None`` when either reading is missing."""
    if before is None or after is None:
        return None
    return after > before


def exit_reason(
    *,
    exit_code: int | None,
    signal: str | None,
    envelope: Envelope,
    oom_killed: bool | None,
    box_oom_kill_rose: bool | None,
    runyard_sent_kill: bool,
) -> str | None:
    """The reason for a run's end when the kernel's OOM killer had a hand in it.

    Args:
        exit_code: as observed (``-9`` for SIGKILL).
        signal: the name of the signal that ended the run, if one did.
        envelope: the run's envelope.
        oom_killed: from the run's own cgroup: whether the OOM killer killed any of its
            processes; ``None`` when the run had no cgroup.
        box_oom_kill_rose: whether the box-wide OOM kill count rose during the run
            (:func:`oom_count_rose`); only consulted without a cgroup.
        runyard_sent_kill: runyard itself sent SIGKILL (a stop's grace ran out).

    Returns:
        One of these, or ``None`` when the usual reason (exit code or signal) stands:

        * ``killed by the kernel's OOM killer: exceeded memory envelope 16G``
          (the cgroup's OOM killer, the run died of SIGKILL);
        * ``exit code 1 after the kernel's OOM killer killed one of its processes:
          exceeded memory envelope 16G`` (say a data-loader worker was killed and the
          main process gave up; ``killed by SIGABRT after ...`` for a signal);
        * :data:`BOX_OOM_REASON` (no cgroup; a SIGKILL runyard did not send while the
          box's count rose: someone else's process may have been the victim, hence
          "probably").

        A run that exited 0 succeeded whatever happened to its helpers: ``None``.
    """
    if exit_code == 0:
        return None
    killed_by_kernel = signal == "SIGKILL" and not runyard_sent_kill
    if oom_killed:
        cause = (
            f"exceeded memory envelope {format_size(envelope.mem_bytes)}"
            if envelope.mem_bytes > 0
            else "the box ran out of memory"
        )
        if killed_by_kernel:
            return f"killed by the kernel's OOM killer: {cause}"
        how = f"killed by {signal}" if signal else f"exit code {exit_code}"
        return f"{how} after the kernel's OOM killer killed one of its processes: {cause}"
    if oom_killed is None and killed_by_kernel and box_oom_kill_rose:
        return BOX_OOM_REASON
    return None
