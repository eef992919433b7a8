"""Plain-text pieces of the interface, computed from the engine's JSON answers.

Pure functions of their arguments (the clock is passed in), so the widgets stay thin
and every figure shown is testable without a terminal. The engine's answers are read
with ``.get`` throughout: an older or newer daemon must degrade the display, not crash it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.envelope import Envelope, EnvelopeError
from engine.units import format_duration, format_size

STATE_LABELS = {"timed_out": "timed out"}
STATE_COLOR_VARIABLES = {
    "queued": "text-secondary",
    "running": "text-primary",
    "succeeded": "text-success",
    "failed": "text-error",
    "cancelled": "foreground-muted",
    "timed_out": "text-warning",
}
"""Theme variable that colours each run state, so every theme recolours the queue."""
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
_STATE_ORDER = {"running": 0, "queued": 1}

DRAINING_FLAG = " · DRAINING"
_GPU_NAME_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)


def state_color_variable(run: Mapping[str, Any]) -> str:
    if run.get("state") == "queued" and run.get("held"):
        return "text-warning"
    return STATE_COLOR_VARIABLES.get(str(run.get("state")), "foreground")


def sort_runs(runs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Running, then queued (in the engine's order: it is the admission order), then the
    finished ones, most recent first."""
    active = [run for run in runs if run.get("state") not in TERMINAL_STATES]
    finished = [run for run in runs if run.get("state") in TERMINAL_STATES]
    active.sort(key=lambda run: _STATE_ORDER.get(str(run.get("state")), 2))
    finished.sort(key=lambda run: -(run.get("ended_at") or run.get("submitted_at") or 0.0))
    return active + finished


def envelope_text(run: Mapping[str, Any]) -> str:
    try:
        return Envelope.from_dict(run.get("envelope") or {}).describe()
    except (EnvelopeError, TypeError, ValueError):
        return "?"


def gpus_text(run: Mapping[str, Any]) -> str:
    return ",".join(str(index) for index in run.get("gpus") or ())


def exit_text(run: Mapping[str, Any]) -> str:
    if run.get("exit_code") is not None:
        return str(run["exit_code"])
    return str(run.get("signal") or "")


def time_or_reason(run: Mapping[str, Any], now: float) -> str:
    """What a person wants next to the state: how long it has run, or why it waits."""
    state = run.get("state")
    reason = str(run.get("reason") or "")
    started_at = run.get("started_at")
    if state == "queued":
        if run.get("held"):
            return reason or "held"
        return reason or "queued"
    if state == "running":
        elapsed = format_duration(max(0.0, now - started_at)) if started_at else "starting"
        limit = (run.get("envelope") or {}).get("time_limit_s")
        return f"{elapsed} of {format_duration(limit)}" if limit else elapsed
    if started_at is not None:
        ended_at = run.get("ended_at") or now
        text = f"ran {format_duration(max(0.0, ended_at - started_at))}"
    else:
        text = "never started"
    return f"{text} · {reason}" if reason else text


def when_text(run: Mapping[str, Any], now: float) -> str:
    """The moment that matters for the run's state: ``started 2h13m ago`` when running,
    ``submitted …`` while queued, ``ended …`` once finished."""
    state = run.get("state")
    if state == "running":
        event, moment = "started", run.get("started_at")
    elif state in TERMINAL_STATES:
        event, moment = "ended", run.get("ended_at")
    else:
        event, moment = "submitted", run.get("submitted_at")
    if not moment:
        return ""
    return f"{event} {format_duration(max(0.0, now - moment))} ago"


def command_text(run: Mapping[str, Any]) -> str:
    return " ".join(str(part) for part in run.get("argv") or ())


def short_gpu_name(name: str | None) -> str:
    """``NVIDIA A100-SXM4-80GB`` -> ``A100-SXM4-80GB``: the vendor says nothing on a GPU box."""
    text = str(name or "GPU")
    for prefix in _GPU_NAME_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def mem_pair_text(used_bytes: int | float | None, total_bytes: int | float | None) -> str:
    return f"{format_size(used_bytes)}/{format_size(total_bytes)}"


def fraction(part: float | None, whole: float | None) -> float:
    """``part / whole`` clamped to [0, 1]; 0 when either is unknown."""
    if not part or not whole or whole <= 0:
        return 0.0
    return max(0.0, min(1.0, float(part) / float(whole)))


def bar_cells(width: int, used: float, reserved: float = 0.0) -> tuple[int, int, int]:
    """Cells of a bar ``width`` wide: (used, reserved beyond used, free).

    A run may reserve memory it has not touched yet; that part is shown apart from what
    is really used, and a non-zero share always gets at least one cell so it is visible.
    """
    width = max(0, width)
    used_cells = _cells(width, used)
    reserved_cells = min(width - used_cells, _cells(width, max(0.0, reserved - used)))
    return used_cells, reserved_cells, width - used_cells - reserved_cells


def _cells(width: int, share: float) -> int:
    if share <= 0 or width == 0:
        return 0
    return max(1, min(width, round(share * width)))


def level_variable(share: float) -> str:
    """Colour of a usage figure: calm, then warning, then error as the box fills up."""
    if share >= 0.9:
        return "error"
    if share >= 0.7:
        return "warning"
    return "success"


def holders_text(holders: list[int] | None, max_width: int | None = None) -> str:
    """``runs 4,7``; just ``5 runs`` when the ids do not fit in ``max_width``."""
    if not holders:
        return "idle"
    label = "run" if len(holders) == 1 else "runs"
    text = f"{label} {','.join(str(run_id) for run_id in holders)}"
    if max_width is not None and len(text) > max_width:
        return f"{len(holders)} {label}"
    return text


def reserved_text(reserved: Mapping[str, Any]) -> str:
    cpus = float(reserved.get("cpus") or 0)
    gpus = int(reserved.get("gpus") or 0)
    parts = [f"{cpus:g} CPU", format_size(reserved.get("mem_bytes") or 0)]
    parts.append(f"{gpus} GPU" + ("" if gpus == 1 else "s"))
    return ", ".join(parts)


def counts_text(counts: Mapping[str, Any]) -> str:
    """``2 running · 3 queued · 5 finished (1 failed)``; "failed" includes timed out."""
    parts = [f"{counts.get(state) or 0} {state}" for state in ("running", "queued")]
    finished = sum(int(counts.get(state) or 0) for state in TERMINAL_STATES)
    if finished:
        failed = int(counts.get("failed") or 0) + int(counts.get("timed_out") or 0)
        parts.append(f"{finished} finished" + (f" ({failed} failed)" if failed else ""))
    return " · ".join(parts)


def engine_line(status: Mapping[str, Any], hostname: str) -> str:
    """``gpubox · daemon · GPUs: simulated 4x80G``, ending in ``· DRAINING`` when draining."""
    engine = status.get("engine") or {}
    parts = [hostname, str(engine.get("mode") or "?"), f"GPUs: {engine.get('gpu_source') or '?'}"]
    text = " · ".join(parts)
    return text + DRAINING_FLAG if engine.get("draining") else text
