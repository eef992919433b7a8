"""The resource envelope a run declares, and the checks that need no knowledge of the box."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from engine.units import UnitError, format_duration, format_size, parse_duration, parse_size

DEFAULT_CPUS = 1.0
DEFAULT_MEM_BYTES = 1 << 30
DEFAULT_GRACE_S = 30.0


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

    def __post_init__(self) -> None:
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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Envelope:
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
    ) -> Envelope:
        """Build from the strings of the CLI or the TUI form; raises :class:`EnvelopeError`."""
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
        return ", ".join(parts)
