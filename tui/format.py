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
    """Running, then queued in admission order, then the finished ones, most recent first."""
    return sorted(runs, key=queue_order_key)


def queue_order_key(run: Mapping[str, Any]) -> tuple:
    """Running first; queued runs as the engine admits them (highest priority, then first
    come, first served: ``engine.policy``'s rule 1); finished runs newest first."""
    state = run.get("state")
    if state in TERMINAL_STATES:
        return (3, -as_number(run.get("ended_at") or run.get("submitted_at")), id_sort_key(run))
    rank = _STATE_ORDER.get(str(state), 2)
    if state == "queued":
        return (rank, -as_number(run.get("priority")), as_number(run.get("submitted_at")), id_sort_key(run))
    return (rank, 0.0, as_number(run.get("started_at")), id_sort_key(run))


def as_number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def id_sort_key(run: Mapping[str, Any]) -> tuple[int, str]:
    """Ids sort as numbers; an odd id from a confused engine still sorts, after them."""
    run_id = run.get("id")
    return (0, f"{run_id:020d}") if isinstance(run_id, int) else (1, str(run_id))


def envelope_text(run: Mapping[str, Any]) -> str:
    try:
        return Envelope.from_dict(run.get("envelope") or {}).describe()
    except (EnvelopeError, TypeError, ValueError):
        return "?"


def gpus_text(run: Mapping[str, Any]) -> str:
    return ",".join(str(index) for index in run.get("gpus") or ())


def where_text(run: Mapping[str, Any], *, short: bool = False) -> str:
    """Where a run handed to Slurm is: ``gpu017 · job 4242``, or ``job 4242`` while it is
    pending (no node yet). ``short`` is for a narrow table: the node alone once there is
    one (the run line and the run's detail still give the job id). Empty for a local run."""
    job = run.get("backend_job")
    if not job:
        return ""
    node = run.get("node")
    if not node:
        return f"job {job}"
    return str(node) if short else f"{node} · job {job}"


def slurm_text(run: Mapping[str, Any]) -> str:
    """``Slurm job 4242 on gpu017`` for a run handed to Slurm; empty for a local run."""
    job = run.get("backend_job")
    if not job:
        return ""
    node = run.get("node")
    return f"Slurm job {job} on {node}" if node else f"Slurm job {job}"


def exit_text(run: Mapping[str, Any]) -> str:
    if run.get("exit_code") is not None:
        return str(run["exit_code"])
    return str(run.get("signal") or "")


def time_or_reason(run: Mapping[str, Any], now: float) -> str:
    """What a person wants next to the state: how long it has run and how long it has
    left, or why it waits."""
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
        text = f"{elapsed} of {format_duration(limit)}" if limit else elapsed
        eta = eta_text(run, now)
        return f"{text} · {eta}" if eta else text
    if started_at is not None:
        ended_at = run.get("ended_at") or now
        text = f"ran {format_duration(max(0.0, ended_at - started_at))}"
    else:
        text = "never started"
    return f"{text} · {reason}" if reason else text


def eta_text(run: Mapping[str, Any], now: float) -> str:
    """``eta 45m`` from the run's heartbeats (``runyard.heartbeat``); empty without them."""
    eta = run.get("eta")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool):
        return ""
    return f"eta {format_duration(max(0.0, eta - now))}"


def progress_text(run: Mapping[str, Any]) -> str:
    """``step 1200/5000 (24%)`` from the last heartbeat; empty without one."""
    progress = run.get("progress")
    if not isinstance(progress, Mapping) or progress.get("step") is None:
        return ""
    step, total = progress.get("step"), progress.get("total")
    if isinstance(total, (int, float)) and total:
        return f"step {step}/{total} ({as_number(step) / float(total):.0%})"
    return f"step {step}"


HEALTH_LABELS = {"healthy": "ok", "unhealthy": "unhealthy", "stalled": "stalled", "starting": "starting"}
HEALTH_VARIABLES = {
    "ok": "text-success", "unhealthy": "text-error", "stalled": "text-error", "starting": "text-secondary",
    "warning": "text-warning",
}


def health_text(run: Mapping[str, Any]) -> str:
    """One word for the health column: the checks' verdict, ``warning`` when the engine
    noticed something (an overrun, an idle GPU), ``-`` when nothing checks the run, and
    nothing for a run that is not running (its health is history)."""
    if run.get("state") != "running":
        return ""
    health = run.get("health")
    if health in ("unhealthy", "stalled"):
        return HEALTH_LABELS[health]
    if run.get("warning"):
        return "warning"
    if health in HEALTH_LABELS:
        return HEALTH_LABELS[health]
    return "-"


def health_variable(text: str) -> str | None:
    return HEALTH_VARIABLES.get(text)


def attempts_text(run: Mapping[str, Any]) -> str:
    """``2/4``: attempt 2 of at most 4 (1 + retries); ``-`` from an engine that does not
    count attempts."""
    attempt = run.get("attempts", run.get("attempt"))
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return "-"
    retries = run.get("retries")
    if isinstance(retries, int) and not isinstance(retries, bool) and retries > 0:
        return f"{attempt}/{retries + 1}"
    return str(attempt)


def user_text(run: Mapping[str, Any]) -> str:
    user = run.get("user")
    if user:
        return str(user)
    uid = run.get("uid")
    return f"uid {uid}" if uid is not None else "-"


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
    """The command on one line, quoted as a shell would need it (``python -c '…'``);
    newlines inside an argument show as ``↵``."""
    import shlex

    return " ".join(shlex.quote(str(part)) for part in run.get("argv") or ()).replace("\n", "↵")


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


def holders_text(holders: list[int] | None, max_width: int | None = None,
                 foreign_users: list[str] | None = None) -> str:
    """Who holds a GPU: ``runs 4,7``, then other users' processes (``run 3 +bob``);
    counts instead of ids when they do not fit in ``max_width``."""
    users = sorted(set(foreign_users or ()))
    if not holders and not users:
        return "idle"
    parts = []
    if holders:
        label = "run" if len(holders) == 1 else "runs"
        parts.append(f"{label} {','.join(str(run_id) for run_id in holders)}")
    if users:
        parts.append(("+" if holders else "") + ",".join(users))
    text = " ".join(parts)
    if max_width is not None and len(text) > max_width and holders and users:
        text = f"{len(holders)} run{'s' if len(holders) > 1 else ''} +{','.join(users)}"
    if max_width is not None and len(text) > max_width:
        short = []
        if holders:
            short.append(f"{len(holders)} run" + ("s" if len(holders) > 1 else ""))
        if users:
            short.append(("+" if holders else "") + f"{len(users)} user" + ("s" if len(users) > 1 else ""))
        text = " ".join(short)
    return text


def foreign_users(gpu: Mapping[str, Any]) -> list[str]:
    """Users of the GPU's processes that are not runyard runs (``status``'s processes)."""
    users = []
    for process in gpu.get("processes") or ():
        if isinstance(process, Mapping) and process.get("run_id") is None:
            users.append(str(process.get("user") or "?"))
    return users


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


MODE_LABELS = {"embedded": "embedded engine", "daemon": "daemon"}


def engine_line(status: Mapping[str, Any], hostname: str) -> str:
    """``gpubox · daemon · GPUs: simulated 4x80G``, ending in ``· DRAINING`` when draining;
    with the Slurm backend, ``backend: slurm (partition debug)`` in place of the GPUs,
    which are then the cluster's, not this machine's."""
    engine = status.get("engine") or {}
    mode = str(engine.get("mode") or "?")
    parts = [hostname, MODE_LABELS.get(mode, mode), backend_text(status)]
    text = " · ".join(parts)
    return text + DRAINING_FLAG if engine.get("draining") else text


def backend_text(status: Mapping[str, Any]) -> str:
    """What the engine runs on; an engine that does not say (an older one) runs locally."""
    backend = str(status.get("backend") or "local")
    if backend == "local":
        return f"GPUs: {(status.get('engine') or {}).get('gpu_source') or '?'}"
    if backend == "slurm":
        partition = (status.get("cluster") or {}).get("partition")
        return f"backend: slurm ({f'partition {partition}' if partition else 'default partition'})"
    return f"backend: {backend}"
