"""Replay a trace of runs through the real admission policy on a simulated clock.

"Would two more GPUs help?" and "how much better than a FIFO queue is runyard?" are both
answered by the same replay: every run of a trace arrives at its ``submit_s``, admission
(:func:`engine.policy.decide`, the very function the engine calls) decides who starts,
and each started run ends ``duration_s`` later. Nothing sleeps; the clock jumps from one
event (an arrival or an end) to the next. Between events nothing admission looks at
changes (what is free, the queue, the holdings), and time passing only makes backfill
harder (``now + time_limit_s`` grows), so deciding at events only is what the engine's
periodic ticks would decide too.

What the replay assumes, and why:

* A run's holding expires at its start plus its time limit (``Holding.expected_end``,
  as the engine sets it from ``Run.deadline``); a trace row without ``time_limit_s`` has
  no expected end, as a run submitted without ``--time``. Admission never sees the real
  duration: it cannot know it in production either.
* A run whose duration exceeds its time limit is stopped at the limit (``timed_out``).
* The box is exactly what ``--box``/``--cpus``/``--mem`` say, idle outside runyard: no
  foreign users, no headroom, no start-up latency.
* Runs that can never fit the box are refused at arrival, as the engine refuses them at
  submit, under both policies (task-spooler would instead block its queue forever; that
  is a separate failure, not a packing one).

The ``fifo`` policy is task-spooler's discipline: one queue in arrival order, the head
starts when it fits, nothing overtakes it, priorities are ignored, and every GPU request
takes whole cards (``--gpu-mem`` is dropped: tsp has slots, not memory). It uses the same
fit test (``decide`` with the head as the only queued run), so the two policies differ
only in order, backfill and packing.

The lower bound (:func:`lower_bound`) is the largest of, all measured from the first
arrival ``t0``:

* ``submit_i + d_i`` for every run (``d_i`` its duration, capped by its limit): no run
  ends before it arrived and ran;
* for each resource (GPU cards, CPUs, memory) and each arrival time ``t_k``:
  ``t_k + W_k / C``, where ``W_k`` is the resource-seconds of the runs arriving at or
  after ``t_k`` and ``C`` the box's capacity: those runs cannot start before ``t_k`` and
  need at least that long even on a perfectly packed box. A shared-GPU run counts
  ``gpus * gpu_mem / card memory`` cards (the tightest packing there is), a whole-card
  run ``gpus``.

No schedule beats it; it ignores that runs are not preemptible and do not divide, so a
ratio of 1.0 is usually out of reach. Makespan is likewise measured from ``t0`` to the
last end.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import policy
from engine.envelope import Envelope, EnvelopeError
from engine.probes.simulated import parse_gpu_spec
from engine.units import format_duration

GIB = 1 << 30
POLICIES = ("runyard", "fifo")


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the line and the field."""


@dataclass(frozen=True)
class TraceRun:
    """One row of a trace (the format of ``shared/traces/make_trace.py``), with its envelope built."""

    run_id: int
    submit_s: float
    duration_s: float
    envelope: Envelope
    priority: int = 0
    user: str | None = None

    @property
    def run_s(self) -> float:
        """How long it runs once started: its duration, or its time limit if that is shorter."""
        limit = self.envelope.time_limit_s
        return self.duration_s if limit is None else min(self.duration_s, limit)


# ------------------------------------------------------------------ reading


def parse_trace(lines: Iterable[str], *, source: str = "trace") -> list[TraceRun]:
    """Runs of a JSON-lines trace; blank lines are skipped. Raises :class:`TraceError`."""
    runs: list[TraceRun] = []
    seen: set[int] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except ValueError:
            raise TraceError(f"{where}: not a JSON object") from None
        if not isinstance(row, dict):
            raise TraceError(f"{where}: not a JSON object")
        run = _run_from_row(row, where, default_id=len(runs) + 1)
        if run.run_id in seen:
            raise TraceError(f"{where}: id {run.run_id} appears twice; ids must be unique")
        seen.add(run.run_id)
        runs.append(run)
    return runs


def read_trace(path: Path | str) -> list[TraceRun]:
    """:func:`parse_trace` of a file; an unreadable file is a :class:`TraceError` too."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise TraceError(f"{path}: cannot read ({error.strerror})") from None
    return parse_trace(text.splitlines(), source=str(path))


def _run_from_row(row: dict[str, Any], where: str, default_id: int) -> TraceRun:
    def number(key: str, default: float | None = None, *, positive: bool = False) -> float | None:
        value = row.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TraceError(f"{where}: {key} must be a number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise TraceError(f"{where}: {key} must be {'more than' if positive else 'at least'} 0, got {value!r}")
        return float(value)

    submit_s = number("submit_s")
    duration_s = number("duration_s")
    if submit_s is None or duration_s is None:
        raise TraceError(f"{where}: submit_s and duration_s are required")
    gpu_mem_gb = number("gpu_mem_gb", positive=True)
    limit_s = number("time_limit_s", positive=True)
    gpus = row.get("gpus", 0)
    priority = row.get("priority", 0)
    run_id = row.get("id", default_id)
    for key, value in (("gpus", gpus), ("priority", priority), ("id", run_id)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TraceError(f"{where}: {key} must be a whole number, got {value!r}")
    try:
        envelope = Envelope(
            cpus=number("cpus", 1.0, positive=True),
            mem_bytes=int(number("mem_gb", 1.0) * GIB),
            gpus=gpus,
            gpu_mem_bytes=None if gpu_mem_gb is None else int(gpu_mem_gb * GIB),
            time_limit_s=limit_s,
        )
    except EnvelopeError as error:
        raise TraceError(f"{where}: {error}") from None
    user = row.get("user")
    return TraceRun(run_id, submit_s, duration_s, envelope, priority, user if isinstance(user, str) else None)


def make_box(gpu_spec: str, cpus: float, mem_bytes: int) -> policy.BoxView:
    """An idle box: ``gpu_spec`` as ``--simulate-gpus`` reads it (``"0"`` for none)."""
    cards = () if str(gpu_spec).strip() == "0" else parse_gpu_spec(gpu_spec)
    gpus = tuple(policy.GpuView(index=index, mem_total=size) for index, (_, size) in enumerate(cards))
    return policy.BoxView(cpus=float(cpus), mem_total=int(mem_bytes), gpus=gpus)


# ------------------------------------------------------------------ lower bound


@dataclass(frozen=True)
class LowerBound:
    seconds: float
    """From the first arrival; no schedule finishes the trace sooner."""
    binding: str
    """Which bound it is, in words: ``GPU work arriving from 1h2m`` or ``run 17 alone``."""


def gpu_cards(envelope: Envelope, largest_card: int) -> float:
    """Cards' worth of GPU a run occupies at the tightest packing there is."""
    if envelope.gpu_mem_bytes is None or largest_card <= 0:
        return float(envelope.gpus)
    return envelope.gpus * min(1.0, envelope.gpu_mem_bytes / largest_card)


def lower_bound(runs: Sequence[TraceRun], box: policy.BoxView) -> LowerBound:
    """The bound in the module docstring."""
    if not runs:
        return LowerBound(0.0, "empty trace")
    t0 = min(run.submit_s for run in runs)
    best = max(runs, key=lambda run: run.submit_s + run.run_s)
    bound = LowerBound(best.submit_s + best.run_s - t0, f"run {best.run_id} alone")
    largest_card = max((card.mem_total for card in box.gpus), default=0)
    resources = [
        ("GPU", len(box.gpus), lambda env: gpu_cards(env, largest_card)),
        ("CPU", box.cpus, lambda env: env.cpus),
        ("memory", box.mem_total, lambda env: env.mem_bytes),
    ]
    latest_first = sorted(runs, key=lambda run: run.submit_s, reverse=True)
    for name, capacity, amount in resources:
        if capacity <= 0:
            continue
        remaining = 0.0
        for run in latest_first:
            remaining += amount(run.envelope) * run.run_s
            candidate = run.submit_s - t0 + remaining / capacity
            if candidate > bound.seconds:
                bound = LowerBound(candidate, f"{name} work arriving from {format_duration(run.submit_s - t0)}")
    return bound


# ------------------------------------------------------------------ replay


@dataclass
class Outcome:
    """What happened to one run in a replay."""

    run: TraceRun
    start_s: float | None = None
    end_s: float | None = None
    gpus: tuple[int, ...] = ()
    refused: str | None = None
    last_reason: str | None = None
    """Why it was waiting at the last decision that left it queued."""

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.run.submit_s


@dataclass
class Replay:
    policy: str
    box: policy.BoxView
    outcomes: dict[int, Outcome]
    decisions: int = 0
    """Calls of :func:`engine.policy.decide`."""
    elapsed_s: float = 0.0
    """Wall time the replay took."""


def replay(runs: Sequence[TraceRun], box: policy.BoxView, policy_name: str = "runyard") -> Replay:
    """Replay ``runs`` on ``box`` under ``policy_name`` (``runyard`` or ``fifo``)."""
    if policy_name not in POLICIES:
        raise ValueError(f"unknown policy {policy_name!r}; choose from {', '.join(POLICIES)}")
    began = time.perf_counter()
    sim = _Simulation(box, fifo=policy_name == "fifo")
    result = Replay(policy_name, box, sim.run(runs))
    result.decisions = sim.decisions
    result.elapsed_s = time.perf_counter() - began
    return result


class _Simulation:
    def __init__(self, box: policy.BoxView, *, fifo: bool) -> None:
        self.box = box
        self.fifo = fifo
        self.queue: dict[int, policy.QueuedRun] = {}
        self.holdings: dict[int, policy.Holding] = {}
        self.ends: list[tuple[float, int]] = []
        self.outcomes: dict[int, Outcome] = {}
        self.decisions = 0

    def run(self, runs: Sequence[TraceRun]) -> dict[int, Outcome]:
        arrivals = sorted(runs, key=lambda run: (run.submit_s, run.run_id))
        self.outcomes = {run.run_id: Outcome(run) for run in arrivals}
        next_arrival = 0
        now = arrivals[0].submit_s if arrivals else 0.0
        while True:
            while self.ends and self.ends[0][0] <= now:
                _, run_id = heapq.heappop(self.ends)
                del self.holdings[run_id]
            while next_arrival < len(arrivals) and arrivals[next_arrival].submit_s <= now:
                self._arrive(arrivals[next_arrival])
                next_arrival += 1
            if self.queue:
                self._admit_fifo(now) if self.fifo else self._admit(now)
            upcoming = [self.ends[0][0]] if self.ends else []
            if next_arrival < len(arrivals):
                upcoming.append(arrivals[next_arrival].submit_s)
            if not upcoming:
                return self.outcomes  # whatever is still queued now waits forever
            now = min(upcoming)

    def _arrive(self, run: TraceRun) -> None:
        envelope, priority = run.envelope, run.priority
        if self.fifo:
            envelope, priority = replace(envelope, gpu_mem_bytes=None), 0
        self.queue[run.run_id] = policy.QueuedRun(run.run_id, envelope, priority, run.submit_s)

    def _decide(self, queued: Sequence[policy.QueuedRun], now: float) -> policy.Decision:
        self.decisions += 1
        return policy.decide(queued, list(self.holdings.values()), self.box, now)

    def _admit(self, now: float) -> None:
        decision = self._decide(list(self.queue.values()), now)
        self._apply(decision, now)

    def _admit_fifo(self, now: float) -> None:
        # The queue dict keeps arrival order; only its head is ever considered.
        while self.queue:
            head = next(iter(self.queue.values()))
            decision = self._decide([head], now)
            self._apply(decision, now)
            if head.run_id in self.queue:
                return

    def _apply(self, decision: policy.Decision, now: float) -> None:
        for run_id, reason in decision.refused.items():
            self.outcomes[run_id].refused = reason
            del self.queue[run_id]
        for start in decision.starts:
            queued = self.queue.pop(start.run_id)
            outcome = self.outcomes[start.run_id]
            limit = queued.envelope.time_limit_s
            outcome.start_s, outcome.gpus = now, start.gpus
            outcome.end_s = now + outcome.run.run_s
            self.holdings[start.run_id] = policy.Holding(
                start.run_id, queued.envelope, start.gpus, None if limit is None else now + limit
            )
            heapq.heappush(self.ends, (outcome.end_s, start.run_id))
        for run_id, reason in decision.waiting.items():
            self.outcomes[run_id].last_reason = reason


# ------------------------------------------------------------------ report


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of them at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _wait_summary(waits: Sequence[float]) -> dict[str, Any]:
    return {
        "runs": len(waits),
        "mean_s": sum(waits) / len(waits) if waits else None,
        "p95_s": percentile(waits, 0.95),
        "max_s": max(waits) if waits else None,
    }


def summarise(result: Replay, bound: LowerBound) -> dict[str, Any]:
    """A JSON-ready report of one replay (times in seconds)."""
    outcomes = list(result.outcomes.values())
    started = [o for o in outcomes if o.start_s is not None]
    starved = [o for o in outcomes if o.start_s is None and o.refused is None]
    t0 = min((o.run.submit_s for o in outcomes), default=0.0)
    makespan = max((o.end_s for o in started), default=t0) - t0
    by_priority: dict[int, list[float]] = {}
    for outcome in started:
        by_priority.setdefault(outcome.run.priority, []).append(outcome.wait_s)
    largest_card = max((card.mem_total for card in result.box.gpus), default=0)
    gpu_work = sum(gpu_cards(o.run.envelope, largest_card) * o.run.run_s for o in started)
    cards = len(result.box.gpus)
    longest = max(started, key=lambda o: o.wait_s, default=None)
    return {
        "policy": result.policy,
        "runs": len(outcomes),
        "started": len(started),
        "makespan_s": makespan,
        "lower_bound_s": bound.seconds,
        "ratio": makespan / bound.seconds if bound.seconds > 0 else None,
        "wait": _wait_summary([o.wait_s for o in started]),
        "wait_by_priority": {str(p): _wait_summary(w) for p, w in sorted(by_priority.items(), reverse=True)},
        "longest_wait": None if longest is None else {"id": longest.run.run_id, "wait_s": longest.wait_s,
                                                      "envelope": longest.run.envelope.describe()},
        # Work the trace asked for over what the cards offered until the end: the same
        # numerator for every policy, so it moves exactly inversely with makespan.
        "gpu_utilisation": gpu_work / (cards * makespan) if cards and makespan > 0 else None,
        "timed_out": sum(o.run.duration_s > o.run.run_s for o in started),
        "starved": [{"id": o.run.run_id, "reason": o.last_reason} for o in starved],
        "refused": {str(o.run.run_id): o.refused for o in outcomes if o.refused is not None},
        "decisions": result.decisions,
        "replay_s": result.elapsed_s,
    }


@dataclass
class Comparison:
    """Every policy's report on one trace and box, and the bound they share."""

    bound: LowerBound
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lower_bound": {"seconds": self.bound.seconds, "binding": self.bound.binding},
            "policies": self.reports,
        }
        ours, theirs = self.reports.get("runyard"), self.reports.get("fifo")
        if ours and theirs:
            data["runyard_vs_fifo"] = {
                "makespan": _ratio(ours["makespan_s"], theirs["makespan_s"]),
                "mean_wait": _ratio(ours["wait"]["mean_s"], theirs["wait"]["mean_s"]),
                "p95_wait": _ratio(ours["wait"]["p95_s"], theirs["wait"]["p95_s"]),
            }
        return data


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def compare(runs: Sequence[TraceRun], box: policy.BoxView, policies: Sequence[str] = POLICIES) -> Comparison:
    """Replay ``runs`` under each policy and summarise them against one lower bound."""
    bound = lower_bound(runs, box)
    comparison = Comparison(bound)
    for name in policies:
        comparison.reports[name] = summarise(replay(runs, box, name), bound)
    return comparison
