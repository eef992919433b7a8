"""What changed between two polls that a person should hear about without looking: a run
that ended badly, went unhealthy, got a warning, was paused by the circuit breaker or is
being retried. Pure, so the rules are tested without an app."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MOST_PER_POLL = 3
"""More than this at once (a sweep failing together) become one summary line."""

_BAD_ENDS = {"failed": "failed", "timed_out": "timed out"}
_BAD_HEALTH = {"unhealthy", "stalled"}


def run_news(previous: Mapping[Any, Mapping[str, Any]] | None, runs: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(text, severity)`` notifications for runs seen in both polls; none on the first."""
    if previous is None:
        return []
    news: list[tuple[str, str]] = []
    for run in runs:
        before = previous.get(run.get("id"))
        # The same object as last poll (a finished run from the poller's cache: thousands
        # of them) cannot have news; only what the engine sent anew is compared.
        if before is not None and before is not run:
            news.extend(_changes(before, run))
    if len(news) > MOST_PER_POLL:
        worst = "error" if any(severity == "error" for _, severity in news) else "warning"
        news = news[: MOST_PER_POLL - 1] + [(f"and {len(news) - MOST_PER_POLL + 1} more changes", worst)]
    return news


def _changes(before: Mapping[str, Any], run: Mapping[str, Any]) -> list[tuple[str, str]]:
    label = f"run {run.get('id')} ({run.get('name') or '-'})"
    state, old_state = run.get("state"), before.get("state")
    reason = run.get("reason") or ""
    if state != old_state:
        if state in _BAD_ENDS:
            return [(f"{label} {_BAD_ENDS[state]}: {reason}".rstrip(": "), "error")]
        if state == "succeeded":
            return [(f"{label} succeeded", "information")]
        if old_state == "running" and state == "queued":
            return [(f"{label} is retrying: {reason}".rstrip(": "), "warning")]
        return []
    news = []
    if reason.startswith("paused:") and not (before.get("reason") or "").startswith("paused:"):
        news.append((f"{label} {reason}", "warning"))
    health = run.get("health")
    if state == "running" and health in _BAD_HEALTH and health != before.get("health"):
        detail = run.get("health_detail")
        news.append((f"{label} is {health}" + (f": {detail}" if detail else ""), "warning"))
    warning = run.get("warning")
    if warning and warning != before.get("warning"):
        news.append((f"{label}: {warning}", "warning"))
    return news
