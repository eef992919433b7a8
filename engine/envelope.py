"""The resource envelope a run declares, and the checks that need no knowledge of the box."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from engine.units import UnitError, format_duration, format_size, parse_duration, parse_size

DEFAULT_CPUS = 1.0
DEFAULT_MEM_BYTES = 1 << 30
DEFAULT_GRACE_S = 30.0

RESOURCE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
"""A named counted resource (``nfs_io``, ``licence.matlab``); match with ``fullmatch``.
Names are case-sensitive and cannot hold ``=``, ``,`` or spaces, so ``--res`` items split cleanly."""

_COUNT_RE = re.compile(r"[0-9]+")
_RES_HINT = "write NAME=COUNT, e.g. --res nfs_io=1"
_RES_TWICE = "--res {name} is given twice: give it once with the total, e.g. --res {name}=2"


class EnvelopeError(ValueError):
    """An envelope that cannot be honoured on any box; the message is one line for the user."""


@dataclass(frozen=True)
class Envelope:
    """What a run asks for. Defaults fit a small CPU job."""

    cpus: float = DEFAULT_CPUS
    """CPU cores; may be fractional (0.5)."""
    mem_bytes: int = DEFAULT_MEM_BYTES
    """Resident memory of the whole process tree."""
    gpus: int = 0
    """Whole number of GPUs."""
    gpu_mem_bytes: int | None = None
    """Memory per GPU. ``None`` with ``gpus > 0`` holds whole GPUs exclusively;
    a value makes the request packable beside other runs on the same card."""
    disk_bytes: int = 0
    """Free disk needed on the filesystem holding runyard's home (logs, checkpoints)."""
    time_limit_s: float | None = None
    """Wall-clock limit; ``None`` means no limit (such runs cannot be backfilled)."""
    resources: tuple[tuple[str, int], ...] = ()
    """Named counted resources the box's config declares (a licence, a filesystem's I/O
    slots), as ``(name, count)`` sorted by name. A mapping or unsorted pairs are accepted
    and normalised, so equal requests compare and hash equal."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", _normalise_resources(self.resources))
        if not (isinstance(self.cpus, (int, float)) and math.isfinite(self.cpus) and self.cpus > 0):
            raise EnvelopeError(f"--cpus must be a positive number, got {self.cpus!r}")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise EnvelopeError(f"--gpus must be a whole number of GPUs (0 or more), got {self.gpus!r}")
        if self.mem_bytes < 0 or self.disk_bytes < 0:
            raise EnvelopeError("--mem and --disk cannot be negative")
        if self.gpu_mem_bytes is not None:
            if self.gpu_mem_bytes <= 0:
                raise EnvelopeError("--gpu-mem must be more than 0 (or leave it out to hold whole GPUs)")
            if self.gpus == 0:
                raise EnvelopeError("--gpu-mem needs --gpus 1 or more (it is memory per GPU)")
        if self.time_limit_s is not None and not (math.isfinite(self.time_limit_s) and self.time_limit_s > 0):
            raise EnvelopeError("--time must be longer than 0s")

    @property
    def exclusive_gpus(self) -> bool:
        return self.gpus > 0 and self.gpu_mem_bytes is None

    def to_dict(self) -> dict:
        """JSON-ready; ``resources`` becomes ``{"nfs_io": 1}``, keys in name order."""
        data = asdict(self)
        data["resources"] = dict(self.resources)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Envelope:
        """Inverse of :meth:`to_dict`; absent keys take the defaults. Raises :class:`EnvelopeError`."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data and data[name] is not None}
        if "gpu_mem_bytes" in data:
            known["gpu_mem_bytes"] = data["gpu_mem_bytes"]
        if "time_limit_s" in data:
            known["time_limit_s"] = data["time_limit_s"]
        return cls(**known)

    @classmethod
    def parse(
        cls,
        *,
        cpus: str | float | None = None,
        mem: str | None = None,
        gpus: str | int | None = None,
        gpu_mem: str | None = None,
        disk: str | None = None,
        time: str | None = None,
        res: Sequence[str] | str | None = None,
    ) -> Envelope:
        """Build from the strings of the CLI or the TUI form; raises :class:`EnvelopeError`.

        ``res`` holds ``--res`` items, ``NAME=COUNT`` or a bare ``NAME`` for a count of 1.
        A single string (the TUI form's one field) is split on commas and spaces. A name
        given twice is refused rather than summed: ``--res nfs_io=1 --res nfs_io=2`` is
        more likely a default plus an override than a wish for 3.
        """
        try:
            values: dict = {}
            if cpus is not None:
                try:
                    values["cpus"] = float(cpus)
                except ValueError:
                    raise EnvelopeError(f"--cpus must be a number such as 2 or 0.5, got {cpus!r}") from None
            if gpus is not None:
                text = str(gpus).strip()
                if not text.isdigit():
                    raise EnvelopeError(f"--gpus must be a whole number such as 0, 1 or 4, got {gpus!r}")
                values["gpus"] = int(text)
            if mem is not None:
                values["mem_bytes"] = parse_size(mem)
            if gpu_mem is not None:
                values["gpu_mem_bytes"] = parse_size(gpu_mem)
            if disk is not None:
                values["disk_bytes"] = parse_size(disk)
            if time is not None:
                values["time_limit_s"] = parse_duration(time)
            if res is not None:
                values["resources"] = _parse_res_items(res)
        except UnitError as error:
            raise EnvelopeError(str(error)) from None
        return cls(**values)

    def describe(self) -> str:
        """One short line: ``2 CPU, 16G, 1 GPU x 10G, 2h``."""
        parts = [f"{self.cpus:g} CPU", format_size(self.mem_bytes)]
        if self.gpus:
            gpu = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
            if self.gpu_mem_bytes is not None:
                gpu += f" x {format_size(self.gpu_mem_bytes)}"
            parts.append(gpu)
        if self.disk_bytes:
            parts.append(f"{format_size(self.disk_bytes)} disk")
        if self.time_limit_s is not None:
            parts.append(format_duration(self.time_limit_s))
        parts.extend(f"{name}={count}" for name, count in self.resources)
        return ", ".join(parts)


def _parse_res_items(res: Sequence[str] | str) -> tuple[tuple[str, int], ...]:
    items = [item for item in re.split(r"[\s,]+", res) if item] if isinstance(res, str) else list(res)
    counts: dict[str, int] = {}
    for item in items:
        name, equals, count_text = str(item).partition("=")
        name, count_text = name.strip(), count_text.strip()
        if not equals:
            count_text = "1"
        if not RESOURCE_NAME_RE.fullmatch(name) or not _COUNT_RE.fullmatch(count_text) or int(count_text) == 0:
            raise EnvelopeError(f"--res {item!r}: {_RES_HINT}")
        if name in counts:
            raise EnvelopeError(_RES_TWICE.format(name=name))
        counts[name] = int(count_text)
    return tuple(sorted(counts.items()))


def _normalise_resources(resources: object) -> tuple[tuple[str, int], ...]:
    """Sorted ``(name, count)`` pairs from a mapping or pairs; the checks a decoded request needs too."""
    if isinstance(resources, Mapping):
        pairs: Iterable = resources.items()
    elif isinstance(resources, Iterable) and not isinstance(resources, (str, bytes)):
        pairs = resources
    else:
        raise EnvelopeError(f'resources must map names to counts, e.g. {{"nfs_io": 1}}; got {resources!r}')
    counts: dict[str, int] = {}
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise EnvelopeError(f"resources must be (name, count) pairs; got {pair!r}")
        name, count = pair
        if not (isinstance(name, str) and RESOURCE_NAME_RE.fullmatch(name)):
            raise EnvelopeError(
                f"--res {name!r}: a resource name starts with a letter or _ and holds only letters, digits, _ . -"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise EnvelopeError(f"--res {name}={count!r}: the count must be a whole number of 1 or more")
        if name in counts:
            raise EnvelopeError(_RES_TWICE.format(name=name))
        counts[name] = count
    return tuple(sorted(counts.items()))
