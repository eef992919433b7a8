"""When a run that ended goes back to the queue, and after how long.

Pure: the engine tells what happened (the failure class, the exit code, whether a
checkpoint exists) and gets an answer; the random source is injected so backoff is
tested without sleeping.
"""

from __future__ import annotations

import random
import re
import signal as signals
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.envelope import Envelope
from engine.units import UnitError, format_duration, parse_duration

# Failure classes, recorded per attempt.
OOM_KILLED = "oom_killed"
MEMORY_OVERRUN = "memory_overrun"
CUDA_OOM = "cuda_oom"
GPU_MEMORY_OVERRUN = "gpu_memory_overrun"
TIMEOUT = "timeout"
LOST = "lost"
EXIT = "exit"
CANCELLED = "cancelled"
STALLED = "stalled"
"""Stopped by ``--on-stall kill``: retried like a failure."""
RESTART = "restart"
"""Stopped by ``--on-stall restart``: started again at once, using up no retry."""

HOST_MEMORY_CLASSES = frozenset({OOM_KILLED, MEMORY_OVERRUN})
GPU_MEMORY_CLASSES = frozenset({CUDA_OOM, GPU_MEMORY_OVERRUN})

DEFAULT_BACKOFF = (10.0, 600.0)

CUDA_OOM_PATTERNS = re.compile(
    rb"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED"
)
"""What PyTorch and the CUDA libraries print when a GPU allocation fails."""


class RetryPolicyError(ValueError):
    """A bad ``--retries``/``--backoff``/``--signal`` value; one line for the user."""


@dataclass(frozen=True)
class RetryPolicy:
    """What a submitter asked for about retries and time limits."""

    retries: int = 0
    """Automatic retries after a failure (attempts = retries + 1)."""
    backoff_min_s: float = DEFAULT_BACKOFF[0]
    backoff_max_s: float = DEFAULT_BACKOFF[1]
    retry_on: tuple[int, ...] = ()
    """Exit codes that are retried; empty: every non-zero exit."""
    no_retry_on: tuple[int, ...] = ()
    """Exit codes that are never retried (a usage error will not fix itself)."""
    grow_on_oom: float | None = None
    """Factor to raise the memory (or GPU memory) envelope by after an out-of-memory end."""
    requeue: bool = False
    """A run stopped at its time limit with a checkpoint goes back to the queue, without
    using up a retry, instead of ending ``timed_out``."""
    warn_signal: str | None = None
    """Signal name sent ``warn_before_s`` before the time limit (``SIGUSR1``)."""
    warn_before_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retry_on"] = list(self.retry_on)
        data["no_retry_on"] = list(self.no_retry_on)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RetryPolicy:
        if not data:
            return cls()
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("retry_on", "no_retry_on"):
            if name in known:
                known[name] = tuple(int(code) for code in known[name] or ())
        policy = cls(**known)
        policy.check()
        return policy

    def check(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise RetryPolicyError(f"--retries must be a whole number, 0 or more; got {self.retries!r}")
        if not 0 <= self.backoff_min_s <= self.backoff_max_s:
            raise RetryPolicyError("--backoff MIN..MAX needs 0 <= MIN <= MAX, e.g. 10s..10m")
        if self.grow_on_oom is not None and not self.grow_on_oom > 1:
            raise RetryPolicyError(f"--grow-on-oom must be more than 1 (e.g. 1.5); got {self.grow_on_oom:g}")
        if (self.warn_signal is None) != (self.warn_before_s is None):
            raise RetryPolicyError("--signal needs both a signal and a time: USR1@5m")
        if self.warn_signal is not None and self.warn_signal not in signals.Signals.__members__:
            raise RetryPolicyError(f"--signal: unknown signal {self.warn_signal}")


def parse_backoff(text: str) -> tuple[float, float]:
    """``10s..10m`` → (10, 600); a single duration is both ends."""
    low, sep, high = text.partition("..")
    try:
        low_s = parse_duration(low.strip())
        high_s = parse_duration(high.strip()) if sep else low_s
    except UnitError as error:
        raise RetryPolicyError(f"--backoff {text!r}: {error}; write MIN..MAX, e.g. 10s..10m") from None
    if low_s > high_s:
        raise RetryPolicyError(f"--backoff {text!r}: the first bound must not exceed the second")
    return low_s, high_s


def parse_warn_signal(text: str) -> tuple[str, float]:
    """``USR1@5m`` → (``SIGUSR1``, 300)."""
    name, sep, before = text.partition("@")
    if not sep or not name.strip() or not before.strip():
        raise RetryPolicyError(f"--signal {text!r}: write SIGNAL@TIME, e.g. USR1@5m")
    name = name.strip().upper()
    if not name.startswith("SIG"):
        name = f"SIG{name}"
    if name not in signals.Signals.__members__:
        raise RetryPolicyError(f"--signal {text!r}: unknown signal {name}")
    try:
        before_s = parse_duration(before.strip())
    except UnitError as error:
        raise RetryPolicyError(f"--signal {text!r}: {error}") from None
    return name, before_s


def parse_codes(values: list[str] | None, option: str) -> tuple[int, ...]:
    """``["1,2", "137"]`` → (1, 2, 137)."""
    codes: list[int] = []
    for value in values or ():
        for part in value.split(","):
            part = part.strip()
            try:
                codes.append(int(part))
            except ValueError:
                raise RetryPolicyError(f"{option} takes exit codes like 1,137; got {part!r}") from None
    return tuple(codes)


def backoff_delay(retry_number: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first): "full jitter", a
    uniform draw below an exponentially growing cap, so retries of runs that failed
    together (a shared filesystem went away) do not come back together."""
    cap = min(policy.backoff_max_s, policy.backoff_min_s * 2 ** max(0, retry_number - 1))
    return rng.uniform(0, cap)


@dataclass(frozen=True)
class Retry:
    """The answer: requeue after ``delay_s``, as a retry (it uses one up) or a requeue."""

    delay_s: float
    counts_as_retry: bool
    envelope: Envelope
    why: str
    """Why, for the reason line: ``exit code 1`` or ``time limit 2h reached``."""
    notes: tuple[str, ...] = field(default=())


def decide(
    *,
    policy: RetryPolicy,
    failure_class: str,
    exit_code: int | None,
    retries_used: int,
    has_checkpoint: bool,
    envelope: Envelope,
    mem_limit_bytes: int,
    gpu_mem_limit_bytes: int | None,
    why: str,
    rng: random.Random,
) -> Retry | None:
    """Whether an ended attempt goes back to the queue.

    Args:
        policy: the run's retry policy.
        failure_class: one of this module's classes.
        exit_code: the attempt's exit code (``-N`` for a signal).
        retries_used: automatic retries already spent.
        has_checkpoint: a complete checkpoint exists to resume from.
        envelope: the run's envelope now.
        mem_limit_bytes: the most memory a run may be grown to (what the box has).
        gpu_mem_limit_bytes: the most GPU memory per GPU (the smallest card), if any.
        why: what ended the attempt, in words.
        rng: the random source of the jitter.

    Returns:
        ``None`` when the run ends for good.
    """
    if failure_class == CANCELLED:
        return None
    if failure_class == RESTART:
        return Retry(0.0, False, envelope, why, ("restarted after a stall",))
    if failure_class == TIMEOUT and policy.requeue and has_checkpoint:
        return Retry(0.0, False, envelope, why, ("resumes from its latest checkpoint",))
    if retries_used >= policy.retries:
        return None
    if failure_class == TIMEOUT and not has_checkpoint:
        return None  # it would only run into the same limit from the start again
    if failure_class == EXIT and exit_code is not None:
        if exit_code in policy.no_retry_on:
            return None
        if policy.retry_on and exit_code not in policy.retry_on:
            return None
    grown, notes = _grown(policy, failure_class, envelope, mem_limit_bytes, gpu_mem_limit_bytes)
    return Retry(backoff_delay(retries_used + 1, policy, rng), True, grown, why, notes)


def _grown(
    policy: RetryPolicy, failure_class: str, envelope: Envelope, mem_limit: int, gpu_mem_limit: int | None
) -> tuple[Envelope, tuple[str, ...]]:
    from engine.units import format_size

    factor = policy.grow_on_oom
    if factor is None:
        return envelope, ()
    if failure_class in HOST_MEMORY_CLASSES and envelope.mem_bytes > 0:
        grown = min(int(envelope.mem_bytes * factor), max(mem_limit, envelope.mem_bytes))
        if grown > envelope.mem_bytes:
            return replace(envelope, mem_bytes=grown), (f"memory grown to {format_size(grown)}",)
    if failure_class in GPU_MEMORY_CLASSES and envelope.gpu_mem_bytes is not None and gpu_mem_limit:
        grown = min(int(envelope.gpu_mem_bytes * factor), max(gpu_mem_limit, envelope.gpu_mem_bytes))
        if grown > envelope.gpu_mem_bytes:
            return replace(envelope, gpu_mem_bytes=grown), (f"GPU memory grown to {format_size(grown)} per GPU",)
    return envelope, ()


def requeue_reason(retry: Retry, attempt: int, policy: RetryPolicy, until_text: str) -> str:
    """``waiting: attempt 3 of 4 after exit code 1, in 37s (at 20:31:05)``."""
    extra = "".join(f"; {note}" for note in retry.notes)
    if not retry.counts_as_retry:
        return f"waiting: requeued after {retry.why}{extra} (attempt {attempt})"
    total = policy.retries + 1
    return (
        f"waiting: attempt {attempt} of {total} after {retry.why}, backoff {format_duration(retry.delay_s)}"
        f" (until {until_text}){extra}"
    )


def log_shows_cuda_oom(tail: bytes) -> bool:
    return CUDA_OOM_PATTERNS.search(tail) is not None
