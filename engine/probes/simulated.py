"""Simulated GPUs, for demos and tests on boxes without NVIDIA hardware.

``--simulate-gpus 2x80G,1x24G`` gives three cards. What "other users" do to them is
scripted in a small JSON file, re-read on every sample so a test or a demo can change
it while the daemon runs::

    {"0": {"mem_used": "20G", "procs": 1}, "2": {"lost": true}}

Keys are GPU indices. Per GPU: ``mem_used`` (a size such as ``"20G"``, or bytes),
``procs`` (foreign compute processes; default 1 when ``mem_used`` is set, else 0),
``util`` (percent), ``user`` (who runs the foreign processes; default ``other``), ``lost`` (the card fell off the bus) and ``reason`` (text shown when
lost). Write the file atomically (write a temporary file, then rename it): a half-written
file is ignored and the previous reading is kept.

Foreign processes get **negative pids** (``-(index * 1000 + n + 1)``). Real pids are
positive, so no runyard process tree can contain them and attribution always counts them
as someone else's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from engine.probes.gpu import GpuProcess, GpuSample
from engine.units import UnitError, format_size, parse_size

DEFAULT_GPU_MEM_BYTES = 80 << 30
MAX_SIMULATED_GPUS = 256

_GROUP_RE = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?(\S.*?)?\s*$")


def parse_gpu_spec(text: str) -> tuple[tuple[str, int], ...]:
    """The simulated cards a ``--simulate-gpus`` value describes.

    Args:
        text: Comma-separated groups, each ``N`` (N cards of 80G), ``NxSIZE`` or ``SIZE``
            (one card): ``"4x80G"``, ``"2x80G,1x24G"``, ``"1x40GiB"``, ``"8"``. ``"0"``
            means no GPUs.

    Returns:
        ``(name, mem_total_bytes)`` per card, in index order.

    Raises:
        ValueError: One line naming the expected form.
    """
    hint = f"--simulate-gpus: cannot read {text!r}; use e.g. 4x80G or 2x80G,1x24G"
    if not str(text).strip():
        raise ValueError(hint)
    cards: list[tuple[str, int]] = []
    for group in str(text).split(","):
        count, mem_bytes = _parse_group(group, hint)
        cards.extend([(f"Simulated GPU {format_size(mem_bytes)}", mem_bytes)] * count)
        if len(cards) > MAX_SIMULATED_GPUS:
            raise ValueError(f"--simulate-gpus: {text!r} is more than {MAX_SIMULATED_GPUS} GPUs")
    return tuple(cards)


def _parse_group(group: str, hint: str) -> tuple[int, int]:
    stripped = group.strip()
    if stripped.isdigit():
        return int(stripped), DEFAULT_GPU_MEM_BYTES
    match = _GROUP_RE.match(group)
    if not match or not match.group(2):
        raise ValueError(hint)
    count = int(match.group(1)) if match.group(1) is not None else 1
    try:
        mem_bytes = parse_size(match.group(2))
    except UnitError:
        raise ValueError(hint) from None
    if count == 0 or mem_bytes <= 0:
        raise ValueError(f"{hint} (each group needs at least one GPU with some memory)")
    return count, mem_bytes


@dataclass(frozen=True)
class _Foreign:
    mem_used: int = 0
    procs: int = 0
    util_percent: float | None = None
    lost: bool = False
    reason: str | None = None
    user: str = "other"


class SimulatedGpuProbe:
    """A :class:`~engine.probes.gpu.GpuProbe` over simulated cards.

    Args:
        spec: A ``--simulate-gpus`` value (see :func:`parse_gpu_spec`); a bad one raises
            ``ValueError`` here, before the daemon starts.
        foreign_file: JSON scripting other users' usage (see the module docstring). It
            need not exist; a missing file means nobody else uses the cards.
        exclude: Indices runyard must never use; left out of every sample, as with NVML.
    """

    def __init__(self, spec: str, foreign_file: Path | None = None, *, exclude: Collection[int] = ()) -> None:
        self._cards = parse_gpu_spec(spec)
        self._foreign_file = None if foreign_file is None else Path(foreign_file)
        self._exclude = {int(i) for i in exclude}
        self._last_foreign: dict[int, _Foreign] = {}
        used = sum(1 for i in range(len(self._cards)) if i not in self._exclude)
        self.status = f"simulated: {used} of {len(self._cards)} GPU{'s' if len(self._cards) != 1 else ''} ({spec})"

    def sample(self) -> tuple[GpuSample, ...]:
        """The cards now, with the foreign file's usage applied."""
        foreign = self._read_foreign()
        return tuple(
            self._sample_card(index, name, mem_total, foreign.get(index, _Foreign()))
            for index, (name, mem_total) in enumerate(self._cards)
            if index not in self._exclude
        )

    def close(self) -> None:
        """Nothing to release; present so the engine treats every probe alike."""

    def _sample_card(self, index: int, name: str, mem_total: int, foreign: _Foreign) -> GpuSample:
        uuid = f"GPU-sim-{index}"
        if foreign.lost:
            return GpuSample(
                index=index,
                name=name,
                uuid=uuid,
                mem_total=mem_total,
                mem_used=0,
                util_percent=None,
                temperature_c=None,
                power_w=None,
                processes=(),
                available=False,
                unavailable_reason=foreign.reason or "GPU is lost (simulated)",
            )
        mem_used = min(mem_total, foreign.mem_used)
        return GpuSample(
            index=index,
            name=name,
            uuid=uuid,
            mem_total=mem_total,
            mem_used=mem_used,
            util_percent=foreign.util_percent if foreign.util_percent is not None else 0.0,
            temperature_c=None,
            power_w=None,
            processes=_foreign_processes(index, mem_used, foreign.procs, foreign.user),
        )

    def _read_foreign(self) -> dict[int, _Foreign]:
        if self._foreign_file is None:
            return {}
        try:
            raw = json.loads(self._foreign_file.read_text())
        except FileNotFoundError:
            self._last_foreign = {}
            return {}
        except (OSError, ValueError):
            return self._last_foreign
        if not isinstance(raw, dict):
            return self._last_foreign
        parsed: dict[int, _Foreign] = {}
        for key, entry in raw.items():
            item = _parse_foreign_entry(key, entry)
            if item is not None:
                parsed[item[0]] = item[1]
        self._last_foreign = parsed
        return parsed


def _parse_foreign_entry(key: object, entry: object) -> tuple[int, _Foreign] | None:
    """One GPU's scripted usage, or ``None`` when the entry cannot be read (it is skipped)."""
    if not isinstance(entry, dict) or not str(key).strip().isdigit():
        return None
    try:
        mem = entry.get("mem_used", 0)
        mem_used = parse_size(mem) if isinstance(mem, str) else int(mem)
        procs = int(entry.get("procs", 1 if mem_used > 0 else 0))
        util = entry.get("util")
        reason = entry.get("reason")
        user = entry.get("user")
        return int(str(key).strip()), _Foreign(
            mem_used=max(0, mem_used),
            procs=max(0, procs),
            util_percent=None if util is None else float(util),
            lost=bool(entry.get("lost", False)),
            reason=None if reason is None else str(reason),
            user="other" if user is None else str(user),
        )
    except (TypeError, ValueError):
        return None


def _foreign_processes(index: int, mem_used: int, count: int, user: str) -> tuple[GpuProcess, ...]:
    if count <= 0:
        return ()
    share, remainder = divmod(mem_used, count)
    return tuple(
        GpuProcess(pid=-(index * 1000 + n + 1), used_mem=share + (remainder if n == 0 else 0), user=user)
        for n in range(count)
    )
