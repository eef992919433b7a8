"""The circuit breaker: stop burning through a sweep that fails the same way every time.

When runs of one group (a sweep) or, outside groups, of one user fail fast one after
another with the same failure class, the rest of them are paused instead of being
started one by one into the same broken environment. Pure: the engine feeds it each
attempt's end and persists the pauses it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_THRESHOLD = 5
DEFAULT_WINDOW_S = 600.0
DEFAULT_FAST_S = 300.0


@dataclass(frozen=True)
class Pause:
    key: str
    """``group:NAME`` or ``user:NAME``."""
    reason: str
    """``paused: 5 consecutive failures (exit 1: ModuleNotFoundError: ...)``."""


@dataclass
class _Streak:
    failure_class: str | None = None
    ends: deque = field(default_factory=deque)
    """End times of the streak's failures, newest last."""


class Breaker:
    """Counts consecutive fast failures per key.

    Args:
        threshold: failures in a row that pause the key.
        window_s: they must all have ended within this long.
        fast_s: only attempts that lasted less than this count; a run that fails after
            hours of work is not a broken environment.
    """

    def __init__(
        self, threshold: int = DEFAULT_THRESHOLD, window_s: float = DEFAULT_WINDOW_S, fast_s: float = DEFAULT_FAST_S
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.fast_s = fast_s
        self._streaks: dict[str, _Streak] = {}

    def succeeded(self, key: str) -> None:
        self._streaks.pop(key, None)

    def failed(self, key: str, *, at: float, failure_class: str, duration_s: float, detail: str) -> Pause | None:
        """Record a failed attempt; returns the pause when this one trips the breaker."""
        if duration_s >= self.fast_s:
            self._streaks.pop(key, None)
            return None
        streak = self._streaks.setdefault(key, _Streak())
        if streak.failure_class != failure_class:
            streak.failure_class = failure_class
            streak.ends.clear()
        streak.ends.append(at)
        while streak.ends and at - streak.ends[0] > self.window_s:
            streak.ends.popleft()
        if len(streak.ends) < self.threshold:
            return None
        self._streaks.pop(key, None)  # a release starts counting afresh
        return Pause(key, f"paused: {self.threshold} consecutive failures ({detail})")


def key_of(group: str | None, user: str | None, uid: int | None) -> str:
    if group:
        return f"group:{group}"
    return f"user:{user or uid or 'unknown'}"


def last_meaningful_line(tail: bytes, limit: int = 120) -> str | None:
    """The last non-blank line of a log tail (``ModuleNotFoundError: No module named 'x'``),
    shortened: what a person would look at first."""
    for raw in reversed(tail.decode(errors="replace").splitlines()):
        line = raw.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return None
