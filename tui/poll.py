"""One poll of the engine, and the messages that carry its outcome to the interface.

The calls block on a socket (or wait for an embedded engine's loop), so they run in a
worker thread; the outcome travels back as a message (``post_message`` is thread-safe)
and the widgets only ever see data.

Finished runs barely change, and a box may have ten thousand of them: the "all runs"
view keeps them in a :class:`FinishedRuns` cache and asks the engine for the whole list
only when the counts in ``status`` say the cache has drifted. Each poll otherwise costs
what the active queue costs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from textual.message import Message

from engine.client import ClientError, DaemonUnavailable, every_run
from tui.format import TERMINAL_STATES
from tui.widgets.cluster import is_cluster
from tui.widgets.resources import BoxHistory

UNREACHABLE_HINT = "engine not reachable — start it with `runyard --daemon`"
HISTORY_WINDOW_S = 600.0
HISTORY_POINTS = 60
PAGE_RUNS = 1000
HISTORY_EVERY_S = 5.0
"""The engine samples every 2 s; a sparkline need not be fresher than a few seconds."""


class EngineClient(Protocol):
    """What the interface needs of :class:`engine.client.Client` or
    :class:`engine.inprocess.InProcessClient`."""

    def call(self, op: str, **args: Any) -> Any: ...


@dataclass(frozen=True)
class EngineView:
    """The engine as one poll saw it."""

    status: dict[str, Any]
    runs: list[dict[str, Any]]
    show_all: bool
    history: BoxHistory | None = None
    """New sparkline data, or ``None`` when this poll did not fetch any."""
    full_fetch: bool = False
    """Whether this poll read every run (the cache had drifted)."""
    fresh: list[dict[str, Any]] | None = None
    """The runs the engine sent in this poll (``None``: all of ``runs``). The others are
    the very objects of the last poll (finished runs from :class:`FinishedRuns`), so
    whatever looks for changes need not look at them."""


class FinishedRuns:
    """Every finished run, kept between polls of the "all runs" view.

    A run moves into the cache when it ends (the engine lists the 20 most recently
    ended with every poll) and out of it when it is retried (it shows up as active).
    When the cache's size disagrees with the engine's counts (more than 20 runs ended
    between two polls, a run was deleted, another client retried one), the next poll
    reads the whole list once. Thread-safe: a slow poll may overlap the next one.
    """

    def __init__(self) -> None:
        self._runs: dict[Any, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._runs = None

    def merge(self, client: EngineClient, active: list[dict[str, Any]], counts: dict[str, Any]) -> tuple[list[dict], bool]:
        """All runs: ``active`` (the short ``ls`` answer) plus the cached finished ones;
        returns them and whether the whole list had to be read."""
        expected = sum(int(counts.get(state) or 0) for state in TERMINAL_STATES)
        with self._lock:
            cache = self._runs
            if cache is not None:
                cache = dict(cache)
                for run in active:
                    if run.get("state") in TERMINAL_STATES:
                        cache[run.get("id")] = run
                    else:
                        cache.pop(run.get("id"), None)
            full = cache is None or len(cache) != expected
        if full:
            cache = {run.get("id"): run for run in read_all_runs(client) if run.get("state") in TERMINAL_STATES}
        with self._lock:
            self._runs = cache
        active_only = [run for run in active if run.get("state") not in TERMINAL_STATES]
        return active_only + list(cache.values()), full


def read_all_runs(client: EngineClient, page: int = PAGE_RUNS) -> list[dict[str, Any]]:
    """Every run, a page at a time: one answer of ten thousand runs would hold the
    engine's loop, and this process's interpreter while it is decoded, for about a second."""
    return list(every_run(client, page))


class Poller:
    """Fetches an :class:`EngineView`; one per app, called from worker threads."""

    def __init__(self, client: EngineClient, clock=time.monotonic) -> None:
        self.client = client
        self.finished = FinishedRuns()
        self._clock = clock
        self._history_at: float | None = None
        self._history_supported = True

    def fetch(self, *, show_all: bool) -> EngineView:
        """Ask for the status and the queue (and now and then the box's history);
        raises what the client raises, or ``ValueError`` when an answer does not have
        the shape of the protocol."""
        status = self.client.call("status")
        if not isinstance(status, dict):
            raise ValueError(f"status answer is a {type(status).__name__}, expected an object")
        runs = fresh = _runs_answer(self.client.call("ls", all=False))
        full = False
        if show_all:
            runs, full = self.finished.merge(self.client, runs, status.get("counts") or {})
        return EngineView(status=status, runs=runs, show_all=show_all, history=self._history(status),
                          full_fetch=full, fresh=None if full else fresh)

    def _history(self, status: dict[str, Any]) -> BoxHistory | None:
        if is_cluster(status):
            return None  # the cluster's view draws no sparklines of the engine's login node
        now = self._clock()
        if not self._history_supported or (self._history_at is not None and now - self._history_at < HISTORY_EVERY_S):
            return None
        self._history_at = now
        sampled_at = status.get("sampled_at")
        since = (sampled_at if isinstance(sampled_at, (int, float)) else time.time()) - HISTORY_WINDOW_S
        try:
            points = self.client.call("history", since=since, max_points=HISTORY_POINTS)
        except Exception as error:  # sparklines are a nicety: they never fail a poll
            if is_unknown_op(error):
                self._history_supported = False  # an older engine: no sparklines, no retries
            return None
        if not isinstance(points, list):
            return None
        disk_total = (status.get("host") or {}).get("disk_total")
        return BoxHistory.from_points([point for point in points if isinstance(point, dict)], disk_total)


def _runs_answer(runs: Any) -> list[dict[str, Any]]:
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError("ls answer is not a list of runs")
    return runs


def describe_failure(error: BaseException) -> tuple[bool, str]:
    """(engine unreachable?, one line for the banner) for an error raised by a poll."""
    if isinstance(error, DaemonUnavailable):
        return True, UNREACHABLE_HINT
    if isinstance(error, ClientError):
        return False, f"engine refused the request: {error}"
    return False, f"engine answer could not be read: {error or type(error).__name__}"


def is_unknown_op(error: BaseException) -> bool:
    """Whether the engine refused a request because it does not know it (an older engine)."""
    return isinstance(error, ClientError) and "unknown request" in str(error)


class ViewPolled(Message):
    """A poll succeeded."""

    def __init__(self, view: EngineView) -> None:
        super().__init__()
        self.view = view


class PollFailed(Message):
    """A poll failed; the interface keeps its last data and keeps polling."""

    def __init__(self, unreachable: bool, text: str, show_all: bool) -> None:
        super().__init__()
        self.unreachable = unreachable
        self.text = text
        self.show_all = show_all
