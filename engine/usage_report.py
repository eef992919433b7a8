"""A run's usage against its envelope, as lines of text: ``asked 64G, peak 11.2G``.

Stdlib only: ``runyard show ID --usage`` formats with it, with or without an engine.
"""

from __future__ import annotations

from typing import Any

from engine.envelope import Envelope
from engine.units import format_duration, format_size

NO_USAGE = "no usage recorded (the run has not been sampled while running)"


def format_usage(run: dict[str, Any], summary: dict[str, Any] | None) -> str:
    """Lines for a terminal: one per resource, the envelope first, then peak and mean.

    Args:
        run: The run as JSON (``Run.to_json``).
        summary: ``History.run_summary`` of the run, or ``None`` if it was never sampled.
    """
    head = f"run {run['id']} ({run['name']}), {run['state']}"
    if summary is None:
        return f"{head}: {NO_USAGE}"
    envelope = Envelope.from_dict(run["envelope"])
    span = format_duration(max(0.0, summary["last_at"] - summary["first_at"]))
    lines = [f"{head}: {summary['samples']} samples over {span}"]
    rows: list[tuple[str, str]] = []

    cpu = summary["cpu_percent"]
    rows.append(("cpu", _against(f"{envelope.cpus:g} cores", _cores(cpu["max"]), _cores(cpu["mean"]))))

    rss = summary["rss_bytes"]
    asked_mem = format_size(envelope.mem_bytes) if envelope.mem_bytes else "no limit"
    rows.append(("memory", _against(asked_mem, _size(rss["max"]), _size(rss["mean"]))))

    if envelope.gpus or (summary["gpu_mem_bytes"]["max"] or 0) > 0:
        gpu_mem = summary["gpu_mem_bytes"]
        if envelope.gpus and envelope.gpu_mem_bytes is not None:
            asked_gpu = f"{envelope.gpus}x{format_size(envelope.gpu_mem_bytes)}"
        else:
            asked_gpu = f"{envelope.gpus} whole GPU{'s' if envelope.gpus != 1 else ''}"
        rows.append(("gpu memory", _against(asked_gpu, _size(gpu_mem["max"]), _size(gpu_mem["mean"]))))
        util = summary["gpu_util_percent"]
        if util["max"] is not None:
            rows.append(("gpu util", f"peak {util['max']:.0f}%, mean {util['mean']:.0f}%"))

    disk = summary["disk_bytes"]
    if disk["max"] is not None:
        asked_disk = format_size(envelope.disk_bytes) if envelope.disk_bytes else "none declared"
        rows.append(("disk", _against(asked_disk, _size(disk["max"]), _size(disk["mean"]))))
    rows.append(("processes", f"peak {summary['processes']['max']}"))

    width = max(len(name) for name, _ in rows)
    lines.extend(f"  {name.ljust(width)}  {text}" for name, text in rows)
    if run.get("warning"):
        lines.append(f"  warning: {run['warning']}")
    return "\n".join(lines)


def _against(asked: str, peak: str, mean: str) -> str:
    return f"asked {asked}, peak {peak}, mean {mean}"


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _cores(percent: float | None) -> str:
    return "-" if percent is None else f"{percent / 100:.2f} cores"
