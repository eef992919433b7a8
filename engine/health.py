"""Is a live run healthy? The verdicts, as pure functions of what the engine observed.

A run that is alive but stuck, leaking or burning a GPU at 0% costs more than a crash,
because nobody notices it. The engine gathers observations (heartbeat times, usage
samples, the log's tail, probe results) and asks this module what they mean; nothing
here touches a process or the database. The only I/O is reading a log's tail, a file's
modification time and a filesystem's free space (:func:`read_tail`,
:func:`log_activity_at`, :func:`disk_space`), kept small and tolerant of missing files.

Health states: ``starting`` (no probe verdict yet), ``healthy``, ``unhealthy`` (the
``--health-cmd`` failed ``--health-retries`` times in a row) and ``stalled`` (no sign of
life for ``--stall-timeout``). The probe semantics are Docker's HEALTHCHECK's.

The built-in findings (:func:`memory_trend`, :func:`gpu_idle`, :func:`disk_almost_full`,
:func:`fatal_log_lines`, :func:`metric_problems`) are short sentences for a warning or
an alert; ``None`` or an empty list means nothing to report.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.retry import CUDA_OOM_PATTERNS
from engine.units import UnitError, format_duration, format_size, parse_duration

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
STALLED = "stalled"
HEALTH_STATES = (STARTING, HEALTHY, UNHEALTHY, STALLED)

ON_STALL_ACTIONS = ("warn", "kill", "restart")

HISTORY_KEEP = 5
"""Probe results kept per run, as ``docker inspect`` keeps them (at least ``retries + 1``)."""

DEFAULT_GPU_IDLE_AFTER_S = 15 * 60.0
DEFAULT_GPU_IDLE_PERCENT = 5.0
DEFAULT_MEMORY_HORIZON_S = 600.0
DEFAULT_MEMORY_WINDOW_S = 600.0

_OUTPUT_KEEP_CHARS = 2000


class HealthPolicyError(ValueError):
    """A bad health option; one line for the user."""


@dataclass(frozen=True)
class HealthPolicy:
    """What a submitter asked to be checked (``--stall-timeout``, ``--health-cmd`` ...)."""

    stall_timeout_s: float | None = None
    """No heartbeat and no log output for this long makes the run ``stalled``."""
    on_stall: str = "warn"
    """``warn`` (only report), ``kill`` (end the run; retried if it has retries) or
    ``restart`` (stop it and start it again without using up a retry)."""
    cmd: str | None = None
    """A probe run through ``sh -c`` in the run's environment and folder; exit 0 is
    healthy (Docker's ``CMD-SHELL``)."""
    interval_s: float = 30.0
    retries: int = 3
    """Consecutive failures that make the run ``unhealthy``."""
    timeout_s: float = 10.0
    """A probe still running after this long is killed and counts as a failure."""
    start_period_s: float = 0.0
    """Failures this soon after the start do not count (until a first success)."""

    @property
    def checks_anything(self) -> bool:
        return self.stall_timeout_s is not None or self.cmd is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HealthPolicy:
        """The policy stored by :meth:`to_dict`; unknown keys (from a newer runyard) are
        ignored, bad values raise :class:`HealthPolicyError`."""
        if not data:
            return cls()
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        policy = cls(**known)
        policy.check()
        return policy

    def check(self) -> None:
        """Raise :class:`HealthPolicyError` (one line, naming the option) on a bad value."""
        if self.stall_timeout_s is not None and not _positive_number(self.stall_timeout_s):
            raise HealthPolicyError(f"--stall-timeout must be a positive duration; got {self.stall_timeout_s!r}")
        if self.on_stall not in ON_STALL_ACTIONS:
            raise HealthPolicyError(f"--on-stall must be one of {', '.join(ON_STALL_ACTIONS)}; got {self.on_stall!r}")
        if self.on_stall != "warn" and self.stall_timeout_s is None:
            raise HealthPolicyError(f"--on-stall {self.on_stall} needs --stall-timeout")
        if self.cmd is not None and (not isinstance(self.cmd, str) or not self.cmd.strip()):
            raise HealthPolicyError("--health-cmd must be a non-empty command")
        if not _positive_number(self.interval_s):
            raise HealthPolicyError(f"--health-interval must be a positive duration; got {self.interval_s!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 1:
            raise HealthPolicyError(f"--health-retries must be a whole number, 1 or more; got {self.retries!r}")
        if not _positive_number(self.timeout_s):
            raise HealthPolicyError(f"--health-timeout must be a positive duration; got {self.timeout_s!r}")
        if not _positive_number(self.start_period_s, allow_zero=True):
            raise HealthPolicyError(f"--health-start-period must be a duration, 0 or more; got {self.start_period_s!r}")


def _positive_number(value: Any, *, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value >= 0 if allow_zero else value > 0


def policy_from_options(
    *,
    stall_timeout: str | None = None,
    on_stall: str | None = None,
    health_cmd: str | None = None,
    health_interval: str | None = None,
    health_retries: int | str | None = None,
    health_timeout: str | None = None,
    health_start_period: str | None = None,
) -> HealthPolicy | None:
    """The policy from command-line values as typed (durations like ``30s``); ``None``
    when no check was asked for. Raises :class:`HealthPolicyError` (one line)."""
    if health_cmd is None:
        for option, value in (("--health-interval", health_interval), ("--health-retries", health_retries),
                              ("--health-timeout", health_timeout), ("--health-start-period", health_start_period)):
            if value is not None:
                raise HealthPolicyError(f"{option} needs --health-cmd")
    if stall_timeout is None and health_cmd is None:
        if on_stall is not None:
            raise HealthPolicyError("--on-stall needs --stall-timeout")
        return None
    values: dict[str, Any] = {"cmd": health_cmd}
    if on_stall is not None:
        values["on_stall"] = on_stall.strip().lower()
    for option, name, text in (("--stall-timeout", "stall_timeout_s", stall_timeout),
                               ("--health-interval", "interval_s", health_interval),
                               ("--health-timeout", "timeout_s", health_timeout),
                               ("--health-start-period", "start_period_s", health_start_period)):
        if text is not None:
            values[name] = _duration(option, text)
    if health_retries is not None:
        try:
            values["retries"] = int(health_retries)
        except ValueError:
            raise HealthPolicyError(f"--health-retries must be a whole number; got {health_retries!r}") from None
    policy = HealthPolicy(**values)
    policy.check()
    return policy


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except UnitError as error:
        raise HealthPolicyError(f"{option}: {error}") from None


# ---------------------------------------------------------------------- the probe


def probe_verdict(results: Sequence[bool] | int, retries: int, *, had_success: bool = False) -> str:
    """The health a ``--health-cmd`` history amounts to, by Docker's rules.

    Args:
        results: the counted results, oldest first (``True`` = success); or the number
            of consecutive failures so far (then ``had_success`` says whether any probe
            ever succeeded). Failures inside the start period must be left out.
        retries: consecutive failures that make the run unhealthy.

    Returns:
        ``unhealthy`` after ``retries`` failures in a row; else ``healthy`` once any
        probe succeeded (a failure or two since do not change that); else ``starting``.
    """
    if isinstance(results, int):
        failing_streak = results
    else:
        failing_streak = 0
        for ok in reversed(results):
            if ok:
                break
            failing_streak += 1
        had_success = had_success or any(results)
    if failing_streak >= retries:
        return UNHEALTHY
    return HEALTHY if had_success else STARTING


class ProbeOutcome(Protocol):
    """What :func:`engine.health_probe.run_probe` returns (only these fields are read)."""

    ok: bool
    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool


def record_probe(
    history: Sequence[Mapping[str, Any]],
    result: ProbeOutcome,
    *,
    at: float,
    run_started_at: float,
    policy: HealthPolicy,
) -> tuple[list[dict[str, Any]], str]:
    """Add a probe result to a run's history; returns the new history and the health.

    ``history`` is what the previous call returned (``[]`` at the start of an attempt):
    JSON-ready dicts ``{at, ok, exit_code, output, duration_s, timed_out, counted}``,
    oldest first. A failure inside ``start_period_s`` before any success is kept but
    not ``counted``, as Docker does. The history is trimmed to what the verdict needs,
    so storing it whole is cheap.
    """
    had_success = any(entry.get("ok") for entry in history)
    in_start_period = at - run_started_at < policy.start_period_s
    entry = {
        "at": at,
        "ok": bool(result.ok),
        "exit_code": result.exit_code,
        "output": result.output[-_OUTPUT_KEEP_CHARS:],
        "duration_s": result.duration_s,
        "timed_out": bool(result.timed_out),
        "counted": bool(result.ok or had_success or not in_start_period),
    }
    # Keeping retries + 1 entries is enough: a success older than that is followed by
    # retries counted failures (unhealthy either way) or by a newer success.
    keep = max(HISTORY_KEEP, policy.retries + 1)
    updated = [dict(item) for item in history][-(keep - 1):] + [entry]
    counted = [bool(item.get("ok")) for item in updated if item.get("counted", True)]
    return updated, probe_verdict(counted, policy.retries)


def probe_detail(history: Sequence[Mapping[str, Any]], health: str) -> str:
    """A one-line reason for the health, from the newest result: ``health command failed
    3 times in a row (exit 1: disk not mounted)``."""
    if not history:
        return "waiting for the first health check"
    last = history[-1]
    if last.get("timed_out"):
        what = f"timed out after {last.get('duration_s', 0):.1f}s"
    else:
        what = f"exit {last.get('exit_code')}"
    line = _last_line(str(last.get("output") or ""))
    if line:
        what = f"{what}: {line}"
    if health == UNHEALTHY:
        streak = 0
        for item in reversed(history):
            if item.get("ok") or not item.get("counted", True):
                break
            streak += 1
        return f"health command failed {streak} time{'s' if streak != 1 else ''} in a row ({what})"
    if last.get("ok"):
        return "health command passed"
    return f"health command failed ({what})"


def _last_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


# ---------------------------------------------------------------------- stalls


def last_activity(*times: float | None) -> float | None:
    """The latest sign of life: pass the run's start, its last heartbeat and its log's
    last growth (:func:`log_activity_at`); missing ones are ``None``."""
    known = [t for t in times if t is not None]
    return max(known) if known else None


def is_stalled(last_activity_at: float | None, now: float, stall_timeout_s: float | None) -> bool:
    """No sign of life for longer than ``stall_timeout_s`` (``None``: never stalled)."""
    if stall_timeout_s is None or last_activity_at is None:
        return False
    return now - last_activity_at > stall_timeout_s


def stall_detail(last_activity_at: float, now: float) -> str:
    return f"no heartbeat and no log output for {_about(now - last_activity_at)}"


def log_activity_at(path: str | os.PathLike[str] | None) -> float | None:
    """When the log last grew: its modification time (wall clock), ``None`` if absent."""
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# ---------------------------------------------------------------------- built-in findings


def memory_trend(
    samples: Sequence[tuple[float, int | float]],
    envelope_bytes: int | None,
    horizon_s: float = DEFAULT_MEMORY_HORIZON_S,
    *,
    window_s: float = DEFAULT_MEMORY_WINDOW_S,
    min_samples: int = 5,
    min_span_s: float = 60.0,
    min_fit: float = 0.6,
) -> str | None:
    """A leak heading for the envelope, found before it overruns.

    Fits a least-squares line to the samples of the last ``window_s`` (``(unix time,
    rss bytes)``, any order). Returns ``memory grows 120M/min; reaches its 16G envelope
    in about 6m`` when the line crosses the envelope within ``horizon_s``; ``None`` for
    flat, falling or noisy memory (the line explains under ``min_fit`` of the variance:
    a run that allocates and frees in waves is not leaking), too few samples or too short
    a span to tell, no envelope, or a run already over it (enforcement's business).
    """
    if not envelope_bytes or envelope_bytes <= 0 or not samples:
        return None
    ordered = sorted(samples)
    newest_at = ordered[-1][0]
    recent = [(at, float(rss)) for at, rss in ordered if at >= newest_at - window_s and rss is not None]
    if len(recent) < min_samples or recent[-1][0] - recent[0][0] < min_span_s:
        return None
    if recent[-1][1] >= envelope_bytes:
        return None
    fit = _least_squares(recent)
    if fit is None:
        return None
    slope, intercept, r_squared = fit
    if slope <= 0 or r_squared < min_fit:
        return None
    level_now = slope * newest_at + intercept
    seconds_left = max(0.0, (envelope_bytes - level_now) / slope)
    if seconds_left > horizon_s:
        return None
    when = "now" if seconds_left < 1 else f"in about {_about(seconds_left)}"
    return f"memory grows {format_size(slope * 60)}/min; reaches its {format_size(envelope_bytes)} envelope {when}"


def _least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Slope, intercept and R² of the best line; ``None`` if the times do not vary."""
    count = len(points)
    # Centre the times first: Unix seconds squared lose the precision a slope needs.
    mean_t = sum(t for t, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    spread_t = sum((t - mean_t) ** 2 for t, _ in points)
    if spread_t == 0:
        return None
    covariance = sum((t - mean_t) * (y - mean_y) for t, y in points)
    slope = covariance / spread_t
    intercept = mean_y - slope * mean_t
    spread_y = sum((y - mean_y) ** 2 for _, y in points)
    if spread_y == 0:
        return slope, intercept, 0.0
    residual = sum((y - (slope * t + intercept)) ** 2 for t, y in points)
    return slope, intercept, 1.0 - residual / spread_y


def gpu_idle(
    samples: Sequence[tuple[float, float | None]],
    held: bool,
    idle_after_s: float = DEFAULT_GPU_IDLE_AFTER_S,
    threshold_percent: float = DEFAULT_GPU_IDLE_PERCENT,
    *,
    label: str = "GPU",
) -> str | None:
    """``GPU idle (under 5% for 15m) while held``, or ``None``.

    ``samples`` are ``(unix time, utilisation %)``; a ``None`` utilisation (no reading)
    ends the idle stretch, since idleness that was not observed is not reported. The
    stretch is measured from its first idle sample to the newest. Pass the maximum over
    a run's GPUs to ask "does it use its GPUs at all", or one series per GPU with
    ``label="GPU 2"`` to find each idle card of a multi-GPU run.
    """
    if not held or not samples:
        return None
    ordered = sorted(samples, key=lambda sample: sample[0])
    newest_at = ordered[-1][0]
    idle_since = None
    for at, util in reversed(ordered):
        if util is None or util >= threshold_percent:
            break
        idle_since = at
    if idle_since is None or newest_at - idle_since < idle_after_s:
        return None
    return f"{label} idle (under {threshold_percent:g}% for {_about(newest_at - idle_since)}) while held"


def disk_almost_full(
    free_bytes: int,
    total_bytes: int,
    min_free_bytes: int = 1 << 30,
    min_free_fraction: float = 0.05,
    *,
    what: str = "checkpoint disk",
) -> str | None:
    """``checkpoint disk almost full: 800M free of 500G (0.2%)``, or ``None``.

    Either limit trips it: under ``min_free_bytes`` (the next checkpoint may not fit,
    however big the disk) or under ``min_free_fraction`` (``df`` would show 95% used).
    """
    if total_bytes <= 0:
        return None
    if free_bytes >= min_free_bytes and free_bytes / total_bytes >= min_free_fraction:
        return None
    percent = 100.0 * free_bytes / total_bytes
    return f"{what} almost full: {format_size(free_bytes)} free of {format_size(total_bytes)} ({percent:.1f}%)"


def disk_space(path: str | os.PathLike[str] | None) -> tuple[int, int] | None:
    """``(free, total)`` bytes of the filesystem that holds ``path``, or would hold it:
    a checkpoint folder that does not exist yet is looked up through its nearest
    existing parent. ``None`` when nothing can be found."""
    if path is None:
        return None
    candidate = Path(path).absolute()
    for folder in (candidate, *candidate.parents):
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            continue
        return usage.free, usage.total
    return None


# A few dozen lines around a final exception may follow it (a launcher's summary, a
# logger flushing); more than this and the run carried on after the traceback.
_TRACEBACK_TAIL_LINES = 10
_TRACEBACK_HEADER = "Traceback (most recent call last):"
_NCCL_PATTERN = re.compile(
    r"NCCL error|nccl(?:InternalError|SystemError|UnhandledCudaError|InvalidUsage|InvalidArgument|RemoteError)"
    r"|NCCL WARN .*fail",
    re.IGNORECASE,
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def fatal_log_lines(tail: bytes) -> list[str]:
    """Known fatal signs in a log's tail, as short findings.

    ``CUDA out of memory`` (the patterns the retry classification uses), the first
    ``NCCL error: <line>``, and ``traceback at the end of the log: ValueError: bad
    shape`` when the last ``Traceback (most recent call last):`` block's exception line
    is among the log's last lines (a traceback the run survived is not fatal).
    """
    findings: list[str] = []
    if CUDA_OOM_PATTERNS.search(tail):
        findings.append("CUDA out of memory")
    text = _ANSI_ESCAPE.sub("", tail.decode("utf-8", errors="replace"))
    # Progress bars redraw with \r; each redraw is a line of its own here.
    lines = [line.rstrip() for line in re.split(r"\r\n|\r|\n", text)]
    for line in lines:
        if _NCCL_PATTERN.search(line):
            findings.append(f"NCCL error: {line.strip()[:200]}")
            break
    exception = _final_exception(lines)
    if exception is not None:
        findings.append(f"traceback at the end of the log: {exception[:200]}")
    return findings


def _final_exception(lines: list[str]) -> str | None:
    """The exception line of the last traceback, if the log ends with it."""
    header = None
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].lstrip().startswith(_TRACEBACK_HEADER):
            header = index
            break
    if header is None:
        return None
    for index in range(header + 1, len(lines)):
        line = lines[index]
        if not line.strip() or line[0].isspace() or line.startswith("^"):
            continue  # the frames ("  File ...", source, carets)
        after = [rest for rest in lines[index + 1:] if rest.strip()]
        return line.strip() if len(after) < _TRACEBACK_TAIL_LINES else None
    return None


def read_tail(
    path: str | os.PathLike[str] | None, max_bytes: int = 64 << 10, *, owner: int | None = None
) -> bytes:
    """The last ``max_bytes`` of a file; ``b""`` if it is missing or unreadable (or, on a
    shared daemon, not a file of ``owner``: see :mod:`engine.userfiles`)."""
    if path is None:
        return b""
    from engine.userfiles import open_run_file

    try:
        with open_run_file(path, owner) as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - max_bytes))
            return handle.read(max_bytes)
    except OSError:
        return b""


_NAN_TEXTS = frozenset({"nan", "+nan", "-nan"})
_INFINITE_TEXTS = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


def metric_problems(metrics: Mapping[str, Any] | None) -> list[str]:
    """``["loss is NaN", "grad_norm is infinite"]`` for a heartbeat's metrics.

    Heartbeat files are JSON, which has no NaN or infinity, so they arrive as the
    strings ``"nan"``, ``"inf"`` and ``"-inf"``; those count, as do float NaN and inf.
    Nested dicts are looked into (``{"val": {"loss": "nan"}}`` gives ``val.loss is NaN``).
    """
    problems: list[str] = []
    for name, value in _flatten(metrics or {}, ""):
        if isinstance(value, bool):
            continue
        if isinstance(value, float):
            if math.isnan(value):
                problems.append(f"{name} is NaN")
            elif math.isinf(value):
                problems.append(f"{name} is infinite")
        elif isinstance(value, str):
            text = value.strip().lower()
            if text in _NAN_TEXTS:
                problems.append(f"{name} is NaN")
            elif text in _INFINITE_TEXTS:
                problems.append(f"{name} is infinite")
    return problems


def _flatten(metrics: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, Any]]:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


_FINDING_KINDS = (
    ("memory grows ", "memory_trend"),
    ("CUDA out of memory", "cuda_oom"),
    ("NCCL error: ", "nccl"),
    ("traceback at the end of the log: ", "traceback"),
)


def finding_kind(finding: str) -> str:
    """A stable key for a finding whose words change as it develops (``memory grows
    120M/min ... in about 6m``, then ``... in about 5m``; ``GPU idle ... for 16m``, then
    ``17m``): keep one finding per kind, replacing the older text, instead of piling up
    a new warning (and alert) each sample."""
    for prefix, kind in _FINDING_KINDS:
        if finding.startswith(prefix):
            return kind
    idle = re.match(r"(GPU(?: \S+)?) idle \(", finding)
    if idle:
        return f"gpu_idle:{idle.group(1)}"
    full = re.match(r"(.+) almost full: ", finding)
    if full:
        return f"disk_full:{full.group(1)}"
    metric = re.match(r"(.+) is (?:NaN|infinite)$", finding)
    if metric:
        return f"metric:{metric.group(1)}"
    return finding


def _about(seconds: float) -> str:
    """A duration as a person would say it: seconds under two minutes, else minutes."""
    if seconds < 120:
        return format_duration(max(1.0, round(seconds)))
    return format_duration(round(seconds / 60) * 60)
