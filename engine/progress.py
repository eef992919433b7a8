"""Progress and ETA from a run's heartbeats. Pure: the engine feeds it what it saw."""

from __future__ import annotations

from collections.abc import Sequence

MIN_SPAN_S = 1.0
"""Below this, two heartbeats say nothing reliable about the rate."""


def eta(points: Sequence[tuple[float, float | int | None]], total: float | int) -> float | None:
    """Seconds left until ``step`` reaches ``total``, or ``None`` when it cannot be told.

    ``points`` are ``(time, step)`` pairs, oldest first. The rate is taken over the
    points since the step last went down: a resumed attempt restarts from its
    checkpoint's step, and the steps before that say nothing about the new attempt.
    """
    usable = [(at, float(step)) for at, step in points if _is_number(step)]
    start = 0
    for index in range(1, len(usable)):
        if usable[index][1] < usable[index - 1][1]:
            start = index
    usable = usable[start:]
    if not usable:
        return None
    last_at, last_step = usable[-1]
    if last_step >= total:
        return 0.0
    first_at, first_step = usable[0]
    span = last_at - first_at
    if span < MIN_SPAN_S or last_step <= first_step:
        return None
    rate = (last_step - first_step) / span
    return (total - last_step) / rate


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
