"""Admission: which queued runs start now, on which GPUs, and why the others wait.

A pure, deterministic function of (queue, what running runs hold, what the box shows
free, the clock). No I/O, no clock reads, no randomness: every scheduling behaviour is
testable without a GPU and without sleeping.

IMPLEMENTATION PENDING (see docstring of :func:`decide` for the contract).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.envelope import Envelope


@dataclass(frozen=True)
class GpuView:
    """One GPU as admission sees it."""

    index: int
    mem_total: int
    """Bytes (``nvidia-smi --query-gpu=memory.total``)."""
    mem_foreign: int = 0
    """Bytes used by processes that are not in any runyard run."""
    foreign_procs: int = 0
    """Compute processes on the card that are not in any runyard run."""
    available: bool = True
    """False when the GPU is lost, excluded, or NVML cannot read it: never placed on."""
    unavailable_reason: str | None = None


@dataclass(frozen=True)
class BoxView:
    """The box as admission sees it: totals, and what others (not runyard) use."""

    cpus: float
    mem_total: int
    mem_foreign: int = 0
    """Bytes in use by processes outside runyard's runs (other users, the OS)."""
    disk_free: int = 1 << 60
    """Free bytes on the filesystem of runyard's home, as observed now."""
    gpus: tuple[GpuView, ...] = ()


@dataclass(frozen=True)
class Holding:
    """What one running run holds."""

    run_id: int
    envelope: Envelope
    gpus: tuple[int, ...] = ()
    expected_end: float | None = None
    """Start + time limit; ``None`` when the run has no limit (it may end at any moment
    or never: admission assumes the worst for each purpose)."""


@dataclass(frozen=True)
class QueuedRun:
    run_id: int
    envelope: Envelope
    priority: int = 0
    submitted_at: float = 0.0
    held: bool = False


@dataclass(frozen=True)
class Start:
    run_id: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Decision:
    starts: tuple[Start, ...] = ()
    """Runs to start now, in order, each with its concrete GPU indices."""
    waiting: Mapping[int, str] = field(default_factory=dict)
    """Every queued run not started, with a human reason beginning ``waiting:`` (or
    ``held``/``draining``)."""
    refused: Mapping[int, str] = field(default_factory=dict)
    """Queued runs that can never fit this box, with a one-line reason naming the resource."""


def never_fits(envelope: Envelope, box: BoxView) -> str | None:
    """Why ``envelope`` can never run on ``box`` even when it is empty, or ``None``."""
    raise NotImplementedError


def decide(
    queue: Sequence[QueuedRun],
    holdings: Sequence[Holding],
    box: BoxView,
    now: float,
    *,
    draining: bool = False,
) -> Decision:
    """Decide admissions. See module docstring."""
    raise NotImplementedError
